"""``pull``, ``search``, ``list``, ``rm``, ``import``, ``verify`` through the CLI: CliRunner for
behaviour, real subprocesses for exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub
from ggufgen import write_tiny_gguf
from typer.testing import CliRunner

from localllm import store
from localllm.cli import app

runner = CliRunner()


def localllm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def quants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clifiles")
    return {
        "Q2_K": write_tiny_gguf(d / "a.gguf", n_embd=32, n_ff=64),
        "Q4_K_M": write_tiny_gguf(d / "b.gguf", n_embd=64, seed=1),
        "Q8_0": write_tiny_gguf(d / "c.gguf", n_embd=128, n_ff=256, seed=2),
    }


@pytest.fixture
def repo(fake_hub: FakeHub, quants: dict[str, Path]) -> str:
    files: dict[str, bytes | Path] = {f"Tiny-{q}.gguf": p for q, p in quants.items()}
    files["mmproj-Tiny-f16.gguf"] = quants["Q2_K"]
    fake_hub.add_repo("acme/Tiny-GGUF", files)
    return "acme/Tiny-GGUF"


def test_pull_auto_picks_and_installs(repo: str, quants: dict[str, Path]) -> None:
    result = runner.invoke(app, ["pull", repo])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{repo}:Q4_K_M\t")
    assert "picked Q4_K_M" in result.stderr and "fits" in result.stderr
    assert "with its vision projector mmproj-Tiny-f16.gguf" in result.stderr
    # ... which is no projector (a llama model): dropped, the model kept
    assert "mmproj-Tiny-f16.gguf is not a usable vision projector" in result.stderr
    m = store.get(f"{repo}:Q4_K_M")
    assert m is not None and m.primary.read_bytes() == quants["Q4_K_M"].read_bytes()
    assert m.mmproj is None and m.files == ["Tiny-Q4_K_M.gguf"]
    assert not (m.folder / "mmproj-Tiny-f16.gguf").exists()


def test_pull_list_shows_fit_marks_and_downloads_nothing(
    repo: str, fake_hub: FakeHub, quants: dict[str, Path]
) -> None:
    result = runner.invoke(app, ["pull", repo, "--list", "--ctx", "2048"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for q in ("Q2_K", "Q4_K_M", "Q8_0"):
        assert q in out
    assert "fits" in out and "NEEDS @2048" in out
    assert "multimodal projector: mmproj-Tiny-f16.gguf" in out
    assert "pulled with the model, counted in NEEDS" in out  # fit marks include it
    assert out.count("+ projector") == 3
    assert "KV cache from the model's header" in out
    assert "auto-pick: Q4_K_M" in out
    result = runner.invoke(app, ["search", repo, "--json"])
    data = json.loads(result.stdout)
    assert [f["quant"] for f in data["files"]] == ["Q2_K", "Q4_K_M", "Q8_0"]
    assert all(f["fit"] == "fits" for f in data["files"])
    assert data["auto_pick"] == "Tiny-Q4_K_M.gguf" and data["estimate_method"] == "header"
    assert data["projectors"][0]["name"] == "mmproj-Tiny-f16.gguf"
    projector = quants["Q2_K"].stat().st_size
    for f in data["files"]:
        assert f["projector"] == {"name": "mmproj-Tiny-f16.gguf", "size": projector}
        assert f["weights"] == f["size"] + projector
    # --mmproj none: the projector is not pulled, so not counted
    result = runner.invoke(app, ["pull", repo, "--list", "--mmproj", "none", "--json"])
    data = json.loads(result.stdout)
    assert all(f["projector"] is None and f["weights"] == f["size"] for f in data["files"])
    assert fake_hub.sent("Tiny-Q4_K_M.gguf") == 0 and store.installed() == []


def test_pull_json(repo: str) -> None:
    result = runner.invoke(app, ["pull", f"{repo}:Q2_K", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == f"{repo}:Q2_K" and data["source"] == "hub" and data["reason"] is None


def test_search_by_words(repo: str) -> None:
    result = runner.invoke(app, ["search", "tiny"])
    assert result.exit_code == 0, result.output
    assert repo in result.stdout


def test_list_rm_and_verify(repo: str) -> None:
    assert runner.invoke(app, ["pull", f"{repo}:q8_0"]).exit_code == 0
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert f"{repo}:Q8_0" in result.stdout and "llama" in result.stdout and "hub" in result.stdout
    rows = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert rows[0]["name"] == f"{repo}:Q8_0" and rows[0]["quant"] == "Q8_0"
    assert rows[0]["architecture"] == "llama" and rows[0]["context_length"] == 4096
    assert rows[0]["parameters"] > 0 and rows[0]["source"] == "hub"
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 0 and result.stdout.startswith("ok")
    # rm asks; "n" keeps the model, "y" removes it.
    result = runner.invoke(app, ["rm", f"{repo}:Q8_0"], input="n\n")
    assert result.exit_code == 1 and store.get(f"{repo}:Q8_0") is not None
    result = runner.invoke(app, ["rm", f"{repo}:Q8_0"], input="y\n")
    assert result.exit_code == 0 and store.get(f"{repo}:Q8_0") is None
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


def test_verify_reports_a_corrupt_file(repo: str) -> None:
    assert runner.invoke(app, ["pull", f"{repo}:Q2_K"]).exit_code == 0
    m = store.get(f"{repo}:Q2_K")
    assert m is not None
    data = bytearray(m.primary.read_bytes())
    data[len(data) // 2] ^= 1
    m.primary.write_bytes(bytes(data))
    proc = localllm("verify", f"{repo}:Q2_K")
    assert proc.returncode == 3
    assert proc.stdout.startswith("mismatch") and "failed verification" in proc.stderr


def test_import_and_run_by_name(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "Home-Made-Q4_0.gguf")
    result = runner.invoke(app, ["import", str(src)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Home-Made-Q4_0\t")
    result = runner.invoke(app, ["import", str(src), "--name", "copy", "--copy"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(runner.invoke(app, ["list", "--json"]).stdout)]
    assert names == ["copy", "Home-Made-Q4_0"]
    assert store.resolve_model("Home-Made-Q4_0").is_file()
    assert runner.invoke(app, ["rm", "copy", "--yes"]).exit_code == 0
    assert src.is_file()


def test_rm_without_a_terminal_needs_yes(tmp_path: Path) -> None:
    store.import_model(write_tiny_gguf(tmp_path / "x.gguf"))
    proc = localllm("rm", "x")
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: not confirmed"), proc.stderr
    assert store.get("x") is not None
    assert localllm("rm", "x", "--yes").returncode == 0
    assert store.get("x") is None


def test_exit_codes(repo: str, fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_repo("meta/Gated-GGUF", {"m-Q4_K_M.gguf": b"GGUF"}, gated=True)
    fake_hub.add_repo("o/no-gguf", {"model.safetensors": b"x"})
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    cases = [
        (["pull", "nobody/nothing"], 3, "no repository 'nobody/nothing'"),
        (["pull", f"{repo}:IQ1_S"], 3, "has no IQ1_S file"),
        (["pull", "o/no-gguf"], 3, "has no GGUF files"),
        (["pull", "meta/Gated-GGUF:Q4_K_M"], 4, "HF_TOKEN"),
        (["pull", "o/r:"], 2, "empty quant"),
        (["pull", "./local.gguf"], 2, "localllm import"),
        (["import", str(bad)], 3, "error:"),
        (["rm", "nothing-here", "--yes"], 3, "no installed model"),
        (["run", "-m", f"{repo}:Q8_0", "hi"], 3, f"run `localllm pull {repo}:Q8_0`"),
    ]
    for args, code, text in cases:
        proc = localllm(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    offline = localllm("pull", repo, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 4 and "offline" in offline.stderr
    down = localllm(
        "pull", repo, env={"HF_ENDPOINT": "http://127.0.0.1:9", "LOCALLLM_RETRY_BACKOFF": "0"}
    )
    assert down.returncode == 4 and "could not reach the Hub" in down.stderr


def test_pull_json_list_and_offline_list_make_no_connection(
    repo: str, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.reset_counters()
    assert runner.invoke(app, ["list"]).exit_code == 0
    assert runner.invoke(app, ["verify"]).exit_code == 0
    assert fake_hub.connections == 0


def test_list_shows_hf_cache_models_and_rm_only_unlists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    src = write_tiny_gguf(tmp_path / "src.gguf")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    folder = cache / "models--someone--Cached-GGUF"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / digest).write_bytes(src.read_bytes())
    snap = folder / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "cached-Q5_K_M.gguf").symlink_to(f"../../blobs/{digest}")
    rows = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [(r["name"], r["source"]) for r in rows] == [("someone/Cached-GGUF:Q5_K_M", "hf-cache")]
    assert rows[0]["path"] == str(snap / "cached-Q5_K_M.gguf")
    assert store.resolve_model("someone/Cached-GGUF:Q5_K_M") == snap / "cached-Q5_K_M.gguf"
    result = runner.invoke(app, ["rm", "someone/Cached-GGUF:Q5_K_M", "--yes"])
    assert result.exit_code == 0 and "unlisted" in result.stderr
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []
    assert (snap / "cached-Q5_K_M.gguf").is_file()


def test_pull_list_with_a_gpu_backend(repo: str) -> None:
    from localllm import fit

    fit.set_gpu_probe(lambda: (1 << 40, "Test GPU"))
    try:
        result = runner.invoke(app, ["pull", repo, "--list"])
    finally:
        fit.set_gpu_probe(None)
    assert result.exit_code == 0, result.output
    assert "GPU" in result.stdout and "VRAM" in result.stdout


def test_help_imports_no_network_stack() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "localllm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    imported = proc.stderr
    assert " typer\n" in imported  # the format this test reads
    heavy = (
        "huggingface_hub",
        "localllm.hub",
        "urllib.request",
        "llama_cpp",
        "starlette",
        "uvicorn",
    )
    for module in heavy:
        assert f" {module}\n" not in imported and f" {module}." not in imported, module


def test_import_of_a_directory_says_it_is_one(tmp_path: Path) -> None:
    """`localllm import ~/Downloads` (a folder, which exists) must not claim there is no such
    file: one line saying it is a directory, exit 3, nothing installed."""
    write_tiny_gguf(tmp_path / "inside.gguf")
    proc = localllm("import", str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a directory" in lines[0], lines
    assert lines[0].startswith("error: ") and "no such file" not in lines[0]
    assert store.installed() == []

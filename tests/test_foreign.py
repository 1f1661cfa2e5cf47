"""Models in other tools' stores (Ollama, LM Studio, llama.cpp), used in place and read-only.

Each test builds the tool's real on-disk layout under a temporary HOME, with tiny generated
GGUFs as the model files, and drives the CLI against it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ggufgen import CHATML_TEMPLATE, write_tiny_gguf
from typer.testing import CliRunner

from localllm import foreign, refs, store
from localllm.cli import app, format_error
from localllm.errors import LocalLLMError, ModelNotFoundError

runner = CliRunner()


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(*args: str) -> Result:
    """Run a command in-process; a core error becomes its exit code and the one line that
    ``localllm.cli.main`` prints (real processes are tested at the end of this file)."""
    result = runner.invoke(app, list(args))
    code, err = result.exit_code, result.stderr
    if isinstance(result.exception, LocalLLMError):
        code, err = result.exception.exit_code, err + format_error(result.exception) + "\n"
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(code, result.stdout, err)


OLLAMA_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


# -- building each tool's layout ----------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(root: Path, data: bytes) -> dict[str, Any]:
    digest = _sha(data)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_ollama(
    root: Path,
    model: str,
    tag: str,
    gguf: Path | bytes,
    *,
    projector: Path | None = None,
    namespace: str = "library",
    host: str = "registry.ollama.ai",
    quant: str = "Q4_K_M",
) -> Path:
    """One model the way `ollama pull` leaves it; returns the model blob."""
    data = gguf if isinstance(gguf, bytes) else gguf.read_bytes()
    config = json.dumps({"model_format": "gguf", "file_type": quant, "model_type": "0.1M"})
    layers = [{"mediaType": "application/vnd.ollama.image.model", **_blob(root, data)}]
    if projector is not None:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.projector",
                **_blob(root, projector.read_bytes()),
            }
        )
    layers.append(
        {"mediaType": "application/vnd.ollama.image.template", **_blob(root, b"{{ .Prompt }}")}
    )
    layers.append(
        {"mediaType": "application/vnd.ollama.image.params", **_blob(root, b'{"stop":[]}')}
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OLLAMA_MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            **_blob(root, config.encode()),
        },
        "layers": layers,
    }
    path = root / "manifests" / host / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return root / "blobs" / f"sha256-{_sha(data)}"


def make_lmstudio(root: Path, publisher: str, repo: str, files: dict[str, Path]) -> Path:
    folder = root / publisher / repo
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, folder / name)
    return folder


def make_llamacpp_hf(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """The Hugging Face cache layout current llama.cpp keeps in $LLAMA_CACHE."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        (repo_dir / "blobs" / _sha(data)).write_bytes(data)
        os.symlink(f"../../blobs/{_sha(data)}", snap / name)
    return snap


def make_llamacpp_flat(cache: Path, owner: str, repo: str, tag: str, file: str, src: Path) -> Path:
    """What llama.cpp's -hf left before the 2026 cache rework."""
    cache.mkdir(parents=True, exist_ok=True)
    local = cache / f"{owner}_{repo}_{file}"
    shutil.copyfile(src, local)
    (cache / f"{local.name}.etag").write_text('"abc"')
    manifest = {"ggufFile": {"rfilename": file, "lfs": {"sha256": _sha(src.read_bytes())}}}
    (cache / f"manifest={owner}={repo}={tag}.json").write_text(json.dumps(manifest))
    return local


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("foreign-ggufs")
    return {
        "chat": write_tiny_gguf(d / "chat.gguf", chat_template=CHATML_TEMPLATE),
        "other": write_tiny_gguf(d / "other.gguf", n_embd=32, n_ff=64, seed=3),
        "proj": write_tiny_gguf(d / "proj.gguf", n_embd=32, n_ff=64, seed=4, weights=False),
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's HOME with no store yet; every tool's variable cleared."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("OLLAMA_MODELS", "LLAMA_CACHE", "XDG_CACHE_HOME", "LOCALLLM_FOREIGN_STORES"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def stores(home: Path, ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One model in each store, laid out as each tool does."""
    ollama = home / ".ollama" / "models"
    blob = make_ollama(ollama, "llama3.2", "3b", ggufs["chat"], projector=ggufs["proj"])
    lms = make_lmstudio(
        home / ".lmstudio" / "models",
        "acme",
        "Tiny-GGUF",
        {"Tiny-Q4_K_M.gguf": ggufs["chat"], "mmproj-Tiny-F16.gguf": ggufs["proj"]},
    )
    flat = make_llamacpp_flat(
        home / ".cache" / "llama.cpp", "acme", "Old-GGUF", "Q8_0", "Old-Q8_0.gguf", ggufs["other"]
    )
    return {"ollama": ollama, "blob": blob, "lmstudio": lms, "flat": flat}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: proof nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# -- references ---------------------------------------------------------------------------


def test_foreign_references_parse_with_their_store() -> None:
    r = refs.parse_ref("ollama:llama3.2:3b")
    assert (r.kind, r.store, r.name, r.display()) == ("foreign", "ollama", "llama3.2:3b", r.raw)
    r = refs.parse_ref("lmstudio:acme/Tiny-GGUF:q4_k_m")
    assert (r.kind, r.store, r.name) == ("foreign", "lmstudio", "acme/Tiny-GGUF:q4_k_m")
    r = refs.parse_ref("llama.cpp:acme/Old-GGUF:Q8_0")
    assert (r.store, r.display()) == ("llama.cpp", "llamacpp:acme/Old-GGUF:Q8_0")
    assert refs.parse_ref("acme/Tiny-GGUF:Q4_K_M").kind == "hub"  # no prefix: unchanged
    assert foreign.ollama_full_name("llama3.2") == "registry.ollama.ai/library/llama3.2:latest"
    assert foreign.ollama_full_name("me/m:v1") == "registry.ollama.ai/me/m:v1"
    assert foreign.ollama_short_name("registry.ollama.ai", "me", "m", "v1") == "me/m:v1"


# -- list ---------------------------------------------------------------------------------


def test_list_shows_every_store_with_its_source(stores: dict[str, Any]) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name, source in (
        ("ollama:llama3.2:3b", "ollama"),
        ("lmstudio:acme/Tiny-GGUF:Q4_K_M", "lmstudio"),
        ("llamacpp:acme/Old-GGUF:Q8_0", "llama.cpp"),
    ):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert line.split()[-1] == source
        assert "llama" in line  # the architecture, read from the header
    assert "mmproj" not in out  # a projector is not a model of its own
    rows = json.loads(cli("list", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    o = by_name["ollama:llama3.2:3b"]
    assert o["source"] == "ollama" and o["read_only"] and o["quant"] == "Q4_K_M"
    assert o["path"] == str(stores["blob"]) and o["projector"]
    assert o["size"] == stores["blob"].stat().st_size
    assert by_name["lmstudio:acme/Tiny-GGUF:Q4_K_M"]["projector"].endswith("mmproj-Tiny-F16.gguf")


def test_completion_offers_foreign_models(stores: dict[str, Any]) -> None:
    from localllm.cli._app import complete_model

    assert complete_model("oll") == [("ollama:llama3.2:3b", "Ollama")]
    assert [name for name, _ in complete_model("lmstudio:acme/")] == [
        "lmstudio:acme/Tiny-GGUF:Q4_K_M"
    ]


def test_list_source_filter(stores: dict[str, Any]) -> None:
    rows = json.loads(cli("list", "--json", "--source", "ollama").stdout)
    assert [r["name"] for r in rows] == ["ollama:llama3.2:3b"]
    rows = json.loads(cli("list", "--json", "--source", "llamacpp").stdout)
    assert [r["source"] for r in rows] == ["llama.cpp"]
    result = cli("list", "--source", "hub")
    assert result.exit_code == 0 and "ollama:" not in result.stdout
    result = cli("list", "--source", "bogus")
    assert result.exit_code == 2
    assert "unknown source 'bogus'" in result.stderr and "lmstudio" in result.stderr


def test_ollama_models_dir_variable_and_namespaces(
    home: Path, ggufs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "elsewhere"
    make_ollama(root, "tiny", "latest", ggufs["chat"], namespace="someone")
    make_ollama(root, "tiny", "v2", ggufs["other"], host="example.com", namespace="team")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    scan = foreign.scan_store(foreign.OLLAMA)
    assert scan.roots == [root]
    assert sorted(m.ref for m in scan.models) == [
        "ollama:example.com/team/tiny:v2",
        "ollama:someone/tiny:latest",
    ]
    assert foreign.lookup("ollama", "someone/tiny").files[0].read_bytes() == (
        ggufs["chat"].read_bytes()
    )


def test_lm_studio_folder_conventions(home: Path, ggufs: dict[str, Path], tmp_path: Path) -> None:
    # A models folder moved in LM Studio's settings, a home moved by the pointer file, and
    # 0.2.x's folder: all read. Symlinked files (a common way to share one copy) work.
    lms_home = tmp_path / "lms-home"
    custom = tmp_path / "my-models"
    lms_home.mkdir()
    (home / ".lmstudio-home-pointer").write_text(str(lms_home))
    (lms_home / "settings.json").write_text(json.dumps({"downloadsFolder": str(custom)}))
    make_lmstudio(
        custom, "acme", "A-GGUF", {"A-Q8_0.gguf": ggufs["chat"], "A-Q2_K.gguf": ggufs["other"]}
    )
    old = make_lmstudio(home / ".cache" / "lm-studio" / "models", "old", "B-GGUF", {})
    os.symlink(ggufs["chat"], old / "b.gguf")
    (custom / "loose.gguf").write_bytes(ggufs["chat"].read_bytes())  # LM Studio ignores it too
    scan = foreign.scan_store(foreign.LMSTUDIO)
    assert scan.roots == [custom, home / ".cache" / "lm-studio" / "models"]
    assert sorted(m.ref for m in scan.usable()) == [
        "lmstudio:acme/A-GGUF:Q2_K",
        "lmstudio:acme/A-GGUF:Q8_0",
        "lmstudio:old/B-GGUF/b.gguf",  # no quant in the name: named by its file
    ]
    with pytest.raises(ModelNotFoundError, match="matches 2"):
        foreign.lookup("lmstudio", "acme/A-GGUF")  # two quants: name one
    assert foreign.lookup("lmstudio", "old/b-gguf").primary == old / "b.gguf"
    result = cli("run", "-m", "lmstudio:old/B-GGUF/b.gguf", "hi", "-n", "3", "--temperature", "0")
    assert result.exit_code == 0, result.output


def test_llama_cpp_cache_in_hugging_face_layout(
    home: Path, ggufs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "llama-cache"
    make_llamacpp_hf(
        cache,
        "acme/New-GGUF",
        {"New-Q4_K_M.gguf": ggufs["chat"], "mmproj-New-f16.gguf": ggufs["proj"]},
    )
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    (m,) = foreign.scan_store(foreign.LLAMACPP).models
    assert m.ref == "llamacpp:acme/New-GGUF:Q4_K_M" and m.projector is not None
    assert m.sha256 == {"New-Q4_K_M.gguf": _sha(ggufs["chat"].read_bytes())}
    assert foreign.lookup("llama.cpp", "acme/new-gguf").primary == m.primary  # the only model
    result = cli("verify", "llamacpp:acme/New-GGUF:Q4_K_M")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok")


def test_llama_cpp_flat_cache_groups_split_parts(home: Path, ggufs: dict[str, Path]) -> None:
    cache = home / ".cache" / "llama.cpp"
    first = make_llamacpp_flat(
        cache, "acme", "Big-GGUF", "Q4_K_M", "Big-Q4_K_M-00001-of-00002.gguf", ggufs["chat"]
    )
    second = cache / "acme_Big-GGUF_Big-Q4_K_M-00002-of-00002.gguf"
    shutil.copyfile(ggufs["other"], second)
    shutil.copyfile(ggufs["other"], cache / "loose-Q8_0-00001-of-00003.gguf")
    scan = foreign.scan_store(foreign.LLAMACPP)
    by_ref = {m.ref: m for m in scan.models}
    big = by_ref["llamacpp:acme/Big-GGUF:Q4_K_M"]
    assert big.files == [first, second] and not big.broken
    assert big.size == first.stat().st_size + second.stat().st_size
    assert "part(s) [2, 3] missing" in (by_ref["llamacpp:loose-Q8_0"].broken or "")
    second.unlink()
    (big,) = [m for m in foreign.scan_store(foreign.LLAMACPP).models if "Big" in m.ref]
    assert big.broken and "1 part(s) missing" in big.broken


# -- show / run / verify ------------------------------------------------------------------


def test_show_says_where_it_lives_and_that_it_is_read_only(stores: dict[str, Any]) -> None:
    result = cli("show", "ollama:llama3.2:3b")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Ollama (read in place; localllm will not modify it)" in out
    manifest = stores["ollama"] / "manifests/registry.ollama.ai/library/llama3.2/3b"
    flat = "".join(out.split())  # long paths fold over lines at 80 columns
    assert str(manifest) in flat
    assert "projector" in out and "sha256-" in flat
    assert "ollama rm llama3.2:3b" in out
    data = json.loads(cli("show", "lmstudio:acme/Tiny-GGUF:Q4_K_M", "--json").stdout)
    assert data["foreign"]["source"] == "lmstudio" and data["foreign"]["read_only"]
    assert data["projector"].endswith("mmproj-Tiny-F16.gguf")
    assert data["architecture"] == "llama"


def test_vision_finds_the_projector_the_store_records(stores: dict[str, Any]) -> None:
    from localllm import vision

    ollama = foreign.lookup("ollama", "llama3.2:3b")
    assert ollama.projector is not None and ollama.projector.name.startswith("sha256-")
    assert vision.find_projector(stores["blob"]) == ollama.projector
    lms = foreign.lookup("lmstudio", "acme/Tiny-GGUF:Q4_K_M")
    assert vision.find_projector(lms.primary) == lms.projector


def test_run_uses_the_blob_in_place_and_writes_nothing(stores: dict[str, Any], home: Path) -> None:
    before = _tree(home)
    for ref in ("ollama:llama3.2:3b", "lmstudio:acme/Tiny-GGUF:q4_k_m", "llamacpp:acme/Old-GGUF"):
        result = cli("run", "-m", ref, "hello", "--temperature", "0", "--max-tokens", "6")
        assert result.exit_code == 0, (ref, result.output)
        assert result.stdout.strip()
    assert _tree(home) == before


def test_bare_name_hints_at_the_store_that_has_it(stores: dict[str, Any]) -> None:
    result = cli("run", "-m", "llama3.2:3b", "hi")
    assert result.exit_code == 3
    assert "use ollama:llama3.2:3b" in result.stderr


def test_verify_checks_the_blob_against_its_name(
    home: Path, ggufs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ollama"
    blob = make_ollama(root, "tiny", "latest", ggufs["chat"])
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    result = cli("verify", "ollama:tiny")
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:2] == ["ok", "ollama:tiny:latest"]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor: still a GGUF, no longer the blob
    blob.write_bytes(bytes(data))
    result = cli("verify", "ollama:tiny:latest")
    assert result.exit_code == 3
    assert result.stdout.startswith("mismatch")


# -- rm / import --------------------------------------------------------------------------


def test_rm_refuses_and_names_the_owning_tools_command(stores: dict[str, Any], home: Path) -> None:
    before = _tree(home)
    cases = {
        "ollama:llama3.2:3b": "ollama rm llama3.2:3b",
        "lmstudio:acme/Tiny-GGUF:Q4_K_M": "LM Studio",
        "llamacpp:acme/Old-GGUF:Q8_0": str(stores["flat"]),
    }
    for ref, hint in cases.items():
        result = cli("rm", ref, "--yes")
        assert result.exit_code == 2, result.output
        assert "never modifies another tool's models" in result.stderr
        assert hint in result.stderr
    assert _tree(home) == before


def test_import_copy_copies_into_our_store(stores: dict[str, Any], home: Path) -> None:
    before = _tree(home)
    result = cli("import", "ollama:llama3.2:3b")
    assert result.exit_code == 2 and "--copy" in result.stderr
    result = cli("import", "ollama:llama3.2:3b", "--copy")
    assert result.exit_code == 0, result.output
    m = store.get("llama3.2:3b")
    assert m is not None and m.source == "import" and m.location is None
    assert m.primary.read_bytes() == stores["blob"].read_bytes()
    assert m.primary.name == "llama3.2-3b-Q4_K_M.gguf" and not m.primary.is_symlink()
    assert m.sha256[m.primary.name] == stores["blob"].name.removeprefix("sha256-")
    assert m.mmproj and (m.folder / m.mmproj).is_file()  # the projector came along
    assert m.architecture == "llama"
    result = cli("import", "lmstudio:acme/Tiny-GGUF:Q4_K_M", "--copy", "--name", "tiny-lms")
    assert result.exit_code == 0, result.output
    assert store.get("tiny-lms") is not None
    assert _tree(home) == before  # the other tools' files are untouched
    # the copies are ordinary models now: listed as imports, removable, verifiable
    rows = json.loads(cli("list", "--json", "--source", "import").stdout)
    assert sorted(r["name"] for r in rows) == ["llama3.2:3b", "tiny-lms"]
    result = cli("verify", "llama3.2:3b")
    assert result.exit_code == 0 and result.stdout.startswith("ok")
    result = cli("import", "ollama:llama3.2:3b", "--copy")
    assert result.exit_code == 2 and "already installed" in result.stderr
    assert cli("rm", "llama3.2:3b", "--yes").exit_code == 0
    assert stores["blob"].is_file()


# -- doctor -------------------------------------------------------------------------------


def test_doctor_lists_the_stores_found(stores: dict[str, Any], home: Path) -> None:
    result = cli("doctor", "--json")
    assert result.exit_code == 0, result.output
    by_store = {e["store"]: e for e in json.loads(result.stdout)["foreign_stores"]}
    assert by_store["ollama"]["found"] and by_store["ollama"]["models"] == 1
    assert by_store["lmstudio"]["models"] == 1 and by_store["llama.cpp"]["models"] == 1
    assert str(home / ".ollama" / "models") in by_store["ollama"]["roots"]
    text = cli("doctor").stdout
    line = next(line for line in text.splitlines() if line.startswith("Ollama"))
    assert "(1 model)" in line


def test_doctor_says_not_found(home: Path) -> None:
    text = cli("doctor").stdout
    assert next(ln for ln in text.splitlines() if ln.startswith("LM Studio")).endswith("not found")


# -- broken entries -----------------------------------------------------------------------


def test_broken_entries_are_listed_with_a_reason_and_the_rest_still_lists(
    stores: dict[str, Any], home: Path, ggufs: dict[str, Path]
) -> None:
    ollama = stores["ollama"]
    lib = ollama / "manifests" / "registry.ollama.ai" / "library"
    (lib / "notjson").mkdir()
    (lib / "notjson" / "latest").write_text("{not json")
    gone = make_ollama(ollama, "gone", "latest", b"GGUF" + b"\0" * 40)
    gone.unlink()
    make_ollama(ollama, "text", "latest", b"this is not a model at all")
    tensors = lib / "safetensors" / "latest"
    tensors.parent.mkdir()
    tensors.write_text(
        json.dumps(
            {"layers": [{"mediaType": foreign.MEDIA_TENSOR, "digest": "sha256:" + "a" * 64}]}
        )
    )
    lms = home / ".lmstudio" / "models"
    (lms / "acme" / "Dangling-GGUF").mkdir(parents=True)
    os.symlink(home / "nowhere.gguf", lms / "acme" / "Dangling-GGUF" / "Dangling-Q4_K_M.gguf")
    os.symlink("loop", lms / "loop")  # a publisher folder that cannot be read
    (lms / "split" / "Split-GGUF").mkdir(parents=True)
    shutil.copyfile(ggufs["other"], lms / "split" / "Split-GGUF" / "S-Q4_K_M-00001-of-00002.gguf")

    result = cli("list")
    assert result.exit_code == 0, result.output
    err = result.stderr
    for ref, reason in (
        ("ollama:notjson:latest", "is not JSON"),
        ("ollama:gone:latest", "is missing"),
        ("ollama:text:latest", "is not a GGUF file"),
        ("ollama:safetensors:latest", "safetensors"),
        ("lmstudio:acme/Dangling-GGUF:Q4_K_M", "dangling symlink"),
        ("lmstudio:loop", "cannot read"),
        ("lmstudio:split/Split-GGUF:Q4_K_M", "part(s) [2] missing"),
    ):
        line = next((ln for ln in err.splitlines() if ref in ln), None)
        assert line is not None and reason in line, (ref, err)
    assert "Traceback" not in result.output
    for good in ("ollama:llama3.2:3b", "lmstudio:acme/Tiny-GGUF:Q4_K_M", "llamacpp:acme/Old-GGUF"):
        assert good in result.stdout
    rows = json.loads(cli("list", "--json").stdout)
    broken = {r["name"]: r["broken"] for r in rows if r.get("broken")}
    assert "is not JSON" in broken["ollama:notjson:latest"]

    result = cli("run", "-m", "ollama:gone", "hi")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ollama:gone:latest is broken:")
    assert "is missing" in result.stderr and "ollama rm gone:latest" in result.stderr
    result = cli("show", "ollama:nothere")
    assert result.exit_code == 3 and "Ollama has no model 'nothere'" in result.stderr
    assert "ollama:llama3.2:3b" in result.stderr  # the hint names what is there


def test_hostile_manifests_never_escape_or_crash(home: Path, ggufs: dict[str, Path]) -> None:
    root = home / ".ollama" / "models"
    lib = root / "manifests" / "registry.ollama.ai" / "library"
    secret = home / "secret.gguf"
    shutil.copyfile(ggufs["chat"], secret)
    bodies = {
        "list": "[1, 2]",
        "null": "null",
        "traversal": json.dumps(
            {"layers": [{"mediaType": foreign.MEDIA_MODEL, "digest": "sha256:../../secret.gguf"}]}
        ),
        "badlayers": json.dumps({"layers": [None, 3, {"mediaType": 7}]}),
        "binary": "\x00\xff\xfe",
    }
    for name, body in bodies.items():
        (lib / name).mkdir(parents=True)
        (lib / name / "latest").write_text(body, errors="surrogateescape")
    (lib / "big").mkdir()
    (lib / "big" / "latest").write_bytes(b" " * (foreign.MAX_MANIFEST + 1))
    scan = foreign.scan_store(foreign.OLLAMA)
    assert len(scan.models) == len(bodies) + 1
    assert all(m.broken for m in scan.models), [m.ref for m in scan.models if not m.broken]
    assert not any(secret in m.files for m in scan.models)
    cache = home / ".cache" / "llama.cpp"
    snap = make_llamacpp_hf(cache, "acme/R-GGUF", {"R-Q4_K_M.gguf": ggufs["chat"]})
    (snap.parent.parent / "refs" / "main").write_text("../../../../")
    (m,) = foreign.scan_store(foreign.LLAMACPP).usable()  # falls back to the snapshot folder
    assert m.primary == snap / "R-Q4_K_M.gguf"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_is_broken_not_a_traceback(stores: dict[str, Any]) -> None:
    lib = stores["ollama"] / "manifests" / "registry.ollama.ai" / "library"
    locked = lib / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = cli("list")
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 0
    assert "cannot read folder" in result.stderr and "ollama:llama3.2:3b" in result.stdout


def test_foreign_stores_can_be_switched_off(
    stores: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALLLM_FOREIGN_STORES", "lmstudio")
    rows = json.loads(cli("list", "--json").stdout)
    assert {r["source"] for r in rows} == {"lmstudio"}
    monkeypatch.setenv("LOCALLLM_FOREIGN_STORES", "none")
    assert json.loads(cli("list", "--json").stdout) == []


def test_broken_store_errors_are_one_line_in_a_real_process(stores: dict[str, Any]) -> None:
    lib = stores["ollama"] / "manifests" / "registry.ollama.ai" / "library"
    (lib / "bad").mkdir()
    (lib / "bad" / "latest").write_bytes(b"\xff\xfe not json")
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "run", "-m", "ollama:bad", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 3
    assert proc.stderr.count("\n") <= 2 and "Traceback" not in proc.stderr
    assert "ollama:bad:latest is broken" in proc.stderr


def test_pull_of_a_foreign_model_points_at_running_it_in_place(stores: dict[str, Any]) -> None:
    result = cli("pull", "ollama:llama3.2:3b")
    assert result.exit_code == 2
    assert "already on this machine" in result.stderr
    assert "localllm run -m ollama:llama3.2:3b" in result.stderr


def test_real_model_from_an_ollama_store(
    starter_model: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2-135M-Instruct laid out as `ollama pull` leaves it (the blob hard-linked, or
    copied across file systems): it answers through its chat template, and verify re-hashes
    it against the digest in its name."""
    from localllm.catalog import starter

    root = tmp_path / "ollama"
    blob = root / "blobs" / f"sha256-{starter().sha256}"
    blob.parent.mkdir(parents=True)
    try:
        os.link(starter_model, blob)
    except OSError:
        shutil.copyfile(starter_model, blob)
    layer = {"mediaType": foreign.MEDIA_MODEL, "digest": f"sha256:{starter().sha256}"}
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    shown = cli("run", "-m", "ollama:smollm2:135m", "Name a colour.", "--show-prompt")
    assert shown.exit_code == 0 and "<|im_start|>user" in shown.stdout
    result = cli(
        "run", "-m", "ollama:smollm2:135m", "Name a colour.", "--temperature", "0", "-n", "12"
    )
    assert result.exit_code == 0, result.output
    assert any(c.isalpha() for c in result.stdout)
    checked = cli("verify", "ollama:SmolLM2:135m")  # Ollama names are case-insensitive
    assert checked.exit_code == 0 and checked.stdout.startswith("ok")

"""``localllm show`` and ``localllm tokenize``: through CliRunner, and as real subprocesses for
exit codes, on tiny generated models, the starter model and Gemma 3 270M."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ggufgen import CHATML_TEMPLATE, write_tiny_gguf
from test_modelfile import R1_TEMPLATE, gemma_model  # noqa: F401  (a session fixture)
from typer.testing import CliRunner

from localllm.cli import app
from localllm.cli import inspect as inspect_cli
from localllm.errors import InvalidModelError, LocalLLMError, ModelNotFoundError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m localllm ARGS`` with the test's environment (LOCALLLM_HOME and all)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        capture_output=True,
        text=True,
        input=input,
        env=env,
        timeout=120,
    )


# -- show ----------------------------------------------------------------------------------


def test_show_table(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["show", str(tiny_model)])
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    for label, value in [
        ("structure", "decoder-only"),
        ("size", "small (117K parameters)"),
        ("layers", "2"),
        ("embedding", "64"),
        ("heads", "4 (4 for keys/values)"),
        ("context", "4,096 tokens"),
        ("quantization", "F32"),
        ("tokenizer", "BPE, 271 tokens"),
        ("modality", "text"),
        ("tuning", "instruct"),
        ("thinking", "no"),
    ]:
        line = next((ln for ln in out.splitlines() if ln.startswith(label + " ")), "")
        assert value in line, (label, out)


def test_show_json(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["show", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["architecture"] == "llama"
    assert data["tokenizer"] == "BPE"
    assert data["tuning"] == "instruct"
    assert data["chat_template"] == CHATML_TEMPLATE
    assert data["size_class"] == "small"
    assert data["thinking"] == "none"


def test_show_template(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["show", str(tiny_model), "--template"])
    assert result.exit_code == 0
    assert result.stdout == CHATML_TEMPLATE + "\n"


def test_show_template_of_a_base_model(runner: CliRunner, tiny_base_model: Path) -> None:
    result = runner.invoke(app, ["show", str(tiny_base_model), "--template"])
    assert isinstance(result.exception, LocalLLMError)
    assert result.exception.exit_code == 3
    assert "this is a base model: it has no chat template" in str(result.exception)


def test_show_thinking_model(runner: CliRunner, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "r1.gguf", chat_template=R1_TEMPLATE)
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.stdout
    assert "always (the template opens <think>)" in result.stdout
    data = json.loads(runner.invoke(app, ["show", str(path), "--json"]).stdout)
    assert data["thinking"] == "prefill"


def test_show_encoder_and_multimodal(runner: CliRunner, tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "bert.gguf", arch="bert", vocab="bert", weights=False, chat_template=None
    )
    write_tiny_gguf(tmp_path / "mmproj-bert.gguf", arch="clip", weights=False)
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.stdout
    assert "encoder-only" in result.stdout
    assert "WordPiece" in result.stdout
    assert "text + image (projector mmproj-bert.gguf" in result.stdout


def test_show_by_store_name(runner: CliRunner, tmp_path: Path) -> None:
    from localllm import store

    folder = tmp_path / "elsewhere"
    write_tiny_gguf(folder / "tiny.gguf", name="stored-tiny")
    store.save_manifest(store.Manifest(name="stored", files=["tiny.gguf"], location=str(folder)))
    result = runner.invoke(app, ["show", "stored", "--json"])
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["name"] == "stored-tiny"


def test_show_invalid_file(runner: CliRunner, tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_model.read_bytes()[:5000])
    result = runner.invoke(app, ["show", str(bad)])
    assert isinstance(result.exception, InvalidModelError)
    assert "truncated" in str(result.exception)


def test_show_unknown_model(runner: CliRunner) -> None:
    result = runner.invoke(app, ["show", "no-such-model"])
    assert isinstance(result.exception, ModelNotFoundError)


def test_show_exit_codes_in_a_subprocess(
    tmp_path: Path, tiny_model: Path, tiny_base_model: Path
) -> None:
    ok = cli("show", str(tiny_model), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["name"] == "tiny-test"

    base = cli("show", str(tiny_base_model), "--template")
    assert base.returncode == 3
    assert base.stdout == ""
    assert "this is a base model: it has no chat template" in base.stderr

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x63\x00\x00\x00" + bytes(16))
    invalid = cli("show", str(bad))
    assert invalid.returncode == 3
    assert "unsupported GGUF version 99" in invalid.stderr
    assert "Traceback" not in invalid.stderr

    missing = cli("show", str(tmp_path / "missing.gguf"))
    assert missing.returncode == 3
    assert "no such model file" in missing.stderr


# -- tokenize -----------------------------------------------------------------------------------


def test_tokenize_plain_table(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["tokenize", str(tiny_model), "Hello the <|im_start|>"])
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} tokens (BPE)"
    rows = [line.split("\t") for line in lines[:-1]]
    assert all(len(r) == 2 and r[0].isdigit() for r in rows)
    assert ["259", "' the'"] in rows  # a merge from the tiny vocabulary
    assert rows[-1][1] == "'<|im_start|>'"  # parsed as one special token


def test_tokenize_json(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["tokenize", str(tiny_model), "hi é", "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["tokenizer"] == "BPE"
    assert data["count"] == len(data["tokens"])
    pieces = [t["piece"] for t in data["tokens"]]
    assert pieces[:3] == ["h", "i", " "]
    # "é" is two byte tokens: each piece alone is not UTF-8, so its bytes come along.
    assert [t.get("bytes") for t in data["tokens"][3:]] == ["c3", "a9"]
    assert b"".join(bytes.fromhex(t["bytes"]) for t in data["tokens"][3:]).decode() == "é"


def test_tokenize_no_special(runner: CliRunner, tiny_model: Path) -> None:
    special = json.loads(
        runner.invoke(app, ["tokenize", str(tiny_model), "<|im_start|>", "--json"]).stdout
    )
    plain = json.loads(
        runner.invoke(
            app, ["tokenize", str(tiny_model), "<|im_start|>", "--json", "--no-special"]
        ).stdout
    )
    assert special["count"] == 1
    assert plain["count"] > 5
    assert "".join(t["piece"] for t in plain["tokens"]) == "<|im_start|>"


def test_tokenize_stdin(runner: CliRunner, tiny_model: Path) -> None:
    result = runner.invoke(app, ["tokenize", str(tiny_model), "-", "--json"], input="in\n")
    assert result.exit_code == 0, result.stdout
    assert [t["piece"] for t in json.loads(result.stdout)["tokens"]] == ["in", "\n"]


def test_tokenize_terminal_spans(
    runner: CliRunner, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inspect_cli, "stdout_is_terminal", lambda: True)
    result = runner.invoke(app, ["tokenize", str(tiny_model), "Hello the"])
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "Hello the"  # the pieces, side by side
    assert lines[1].split() == ["72", "101", "108", "108", "111", "259"]
    assert lines[2] == "6 tokens (BPE)"


@pytest.mark.parametrize(
    ("vocab", "algorithm"), [("llama", "SentencePiece"), ("bert", "WordPiece"), ("t5", "Unigram")]
)
def test_tokenize_other_tokenizers(
    runner: CliRunner, tmp_path: Path, vocab: str, algorithm: str
) -> None:
    arch = {"llama": "llama", "bert": "bert", "t5": "t5"}[vocab]
    path = write_tiny_gguf(
        tmp_path / f"{vocab}.gguf",
        arch=arch,
        vocab=vocab,
        weights=arch == "llama",
        chat_template=None,
    )
    result = runner.invoke(app, ["tokenize", str(path), "hello world", "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["tokenizer"] == algorithm
    assert data["count"] >= 2


def test_tokenize_validates_before_loading(tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.gguf"
    data = bytearray(tiny_model.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))
    result = cli("tokenize", str(bad), "hello")
    assert result.returncode == 3
    assert "is not a valid GGUF model: truncated" in result.stderr
    assert "Traceback" not in result.stderr


def test_tokenize_subprocess(tiny_model: Path) -> None:
    result = cli("tokenize", str(tiny_model), "-", input="Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "5 tokens (BPE)"


def test_help_does_not_import_the_engine() -> None:
    code = (
        "import sys; from localllm.cli import app; "
        "bad = [m for m in ('llama_cpp', 'localllm.modelfile', 'jinja2') if m in sys.modules]; "
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# -- real models ---------------------------------------------------------------------------------


def test_show_starter(runner: CliRunner, starter_model: Path) -> None:
    result = runner.invoke(app, ["show", str(starter_model), "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert (data["architecture"], data["tokenizer"], data["quantization"]) == (
        "llama",
        "BPE",
        "Q4_1",
    )
    assert data["tuning"] == "instruct"
    assert data["size_class"] == "small"
    assert data["parameters_text"] == "135M"


def test_tokenize_starter(runner: CliRunner, starter_model: Path) -> None:
    result = runner.invoke(app, ["tokenize", str(starter_model), "Hello, world!", "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["tokenizer"] == "BPE"
    assert "".join(t["piece"] for t in data["tokens"]) == "Hello, world!"


def test_show_gemma(runner: CliRunner, gemma_model: Path) -> None:  # noqa: F811
    result = runner.invoke(app, ["show", str(gemma_model)])
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "gemma3" in out
    assert "decoder-only" in out
    assert "small (268M parameters)" in out
    assert "Q4_K_M" in out
    assert "SentencePiece, 262,144 tokens" in out
    assert "base (no chat template)" in out


def test_show_gemma_template_exit_code(gemma_model: Path) -> None:  # noqa: F811
    result = cli("show", str(gemma_model), "--template")
    assert result.returncode == 3
    assert "this is a base model: it has no chat template" in result.stderr


def test_tokenize_gemma(runner: CliRunner, gemma_model: Path) -> None:  # noqa: F811
    result = runner.invoke(app, ["tokenize", str(gemma_model), "Hello world", "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["tokenizer"] == "SentencePiece"
    pieces = [t["piece"] for t in data["tokens"]]
    assert pieces[0] == "<bos>"  # SentencePiece models add BOS
    assert "".join(pieces[1:]).replace("▁", " ").strip() == "Hello world"
    assert data["count"] == len(pieces) >= 3

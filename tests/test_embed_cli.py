"""``localllm embed``, and the encoder refusal in ``run``/``chat`` and the embedding facts in
``show``: CliRunner for output, real subprocesses for exit codes and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ptyrun import in_a_terminal
from typer.testing import CliRunner

from localllm import catalog
from localllm.cli import app

runner = CliRunner()


def localllm(
    *args: str, stdin: bytes | str = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input=data,
        capture_output=True,
        timeout=300,
        env=dict(os.environ),
        cwd=cwd,
    )


def jsonl(text: str | bytes) -> list[dict]:
    if isinstance(text, bytes):
        text = text.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_arguments_to_jsonl_off_a_terminal(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["embed", "-m", str(tiny_bert), "hello world", "the man"])
    assert result.exit_code == 0, result.output
    rows = jsonl(result.stdout)
    assert [r["text"] for r in rows] == ["hello world", "the man"]
    for r in rows:
        assert len(r["embedding"]) == 32
        assert abs(np.linalg.norm(r["embedding"]) - 1.0) < 1e-5


def test_stdin_lines_skip_blank_ones(tiny_bert: Path) -> None:
    result = runner.invoke(
        app, ["embed", "-m", str(tiny_bert)], input=b"hello\n\nworld\r\n   \nthe end\n"
    )
    assert result.exit_code == 0, result.output
    assert [r["text"] for r in jsonl(result.stdout)] == ["hello", "world", "the end"]


def test_a_lone_dash_reads_stdin(tiny_bert: Path) -> None:
    """`... | localllm embed -m M -` embeds the piped lines, as `run -` reads its prompt from
    stdin, rather than a vector of the text "-"."""
    result = runner.invoke(app, ["embed", "-m", str(tiny_bert), "-"], input=b"hello\nworld\n")
    assert result.exit_code == 0, result.output
    assert [r["text"] for r in jsonl(result.stdout)] == ["hello", "world"]


def test_json_format_and_no_normalize(tiny_bert: Path) -> None:
    result = runner.invoke(
        app, ["embed", "-m", str(tiny_bert), "--format", "json", "--no-normalize", "a", "b c"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"] == "tiny-bert" and doc["dimension"] == 32
    assert doc["pooling"] == "mean" and doc["normalized"] is False
    assert doc["prompt_tokens"] == 3 + 4
    assert len(doc["embeddings"]) == 2
    norms = [np.linalg.norm(e["embedding"]) for e in doc["embeddings"]]
    assert all(abs(n - 1.0) > 1e-3 for n in norms)


def test_npy_matrix_written_to_a_file(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    result = runner.invoke(
        app, ["embed", "-m", str(tiny_bert), "--format", "npy", "-o", str(out), "a", "b", "c"]
    )
    assert result.exit_code == 0, result.output
    matrix = np.load(out)
    assert matrix.dtype == np.float32 and matrix.shape == (3, 32)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]


def test_output_to_a_directory_is_a_usage_error(tiny_bert: Path, tmp_path: Path) -> None:
    """`-o SOMEDIR` is one error line and exit 2 (it was a traceback from the final rename),
    and no partial file is left beside it."""
    proc = localllm("embed", "-m", str(tiny_bert), "-f", "npy", "-o", str(tmp_path), "a")
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert stderr.startswith("error: cannot write") and "directory" in stderr, stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_batch_and_pooling_flags_change_nothing_but_what_they_say(tiny_bert: Path) -> None:
    texts = ["hello world", "the man is eating", "a horse"]
    base = jsonl(runner.invoke(app, ["embed", "-m", str(tiny_bert), *texts]).stdout)
    one = jsonl(runner.invoke(app, ["embed", "-m", str(tiny_bert), "--batch", "1", *texts]).stdout)
    cls = runner.invoke(app, ["embed", "-m", str(tiny_bert), "--pooling", "cls", *texts])
    assert cls.exit_code == 0, cls.output
    for a, b in zip(base, one, strict=True):
        assert np.allclose(a["embedding"], b["embedding"], atol=1e-5)
    assert not np.allclose(base[0]["embedding"], jsonl(cls.stdout)[0]["embedding"], atol=1e-3)


def test_terminal_summary(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("localllm.cli.embed._tty", lambda: True)
    result = runner.invoke(app, ["embed", "-m", str(tiny_bert), "hello world"])
    assert result.exit_code == 0, result.output
    assert "32 dimensions" in result.stdout and "mean pooling" in result.stdout
    assert "norm 1.000" in result.stdout and "hello world" in result.stdout


def test_non_utf8_line_is_named(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    proc = localllm(
        "embed", "-m", str(tiny_bert), "-f", "npy", "-o", str(out), stdin=b"ok\nfine\n\xff\xfe\n"
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("error: line 3 of stdin is not UTF-8")
    assert "Traceback" not in err
    assert not out.exists()


def test_empty_input_is_a_usage_error(tiny_bert: Path) -> None:
    proc = localllm("embed", "-m", str(tiny_bert), stdin=b"\n  \n")
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: nothing to embed")


def test_ten_megabyte_line_fails_cleanly_and_writes_nothing(
    tiny_bert: Path, tmp_path: Path
) -> None:
    huge = b"short line\n" + b"the man is eating food " * (10 * 1024 * 1024 // 23) + b"\n"
    out = tmp_path / "vectors.npy"
    out.write_bytes(b"previous contents")
    proc = localllm("embed", "-m", str(tiny_bert), "-f", "npy", "-o", str(out), stdin=huge)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("error: line 2 of stdin is at least")
    assert "--truncate" in err and "Traceback" not in err
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy"]

    proc = localllm(
        "embed", "-m", str(tiny_bert), "-f", "npy", "-o", str(out), "--truncate", stdin=huge
    )
    assert proc.returncode == 0, proc.stderr
    assert "truncated 1 input" in proc.stderr.decode()
    assert np.load(out).shape == (2, 32)


def test_bad_options_are_usage_errors(tiny_bert: Path) -> None:
    for args, message in [
        (["-f", "npy", "x"], "needs -o"),
        (["-f", "xml", "x"], "unknown format"),
        (["--batch", "0", "x"], "--batch"),
        (["--pooling", "max", "x"], "unknown pooling"),
        (["-k", "3", "x"], "go with --rank"),
    ]:
        proc = localllm("embed", "-m", str(tiny_bert), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        err = proc.stderr.decode()
        assert err.startswith("error:") and message in err.replace("npy writes", "needs -o"), err


def test_no_model_points_at_the_catalog_alias() -> None:
    proc = localllm("embed", "hello")
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "no embedding model given" in err and "localllm pull nomic-embed-text" in err


def test_help_loads_neither_numpy_nor_the_embedding_core() -> None:
    code = (
        "import sys; from localllm.cli import app; "
        "print([m for m in ('numpy', 'localllm.embeddings') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_catalog_has_an_embedding_alias() -> None:
    entry = catalog.lookup("nomic-embed-text")
    assert entry is not None
    assert entry.filename.endswith(".gguf") and len(entry.sha256) == 64
    assert entry.repo == "nomic-ai/nomic-embed-text-v1.5-GGUF"


def test_run_and_chat_refuse_an_encoder(tiny_bert: Path) -> None:
    proc = localllm("run", "-m", str(tiny_bert), "hello")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "encoder-only" in err and "localllm embed" in err and "Traceback" not in err
    from localllm.errors import UsageError
    from localllm.loading import refuse_encoder
    from localllm.modelfile import read_info

    with pytest.raises(UsageError, match="encoder-only") as info:
        refuse_encoder(read_info(tiny_bert))  # the check chat and the TUI load through
    assert "localllm embed" in (info.value.hint or "")


def test_chat_refuses_an_encoder_before_the_screen_opens(tiny_bert: Path, tmp_path: Path) -> None:
    """`localllm chat -m EMBEDDER` in a terminal: one error line and exit 2, no app started
    (run and chat resolve and check the model through one function, loading.model_to_generate);
    a file that is no GGUF is refused the same way, exit 3."""
    proc = in_a_terminal("chat", "-m", str(tiny_bert))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "encoder-only" in lines[0]
    assert "localllm embed" in lines[0]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    proc = in_a_terminal("chat", "-m", str(junk))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_show_covers_embedding_models(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["show", str(tiny_bert)])
    assert result.exit_code == 0, result.output
    assert "32 dimensions, mean pooling" in result.stdout
    doc = json.loads(runner.invoke(app, ["show", "--json", str(tiny_bert)]).stdout)
    assert doc["embedding"] == {"dimension": 32, "pooling": "mean"}


def test_show_leaves_chat_models_alone(tiny_model: Path) -> None:
    doc = json.loads(runner.invoke(app, ["show", "--json", str(tiny_model)]).stdout)
    assert "embedding" not in doc


def test_chat_model_note_on_stderr(tiny_model: Path) -> None:
    proc = localllm("embed", "-m", str(tiny_model), "hello")
    assert proc.returncode == 0, proc.stderr
    assert "not trained for similarity" in proc.stderr.decode()
    assert len(jsonl(proc.stdout)[0]["embedding"]) == 64


# -- with the real model ---------------------------------------------------------------------

DOC = """A man is riding a horse.
A man is eating a piece of bread.
The stock market fell sharply today.
Someone is playing a guitar on stage.
"""


@pytest.mark.slow
def test_rank_lines_of_a_file(minilm_f16: Path, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC, encoding="utf-8")
    result = runner.invoke(
        app,
        ["embed", "-m", str(minilm_f16), "--rank", "A man is eating food.", str(doc), "-k", "2"],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    score, number, text = lines[0].split(maxsplit=2)
    assert text == "A man is eating a piece of bread." and number == "2"
    assert float(score) > float(lines[1].split()[0])

    as_json = runner.invoke(
        app,
        ["embed", "-m", str(minilm_f16), "--rank", "horses", "-", "-f", "jsonl"],
        input=DOC.encode(),
    )
    assert as_json.exit_code == 0, as_json.output
    rows = jsonl(as_json.stdout)
    assert len(rows) == 4 and rows[0]["line"] == 1 and "horse" in rows[0]["text"]
    assert rows == sorted(rows, key=lambda r: -r["score"])


@pytest.mark.slow
def test_rank_paragraphs(minilm_f16: Path, tmp_path: Path) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text(
        "Bread is baked from flour,\nwater and yeast.\n\n"
        "Horses are ridden and raced;\nthey eat hay.\n\n"
        "Guitars have six strings.\n",
        encoding="utf-8",
    )
    result = runner.invoke(
        app,
        [
            "embed",
            "-m",
            str(minilm_f16),
            "--rank",
            "make bread",
            str(doc),
            "--paragraphs",
            "-fjson",
        ],
    )
    assert result.exit_code == 0, result.output
    doc_json = json.loads(result.stdout)
    top = doc_json["results"][0]
    assert top["line"] == 1 and top["text"] == "Bread is baked from flour,\nwater and yeast."
    assert [r["line"] for r in doc_json["results"]].count(4) == 1
    assert len(doc_json["results"]) == 3


def test_ctx_option_bounds_the_longest_text(tiny_bert: Path) -> None:
    proc = localllm("embed", "-m", str(tiny_bert), "--ctx", "16", "hello", "hello " * 20)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: text 2 of the arguments is 22 tokens")
    assert "16 tokens" in proc.stderr.decode()


def test_undecodable_argument_is_replaced_with_a_warning(tiny_bert: Path) -> None:
    arg = b"hello \xff world".decode("utf-8", "surrogateescape")
    proc = localllm("embed", "-m", str(tiny_bert), arg)
    assert proc.returncode == 0, proc.stderr
    assert "not valid UTF-8" in proc.stderr.decode()
    assert jsonl(proc.stdout)[0]["text"] == "hello \ufffd world"

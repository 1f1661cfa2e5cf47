"""Text inputs that are not valid UTF-8: one rule (invalid bytes become U+FFFD, one warning on
stderr) for the prompt argument, stdin, --system, --stop, --template-file and a profile's
system_prompt, and for ``tokenize``'s TEXT. The CLI cases run as real subprocesses: arguments
go in as raw bytes (``os.fsencode``), exactly as a shell passes ``"$(printf '\\xff')"``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localllm import paths
from localllm.textin import REPLACEMENT, TextInputs, clean_text, decode_bytes


def expected(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- the pure helper ---------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_bytes_and_the_same_bytes_as_an_argument_decode_alike(data: bytes) -> None:
    valid = True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    text, replaced = decode_bytes(data)
    assert text == expected(data) and replaced is not valid
    # argv reaches Python with undecodable bytes as lone surrogates (surrogateescape).
    arg, replaced = clean_text(os.fsdecode(data))
    assert arg == expected(data) and replaced is not valid
    arg.encode("utf-8")  # a tokenizer can always encode it


@given(st.text(alphabet=st.characters(codec=None), max_size=20))
def test_any_str_comes_out_encodable(text: str) -> None:
    cleaned, replaced = clean_text(text)
    cleaned.encode("utf-8")
    assert replaced == (cleaned != text)


def test_lone_surrogates_from_escapes_and_one_warning() -> None:
    inputs = TextInputs()
    assert inputs.text("a\ud800b", "--system") == f"a{REPLACEMENT}b"
    assert inputs.text("ok", "the prompt argument") == "ok"
    assert inputs.data(b"x\xff", "stdin") == f"x{REPLACEMENT}"
    assert inputs.data(b"\xfe", "stdin") == REPLACEMENT
    assert inputs.replaced == ["--system", "stdin"]
    warning = inputs.warning()
    assert warning is not None and warning.count("\n") == 0
    assert warning.startswith("warning: --system and stdin are not valid UTF-8")
    assert TextInputs().warning() is None


# -- through the command line ------------------------------------------------------------------


def localllm(
    *args: str | bytes, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def warnings_of(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [
        line
        for line in proc.stderr.decode("utf-8", "replace").splitlines()
        if "not valid UTF-8" in line
    ]


def test_the_issue_examples_run_without_a_traceback(tiny_model: Path) -> None:
    model = str(tiny_model)
    piped = localllm("run", "-m", model, "--show-prompt", stdin=b"\xff\xfe x")
    arg = localllm("run", "-m", model, "--show-prompt", b"abc\xff")
    system = localllm("run", "-m", model, "--show-prompt", "-s", b"\xff", "hi")
    for proc, where in ((piped, "stdin"), (arg, "the prompt argument"), (system, "--system")):
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert len(warnings_of(proc)) == 1 and where in warnings_of(proc)[0]
    assert f"user\n{REPLACEMENT}{REPLACEMENT} x<|im_end|>" in piped.stdout.decode()
    assert f"user\nabc{REPLACEMENT}<|im_end|>" in arg.stdout.decode()
    assert f"system\n{REPLACEMENT}<|im_end|>" in system.stdout.decode()
    # A real generation with such a prompt works too (the tokenizer gets U+FFFD).
    gen = localllm("run", "-m", model, "-n", "3", "--temperature", "0", b"abc\xff")
    assert gen.returncode == 0, gen.stderr.decode("utf-8", "replace")


def test_profile_system_prompt_and_template_file(tiny_model: Path, isolated_home: Path) -> None:
    profiles = paths.profiles_dir()
    profiles.mkdir(parents=True, exist_ok=True)
    # A YAML escape can put a lone surrogate in a profile.
    (profiles / "odd.yaml").write_text('name: odd\nsystem_prompt: "be \\udcff brief"\n')
    template = isolated_home / "t.jinja"
    template.write_bytes(
        b"{% for m in messages %}[\xff{{ m['content'] }}]{% endfor %}"
        b"{% if add_generation_prompt %}>{% endif %}"
    )
    proc = localllm(
        "run",
        "-m",
        str(tiny_model),
        "-p",
        "odd",
        "--template-file",
        str(template),
        "--show-prompt",
        "hi",
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert proc.stdout.decode() == f"[{REPLACEMENT}be {REPLACEMENT} brief][{REPLACEMENT}hi]>"
    (line,) = warnings_of(proc)
    assert "system_prompt of profile 'odd'" in line and str(template) in line


def test_tokenize_text_argument(tiny_model: Path) -> None:
    proc = localllm("tokenize", str(tiny_model), b"a\xffb", "--json")
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert len(warnings_of(proc)) == 1


_NO_NUL = st.binary(min_size=0, max_size=24).map(lambda b: b.replace(b"\0", b""))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arg=_NO_NUL, piped=_NO_NUL, system=_NO_NUL, stop=_NO_NUL)
def test_arbitrary_bytes_through_every_input(
    tiny_model: Path, arg: bytes, piped: bytes, system: bytes, stop: bytes
) -> None:
    """Arbitrary bytes as the prompt argument, stdin, --system and --stop, in one run: it
    succeeds, shows each as its U+FFFD-decoded text, and warns at most once."""
    proc = localllm(
        "run",
        "-m",
        str(tiny_model),
        "--show-prompt",
        "-s",
        b"S" + system,
        "--stop",
        b"T" + stop,
        b"P" + arg,
        stdin=b"I" + piped,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    out = proc.stdout.decode("utf-8")
    stdin_text = expected(b"I" + piped).replace("\r\n", "\n").replace("\r", "\n")
    assert f"system\n{expected(b'S' + system)}<|im_end|>" in out
    assert f"user\n{expected(b'P' + arg)}\n\n{stdin_text}<|im_end|>" in out
    invalid = [b for b in (arg, piped, system, stop) if expected(b).encode() != b]
    assert len(warnings_of(proc)) == (1 if invalid else 0)


@pytest.mark.parametrize("kind", ["dir", "empty-dir"])
def test_show_a_directory_says_it_is_one(tmp_path: Path, tiny_model: Path, kind: str) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    if kind == "dir":
        (folder / "a.gguf").write_bytes(tiny_model.read_bytes())
    proc = localllm("show", str(folder))
    err = proc.stderr.decode()
    assert proc.returncode == 3
    assert err.startswith(f"error: {folder} is a directory, not a model file (")
    assert ("a.gguf" in err) == (kind == "dir")
    assert err.count("\n") == 1

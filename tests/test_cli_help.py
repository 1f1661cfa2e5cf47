"""Every command's ``--help`` reads as a user's manual: option values are named for what they
are (``--stop TEXT``, ``--ctx INTEGER``, ``--alias NAME=MODEL``), never Python types such as
``<str>`` or ``<list[str]>`` (Typer 0.29's rendering), and the usage line names arguments
as ``MODEL`` / ``[PROMPT]``, not ``{model}``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from localllm.cli import typer_command


def _commands() -> list[tuple[str, ...]]:
    group = typer_command()
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        found.append((name,))
        for sub in getattr(command, "commands", {}):
            found.append((name, sub))
    return found


@pytest.mark.parametrize("words", _commands(), ids=" ".join)
def test_help_names_no_python_types(words: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", *words, "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: localllm" in proc.stdout
    options = proc.stdout.partition("Options:")[2]
    assert options, proc.stdout
    assert "list[" not in options, options
    for python_type in ("<str>", "<int>", "<float>", "<bool>", "<path>"):
        assert python_type not in proc.stdout, python_type  # TEXT, INTEGER, FLOAT, PATH
    usage = proc.stdout.splitlines()[0]
    assert "{" not in usage and usage == usage.replace("[prompt]", ""), usage  # MODEL, [PROMPT]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_localllm_and_llama_cpp_python(flag: str) -> None:
    """`localllm --version`: ours first, then llama-cpp-python's with its build's backends,
    without importing llama_cpp (as fast as --help)."""
    from importlib import metadata

    from localllm import __version__

    code = (
        "import sys; from localllm.cli import main\n"
        "try:\n    main([sys.argv[1]])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'llama_cpp' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, flag], capture_output=True, text=True, timeout=120
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == f"localllm {__version__}", proc.stdout + proc.stderr
    assert lines[1].startswith(f"llama-cpp-python {metadata.version('llama-cpp-python')} ")
    assert "CPU" in lines[1]  # every build carries the CPU backend
    assert lines[-1] == "exit 0 False"


def test_a_command_line_builds_only_the_command_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``localllm run ...`` turns only run's signature into click parameters (Typer does it
    for every command otherwise, on every start); help, a typo and completion get them all,
    and the app's own list of commands is left as it was."""
    for key in [k for k in __import__("os").environ if k.endswith("_COMPLETE")]:
        monkeypatch.delenv(key)
    everything = set(typer_command().commands)
    assert {"run", "chat", "serve", "profile", "list"} <= everything
    assert set(typer_command(["run", "-n", "1", "hi"]).commands) == {"run"}
    assert set(typer_command(["profile", "list"]).commands) == {"profile"}
    assert set(typer_command(["list"]).commands) == {"list"}  # named in @app.command("list")
    assert set(typer_command(["--help"]).commands) == everything
    assert set(typer_command(["runn"]).commands) == everything  # "did you mean 'run'?"
    monkeypatch.setenv("_LOCALLLM_COMPLETE", "complete_bash")
    assert set(typer_command(["run"]).commands) == everything
    monkeypatch.delenv("_LOCALLLM_COMPLETE")
    assert set(typer_command().commands) == everything

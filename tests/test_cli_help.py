"""Every command's ``--help`` reads as a user's manual: option values are named for what they
are (``--stop TEXT``, ``--alias NAME=MODEL``), never Python types such as ``<list[str]>``
(Typer's rendering of a repeatable option; positional arguments still show their type, a
known gap)."""

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

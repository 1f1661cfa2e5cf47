"""Shell completion: the completers on their own, and real completions through the environment
variables click's completion scripts set (``_LOCALLLM_COMPLETE``, ``COMP_WORDS``,
``COMP_CWORD``), in a subprocess that must not import llama_cpp or the TUI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localllm import paths, store
from localllm.cli._app import complete_mode, complete_model, complete_profile


def names(items: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in items]


def test_complete_mode() -> None:
    assert names(complete_mode("")) == ["reasoning", "instant"]
    assert names(complete_mode("in")) == ["instant"]
    assert complete_mode("x") == []


def test_complete_model_names_and_aliases(tiny_model: Path) -> None:
    assert "smollm2-135m" in names(complete_model(""))  # the catalog alias
    store.import_model(tiny_model, name="tiny-one")
    store.import_model(tiny_model, name="Tiny-Two")
    assert names(complete_model("tiny")) == ["tiny-one", "Tiny-Two"]
    assert names(complete_model("TINY-o")) == ["tiny-one"]
    assert complete_model("nothing-like-this") == []


def test_complete_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.gguf").write_bytes(b"")
    (tmp_path / "models" / "notes.txt").write_text("")
    (tmp_path / "models" / "deeper").mkdir()
    monkeypatch.chdir(tmp_path)
    assert names(complete_model("./models/")) == ["./models/a.gguf", "./models/deeper/"]
    assert names(complete_model(f"{tmp_path}/mod")) == [f"{tmp_path}/models/"]
    assert complete_model("./missing/") == []


def test_complete_profile(isolated_home: Path) -> None:
    builtins = names(complete_profile(""))
    assert {"default", "precise", "creative"} <= set(builtins)
    folder = paths.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pirate.yaml").write_text("name: pirate\ndescription: Talks like a pirate\n")
    assert complete_profile("pir") == [("pirate", "Talks like a pirate")]
    assert complete_profile("zzz") == []


def complete(words: str, *, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """What bash's completion function gets for the command line ``words`` (cursor at the end;
    a trailing space means a new, empty word)."""
    parts = words.split(" ")
    env = {
        **os.environ,
        "_LOCALLLM_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "localllm"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_real_completion_of_commands_modes_profiles_and_models(tiny_model: Path) -> None:
    store.import_model(tiny_model, name="tiny-chat")
    assert complete("localllm pro").stdout.split() == ["profile"]
    assert complete("localllm run --mode ").stdout.split() == ["reasoning", "instant"]
    assert "precise" in complete("localllm run -p ").stdout.split()
    assert complete("localllm chat -m tiny").stdout.split() == ["tiny-chat"]
    assert complete("localllm show ti").stdout.split() == ["tiny-chat"]
    assert complete("localllm profile show pre").stdout.split() == ["precise"]
    assert complete("localllm serve -m tiny").stdout.split() == ["tiny-chat"]
    assert "--reasoning-budget" in complete("localllm run --reas").stdout.split()


def test_completion_imports_no_engine_tui_or_network() -> None:
    imported = complete("localllm run -m ", importtime=True).stderr
    assert " typer\n" in imported  # the format this test reads
    heavy = ("llama_cpp", "textual", "huggingface_hub", "starlette", "uvicorn")
    heavy += ("localllm.engine", "localllm.backend", "localllm.hub")
    for module in heavy:
        assert f" {module}\n" not in imported and f" {module}." not in imported, module


def test_show_completion_prints_a_script() -> None:
    # Typer detects the shell from the parent process; its test switch takes it as a value.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "_LOCALLLM_COMPLETE=complete_bash" in proc.stdout

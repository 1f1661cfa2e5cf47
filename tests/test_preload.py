"""Loading a run's model while its command line is read (localllm.preload): the record, the
claim that takes the early model only when it is the same file loaded the same way, and the
console script around it."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localllm import loading, paths, preload
from localllm.engine import TextEvent
from localllm.profiles import Profile


@pytest.fixture(autouse=True)
def fresh_preload() -> Iterator[None]:
    preload.reset()
    yield
    preload.reset()


def address(model: object) -> int:
    return ctypes.cast(model, ctypes.c_void_p).value or 0


def answer(engine: object, prompt: str = "hello") -> str:
    profile = Profile(temperature=0.0, max_tokens=8)
    text = engine.render([{"role": "user", "content": prompt}])  # type: ignore[attr-defined]
    events = engine.generate(text, profile)  # type: ignore[attr-defined]
    return "".join(e.text for e in events if isinstance(e, TextEvent))


def test_the_key_is_the_run_command_lines_model_and_profile(tmp_path: Path) -> None:
    cwd = str(tmp_path)
    plain = preload.run_key(["run", "-n", "1", "hello"], cwd)
    assert plain == json.dumps([None, None, None])
    assert preload.run_key(["run", "--temperature", "0", "other prompt"], cwd) == plain
    named = json.dumps(["m.gguf", None, cwd])
    for argv in (["run", "-m", "m.gguf", "hi"], ["run", "--model=m.gguf"], ["run", "-mm.gguf"]):
        assert preload.run_key(argv, cwd) == named
    assert preload.run_key(["run", "-p", "fast", "hi"], cwd) == json.dumps([None, "fast", cwd])
    assert preload.run_key(["run", "--", "-m", "x"], cwd) == plain  # a prompt, not an option
    # not a run, or a run whose load a record cannot stand for
    for argv in (
        [],
        ["chat"],
        ["serve", "-m", "x"],
        ["run", "-v", "hi"],
        ["run", "--verbose"],
        ["run", "--show-prompt", "hi"],
        ["run", "--gpu-layers", "4", "hi"],
        ["run", "--rpc=h:1", "hi"],
        ["run", "--draft-model", "d", "hi"],
        ["run", "-i", "a.png", "hi"],
        ["run", "--help"],
        ["run", "-m"],
    ):
        assert preload.run_key(argv, cwd) is None, argv


def test_an_isolated_run_is_never_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALLLM_ISOLATE", "1")
    assert preload.run_key(["run", "hi"]) is None


def test_a_run_is_remembered_then_loaded_early_and_claimed(tiny_model: Path) -> None:
    argv = ["run", "-m", str(tiny_model), "hello"]
    preload.start(argv)  # nothing recorded yet: nothing starts
    assert not preload.loading()
    first = loading.open_engine(tiny_model, Profile())
    try:
        expected = answer(first)
    finally:
        first.close()
    record = json.loads((paths.cache_dir() / "preload.json").read_text())
    entry = record["runs"][preload.run_key(argv)]
    assert entry["path"] == str(tiny_model.resolve())
    assert entry["params"]["use_mmap"] is True

    preload.reset()
    preload.start(argv)
    pending = preload._pending
    assert pending is not None and pending.thread is not None
    engine = loading.open_engine(tiny_model, Profile())
    try:
        assert not preload.loading()  # claimed
        assert pending.model is not None
        assert address(engine.native.model) == address(pending.model)
        assert answer(engine) == expected
    finally:
        engine.close()


def test_a_changed_file_or_another_load_is_not_given_the_early_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_model.read_bytes())
    argv = ["run", "-m", str(model), "hello"]
    preload._key = preload.run_key(argv)
    loading.open_engine(model, Profile()).close()  # remembered

    # the file changed after the early load began: a fresh load of the new version
    preload.reset()
    preload.start(argv)
    pending = preload._pending
    assert pending is not None
    os.utime(model, ns=(1, 1))
    engine = loading.open_engine(model, Profile())
    try:
        assert pending.thread is not None
        pending.thread.join()
        assert address(engine.native.model) != address(pending.model)
        assert answer(engine)
    finally:
        engine.close()

    # a vocabulary-only load does not take a full model
    preload.reset()
    preload._key = preload.run_key(argv)
    loading.open_engine(model, Profile()).close()  # remembered again (new mtime)
    preload.reset()
    preload.start(argv)
    pending = preload._pending
    assert pending is not None
    vocab = loading.open_engine(model, Profile(), vocab_only=True)
    try:
        assert not preload.loading()
        assert pending.thread is not None
        pending.thread.join()
        assert address(vocab.native.model) != address(pending.model)
    finally:
        vocab.close()


def test_a_damaged_record_starts_nothing(tiny_model: Path) -> None:
    argv = ["run", "-m", str(tiny_model), "hello"]
    key = preload.run_key(argv)
    record = paths.cache_dir() / "preload.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    entry = {"path": str(tiny_model), "identity": [], "params": {}}
    for text in (
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"version": 99, "runs": {key: entry}}),
        json.dumps({"version": 1, "runs": {key: "x"}}),
        json.dumps({"version": 1, "runs": {key: entry}}),  # identity and params do not match
        json.dumps(
            {"version": 1, "runs": {key: dict(entry, params={"n_gpu_layers": "0", "use_mmap": 1})}}
        ),
    ):
        record.write_text(text)
        preload.reset()
        preload.start(argv)
        assert not preload.loading(), text


def test_at_most_eight_command_lines_are_remembered(tiny_model: Path, tmp_path: Path) -> None:
    for i in range(10):
        preload.reset()
        preload._key = preload.run_key(["run", "-p", f"p{i}", "hi"], str(tmp_path))
        loading.open_engine(tiny_model, Profile()).close()
    runs = json.loads((paths.cache_dir() / "preload.json").read_text())["runs"]
    assert len(runs) == preload.MAX_KEYS
    assert json.loads(list(runs)[-1])[1] == "p9"  # the latest kept, the oldest gone
    assert all(json.loads(key)[1] not in ("p0", "p1") for key in runs)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "LOCALLLM_ISOLATE"},
    )


def test_the_console_script_answers_the_same_with_its_model_loaded_early(
    tiny_model: Path, tmp_path: Path
) -> None:
    args = ("run", "-m", str(tiny_model), "--temperature", "0", "-n", "8", "hello")
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (paths.cache_dir() / "preload.json").is_file()
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and again.stdout.strip()
    assert again.stderr == first.stderr

    # a mistake on the command line still ends with its one-line error and exit code while
    # the early load runs (the process waits for it before it exits)
    bad = cli("run", "-m", str(tiny_model), "--temperature", "warm", "hello", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: Invalid value for '--temperature'")
    assert len(bad.stderr.splitlines()) == 1


def test_the_console_script_freezes_its_objects_before_exit(tmp_path: Path) -> None:
    """The interpreter's last collection is skipped (gc.freeze) once the command returned."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "sys.argv = ['localllm', '--version']\n"
        "from localllm.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "frozen True" in proc.stdout

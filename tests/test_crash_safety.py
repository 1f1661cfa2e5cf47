"""Nothing lost: `localllm chat` killed with SIGKILL mid-answer leaves its conversation intact
up to the last finished turn, and the next session can resume it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tui_terminal import REPO, Tmux, _answer_after, _status_line

from localllm import conversations, paths

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux(f"localllm-crash-{uuid.uuid4().hex[:8]}", "chat")
    yield session
    session.run("kill-server", check=False)


def saved_answers() -> int:
    return sum(
        1
        for f in paths.conversations_dir().glob("*.jsonl")
        for line in f.read_text().splitlines()
        if '"assistant"' in line
    )


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_answer_keeps_every_finished_turn(
    tmux: Tmux, starter_model: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    env = {
        "LOCALLLM_HOME": os.environ["LOCALLLM_HOME"],
        "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    chat = f"{shlex.quote(sys.executable)} -m localllm chat -m {shlex.quote(str(starter_model))}"
    command = (
        f"echo $$ > {shlex.quote(str(pidfile))}; exec env -u COLUMNS -u LINES {exports} {chat}"
    )
    tmux.run(
        "new-session",
        "-d",
        "-s",
        tmux.name,
        "-x",
        "100",
        "-y",
        "30",
        f"sh -c {shlex.quote(command)}",
    )
    wait_for(pidfile.exists, 30, "the chat process")
    tmux.wait(
        lambda s: "SmolLM2" in _status_line(s) and "loading" not in _status_line(s),
        120,
        "the model to load",
    )

    first = "Name three colours."
    tmux.keys(first, literal=True)
    tmux.keys("Enter")
    tmux.wait(lambda s: _answer_after(s, first), 120, "the first answer")
    wait_for(lambda: saved_answers() == 1, 120, "the first answer to be saved")

    second = "Write a very long story about a dragon and a lighthouse."
    tmux.keys(second, literal=True)
    tmux.keys("Enter")
    tmux.wait(lambda s: _answer_after(s, second), 120, "the second answer to start")
    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)

    [summary] = conversations.list_conversations()
    convo = conversations.load(summary.id)
    history = convo.history()
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == first
    assert history[1]["content"].strip()
    # The file is intact JSON Lines: at most a torn last line, which reading skips.
    lines = convo.path.read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)
    assert any(first in line for line in lines)

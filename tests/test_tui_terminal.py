"""`localllm chat` in a real terminal: tmux runs it on the starter model, keys go in with
``send-keys`` and the screen comes back with ``capture-pane``.

Needs tmux (``.ci/run`` installs it); skipped when it is missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

REPO = Path(__file__).resolve().parent.parent


class Tmux:
    """One tmux session on a private server."""

    def __init__(self, socket: str, name: str) -> None:
        self.socket = socket
        self.name = name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check
        )

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", self.name, check=False)
        return result.stdout

    def wait(self, condition: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if condition(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(f"localllm-test-{uuid.uuid4().hex[:8]}", "chat")
    yield session
    session.run("kill-server", check=False)


def _answer_after(screen: str, question: str) -> bool:
    """Whether some answer text shows below the line holding ``question``."""
    lines = screen.splitlines()
    asked = [i for i, line in enumerate(lines) if question in line]
    if not asked:
        return False
    below = lines[asked[-1] + 1 :]
    return any(line.startswith(" █ ") and line[3:].strip() for line in below[:4])


def _status_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if "│" in line and "ctx" in line]
    return lines[-1] if lines else ""


def test_chat_in_a_real_terminal(tmux: Tmux, starter_model: Path, tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-code"
    env = {
        "LOCALLLM_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Temperature 0: the answers below are the same on every run.
    profiles = tmp_path / "home" / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "steady.yaml").write_text("temperature: 0\nseed: 1\nmax_tokens: 512\n")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    chat = (
        f"{shlex.quote(sys.executable)} -m localllm chat -m {shlex.quote(str(starter_model))}"
        " -p steady"
    )
    # COLUMNS / LINES from the test runner's environment would override the pane's real size.
    command = (
        f"cd {shlex.quote(str(tmp_path))} && env -u COLUMNS -u LINES {exports} {chat};"
        f" echo $? > {exit_file}"
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

    # Loaded: the status bar names the model and nothing is loading.
    tmux.wait(
        lambda s: "SmolLM2" in _status_line(s) and "loading" not in _status_line(s),
        120,
        "the model to load",
    )

    # A question, and its streamed answer.
    tmux.keys("What is the capital of France? Answer in one short sentence.", literal=True)
    tmux.keys("Enter")
    screen = tmux.wait(
        lambda s: "Paris" in s and "answering" not in _status_line(s), 120, "the answer"
    )
    size = tmux.run("display", "-p", "-t", tmux.name, "#{window_width}x#{window_height}").stdout
    assert "tok/s" in _status_line(screen) and "TTFT" in _status_line(screen), (size, screen)

    # A long answer (512 tokens at temperature 0), stopped with Esc as soon as it streams:
    # the partial stays, marked stopped.
    tmux.keys("Write a very long essay about the history of the Roman Empire.", literal=True)
    tmux.keys("Enter")
    tmux.wait(lambda s: "answering" in _status_line(s), 60, "the long answer to start")
    tmux.wait(lambda s: _answer_after(s, "Roman Empire."), 60, "the essay to stream")
    tmux.keys("Escape")
    tmux.wait(
        lambda s: (
            "stopped" in s
            and "answering" not in _status_line(s)
            and "stopping" not in _status_line(s)
        ),
        60,
        "the answer to stop",
    )
    assert _answer_after(tmux.screen(), "Roman Empire.")  # the partial answer is still there

    # The next prompt works at once, even with bytes that are not UTF-8 in it (a paste from a
    # Latin-1 terminal): they show as U+FFFD, as `localllm run` reads them, instead of ending
    # the app with a traceback.
    tmux.run("send-keys", "-t", tmux.name, "-H", "ff", "fe")
    tmux.keys(" Say hello.", literal=True)
    tmux.wait(lambda s: "\ufffd\ufffd Say hello." in s, 30, "the typed prompt")
    tmux.keys("Enter")
    tmux.wait(lambda s: "answering" in _status_line(s), 30, "the next answer to start")
    tmux.wait(lambda s: "answering" not in _status_line(s), 120, "the next answer to end")

    # Ctrl-Q quits with exit code 0.
    tmux.keys("C-q")
    deadline = time.monotonic() + 30
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exit_file.exists(), f"the app did not quit; the screen:\n{tmux.screen()}"
    assert exit_file.read_text().strip() == "0"
    saved = list((tmp_path / "home" / "data" / "conversations").glob("*.jsonl"))
    assert len(saved) == 1
    transcript = saved[0].read_text()
    assert "Paris" in transcript and '"stopped": true' in transcript
    assert "\ufffd\ufffd Say hello." in transcript

"""Commands that need no network open no connection, and so never wait on a timeout.

Two guards at once: HF_ENDPOINT points at a loopback port that records every connection, and
the process runs with outgoing sockets refused and logged (tests/netguard.py). Offline mode is
*not* switched on: the commands must stay off the network by themselves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

GUARD = Path(__file__).with_name("netguard.py")


@pytest.fixture
def recorder() -> Iterator[tuple[str, Callable[[], list[str]]]]:
    """A loopback endpoint and a function listing who connected to it.

    No thread races the child: connections wait in the listening socket's backlog, and the
    test drains the backlog once the command has exited, so a connection made at its very end
    is seen too.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.setblocking(False)

    def drain() -> list[str]:
        seen = []
        while True:
            try:
                conn, peer = server.accept()
            except BlockingIOError:
                return seen
            seen.append(repr(peer))
            conn.close()

    yield f"http://127.0.0.1:{server.getsockname()[1]}", drain
    server.close()


def guarded(
    tmp_path: Path, endpoint: str, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "connections.log"
    log.write_text("")
    env = {**os.environ, "HF_ENDPOINT": endpoint, **(env or {})}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, str(GUARD), str(log), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return proc, log.read_text()


COMMANDS = {
    "list": lambda m: ["list"],
    "list-json": lambda m: ["list", "--json"],
    "show": lambda m: ["show", m],
    "show-json": lambda m: ["show", m, "--json"],
    "run": lambda m: ["run", "-m", m, "hello", "-n", "4", "--temperature", "0"],
    "run-json": lambda m: ["run", "-m", m, "hello", "-n", "4", "--json"],
    "profile-list": lambda m: ["profile", "list"],
    "profile-show": lambda m: ["profile", "show", "reasoning"],
    "tokenize": lambda m: ["tokenize", m, "hello world"],
    "bench": lambda m: ["bench", m, "-p", "16", "-n", "4", "-r", "1"],
    "doctor": lambda m: ["doctor"],
    "doctor-json": lambda m: ["doctor", "--json"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_opens_no_connection(
    name: str,
    tiny_model: Path,
    tmp_path: Path,
    recorder: tuple[str, Callable[[], list[str]]],
) -> None:
    endpoint, connections = recorder
    proc, attempts = guarded(tmp_path, endpoint, *COMMANDS[name](str(tiny_model)))
    assert proc.returncode == 0, proc.stderr
    assert attempts == "", f"{name} tried to connect to: {attempts}"
    assert connections() == [], f"{name} connected to the recording endpoint"


def test_the_guard_really_catches_connections(
    tmp_path: Path, recorder: tuple[str, Callable[[], list[str]]]
) -> None:
    """Without offline mode and with no model, `run` must reach for the network: the guard
    sees it (so the tests above can fail) and the user gets a clear error, not a hang."""
    endpoint, _ = recorder
    no_pip_index = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
    proc, attempts = guarded(tmp_path, endpoint, "run", "hello", env=no_pip_index)
    assert attempts != ""
    assert proc.returncode == 4
    assert "Traceback" not in proc.stderr

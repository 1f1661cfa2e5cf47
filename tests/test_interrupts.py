"""Ctrl-C during ``run``: stop generating, keep what was produced, exit 130, no traceback.

No test races a timer against the work. The signal is sent once an event is seen: the first
bytes of the answer on stdout, or the child blocked reading its prompt from stdin. And the
child cannot finish before the signal lands: its stdout is a pipe shrunk to one page
(``F_SETPIPE_SZ``) that the test stops reading, while the answer it was asked for (greedy, so
the same on every run) is longer than that page, so it blocks on a full pipe instead of
exiting.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PIPE_BYTES = 4096
LONG = ("Write a very long story about the sea.", "-n", "4000", "--temperature", "0")


def small_pipe() -> tuple[int, int]:
    """A pipe holding at most one page, so a writer that is not read blocks early."""
    read_end, write_end = os.pipe()
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:  # pragma: no cover - not Linux
        pytest.skip("needs F_SETPIPE_SZ (Linux) to hold the child on a full pipe")
    fcntl.fcntl(write_end, setsize, PIPE_BYTES)
    return read_end, write_end


def start_run(model: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``localllm run`` with stdout on a one-page pipe; returns the process and the read end."""
    read_end, write_end = small_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", "-m", str(model), *args],
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    return proc, read_end


def read_at_least(fd: int, n: int) -> bytes:
    """Block until ``n`` bytes came (the first tokens of the answer)."""
    got = b""
    while len(got) < n:
        chunk = os.read(fd, 64)
        assert chunk, "the process ended before producing output"
        got += chunk
    return got


def finish(proc: subprocess.Popen[bytes], fd: int) -> tuple[bytes, bytes]:
    """Drain stdout and stderr to the end and wait for the exit."""
    rest = b""
    while chunk := os.read(fd, 1 << 16):
        rest += chunk
    os.close(fd)
    _, err = proc.communicate(timeout=120)
    return rest, err


def test_ctrl_c_stops_generation_keeps_output_and_exits_130(starter_model: Path) -> None:
    proc, fd = start_run(starter_model, *LONG)
    head = read_at_least(fd, 20)
    assert proc.poll() is None  # it cannot have finished: the pipe is full long before
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, fd)
    assert proc.returncode == 130
    text = (head + out).decode()
    assert len(text) >= 20 and text.endswith("\n")
    stderr = err.decode()
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


def test_second_ctrl_c_exits_at_once(starter_model: Path) -> None:
    proc, fd = start_run(starter_model, *LONG)
    read_at_least(fd, 20)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # a second one while the first is being handled
    _, err = finish(proc, fd)
    assert proc.returncode == 130
    assert b"Traceback" not in err


def blocked_reading_stdin(pid: int) -> bool:
    """Whether the process's main thread is inside read(0, …) (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == 0


def test_ctrl_c_while_loading_or_reading_the_prompt(tiny_model: Path) -> None:
    if not Path(f"/proc/{os.getpid()}/syscall").exists():  # pragma: no cover - not Linux
        pytest.skip("needs /proc/PID/syscall to see the child wait on stdin")
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", "-m", str(tiny_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Wait for the event (the child blocked on its stdin, which stays open), not a timer.
    deadline = time.monotonic() + 120
    while not blocked_reading_stdin(proc.pid):
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the child never started reading stdin"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err

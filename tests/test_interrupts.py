"""Ctrl-C during ``run``: stop generating, keep what was produced, exit 130, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_run(model: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localllm",
            "run",
            "-m",
            str(model),
            "Write a very long story about the sea.",
            "-n",
            "4000",
            "--temperature",
            "0",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_output(proc: subprocess.Popen[bytes], n: int = 20) -> bytes:
    assert proc.stdout is not None
    got = b""
    while len(got) < n:
        chunk = os.read(proc.stdout.fileno(), 64)
        assert chunk, "the process ended before producing output"
        got += chunk
    return got


def test_ctrl_c_stops_generation_keeps_output_and_exits_130(starter_model: Path) -> None:
    proc = start_run(starter_model)
    head = wait_for_output(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    text = (head + out).decode()
    assert len(text) >= 20 and text.endswith("\n")
    stderr = err.decode()
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


def test_second_ctrl_c_exits_at_once(starter_model: Path) -> None:
    proc = start_run(starter_model)
    wait_for_output(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"Traceback" not in err


def test_ctrl_c_while_loading_or_reading_the_prompt(tiny_model: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", "-m", str(tiny_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # the prompt is being read from stdin, which stays open
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"Traceback" not in err

"""Running ``localllm`` with stdin and stdout on a pseudo-terminal, as a person would (the
chat refuses a pipe), with stderr on a pipe for the test to read."""

from __future__ import annotations

import os
import subprocess
import sys


def in_a_terminal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``localllm ARGS`` with stdin and stdout on a pseudo-terminal (as `chat` needs), stderr
    on a pipe; for commands expected to end by themselves (killed, and a failure, when still
    running after ``timeout`` seconds)."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "localllm", *args],
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(
                f"localllm {' '.join(args)} still ran after {timeout} s (did the app open?)"
            ) from None
    finally:
        os.close(follower)
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)

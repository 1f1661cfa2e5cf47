"""Running ``localllm`` with stdin and stdout on a pseudo-terminal, as a person would (the
chat refuses a pipe), with stderr on a pipe for the test to read."""

from __future__ import annotations

import os
import subprocess
import sys


def in_a_terminal(*args: str) -> subprocess.CompletedProcess[str]:
    """``localllm ARGS`` with stdin and stdout on a pseudo-terminal (as `chat` needs), stderr
    on a pipe."""
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
        _, stderr = proc.communicate(timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)

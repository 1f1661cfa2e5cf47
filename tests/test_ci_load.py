"""scripts/ci_load.sh: pytest runs beside two busy loops, which never outlive the script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ci_load.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def ci_load(*args: str) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    match = re.search(r"busy loops ([\d ]+) running", proc.stderr)
    assert match, proc.stderr
    return proc, [int(pid) for pid in match.group(1).split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_rounds_run_pytest_and_the_loads_are_killed() -> None:
    proc, loads = ci_load("--rounds", "2", "--version")
    assert proc.returncode == 0, proc.stderr
    assert len(loads) == 2
    assert proc.stderr.count("round 1 of 2") == 1 and "round 2 of 2" in proc.stderr
    assert all(gone(pid) for pid in loads)


def test_a_failing_round_stops_with_its_status_and_still_kills_the_loads(tmp_path: Path) -> None:
    proc, loads = ci_load("--rounds", "3", str(tmp_path / "no_such_test.py"))
    assert proc.returncode == 4  # pytest's "file not found"
    assert "round 1 of 3 failed" in proc.stderr and "round 2 of 3" not in proc.stderr
    assert all(gone(pid) for pid in loads)


def test_bad_rounds_is_a_usage_error() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--rounds", "zero"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "error: --rounds" in proc.stderr

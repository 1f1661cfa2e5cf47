"""The GGUF fuzzer: hundreds of mutated files through the validator and llama.cpp, each in a
worker subprocess, with no crash and no traceback; and the harness itself catches, attributes
and survives crashes, hangs and tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "fuzz_gguf.py"


def fuzz(*args: str, inject: str | None = None, timeout: float = 300) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FUZZ_INJECT", None)
    if inject:
        env["FUZZ_INJECT"] = inject
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.stdout, result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def test_fuzz_corpus_has_no_crash_and_no_traceback() -> None:
    code, summary = fuzz("--cases", "600", "--seed", "20251128", "--batch", "150")
    counts = summary["counts"]
    failures = "\n\n".join(
        f"{f['outcome']} case {f['id']} ({f['base']}: {f['op']})\n{f['detail']}"
        for f in summary["failures"]
    )
    assert counts["crash"] == 0, failures
    assert counts["traceback"] == 0, failures
    assert counts["hang"] == 0, failures
    assert summary["cases"] == 600
    assert code == 0
    # The corpus exercises both sides: most mutations are refused, some still load.
    assert counts["clean-error"] > 300
    assert counts["loaded"] > 10


def test_harness_attributes_crashes_and_carries_on() -> None:
    code, summary = fuzz(
        "--cases",
        "40",
        "--seed",
        "1",
        "--batch",
        "20",
        "--timeout",
        "3",
        inject="5:segfault,12:abort,25:hang,31:raise",
    )
    assert code == 1
    assert summary["cases"] == 40  # every case ran, the workers restarted after each death
    found = {f["id"]: f for f in summary["failures"]}
    assert set(found) == {5, 12, 25, 31}
    assert found[5]["outcome"] == "crash" and "signal 11" in found[5]["detail"]
    assert found[12]["outcome"] == "crash" and "signal 6" in found[12]["detail"]
    assert found[25]["outcome"] == "hang"
    assert found[31]["outcome"] == "traceback" and "injected failure" in found[31]["detail"]
    counts = summary["counts"]
    assert counts["crash"] == 2 and counts["hang"] == 1 and counts["traceback"] == 1
    assert counts["clean-error"] + counts["loaded"] == 36

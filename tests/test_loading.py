"""Opening models: validation first, memory refusal with numbers, long-context warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localllm import fit, loading
from localllm.errors import InvalidModelError, ResourceError
from localllm.profiles import Profile

GiB = 1 << 30


def estimate(total_gib: float) -> fit.MemoryEstimate:
    return fit.MemoryEstimate(int(total_gib * GiB), 0, 0, 4096)


def test_check_memory_refuses_with_numbers_unless_forced() -> None:
    with pytest.raises(ResourceError, match=r"needs ~12.00 GiB .* only 8.00 GiB") as info:
        loading.check_memory(estimate(12), 8 * GiB)
    assert info.value.hint and "--force" in info.value.hint
    warning = loading.check_memory(estimate(12), 8 * GiB, force=True)
    assert warning and warning.startswith("warning: forcing")
    assert "tight" in (loading.check_memory(estimate(7.5), 8 * GiB) or "")
    assert loading.check_memory(estimate(2), 8 * GiB) is None


def test_a_context_longer_than_trained_warns(tiny_model: Path) -> None:
    notes: list[str] = []
    options = loading.plan(tiny_model, Profile(context_length=8192), warn=notes.append)
    assert options.n_ctx == 8192
    assert len(notes) == 1 and "longer than the 4096 tokens" in notes[0]
    notes.clear()
    loading.plan(tiny_model, Profile(), warn=notes.append)
    assert notes == []


def test_a_corrupt_file_is_refused_before_llama_cpp(tmp_path: Path, tiny_model: Path) -> None:
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(tiny_model.read_bytes()[:-1000])
    with pytest.raises(InvalidModelError, match="truncated"):
        loading.open_engine(broken, Profile())


def test_run_refuses_a_context_that_cannot_fit_in_memory(tiny_model: Path) -> None:
    # 2 layers x 64 wide x 2 (K and V) x 2 bytes = 512 B per token: 2^30 tokens need 512 GiB.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "localllm",
            "run",
            "-m",
            str(tiny_model),
            "hi",
            "--ctx",
            str(1 << 30),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 5, proc.stderr
    assert "GiB of memory is available" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr

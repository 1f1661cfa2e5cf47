"""Opening models: validation first, memory refusal with numbers, long-context warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localllm import backend, fit, loading
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


def test_headers_are_validated_once_per_file_version(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localllm import engine, modelfile

    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_model.read_bytes())
    calls: list[Path] = []
    real = modelfile.read_info

    def counting(path: str | Path) -> modelfile.ModelFileInfo:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(modelfile, "read_info", counting)
    first = loading.header_summary(model)
    assert len(calls) == 1
    assert len(list((tmp_path / "home").rglob("headers/*.json"))) == 1
    engine._validated.clear()
    again = loading.header_summary(model)
    assert len(calls) == 1 and again == first
    assert engine._was_validated(model)  # the engine skips its own parse of this version
    # a changed file is checked again, and refused if broken
    model.write_bytes(tiny_model.read_bytes()[:-1000])
    with pytest.raises(InvalidModelError, match="truncated"):
        loading.header_summary(model)
    assert not engine._was_validated(model)
    with pytest.raises(InvalidModelError, match="truncated"):
        loading.open_engine(model, Profile())


def test_a_one_shot_run_sizes_its_context_from_the_prompt(tiny_model: Path) -> None:
    need = loading.need_tokens_for("Hello", Profile(max_tokens=100))
    assert 100 < need < 512
    options = loading.plan(tiny_model, Profile(), need_tokens=need)
    assert options.n_ctx == 512  # the smallest plan_load gives, not the 4096 default
    options = loading.plan(tiny_model, Profile(), need_tokens=need + 3000)
    assert options.n_ctx == 3584
    assert loading.plan(tiny_model, Profile(context_length=2048), need_tokens=need).n_ctx == 2048
    assert loading.plan(tiny_model, Profile()).n_ctx == 4096


def test_run_stats_verbose_prints_the_load_phases(tiny_model: Path) -> None:
    args = ["run", "-m", str(tiny_model), "hi", "-n", "2", "--temperature", "0", "--stats", "-v"]
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    phases = [line for line in proc.stderr.splitlines() if line.startswith("load: read header")]
    assert len(phases) == 1
    for name in ("plan", "load weights + context", "metadata"):
        assert name in phases[0]
    assert "ctx 512" in proc.stderr


def test_overlapped_loads_restore_the_switch_interval() -> None:
    """The short GIL switch interval lasts while some load overlaps the imports: nested and
    concurrent loads share it, and the last one out puts the process's own value back."""
    import threading

    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.003)
    try:
        inside: list[float] = []
        entered, release = threading.Event(), threading.Event()

        def other() -> None:
            with backend.quick_handoff(True):
                entered.set()
                release.wait(30)
                inside.append(sys.getswitchinterval())

        thread = threading.Thread(target=other)
        with backend.quick_handoff(True):
            thread.start()
            assert entered.wait(30)
            with backend.quick_handoff(False):
                inside.append(sys.getswitchinterval())
        inside.append(sys.getswitchinterval())  # the other load is still going
        release.set()
        thread.join(30)
        assert inside == [backend.HANDOFF_INTERVAL] * 3
        assert sys.getswitchinterval() == 0.003
    finally:
        sys.setswitchinterval(saved)


def test_a_fresh_process_loads_with_the_imports_beside_and_keeps_its_interval(
    tiny_model: Path,
) -> None:
    code = (
        "import sys; from localllm import loading; from localllm.profiles import Profile\n"
        "before = sys.getswitchinterval()\n"
        f"engine = loading.open_engine({str(tiny_model)!r}, Profile(), need_tokens=64)\n"
        "print('localllm.session' in sys.modules, sys.getswitchinterval() == before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]

"""``gpu_layers: auto``: the layer arithmetic against given device memory figures, and what
plan_load decides on a CPU-only build and with a (pretended) GPU."""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from localllm import backend, engine, hardware, offload
from localllm.errors import UsageError
from localllm.offload import (
    DEFAULT_MARGIN,
    LayerSizes,
    choose_gpu_layers,
    gpu_layers_that_fit,
    layer_sizes,
    split_tensor_bytes,
)
from localllm.profiles import Profile

MiB = 1 << 20
GiB = 1 << 30

# A 32-layer 7B-like model: 120 MiB of weights and 16 MiB of KV cache per layer, a 250 MiB head.
SEVEN_B = LayerSizes(
    n_layer=32, layer_bytes=120 * MiB, kv_bytes=16 * MiB, output_bytes=250 * MiB, overhead=300 * MiB
)


def test_no_gpu_offloads_nothing() -> None:
    assert gpu_layers_that_fit(None, 32, 120 * MiB, 16 * MiB) == 0
    assert gpu_layers_that_fit(0, 32, 120 * MiB, 16 * MiB) == 0
    choice = choose_gpu_layers(None, SEVEN_B)
    assert choice.layers == 0 and choice.reason == "no GPU device"


def test_everything_fits_offloads_every_layer_and_the_head() -> None:
    choice = choose_gpu_layers(24 * GiB, SEVEN_B)
    assert choice.layers == 33 == choice.total
    assert choice.need == 300 * MiB + 32 * 136 * MiB + 250 * MiB
    assert choice.reason == "everything fits"
    assert gpu_layers_that_fit(24 * GiB, 32, 120 * MiB, 16 * MiB) == 33


def test_exactly_full_still_fits() -> None:
    need = SEVEN_B.bytes_for(33)
    assert choose_gpu_layers(need + DEFAULT_MARGIN, SEVEN_B).layers == 33
    assert choose_gpu_layers(need + DEFAULT_MARGIN - 1, SEVEN_B).layers == 32


def test_partial_fit_counts_weights_kv_overhead_and_margin() -> None:
    # 4 GiB free: 4096 - 512 margin - 300 overhead = 3284 MiB for blocks of 136 MiB -> 24.
    choice = choose_gpu_layers(4 * GiB, SEVEN_B)
    assert choice.layers == 24
    assert choice.total == 33
    assert "partial" in choice.reason
    assert choice.need == 300 * MiB + 24 * 136 * MiB
    assert choice.need <= 4 * GiB - DEFAULT_MARGIN
    # the same through the flat function
    assert (
        gpu_layers_that_fit(
            4 * GiB, 32, 120 * MiB, 16 * MiB, output_bytes=250 * MiB, overhead=300 * MiB
        )
        == 24
    )


def test_the_kv_cache_takes_room_from_layers() -> None:
    small_kv = choose_gpu_layers(4 * GiB, SEVEN_B).layers
    big_kv = LayerSizes(32, 120 * MiB, 64 * MiB, 250 * MiB, 300 * MiB)
    assert choose_gpu_layers(4 * GiB, big_kv).layers < small_kv


def test_a_larger_margin_offloads_fewer_layers() -> None:
    assert choose_gpu_layers(4 * GiB, SEVEN_B, margin=2 * GiB).layers == 12  # (4096-2048-300)//136


def test_nothing_fits() -> None:
    assert choose_gpu_layers(700 * MiB, SEVEN_B).layers == 0  # below margin + overhead + 1 layer
    assert choose_gpu_layers(256 * MiB, SEVEN_B).layers == 0
    assert "not even one layer" in choose_gpu_layers(700 * MiB, SEVEN_B).reason


def test_unknown_layer_count_offloads_nothing() -> None:
    assert choose_gpu_layers(8 * GiB, LayerSizes(0, 0, 0)).layers == 0


def test_split_tensor_bytes_separates_blocks_and_head() -> None:
    tensors = [
        ("token_embd.weight", 1000),
        ("blk.0.attn_q.weight", 10),
        ("blk.0.ffn_up.weight", 30),
        ("blk.1.attn_q.weight", 10),
        ("blk.1.ffn_up.weight", 50),
        ("output_norm.weight", 2),
        ("output.weight", 900),
    ]
    assert split_tensor_bytes(tensors) == (60, 902, 2)
    # tied embeddings: no output.weight, the head is a copy of token_embd
    tied = [t for t in tensors if t[0] != "output.weight"]
    assert split_tensor_bytes(tied) == (60, 1002, 2)


def test_layer_sizes_use_the_shared_fit_estimate() -> None:
    from localllm.fit import estimate_memory

    est = estimate_memory(4 * GiB, 32, 4096, 32, 8, 8192)
    sizes = layer_sizes(4 * GiB, 32, 4096, 32, 8, 8192)
    assert sizes.kv_bytes == est.kv_cache // 32
    assert sizes.overhead == est.overhead
    assert sizes.layer_bytes == est.weights // 33  # no tensors given: an even split
    q8 = layer_sizes(4 * GiB, 32, 4096, 32, 8, 8192, "q8_0")
    assert q8.kv_bytes < sizes.kv_bytes * 0.6


def test_unknown_cache_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="q5_9"):
        offload.kv_bytes_per_elem("q5_9")


# -- plan_load -------------------------------------------------------------------------------


def test_cpu_only_build_chooses_zero_layers_silently(
    tiny_model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if backend.gpu_offload_supported():
        pytest.skip("this llama.cpp build has a GPU backend")
    opts = engine.plan_load(Profile(gpu_layers="auto"), path=tiny_model)
    assert opts.n_gpu_layers == 0
    assert opts.backend == "CPU"
    assert opts.offload_summary == "CPU"
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_cpu_only_build_ignores_an_explicit_layer_count(tiny_model: Path) -> None:
    if backend.gpu_offload_supported():
        pytest.skip("this llama.cpp build has a GPU backend")
    opts = engine.plan_load(Profile(gpu_layers=10), path=tiny_model)
    assert opts.n_gpu_layers == 0
    assert "no GPU backend" in opts.offload_reason


@pytest.fixture
def pretend_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(backend, "gpu_backend_name", lambda: "CUDA")


def test_auto_with_a_roomy_gpu_offloads_everything(tiny_model: Path, pretend_gpu: None) -> None:
    opts = engine.plan_load(Profile(gpu_layers="auto"), path=tiny_model, gpu_free=80 * GiB)
    assert opts.n_gpu_layers == 3 == opts.n_layers_total  # 2 blocks + the head
    assert opts.backend == "CUDA"
    assert opts.offload_summary.startswith("CUDA 3/3 layers")


def test_auto_with_a_full_gpu_offloads_nothing(tiny_model: Path, pretend_gpu: None) -> None:
    opts = engine.plan_load(Profile(gpu_layers="auto"), path=tiny_model, gpu_free=100 * MiB)
    assert opts.n_gpu_layers == 0
    assert opts.backend == "CPU"


def test_auto_partial_fit_on_a_model(tiny_model: Path, pretend_gpu: None) -> None:
    info = engine._model_shape(tiny_model)
    assert info is not None
    sizes = layer_sizes(
        info["file_size"], info["n_layer"], info["n_embd"], info["n_head"],
        info["n_head_kv"], 4096, tensors=info["tensors"],
    )  # fmt: skip
    free = DEFAULT_MARGIN + sizes.bytes_for(1) + 1  # room for one block, not two
    opts = engine.plan_load(Profile(gpu_layers="auto"), path=tiny_model, gpu_free=free)
    assert opts.n_gpu_layers == 1
    assert "partial" in opts.offload_reason


def test_auto_without_a_path_offloads_all(pretend_gpu: None) -> None:
    opts = engine.plan_load(Profile(gpu_layers="auto"), gpu_free=GiB)
    assert opts.n_gpu_layers == -1


def test_explicit_layers_pass_through(tiny_model: Path, pretend_gpu: None) -> None:
    opts = engine.plan_load(Profile(gpu_layers=1), path=tiny_model)
    assert opts.n_gpu_layers == 1 and opts.n_layers_total == 3
    assert engine.plan_load(Profile(gpu_layers=0), path=tiny_model).backend == "CPU"


def test_vocab_only_never_offloads(tiny_model: Path, pretend_gpu: None) -> None:
    assert engine.plan_load(Profile(), vocab_only=True, path=tiny_model).n_gpu_layers == 0


def test_quantized_kv_cache_needs_flash_attention() -> None:
    from dataclasses import replace

    bad = replace(Profile(), kv_cache_type="q8_0", flash_attn=False)
    with pytest.raises(UsageError, match="flash attention") as info:
        engine.plan_load(bad)
    assert "V cache" in (info.value.hint or "")
    ok = engine.plan_load(replace(Profile(), kv_cache_type="q4_0", flash_attn=True))
    assert ok.kv_cache_type == "q4_0" and ok.flash_attn is True


def test_kv_cache_type_reaches_llama_cpp(tiny_model: Path) -> None:
    from dataclasses import replace

    from localllm.errors import InvalidModelError

    # The tiny model's heads are 16 wide: too narrow for q8_0 blocks of 32, which llama.cpp
    # refuses; the error says what to change.
    opts = engine.plan_load(replace(Profile(), kv_cache_type="q8_0", flash_attn=True))
    with pytest.raises(InvalidModelError, match="q8_0 KV cache") as info:
        engine.Engine(tiny_model, replace(opts, n_ctx=256))
    assert "f16" in (info.value.hint or "")


def test_one_shot_context_is_sized_to_the_work() -> None:
    assert engine.plan_load(Profile(), need_tokens=300).n_ctx == 512
    assert engine.plan_load(Profile(), need_tokens=1000).n_ctx == 1024
    assert engine.plan_load(Profile(), need_tokens=100_000).n_ctx == engine.DEFAULT_CONTEXT
    assert engine.plan_load(Profile(context_length=8192), need_tokens=300).n_ctx == 8192
    assert engine.plan_load(Profile(), 2048).n_ctx == 2048  # capped at the trained context


def test_context_comes_from_the_model_when_a_path_is_given(tiny_model: Path) -> None:
    from localllm.modelfile import read_info

    trained = read_info(tiny_model).context_length
    assert trained is not None
    opts = engine.plan_load(Profile(context_length=None), path=tiny_model)
    assert opts.n_ctx == min(engine.DEFAULT_CONTEXT, trained)


@pytest.mark.parametrize(
    ("running", "expected"),
    [([1, 1, 1], 8), ([3, 3, 3], 8), ([12, 12, 12], 5), ([30, 30, 30], 1), ([20, 2, 20], 8)],
)
def test_default_threads_leave_busy_cpus_alone(
    monkeypatch: pytest.MonkeyPatch, running: list[int], expected: int
) -> None:
    import os

    samples = iter(running)
    monkeypatch.setattr(hardware, "physical_cores", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(hardware, "_runnable_tasks", lambda: next(samples))
    assert hardware.default_threads() == expected


def test_default_threads_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "physical_cores", lambda: 6)
    monkeypatch.setattr(hardware, "_runnable_tasks", lambda: None)
    assert hardware.default_threads() == 6
    assert engine.plan_load(Profile(threads=3)).n_threads == 3


def test_flash_attention_auto(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    def profile(**kw: object) -> Any:
        base = {
            f: getattr(Profile(), f)
            for f in ("context_length", "threads", "gpu_layers", "verbose", "kv_cache_type")
        }
        return SimpleNamespace(**{**base, "flash_attn": "auto", **kw})

    assert engine.plan_load(profile()).flash_attn is False  # CPU: off
    q8 = engine.plan_load(profile(kv_cache_type="q8_0"))
    assert q8.flash_attn is True
    monkeypatch.setattr(backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(backend, "gpu_backend_name", lambda: "CUDA")
    gpu = engine.plan_load(profile(), path=tiny_model, gpu_free=1 << 40)
    assert gpu.n_gpu_layers > 0 and gpu.flash_attn is None  # llama.cpp's auto
    off = engine.plan_load(profile(flash_attn=False), path=tiny_model, gpu_free=1 << 40)
    assert off.flash_attn is False


def test_flash_attention_auto_loads(tiny_model: Path) -> None:
    """None (llama.cpp's auto) reaches llama.cpp and leaves the library as it was."""
    import llama_cpp.llama_cpp as lib

    before = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    opts = engine.LoadOptions(n_ctx=128, n_threads=1, n_gpu_layers=0, flash_attn=None)
    with engine.Engine(tiny_model, opts) as eng:
        assert eng._llm.context_params.flash_attn_type == lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    assert before == lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    opts = engine.LoadOptions(n_ctx=128, n_threads=1, n_gpu_layers=0)
    with engine.Engine(tiny_model, opts) as eng:
        assert eng._llm.context_params.flash_attn_type == lib.LLAMA_FLASH_ATTN_TYPE_DISABLED


def test_llama_cpp_warnings_stay_quiet_unless_verbose(
    tiny_model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # a vocab-only load makes llama.cpp warn "n_ctx_seq (512) > n_ctx_train (0)"
    opts = engine.LoadOptions(n_ctx=512, n_threads=1, n_gpu_layers=0, vocab_only=True)
    engine.Engine(tiny_model, opts).close()
    assert capfd.readouterr().err == ""
    loud = engine.LoadOptions(n_ctx=512, n_threads=1, n_gpu_layers=0, vocab_only=True, verbose=True)
    engine.Engine(tiny_model, loud).close()
    assert "n_ctx" in capfd.readouterr().err
    engine.Engine(tiny_model, opts).close()
    assert capfd.readouterr().err == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux sysfs")
def test_physical_cores_from_sysfs_match_psutil() -> None:
    """The start-up path counts cores from sysfs instead of importing psutil (10 ms): the
    same count psutil gives."""
    import psutil

    assert hardware._linux_physical_cores() == psutil.cpu_count(logical=False)


def test_this_process_own_threads_are_not_counted_as_other_work() -> None:
    """A thread of ours busy in C (hashing, GIL released) is runnable but is not another
    process's load: the thread count for a model must not drop because of it."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux's /proc")
    stop, hashing = threading.Event(), threading.Event()
    data = b"x" * (1 << 22)

    def busy() -> None:
        while not stop.is_set():
            hashlib.sha256(data).digest()
            hashing.set()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        assert hashing.wait(60)
        seen = 0
        for _ in range(20_000):  # until the busy thread is caught running beside this one
            seen = max(seen, hardware.own_runnable_threads())
            if seen >= 2:
                break
        assert seen >= 2
    finally:
        stop.set()
        thread.join()

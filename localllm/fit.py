"""Will a model fit? Memory estimates (weights + KV cache + overhead) against this machine.

Pure arithmetic plus two small probes: :func:`available_memory` (psutil for RAM, and a hook a
GPU backend fills with :func:`set_gpu_probe`) and :func:`parse_header_prefix`, a bounded
reader of the metadata at the start of a GGUF file, enough to size the KV cache from the first
megabytes of a file that is not downloaded yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

Verdict = Literal["fits", "tight", "won't fit"]

MiB = 1 << 20
GiB = 1 << 30

# Fits comfortably when the estimate is at most this share of what is available; "tight" up to
# the whole of it.
COMFORT = 0.80
BASE_OVERHEAD = 128 * MiB  # the runtime, llama.cpp's own buffers, the process
WEIGHT_OVERHEAD = 0.05  # per-tensor padding, repacking, output buffers


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int | None = None  # per-head K width when it differs from n_embd / n_head
    value_length: int | None = None
    context_length: int | None = None  # the trained context
    architecture: str | None = None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs loaded at a context length; ``method`` says how it was estimated."""

    weights: int
    kv_cache: int
    overhead: int
    n_ctx: int
    method: str = "header"  # "header": from the model's shape; "size": from the file size alone

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate_memory(
    file_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ctx: int,
    kv_bytes_per_elem: float = 2,
    *,
    key_length: int | None = None,
    value_length: int | None = None,
) -> MemoryEstimate:
    """Weights (the file size: GGUF tensors load as stored) + the KV cache (K and V, per layer,
    per token, ``n_head_kv`` heads of ``n_embd / n_head`` each, f16 by default) + overhead (a
    fixed base, a share of the weights, and compute buffers that grow with context x width)."""
    if min(n_layer, n_embd, n_head) <= 0 or n_ctx <= 0 or file_size < 0:
        raise ValueError("layers, width, heads and context must be positive")
    n_head_kv = n_head_kv if n_head_kv > 0 else n_head
    head_dim = n_embd // n_head
    k_width = (key_length or head_dim) * n_head_kv
    v_width = (value_length or head_dim) * n_head_kv
    kv = int(n_layer * n_ctx * (k_width + v_width) * kv_bytes_per_elem)
    compute = n_ctx * n_embd * 16  # attention scores and activations for one batch
    overhead = BASE_OVERHEAD + int(file_size * WEIGHT_OVERHEAD) + compute
    return MemoryEstimate(file_size, kv, overhead, n_ctx, "header")


def estimate_for_shape(
    file_size: int, shape: ModelShape, n_ctx: int, kv_bytes_per_elem: float = 2
) -> MemoryEstimate:
    if shape.architecture and _encoder_only(shape.architecture):
        # An embedding encoder (BERT family) keeps no KV cache: each batch is encoded at once,
        # at most its trained context long.
        n_ctx = min(n_ctx, shape.context_length or n_ctx)
        est = estimate_memory(file_size, shape.n_layer, shape.n_embd, shape.n_head, 1, n_ctx)
        return MemoryEstimate(est.weights, 0, est.overhead, n_ctx, est.method)
    return estimate_memory(
        file_size,
        shape.n_layer,
        shape.n_embd,
        shape.n_head,
        shape.n_head_kv,
        n_ctx,
        kv_bytes_per_elem,
        key_length=shape.key_length,
        value_length=shape.value_length,
    )


def _encoder_only(architecture: str) -> bool:
    from localllm.modelfile import structure_of

    return structure_of(architecture) == "encoder-only"


def estimate_from_size(
    file_size: int, n_ctx: int, bits_per_weight: float | None = None
) -> MemoryEstimate:
    """A rougher estimate when only the file size is known: parameters from the size and the
    quant's bits per weight, then the KV cache of a typical grouped-query model of that size
    (about 32 KiB per token at 1B parameters, growing with size^(2/3); 128 KiB at 8B)."""
    if n_ctx <= 0 or file_size < 0:
        raise ValueError("context and size must be positive")
    bits = bits_per_weight or 4.8
    params = file_size * 8 / bits
    per_token = 32 * 1024 * max(params / 1e9, 0.05) ** (2 / 3)
    kv = int(per_token * n_ctx)
    width = 2048 * max(params / 1e9, 0.05) ** 0.4
    overhead = BASE_OVERHEAD + int(file_size * WEIGHT_OVERHEAD) + int(n_ctx * width * 16)
    return MemoryEstimate(file_size, kv, overhead, n_ctx, "size")


def add_weights(estimate: MemoryEstimate, extra: int) -> MemoryEstimate:
    """``estimate`` with ``extra`` bytes of weights loaded beside the model's (a vision
    projector), and the overhead share that weights bring; the KV cache is unchanged."""
    return replace(
        estimate,
        weights=estimate.weights + extra,
        overhead=estimate.overhead + int(extra * WEIGHT_OVERHEAD),
    )


def fit_verdict(estimate: MemoryEstimate | int, available: int) -> Verdict:
    """Say "fits" within 80% of ``available`` bytes, "tight" within all of it, else "won't fit"."""
    need = estimate.total if isinstance(estimate, MemoryEstimate) else int(estimate)
    if available <= 0:
        return "won't fit"
    if need <= available * COMFORT:
        return "fits"
    if need <= available:
        return "tight"
    return "won't fit"


# -- what this machine has ---------------------------------------------------------------


@dataclass(frozen=True)
class MemoryBudget:
    """Available bytes now: RAM, and VRAM when a GPU backend reports it."""

    ram: int
    vram: int | None = None
    gpu_name: str | None = None


GpuProbe = Callable[[], "tuple[int, str | None] | int | None"]
_gpu_probe: GpuProbe | None = None


def set_gpu_probe(probe: GpuProbe | None) -> None:
    """Install the function that reports free VRAM in bytes (or ``(bytes, name)``), or None.
    The GPU backend calls this; without it estimates are against RAM only."""
    global _gpu_probe
    _gpu_probe = probe


def available_ram() -> int:
    """Bytes of RAM available to a new process now (psutil's ``available``: on Linux the
    kernel's MemAvailable, read here without importing psutil, which costs a one-shot run
    about 10 ms of its start)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or broken: fall back to sysconf
        import os

        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 0


def available_memory() -> MemoryBudget:
    vram: int | None = None
    name: str | None = None
    if _gpu_probe is not None:
        try:
            got = _gpu_probe()
        except Exception:
            got = None
        if isinstance(got, tuple):
            vram, name = int(got[0]), got[1]
        elif got is not None:
            vram = int(got)
    return MemoryBudget(available_ram(), vram, name)


# -- a bounded reader for the start of a GGUF file ---------------------------------------

_MAX_KV = 1 << 16
_MAX_KEY = 1 << 12


@dataclass
class HeaderPrefix:
    """What could be read from the first bytes of a GGUF file."""

    version: int
    kv_count: int
    tensor_count: int
    metadata: dict[str, Any]
    complete: bool  # every key/value was inside the prefix

    def shape(self) -> ModelShape | None:
        return shape_from_metadata(self.metadata)


def parse_header_prefix(data: bytes) -> HeaderPrefix:
    """Read as many metadata key/values as ``data`` (the start of a GGUF file) holds, with the
    decoder the strict reader uses (:mod:`localllm.ggufvalues`). Arrays are skipped (kept as
    ``("array", item type, count)``); every length is capped. Raises ``ValueError`` when the
    bytes are not a GGUF header or hold a value that cannot be right."""
    from localllm.ggufvalues import Cursor, Malformed, Truncated, read_value

    r = Cursor(data=bytes(data))
    try:
        if r.raw(4, "magic") != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = r.u32("version")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        tensor_count, kv_count = r.u64("tensor count"), r.u64("key/value count")
    except Truncated:
        raise ValueError("too few bytes for a GGUF header") from None
    if kv_count > _MAX_KV:
        raise ValueError("implausible metadata count in GGUF header")
    meta: dict[str, Any] = {}
    complete = True
    try:
        for i in range(kv_count):
            key = r.string(f"key #{i}", _MAX_KEY)
            meta[key] = read_value(r, r.u32(f"type of '{key}'"), key, keep_arrays=False)[0]
    except Truncated:
        complete = False
    except Malformed as exc:
        raise ValueError(f"{exc.message} in GGUF header") from None
    return HeaderPrefix(version, kv_count, tensor_count, meta, complete)


def _int(meta: dict[str, Any], key: str) -> int | None:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v


def shape_from_metadata(meta: dict[str, Any]) -> ModelShape | None:
    """The model's shape from GGUF metadata, or None when a needed key is missing."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None
    n_layer = _int(meta, f"{arch}.block_count")
    n_embd = _int(meta, f"{arch}.embedding_length")
    n_head = _int(meta, f"{arch}.attention.head_count")
    if not n_layer or not n_embd or not n_head:
        return None
    n_head_kv = _int(meta, f"{arch}.attention.head_count_kv") or n_head
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=_int(meta, f"{arch}.attention.key_length"),
        value_length=_int(meta, f"{arch}.attention.value_length"),
        context_length=_int(meta, f"{arch}.context_length"),
        architecture=arch,
    )

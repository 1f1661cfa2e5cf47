"""How many layers to offload to the GPU: pure arithmetic, no llama_cpp.

``gpu_layers: auto`` offloads as many layers as fit in the device's free memory after reserving
room for the KV cache of every offloaded layer, the compute buffers and a safety margin. The
sizes come from :func:`localllm.fit.estimate_memory` (the arithmetic ``pull --list`` uses, so
both agree on what a model needs); the split per layer comes from the model's tensors when they
are known.

llama.cpp counts ``n_layer + 1`` offloadable layers: the repeating blocks, then the output head
(``n_gpu_layers = n_layer + 1`` puts the head on the GPU too). The token embeddings always stay
in host memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MiB = 1 << 20

# Bytes per element of the KV cache for each cache type (ggml block sizes: q8_0 stores 32
# values in 34 bytes, q4_0 in 18).
KV_BYTES_PER_ELEM: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KV_CACHE_TYPES: tuple[str, ...] = tuple(KV_BYTES_PER_ELEM)

# Room left free on the device on top of our estimate: the runtime's own context, allocator
# slack, other processes growing a little.
DEFAULT_MARGIN = 512 * MiB

_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class LayerSizes:
    """What offloading costs, per piece, in bytes."""

    n_layer: int  # repeating blocks
    layer_bytes: int  # weights of one block (the largest, to be safe)
    kv_bytes: int  # KV cache of one block at the chosen context and cache type
    output_bytes: int = 0  # the output head, offloaded as layer n_layer + 1
    overhead: int = 0  # compute buffers and the like, on the device once anything is offloaded

    @property
    def total_layers(self) -> int:
        return self.n_layer + 1

    def bytes_for(self, layers: int) -> int:
        """Device bytes needed to offload ``layers`` (0 … n_layer + 1)."""
        if layers <= 0:
            return 0
        blocks = min(layers, self.n_layer)
        head = self.output_bytes if layers > self.n_layer else 0
        return self.overhead + blocks * (self.layer_bytes + self.kv_bytes) + head


@dataclass(frozen=True)
class OffloadChoice:
    """The number of layers to pass to llama.cpp and why."""

    layers: int  # n_gpu_layers: 0 … total
    total: int  # n_layer + 1 (0 when unknown)
    need: int  # device bytes the chosen layers take
    free: int | None  # device bytes free before loading (None: no GPU)
    reason: str

    @property
    def summary(self) -> str:
        if self.total:
            return f"{self.layers}/{self.total} layers on the GPU ({self.reason})"
        return f"{self.layers} layers on the GPU ({self.reason})"


def gpu_layers_that_fit(
    free: int | None,
    n_layer: int,
    layer_bytes: int,
    kv_bytes: int,
    margin: int = DEFAULT_MARGIN,
    *,
    output_bytes: int = 0,
    overhead: int = 0,
) -> int:
    """How many of the ``n_layer + 1`` offloadable layers fit in ``free`` device bytes.

    ``layer_bytes`` and ``kv_bytes`` are per repeating block; ``margin`` and ``overhead`` are
    reserved once. No device (``free`` None or ≤ 0) → 0; everything fits → ``n_layer + 1``.
    """
    sizes = LayerSizes(n_layer, layer_bytes, kv_bytes, output_bytes, overhead)
    return choose_gpu_layers(free, sizes, margin).layers


def choose_gpu_layers(
    free: int | None, sizes: LayerSizes, margin: int = DEFAULT_MARGIN
) -> OffloadChoice:
    """The most layers whose weights, KV cache and overhead fit in ``free`` minus ``margin``."""
    total = sizes.total_layers if sizes.n_layer > 0 else 0
    if free is None or free <= 0:
        return OffloadChoice(0, total, 0, free, "no GPU device")
    if sizes.n_layer <= 0:
        return OffloadChoice(0, 0, 0, free, "layer count unknown")
    budget = free - margin
    full = sizes.bytes_for(total)
    if full <= budget:
        return OffloadChoice(total, total, full, free, "everything fits")
    per_block = sizes.layer_bytes + sizes.kv_bytes
    room = budget - sizes.overhead
    if per_block <= 0 or room < per_block:
        return OffloadChoice(0, total, 0, free, "not even one layer fits in free GPU memory")
    blocks = min(sizes.n_layer, room // per_block)
    return OffloadChoice(
        int(blocks), total, sizes.bytes_for(int(blocks)), free, "partial: limited by GPU memory"
    )


def kv_bytes_per_elem(cache_type: str) -> float:
    try:
        return KV_BYTES_PER_ELEM[cache_type]
    except KeyError:
        raise ValueError(
            f"unknown KV cache type {cache_type!r} (one of {', '.join(KV_CACHE_TYPES)})"
        ) from None


def split_tensor_bytes(tensors: Iterable[tuple[str, int]]) -> tuple[int, int, int]:
    """(largest block's bytes, output head bytes, number of blocks) from ``(name, bytes)``
    pairs of a GGUF's tensors. A model without ``output.weight`` ties its head to the token
    embeddings, which llama.cpp then copies to the device."""
    blocks: dict[int, int] = {}
    output = embd = 0
    tied = True
    for name, n_bytes in tensors:
        m = _BLOCK.match(name)
        if m:
            i = int(m.group(1))
            blocks[i] = blocks.get(i, 0) + n_bytes
        elif name.startswith(("output.", "output_norm.")):
            output += n_bytes
            tied = tied and name != "output.weight"
        elif name == "token_embd.weight":
            embd = n_bytes
    if tied:
        output += embd
    return (max(blocks.values()) if blocks else 0), output, len(blocks)


def layer_sizes(
    file_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ctx: int,
    cache_type: str = "f16",
    *,
    key_length: int | None = None,
    value_length: int | None = None,
    tensors: Iterable[tuple[str, int]] | None = None,
) -> LayerSizes:
    """Per-layer sizes for a model, from :func:`localllm.fit.estimate_memory` (weights, KV cache,
    overhead) and, when given, the model's tensors for the split between blocks and head."""
    from localllm.fit import estimate_memory

    est = estimate_memory(
        file_size,
        n_layer,
        n_embd,
        n_head,
        n_head_kv,
        n_ctx,
        kv_bytes_per_elem(cache_type),
        key_length=key_length,
        value_length=value_length,
    )
    layer = output = 0
    if tensors is not None:
        layer, output, _ = split_tensor_bytes(tensors)
    if layer <= 0:
        layer = est.weights // (n_layer + 1)
        output = output or layer
    return LayerSizes(
        n_layer=n_layer,
        layer_bytes=int(layer),
        kv_bytes=int(est.kv_cache // n_layer),
        output_bytes=int(output),
        overhead=int(est.overhead),
    )

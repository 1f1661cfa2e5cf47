"""Memory estimates and the bounded header reader."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from ggufgen import write_tiny_gguf
from hypothesis import given
from hypothesis import strategies as st

from localllm import fit

GiB = 1 << 30


def test_kv_cache_of_a_llama_3_8b_shape() -> None:
    # 32 layers, 4096 wide, 32 heads, 8 KV heads: 128 KiB per token in f16.
    est = fit.estimate_memory(4_920_000_000, 32, 4096, 32, 8, 8192)
    assert est.kv_cache == 32 * 8192 * 2 * 8 * 128 * 2 == 1 * GiB
    assert est.weights == 4_920_000_000
    assert est.total == est.weights + est.kv_cache + est.overhead
    assert 128 << 20 < est.overhead < 1 * GiB
    assert est.method == "header"


def test_kv_scales_with_context_and_element_size() -> None:
    a = fit.estimate_memory(1000, 2, 64, 4, 4, 1024)
    b = fit.estimate_memory(1000, 2, 64, 4, 4, 2048)
    q8 = fit.estimate_memory(1000, 2, 64, 4, 4, 2048, kv_bytes_per_elem=1)
    assert b.kv_cache == 2 * a.kv_cache
    assert q8.kv_cache * 2 == b.kv_cache


def test_explicit_head_width() -> None:
    # Gemma 3 270M: 640 wide, 4 heads, 1 KV head of 256.
    est = fit.estimate_memory(250_000_000, 18, 640, 4, 1, 4096, key_length=256, value_length=256)
    assert est.kv_cache == 18 * 4096 * (256 + 256) * 2


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        fit.estimate_memory(1000, 0, 64, 4, 4, 1024)
    with pytest.raises(ValueError):
        fit.estimate_memory(1000, 2, 64, 4, 4, 0)


def test_size_heuristic_is_sane() -> None:
    small = fit.estimate_from_size(100_000_000, 4096, 4.5)
    big = fit.estimate_from_size(5_000_000_000, 4096, 4.8)
    assert small.method == big.method == "size"
    assert small.kv_cache < big.kv_cache
    # A real 8B model at 4096 needs ~0.5 GiB of KV in f16: the guess is within 2x.
    assert 0.25 * GiB < big.kv_cache < 1 * GiB


def test_verdicts() -> None:
    est = fit.MemoryEstimate(700, 50, 50, 1024)
    assert fit.fit_verdict(est, 1000) == "fits"
    assert fit.fit_verdict(est, 900) == "tight"
    assert fit.fit_verdict(est, 799) == "won't fit"
    assert fit.fit_verdict(est, 0) == "won't fit"
    assert fit.fit_verdict(800, 1000) == "fits"


def test_available_memory_and_gpu_hook() -> None:
    budget = fit.available_memory()
    assert budget.ram > 0 and budget.vram is None
    fit.set_gpu_probe(lambda: (8 * GiB, "Test GPU"))
    try:
        budget = fit.available_memory()
        assert budget.vram == 8 * GiB and budget.gpu_name == "Test GPU"
    finally:
        fit.set_gpu_probe(None)
    fit.set_gpu_probe(lambda: 1 / 0)  # a broken probe never breaks an estimate
    try:
        assert fit.available_memory().vram is None
    finally:
        fit.set_gpu_probe(None)


def test_header_prefix_gives_the_shape(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", n_layer=3, n_embd=64, n_head=4, n_head_kv=2)
    data = path.read_bytes()
    head = fit.parse_header_prefix(data)
    assert head.complete
    assert head.shape() == fit.ModelShape(3, 64, 4, 2, None, None, 4096, "llama")
    # The architecture keys come before the vocabulary: a short prefix is enough.
    short = fit.parse_header_prefix(data[:2048])
    assert not short.complete
    assert short.shape() == head.shape()


def test_header_prefix_rejects_non_gguf() -> None:
    with pytest.raises(ValueError):
        fit.parse_header_prefix(b"NOPE" + b"\0" * 100)
    with pytest.raises(ValueError):
        fit.parse_header_prefix(b"GG")


@given(st.binary(max_size=300))
def test_header_prefix_never_crashes(data: bytes) -> None:
    for blob in (data, b"GGUF\x03\0\0\0" + data):
        with contextlib.suppress(ValueError):
            fit.parse_header_prefix(blob)


# -- one decoder for both header readers -------------------------------------------------------

_SCALAR_VALUES = {
    0: st.integers(0, 255),
    1: st.integers(-128, 127),
    2: st.integers(0, 65535),
    3: st.integers(-32768, 32767),
    4: st.integers(0, 2**32 - 1),
    5: st.integers(-(2**31), 2**31 - 1),
    6: st.floats(width=32, allow_nan=False),
    7: st.booleans(),
    10: st.integers(0, 2**64 - 1),
    11: st.integers(-(2**63), 2**63 - 1),
    12: st.floats(allow_nan=False),
}
# Strings as raw bytes: invalid UTF-8 must decode the same way in both readers.
_STRINGS = st.binary(max_size=12) | st.text(max_size=8)


@st.composite
def _kv(draw: st.DrawFn) -> tuple[str, int, object]:
    vtype = draw(st.sampled_from([*_SCALAR_VALUES, 8, 9]))
    if vtype == 8:
        return ("", 8, draw(_STRINGS))
    if vtype == 9:
        itype = draw(st.sampled_from([*_SCALAR_VALUES, 8]))
        items = _STRINGS if itype == 8 else _SCALAR_VALUES[itype]
        return ("", 9, (itype, draw(st.lists(items, max_size=4))))
    return ("", vtype, draw(_SCALAR_VALUES[vtype]))


@given(st.lists(_kv(), max_size=6))
def test_every_prefix_parses_to_a_subset_of_the_full_parse(kvs: list) -> None:
    """The tolerant reader (a Range-fetched prefix) and the strict one share a decoder: every
    prefix gives the leading key/values of the full parse, and the full parse agrees with the
    strict cursor over a file."""
    import io

    from ggufgen import encode_gguf

    from localllm.ggufvalues import Cursor, read_value

    kvs = [(f"k{i}.t{vtype}", vtype, value) for i, (_, vtype, value) in enumerate(kvs)]
    blob = encode_gguf(kvs, [])
    full = fit.parse_header_prefix(blob)
    assert full.complete and list(full.metadata) == [k for k, _, _ in kvs]

    # The strict reader's cursor over a file reads the same values (arrays kept whole).
    r = Cursor(io.BytesIO(blob), len(blob))
    r.raw(24, "header")
    for key, vtype, _ in kvs:
        assert r.string("key") == key and r.u32("type") == vtype
        value, itype = read_value(r, vtype, key)
        if vtype == 9:
            assert full.metadata[key] == ("array", itype, len(value))
        else:
            assert full.metadata[key] == value

    for cut in range(len(blob) + 1):
        try:
            head = fit.parse_header_prefix(blob[:cut])
        except ValueError:
            assert cut < 24  # only a prefix without the fixed header is refused
            continue
        keys = list(head.metadata)
        assert keys == list(full.metadata)[: len(keys)]
        assert all(head.metadata[k] == full.metadata[k] for k in keys)
        if head.complete:
            assert keys == list(full.metadata)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_available_ram_from_meminfo_is_what_psutil_reads() -> None:
    """RAM available is read from /proc/meminfo without psutil: the kernel's MemAvailable,
    which is psutil's ``available`` on Linux (the two reads are a moment apart, so the figure
    may have moved a little)."""
    import psutil

    ours, theirs = fit.available_ram(), psutil.virtual_memory().available
    assert 0 < ours <= psutil.virtual_memory().total
    assert abs(ours - theirs) < max(theirs // 4, 64 << 20)

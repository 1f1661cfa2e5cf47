"""Write tiny GGUF models for tests: random weights, any tokenizer, any chat template.

A two-layer llama-architecture model with a few hundred tokens loads in llama.cpp in
milliseconds, so the real engine can be tested without real weights. Other architectures
(bert, t5, ...) are written with metadata and a token embedding only: enough for ``show`` and
``tokenize``, which never run them.

Used by the test suite and by ``scripts/fuzz_gguf.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Token types as llama.cpp defines them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

DEFAULT_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_USER_DEFINED = ("<think>", "</think>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


BYTE_CHARS = _bytes_to_unicode()

# A few merges so common English text becomes fewer tokens than bytes.
GPT2_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("o", "n"),
    ("a", "n"),
    ("Ġ", "a"),
    ("r", "e"),
    ("e", "s"),
)


@dataclass
class Vocab:
    model: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/sep/pad/... -> id


def gpt2_vocab(
    special: Sequence[str] = DEFAULT_SPECIAL,
    user_defined: Sequence[str] = DEFAULT_USER_DEFINED,
    eos: str = "<|im_end|>",
    bos: str = "<|endoftext|>",
) -> Vocab:
    tokens = [BYTE_CHARS[b] for b in range(256)]
    types = [NORMAL] * 256
    merges = []
    for a, b in GPT2_MERGES:
        tokens.append(a + b)
        types.append(NORMAL)
        merges.append(f"{a} {b}")
    ids = {}
    for tok in special:
        ids[tok] = len(tokens)
        tokens.append(tok)
        types.append(CONTROL)
    for tok in user_defined:
        ids[tok] = len(tokens)
        tokens.append(tok)
        types.append(USER_DEFINED)
    return Vocab("gpt2", tokens, types, merges=merges, special={"bos": ids[bos], "eos": ids[eos]})


def spm_vocab(words: Iterable[str] = ("hello", "world", "the", "a", "is")) -> Vocab:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(BYTE)
        scores.append(0.0)
    pieces = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["▁" + w for w in words]
    for i, p in enumerate(pieces):
        tokens.append(p)
        types.append(NORMAL)
        scores.append(-float(i) if len(p) == 1 else float(len(p)))
    return Vocab("llama", tokens, types, scores=scores, special={"bos": 1, "eos": 2, "unk": 0})


def bert_vocab(words: Iterable[str] = ("hello", "world", "the", "is")) -> Vocab:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [CONTROL, UNKNOWN, CONTROL, CONTROL, CONTROL]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for piece in [*letters, *("##" + c for c in letters), *words]:
        tokens.append(piece)
        types.append(NORMAL)
    special = {"unk": 1, "bos": 2, "eos": 3, "sep": 3, "pad": 0, "mask": 4}
    return Vocab("bert", tokens, types, special=special)


def t5_vocab(words: Iterable[str] = ("hello", "world", "the", "is")) -> Vocab:
    tokens = ["<pad>", "</s>", "<unk>", "▁"]
    types = [CONTROL, CONTROL, UNKNOWN, NORMAL]
    scores = [0.0, 0.0, 0.0, -2.0]
    for c in range(ord("a"), ord("z") + 1):
        tokens.append(chr(c))
        types.append(NORMAL)
        scores.append(-5.0)
    for w in words:
        tokens.append("▁" + w)
        types.append(NORMAL)
        scores.append(-1.0)
    return Vocab("t5", tokens, types, scores=scores, special={"pad": 0, "eos": 1, "unk": 2})


VOCABS = {"gpt2": gpt2_vocab, "llama": spm_vocab, "bert": bert_vocab, "t5": t5_vocab}


def write_tiny_gguf(
    path: str | Path,
    *,
    arch: str = "llama",
    vocab: Vocab | str = "gpt2",
    chat_template: str | None = CHATML_TEMPLATE,
    name: str = "tiny-test",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 4096,
    seed: int = 0,
    extra_kv: dict[str, Any] | None = None,
    weights: bool = True,
) -> Path:
    """Write a small GGUF and return its path.

    ``weights=False`` writes only the token embedding (enough for metadata and vocab-only use).
    ``extra_kv`` adds metadata keys: str, int, float, bool or list values.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(vocab, str):
        vocab = VOCABS[vocab]()
    n_vocab = len(vocab.tokens)
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(0)  # all F32
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model(vocab.model)
    if vocab.model == "gpt2":
        w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    special = vocab.special
    if "bos" in special:
        w.add_bos_token_id(special["bos"])
    if "eos" in special:
        w.add_eos_token_id(special["eos"])
    if "unk" in special:
        w.add_unk_token_id(special["unk"])
    if "sep" in special:
        w.add_sep_token_id(special["sep"])
    if "pad" in special:
        w.add_pad_token_id(special["pad"])
    w.add_add_bos_token(vocab.model == "llama")
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (extra_kv or {}).items():
        _add_kv(w, key, value)

    def t(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    emb = t(n_vocab, n_embd, scale=1.0)
    w.add_tensor("token_embd.weight", emb)
    if weights:
        head_dim = n_embd // n_head
        n_kv = head_dim * n_head_kv
        w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
        out = t(n_vocab, n_embd, scale=1.0)
        # Control tokens (end of turn, ...) get a zero row: with random weights they would
        # otherwise end generation at random; tests that need them force them with a grammar.
        for i, ty in enumerate(vocab.types):
            if ty == CONTROL:
                out[i] = 0.0
        w.add_tensor("output.weight", out)
        for i in range(n_layer):
            w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(f"blk.{i}.attn_q.weight", t(n_embd, n_embd))
            w.add_tensor(f"blk.{i}.attn_k.weight", t(n_kv, n_embd))
            w.add_tensor(f"blk.{i}.attn_v.weight", t(n_kv, n_embd))
            w.add_tensor(f"blk.{i}.attn_output.weight", t(n_embd, n_embd))
            w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(f"blk.{i}.ffn_gate.weight", t(n_ff, n_embd))
            w.add_tensor(f"blk.{i}.ffn_up.weight", t(n_ff, n_embd))
            w.add_tensor(f"blk.{i}.ffn_down.weight", t(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_kv(w: Any, key: str, value: Any) -> None:
    import gguf

    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if value >= 0 else w.add_int32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:  # pragma: no cover - test helper misuse
        raise TypeError(f"unsupported metadata value for {key}: {value!r}")
    del gguf


# -- byte layout, for tests and the fuzzer that corrupt files on purpose -------------------


@dataclass
class KVLayout:
    key: str
    start: int  # the key's length field
    type_at: int  # the value-type field
    value_at: int  # the value (for arrays: the item-type field)
    end: int
    value_type: int
    item_type: int | None = None


@dataclass
class TensorLayout:
    name: str
    start: int  # the name's length field
    n_dims_at: int
    dims_at: int
    type_at: int
    offset_at: int
    end: int
    n_dims: int
    data_start: int  # absolute
    data_end: int  # absolute


@dataclass
class Layout:
    """Where every section and field of a valid GGUF file lies (read with gguf.GGUFReader)."""

    size: int
    version_at: int
    n_tensors_at: int
    n_kv_at: int
    kvs: list[KVLayout]
    tensors: list[TensorLayout]
    tensor_info_end: int
    data_start: int
    alignment: int

    def boundaries(self) -> list[int]:
        """Every section boundary: header fields, each key/value, each tensor info, data."""
        points = {0, 4, self.version_at + 4, self.n_tensors_at + 8, self.n_kv_at + 8}
        for kv in self.kvs:
            points.update((kv.start, kv.type_at, kv.value_at, kv.end))
        for t in self.tensors:
            points.update((t.start, t.n_dims_at, t.dims_at, t.type_at, t.offset_at, t.end))
            points.update((t.data_start, t.data_end))
        points.update((self.tensor_info_end, self.data_start, self.size))
        return sorted(p for p in points if 0 <= p <= self.size)


def gguf_layout(path: str | Path) -> Layout:
    """The byte layout of the valid GGUF file at ``path``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    kvs: list[KVLayout] = []
    for f in reader.fields.values():
        if f.name.startswith("GGUF."):
            continue
        sizes = [int(p.nbytes) for p in f.parts]
        start = int(f.offset)
        type_at = start + sizes[0] + sizes[1]
        value_at = type_at + sizes[2]
        item_type = int(f.types[1]) if len(f.types) > 1 else None
        kvs.append(
            KVLayout(
                f.name, start, type_at, value_at, start + sum(sizes), int(f.types[0]), item_type
            )
        )
    tensors: list[TensorLayout] = []
    for t in reader.tensors:
        sizes = [int(p.nbytes) for p in t.field.parts]
        start = int(t.field.offset)
        n_dims_at = start + sizes[0] + sizes[1]
        dims_at = n_dims_at + sizes[2]
        type_at = dims_at + sizes[3]
        offset_at = type_at + sizes[4]
        tensors.append(
            TensorLayout(
                t.name,
                start,
                n_dims_at,
                dims_at,
                type_at,
                offset_at,
                offset_at + sizes[5],
                sizes[3] // 8,
                int(t.data_offset),
                int(t.data_offset) + int(t.n_bytes),
            )
        )
    info_end = tensors[-1].end if tensors else (kvs[-1].end if kvs else 24)
    data_start = int(reader.data_offset)
    return Layout(
        size=Path(path).stat().st_size,
        version_at=4,
        n_tensors_at=8,
        n_kv_at=16,
        kvs=kvs,
        tensors=tensors,
        tensor_info_end=info_end,
        data_start=data_start,
        alignment=int(reader.alignment),
    )


# -- a raw encoder: any key types, any tensor layout, split models -------------------------

_GGUF_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY, UINT16, INT32, UINT32 = 8, 9, 2, 5, 4


def _encode_value(vtype: int, value: Any) -> bytes:
    import struct

    if vtype == STRING:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(data)) + data
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(
            _encode_value(itype, v) for v in items
        )
    return struct.pack("<" + _GGUF_FORMATS[vtype], value)


def encode_gguf(
    kvs: Sequence[tuple[str, int, Any]],
    tensors: Sequence[tuple[str, tuple[int, ...], int, bytes]],
    *,
    alignment: int = 32,
    version: int = 3,
) -> bytes:
    """A GGUF file's bytes. ``kvs``: (key, value type, value), an array's value being
    (item type, items). ``tensors``: (name, shape with ne0 first, ggml type, raw data); the
    data are laid out in order, each aligned."""
    import struct

    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        out += _encode_value(STRING, key) + struct.pack("<I", vtype) + _encode_value(vtype, value)
    offset = 0
    blobs = []
    for name, shape, ggml_type, data in tensors:
        out += _encode_value(STRING, name) + struct.pack("<I", len(shape))
        out += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ggml_type, offset)
        pad = -len(data) % alignment
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    out += b"\0" * (-len(out) % alignment)
    for blob in blobs:
        out += blob
    return bytes(out)


def read_gguf_contents(
    path: str | Path,
) -> tuple[list[tuple[str, int, Any]], list[tuple[str, tuple[int, ...], int, bytes]]]:
    """The key/values and tensors of a valid GGUF, in :func:`encode_gguf`'s form."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    kvs: list[tuple[str, int, Any]] = []
    for f in reader.fields.values():
        if f.name.startswith("GGUF."):
            continue
        vtype = int(f.types[0])
        value = f.contents()
        if vtype == ARRAY:
            value = (int(f.types[1]), value)
        kvs.append((f.name, vtype, value))
    tensors = [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), t.data.tobytes())
        for t in reader.tensors
    ]
    return kvs, tensors


def write_split_gguf(folder: str | Path, stem: str, n_parts: int = 3, **kwargs: Any) -> list[Path]:
    """A tiny model (see :func:`write_tiny_gguf`) split like llama.cpp's gguf-split does:
    ``{stem}-00001-of-0000N.gguf`` ..., the metadata in the first part, tensors spread over
    all parts, and ``split.no`` / ``split.count`` / ``split.tensors.count`` in each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whole = write_tiny_gguf(folder / f".{stem}-whole.gguf", **kwargs)
    kvs, tensors = read_gguf_contents(whole)
    whole.unlink()
    paths = []
    per_part = -(-len(tensors) // n_parts)
    for i in range(n_parts):
        split_kv = [
            ("split.no", UINT16, i),
            ("split.count", UINT16, n_parts),
            ("split.tensors.count", INT32, len(tensors)),
        ]
        part_kv = (kvs + split_kv) if i == 0 else split_kv
        path = folder / f"{stem}-{i + 1:05d}-of-{n_parts:05d}.gguf"
        path.write_bytes(encode_gguf(part_kv, tensors[i * per_part : (i + 1) * per_part]))
        paths.append(path)
    return paths

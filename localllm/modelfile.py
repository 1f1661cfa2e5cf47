"""Reading and judging GGUF files before llama.cpp ever sees them.

:func:`parse_gguf` is a small streaming reader (``struct`` over a file handle, every read
bounded by the file's size and by caps) that checks everything a broken or hostile file can
get wrong: magic and version, counts, string and array lengths, value types, the metadata keys
llama.cpp reads with asserting getters, every tensor's name, shape, type, offset and extent, and
the parts of a split model. It reads headers only, never tensor data, so it is fast on a large
file. :func:`validate_gguf` is the same check with nothing returned.

:func:`read_info` classifies a model for people: structure, size class, quantization,
tokenizer, modality, base or instruct, and which thinking mechanism its chat template offers
(:func:`thinking_mechanism`, shared with the reasoning module).

Pure logic: no llama_cpp, typer or textual here.
"""

from __future__ import annotations

import functools
import os
import re
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from localllm.errors import InvalidModelError
from localllm.ggufvalues import (  # noqa: F401  (MAX_* re-exported for older importers)
    MAX_ARRAY_LENGTH,
    MAX_STRING_ITEMS,
    MAX_STRING_LENGTH,
    Cursor,
    Malformed,
    Truncated,
    ValueType,
    read_value,
)

__all__ = [
    "GGML_TYPES",
    "GGUFFile",
    "ModelFileInfo",
    "TensorInfo",
    "ValueType",
    "format_count",
    "parse_gguf",
    "read_info",
    "size_class",
    "structure_of",
    "template_error",
    "thinking_mechanism",
    "tokenizer_algorithm",
    "validate_gguf",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Caps: far above any real model, low enough that a hostile header cannot make us allocate or
# loop without bound. Each is also checked against the bytes actually left in the file.
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20
MAX_KEY_LENGTH = 1 << 12
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) including the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ELEMENTS = 1 << 50
MAX_ALIGNMENT = 1 << 16
MAX_SPLIT_COUNT = 1 << 10

# ggml tensor types: id -> (name, elements per block, bytes per block). Ids 4, 5, 31-33 and
# 36-38 were removed from ggml and are rejected, as llama.cpp does.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}

# Integer and F64 tensors exist in ggml but in no model file: llama.cpp's CPU backend cannot
# run its ops on them and aborts (a ggml assert), so they are rejected up front.
_NON_WEIGHT_TYPES = frozenset({24, 25, 26, 27, 28})

# general.file_type (llama_ftype) -> the quantization people know it by.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}

# Keys llama.cpp reads with getters that abort (GGML_ASSERT) on a wrong type, or whose arrays it
# indexes without a length check: their types are checked here so the process never dies.
_SCALAR_KEY_TYPES: dict[str, frozenset[int]] = {
    "general.alignment": frozenset({ValueType.UINT32}),
    "general.architecture": frozenset({ValueType.STRING}),
    "tokenizer.ggml.model": frozenset({ValueType.STRING}),
    "tokenizer.ggml.pre": frozenset({ValueType.STRING}),
    "tokenizer.chat_template": frozenset({ValueType.STRING}),
    "split.count": frozenset({ValueType.UINT16}),
    "split.no": frozenset({ValueType.UINT16}),
    "split.tensors.count": frozenset({ValueType.INT32}),
}
# Array keys: allowed item types.
_ARRAY_KEY_TYPES: dict[str, frozenset[int]] = {
    "tokenizer.ggml.tokens": frozenset({ValueType.STRING}),
    "tokenizer.ggml.merges": frozenset({ValueType.STRING}),
    "tokenizer.ggml.scores": frozenset({ValueType.FLOAT32}),
    "tokenizer.ggml.token_type": frozenset({ValueType.INT32}),
    "tokenizer.ggml.precompiled_charsmap": frozenset({ValueType.UINT8, ValueType.INT8}),
}

MAX_TEMPLATE_LENGTH = 1 << 20  # characters; real chat templates are under 100 KiB
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp asserts 1 <= block_count <= 512

# Special tokens whose ids llama.cpp uses while tokenizing or decoding without a range check,
# and its default ids per tokenizer model (used when the file has none, or a bad one).
TOKEN_TYPE_BYTE = 6
CHECKED_SPECIAL_TOKENS = ("bos", "eos", "eot", "eom", "unk", "sep")
_DEFAULT_SPECIAL_IDS: dict[str, dict[str, int]] = {
    "llama": {"bos": 1, "eos": 2, "unk": 0},
    "bert": {"bos": 101, "unk": 100, "sep": 102},
    "gpt2": {"bos": 11, "eos": 11},
    "t5": {"eos": 1, "unk": 2},
}
SPECIAL_TOKEN_KEYS: dict[str, str] = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
}

_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


# -- the reader ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``offset`` is relative to the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_elements: int
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass
class GGUFFile:
    """The parsed header of one GGUF file (and, for the first part of a split model, the
    tensors and parameter count of every part)."""

    path: Path
    version: int
    file_size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    value_types: dict[str, tuple[int, int | None]]  # key -> (type, array item type)
    tensors: list[TensorInfo]
    parts: list[Path] = field(default_factory=list)  # every file of the model, in order
    total_size: int = 0  # bytes of all parts
    n_parameters: int = 0  # elements of all tensors of all parts
    n_tensors: int = 0  # tensors of all parts
    tensor_types: Counter[int] = field(default_factory=Counter)  # of all parts
    matrix_types: Counter[int] = field(default_factory=Counter)  # of tensors with 2+ dims

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def get_int(self, key: str) -> int | None:
        """An integer value (an array's first item, for per-layer keys), else None."""
        value = self.metadata.get(key)
        if isinstance(value, array) and value.typecode not in "fd":
            return max(value) if len(value) else None
        if isinstance(value, list):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value

    def get_str(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None


class _Invalid(InvalidModelError):
    pass


def _fail(path: Path, message: str, hint: str | None = None) -> _Invalid:
    # Names from the file may hold invalid UTF-8 or control characters: never print them raw.
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in _printable(message))
    return _Invalid(
        f"{path.name} is not a valid GGUF model: {message}",
        hint=hint or "the file is corrupt or incomplete; download it again",
    )


class _Reader(Cursor):
    """The shared cursor over a local file, knowing its path for error messages."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        super().__init__(f, size)
        self.path = path


def _check_key_types(path: Path, key: str, vtype: int, itype: int | None, value: Any) -> None:
    allowed = _SCALAR_KEY_TYPES.get(key)
    if allowed is not None and vtype not in allowed:
        want = " or ".join(ValueType.NAMES[t] for t in sorted(allowed))
        raise _fail(path, f"key '{key}' has type {_type_name(vtype, itype)}, expected {want}")
    allowed = _ARRAY_KEY_TYPES.get(key)
    if allowed is not None and (vtype != ValueType.ARRAY or itype not in allowed):
        want = " or ".join(ValueType.NAMES[t] for t in sorted(allowed))
        raise _fail(
            path, f"key '{key}' has type {_type_name(vtype, itype)}, expected array of {want}"
        )


def _type_name(vtype: int, itype: int | None) -> str:
    name = ValueType.NAMES.get(vtype, str(vtype))
    if vtype == ValueType.ARRAY and itype is not None:
        name += f" of {ValueType.NAMES.get(itype, str(itype))}"
    return name


def _check_semantics(path: Path, meta: dict[str, Any]) -> None:
    """Cross-key facts llama.cpp relies on (it indexes these arrays by token id)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else None
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        value = meta.get(key)
        if value is None:
            continue
        if n_tokens is None:
            raise _fail(path, f"'{key}' is present but 'tokenizer.ggml.tokens' is not")
        if len(value) < n_tokens:
            raise _fail(
                path,
                f"'{key}' has {len(value)} items but the vocabulary has {n_tokens} tokens",
            )
    for key, value in meta.items():
        if key.startswith("tokenizer.chat_template") and isinstance(value, str):
            error = template_error(value)
            if error is not None:
                raise _fail(
                    path,
                    f"the chat template '{key}' is not a valid Jinja template: {error}",
                    hint="fix the template or use another conversion of the model",
                )
    arch = meta.get("general.architecture")
    if isinstance(arch, str) and (not arch or len(arch) > 64 or not arch.isprintable()):
        raise _fail(path, f"'general.architecture' is not a valid name: {arch!r}")
    if isinstance(arch, str):
        layers = meta.get(f"{arch}.block_count")
        if _is_int(layers) and not 1 <= layers <= MAX_LAYERS:
            raise _fail(
                path, f"'{arch}.block_count' is {layers}: a model has 1 to {MAX_LAYERS} layers"
            )
        _check_hparams(path, meta, arch)
    if n_tokens is not None:
        _check_vocabulary(path, meta, tokens)


# Upper bounds on hyperparameters that llama.cpp multiplies into tensor shapes (as 32-bit
# numbers, where a huge value wraps around to a plausible one): far above any real model.
HPARAM_CAPS: dict[str, int] = {
    "embedding_length": 1 << 17,
    "feed_forward_length": 1 << 20,
    "attention.head_count": 1 << 14,
    "attention.head_count_kv": 1 << 14,
    "attention.key_length": 1 << 14,
    "attention.value_length": 1 << 14,
    "rope.dimension_count": 1 << 14,
    "expert_count": 1 << 12,
    "expert_used_count": 1 << 12,
    "vocab_size": 1 << 22,
}


def _per_layer(value: Any) -> list[int] | None:
    if _is_int(value):
        return [value]
    if isinstance(value, array) and value.typecode not in "fd":
        return list(value)
    return None


def _check_hparams(path: Path, meta: dict[str, Any], arch: str) -> None:
    for suffix, cap in HPARAM_CAPS.items():
        key = f"{arch}.{suffix}"
        values = _per_layer(meta.get(key))
        if values and not all(0 <= v <= cap for v in values):
            bad = next(v for v in values if not 0 <= v <= cap)
            raise _fail(path, f"'{key}' is {bad}, over the limit of {cap}")
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"))
    kv_heads = _per_layer(meta.get(f"{arch}.attention.head_count_kv"))
    if not heads or not kv_heads:
        return
    if len(heads) == 1:
        heads = heads * len(kv_heads)
    if len(kv_heads) == 1:
        kv_heads = kv_heads * len(heads)
    for i, (h, kv) in enumerate(zip(heads, kv_heads, strict=False)):
        if h > 0 and (kv == 0 or kv > h or h % kv):
            raise _fail(
                path,
                f"layer {i} has {h} attention heads and {kv} key/value heads: the heads must "
                "be a multiple of the key/value heads",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_vocabulary(path: Path, meta: dict[str, Any], tokens: list[str]) -> None:
    """What llama.cpp asserts about a vocabulary, or indexes without checking."""
    n_tokens = len(tokens)
    if n_tokens == 0:
        raise _fail(path, "the vocabulary ('tokenizer.ggml.tokens') is empty")
    # llama.cpp reads each token as a C string (cut at a NUL) and renames empty ones.
    words = tokens
    if any(not t or "\0" in t for t in tokens):
        words = [t.split("\0", 1)[0] or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    word_set = set(words)
    if len(word_set) != n_tokens:  # llama.cpp asserts that every token is distinct
        seen: dict[str, int] = {}
        for i, word in enumerate(words):
            if word in seen:
                raise _fail(
                    path,
                    f"the vocabulary has token {_show(word)} twice (ids {seen[word]} and {i})",
                )
            seen[word] = i
    model = meta.get("tokenizer.ggml.model")
    # The special tokens llama.cpp uses while tokenizing and decoding, unchecked: an id in the
    # file outside the vocabulary falls back to a default, which must then be inside it.
    defaults = _DEFAULT_SPECIAL_IDS.get(model, {}) if isinstance(model, str) else {}
    for role in CHECKED_SPECIAL_TOKENS:
        key = SPECIAL_TOKEN_KEYS[role]
        value = meta.get(key)
        in_range = _is_int(value) and 0 <= value < n_tokens
        effective = value if in_range else defaults.get(role)
        if effective is not None and not 0 <= effective < n_tokens:
            said = f"is {value}" if key in meta else "is missing"
            raise _fail(
                path,
                f"'{key}' {said} and llama.cpp's default id {effective} is outside the "
                f"vocabulary of {n_tokens} tokens",
            )
        if role in ("bos", "eos") and effective is not None:
            try:  # llama-cpp-python decodes these two strictly
                words[effective].encode("utf-8")
            except UnicodeEncodeError:
                raise _fail(path, f"the {role} token {effective} is not valid UTF-8") from None
    # A byte token in a WordPiece vocabulary makes llama.cpp abort while loading it.
    token_types = meta.get("tokenizer.ggml.token_type")
    if model == "bert" and token_types is not None and TOKEN_TYPE_BYTE in token_types:
        token_id = list(token_types).index(TOKEN_TYPE_BYTE)
        raise _fail(
            path,
            f"token {token_id} has type BYTE, which a WordPiece vocabulary cannot have",
        )
    # SentencePiece: for text outside the vocabulary llama.cpp falls back to byte tokens,
    # <0xXX> or else the raw byte, looked up with an unchecked .at() that aborts the process.
    if model == "llama":
        missing = [
            b
            for b in range(256)
            if f"<0x{b:02X}>" not in word_set
            and bytes([b]).decode("utf-8", errors="surrogateescape") not in word_set
        ]
        if missing:
            raise _fail(
                path,
                f"the SentencePiece vocabulary has no token for byte 0x{missing[0]:02X} "
                f"(<0x{missing[0]:02X}>), nor for {len(missing) - 1} other bytes",
            )


def _show(token: str) -> str:
    return repr(_printable(token))


def _printable(text: str) -> str:
    """Text read with surrogateescape, with any invalid UTF-8 shown as U+FFFD."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _parse_one(path: Path) -> GGUFFile:
    if path.exists() and not path.is_file():
        raise InvalidModelError(f"not a regular file: {path}")
    try:
        f = path.open("rb")
    except FileNotFoundError as exc:
        raise InvalidModelError(f"model file not found: {path}") from exc
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        return _parse_stream(f, size, path)


def _parse_stream(f: BinaryIO, size: int, path: Path) -> GGUFFile:
    """Parse and check one file; the shared decoder's neutral signals become our errors."""
    try:
        return _parse_checked(f, size, path)
    except Truncated as exc:
        raise _fail(path, f"truncated: {exc.detail}") from None
    except Malformed as exc:
        raise _fail(path, exc.message) from None


def _parse_checked(f: BinaryIO, size: int, path: Path) -> GGUFFile:
    r = _Reader(f, size, path)
    if size < 4:
        raise _fail(path, f"truncated: the file has {size} bytes, too short for a GGUF header")
    magic = r.raw(4, "magic")
    if magic != GGUF_MAGIC:
        raise _fail(
            path,
            f"bad magic {magic!r} (expected b'GGUF')",
            hint="this is not a GGUF file; localllm runs GGUF models only",
        )
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise _fail(path, "big-endian GGUF is not supported on this machine")
        raise _fail(
            path,
            f"unsupported GGUF version {version} (supported: 2 and 3)",
            hint="convert the model again with a current llama.cpp",
        )
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("key/value count")
    if n_kv > MAX_KV_COUNT:
        raise _fail(path, f"key/value count {n_kv} is over the limit of {MAX_KV_COUNT}")
    if n_tensors > MAX_TENSOR_COUNT:
        raise _fail(path, f"tensor count {n_tensors} is over the limit of {MAX_TENSOR_COUNT}")
    # Smallest possible entries: key (8 + 1) + type (4) + 1 byte value; tensor info 8+1+4+8+4+8.
    if n_kv * 14 + n_tensors * 33 > r.left:
        raise _fail(
            path,
            f"truncated: {n_kv} keys and {n_tensors} tensors cannot fit in the "
            f"{r.left} bytes left after the header (the file has {size} bytes)",
        )

    meta: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for i in range(n_kv):
        key = r.string(f"key #{i}", MAX_KEY_LENGTH)
        if not key:
            raise _fail(path, f"key #{i} is empty")
        if key in meta:
            raise _fail(path, f"duplicate key '{key}'")
        vtype = r.u32(f"type of '{key}'")
        if vtype not in ValueType.NAMES:
            raise _fail(path, f"key '{key}' has unknown value type {vtype}")
        value, itype = read_value(r, vtype, key)
        _check_key_types(path, key, vtype, itype, value)
        # llama-cpp-python decodes every key and scalar string value strictly, as C strings.
        for what, text in (("key", key), ("value", value if vtype == ValueType.STRING else "")):
            if "\0" in text:
                raise _fail(path, f"the {what} of '{key}' holds a NUL byte")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _fail(path, f"the {what} of '{key}' is not valid UTF-8") from None
        meta[key] = value
        types[key] = (vtype, itype)
    _check_semantics(path, meta)

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise _fail(path, f"general.alignment {alignment} is not a power of two up to 65536")

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.string(f"name of tensor #{i}", MAX_KEY_LENGTH)
        if not name:
            raise _fail(path, f"tensor #{i} has an empty name")
        if len(name.encode("utf-8", errors="surrogateescape")) > MAX_TENSOR_NAME:
            raise _fail(
                path,
                f"tensor #{i} name is {len(name.encode('utf-8', errors='surrogateescape'))} "
                f"bytes long, over {MAX_TENSOR_NAME}",
            )
        if name in names:
            raise _fail(path, f"duplicate tensor '{name}'")
        names.add(name)
        n_dims = r.u32(f"n_dims of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _fail(path, f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS})")
        shape = tuple(r.u64(f"dimension {d} of tensor '{name}'") for d in range(n_dims))
        n_elements = 1
        for d, dim in enumerate(shape):
            if dim < 1 or dim > MAX_ELEMENTS:
                raise _fail(path, f"tensor '{name}' has dimension {d} of size {dim}")
            n_elements *= dim
            if n_elements > MAX_ELEMENTS:
                raise _fail(path, f"tensor '{name}' has too many elements ({shape})")
        ggml_type = r.u32(f"type of tensor '{name}'")
        if ggml_type not in GGML_TYPES:
            raise _fail(path, f"tensor '{name}' has unknown ggml type {ggml_type}")
        type_name, block, type_size = GGML_TYPES[ggml_type]
        if ggml_type in _NON_WEIGHT_TYPES:
            raise _fail(
                path,
                f"tensor '{name}' has type {type_name}: model weights are floats or "
                "quantized blocks (llama.cpp aborts on integer weights)",
            )
        if shape[0] % block:
            raise _fail(
                path,
                f"tensor '{name}' of type {type_name} has a row of {shape[0]} elements, "
                f"not a multiple of its block size {block}",
            )
        n_bytes = n_elements // block * type_size
        offset = r.u64(f"offset of tensor '{name}'")
        if offset % alignment:
            raise _fail(
                path, f"tensor '{name}' offset {offset} is not aligned to {alignment} bytes"
            )
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes))

    header_end = r.pos
    data_offset = -(-header_end // alignment) * alignment
    if tensors and data_offset > size:
        raise _fail(
            path,
            f"truncated: the data section starts at byte {data_offset} "
            f"but the file has {size} bytes",
        )
    # Where the data section would end were the tensors packed: an offset beyond it is wrong
    # in itself; one within it that the file does not reach means the file is cut short.
    packed_size = sum(-(-t.n_bytes // alignment) * alignment for t in tensors)
    previous: TensorInfo | None = None
    for t in sorted(tensors, key=lambda t: t.offset):
        start = data_offset + t.offset
        end = start + t.n_bytes
        if start >= size and t.offset >= packed_size:
            raise _fail(
                path,
                f"tensor '{t.name}' offset {t.offset} points past the end of the file "
                f"(data would start at byte {start}, the file has {size} bytes)",
            )
        if end > size:
            raise _fail(
                path,
                f"truncated: tensor '{t.name}' data ends at byte {end} "
                f"but the file has {size} bytes",
            )
        if previous is not None and previous.offset + previous.n_bytes > t.offset:
            raise _fail(path, f"tensors '{previous.name}' and '{t.name}' overlap")
        previous = t

    counter: Counter[int] = Counter(t.ggml_type for t in tensors)
    return GGUFFile(
        path=path,
        version=version,
        file_size=size,
        alignment=alignment,
        data_offset=data_offset,
        metadata=meta,
        value_types=types,
        tensors=tensors,
        parts=[path],
        total_size=size,
        n_parameters=sum(t.n_elements for t in tensors),
        n_tensors=len(tensors),
        tensor_types=counter,
        matrix_types=Counter(t.ggml_type for t in tensors if len(t.shape) >= 2),
    )


def _split_parts(first: GGUFFile) -> list[GGUFFile]:
    """The other parts of a split model, each parsed and checked against the first."""
    path = first.path
    count = first.metadata.get("split.count")
    no = first.metadata.get("split.no", 0)
    if count is None:
        if "split.no" in first.metadata:
            raise _fail(path, "'split.no' is set but 'split.count' is not")
        return []
    if not 1 <= count <= MAX_SPLIT_COUNT:
        raise _fail(path, f"split.count {count} is out of range (1 to {MAX_SPLIT_COUNT})")
    if not 0 <= no < count:
        raise _fail(path, f"split.no {no} is out of range for split.count {count}")
    if count == 1:
        return []
    match = _SPLIT_NAME.match(path.name)
    if match is None or int(match["count"]) != count or int(match["no"]) != no + 1:
        raise _fail(
            path,
            f"this is part {no + 1} of a {count}-part model but its name does not end in "
            f"-{no + 1:05d}-of-{count:05d}.gguf",
            hint="keep the parts' original file names",
        )
    prefix = match["prefix"]

    def part_path(i: int) -> Path:
        return path.with_name(f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf")

    if no != 0:
        raise _fail(
            path,
            f"this is part {no + 1} of {count} of a split model",
            hint=f"open the first part: {part_path(0).name}",
        )
    missing = [part_path(i).name for i in range(1, count) if not part_path(i).is_file()]
    if missing:
        raise _fail(
            path,
            f"missing split part{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
            hint="download every part of the model into the same folder",
        )
    parts = []
    for i in range(1, count):
        part = _parse_one(part_path(i))
        if part.metadata.get("split.count") != count or part.metadata.get("split.no") != i:
            raise _fail(
                part.path,
                f"split part {i + 1} says split.no={part.metadata.get('split.no')} "
                f"split.count={part.metadata.get('split.count')}, "
                f"expected split.no={i} split.count={count}",
            )
        parts.append(part)
    expected = first.metadata.get("split.tensors.count")
    total = len(first.tensors) + sum(len(p.tensors) for p in parts)
    if expected is not None and expected != total:
        raise _fail(path, f"split.tensors.count is {expected} but the parts hold {total} tensors")
    seen = {t.name for t in first.tensors}
    for part in parts:
        for t in part.tensors:
            if t.name in seen:
                raise _fail(part.path, f"tensor '{t.name}' appears in more than one part")
            seen.add(t.name)
    return parts


_CACHE: dict[tuple[str, int, int, int], GGUFFile] = {}
_CACHE_SIZE = 8


def parse_gguf(path: str | Path, *, check_split: bool = True) -> GGUFFile:
    """Parse and validate a GGUF file's headers; raise :class:`InvalidModelError` if anything
    is wrong. For the first part of a split model every part is read and checked.

    Results for unchanged files are cached, so validating and then reading a file parses once.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise InvalidModelError(f"model file not found: {path}") from exc
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if check_split and key in _CACHE:
        return _CACHE[key]
    gf = _parse_one(path)
    if not check_split:
        return gf
    parts = _split_parts(gf)
    if parts:
        gf.parts = [gf.path, *(p.path for p in parts)]
        gf.total_size = gf.file_size + sum(p.file_size for p in parts)
        gf.n_parameters += sum(p.n_parameters for p in parts)
        gf.n_tensors += sum(p.n_tensors for p in parts)
        for p in parts:
            gf.tensor_types.update(p.tensor_types)
            gf.matrix_types.update(p.matrix_types)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = gf
    return gf


def validate_gguf(path: str | Path) -> None:
    """Raise :class:`InvalidModelError` saying what is wrong unless ``path`` is a GGUF file
    that is safe to hand to llama.cpp (headers only: tensor data is never read)."""
    parse_gguf(path)


# -- classification ------------------------------------------------------------------------

DECODER_ONLY = frozenset(
    " ".join(
        (
            "llama llama4 deci falcon falcon-h1 baichuan grok gpt2 gptj gptneox mpt starcoder",
            "starcoder2 refact bloom stablelm qwen qwen2 qwen2moe qwen2vl qwen3 qwen3moe",
            "qwen3next qwen3vl qwen3vlmoe phi2 phi3 phimoe plamo plamo2 codeshell orion",
            "internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n mamba mamba2 jamba xverse",
            "command-r cohere2 dbrx olmo olmo2 olmoe openelm arctic deepseek deepseek2 chatglm",
            "glm4 glm4moe bitnet nemotron nemotron_h exaone exaone4 rwkv6 rwkv6qwen2 rwkv7",
            "arwkv7 granite granitemoe granitehybrid chameleon hunyuan-moe hunyuan-dense",
            "smollm3 gpt-oss lfm2 lfm2moe dots1 arcee ernie4_5 ernie4_5-moe mistral mistral3",
            "mixtral seed_oss apertus grovemoe minimax-m2 bailingmoe bailingmoe2 kimi-linear",
            "cogvlm pangu-embedded afmoe",
        )
    ).split(" ")
)
ENCODER_ONLY = frozenset(
    (
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "modern-bert",
        "roberta",
        "xlm-roberta",
        "t5encoder",
        "gemma-embedding",
        "clip",
    )
)
ENCODER_DECODER = frozenset(("t5", "bart", "mbart", "whisper"))


def structure_of(arch: str) -> str:
    """The structure of an architecture: decoder-only, encoder-only, encoder-decoder or
    unknown."""
    arch = arch.lower()
    if arch in ENCODER_DECODER:
        return "encoder-decoder"
    if arch in ENCODER_ONLY or arch.startswith(("jina-bert", "bert", "roberta")):
        return "encoder-only"
    if arch in DECODER_ONLY or arch.startswith(("llama", "qwen", "gemma", "phi", "mistral")):
        return "decoder-only"
    return "unknown"


def size_class(n_parameters: int) -> str:
    """The size class: small under 1B parameters, large from 1B to under 100B, else very
    large."""
    if n_parameters < 1_000_000_000:
        return "small"
    if n_parameters < 100_000_000_000:
        return "large"
    return "very large"


def format_count(n: int) -> str:
    """135M, 1.2B, 270M, 8.0K."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"
    return str(n)


TOKENIZER_ALGORITHMS = {
    "gpt2": "BPE",
    "llama": "SentencePiece",
    "bert": "WordPiece",
    "t5": "Unigram",
}


def tokenizer_algorithm(model: str | None) -> str:
    """The algorithm behind ``tokenizer.ggml.model``: BPE, SentencePiece, WordPiece, Unigram,
    or the raw name for others."""
    if not model:
        return "none"
    return TOKENIZER_ALGORITHMS.get(model, model)


THINKING_MECHANISMS = ("enable_thinking", "thinking", "prefill", "harmony", "none")

_GEN_PROMPT_BLOCK = re.compile(
    r"add_generation_prompt(?P<body>.*?)\{%[-+]?\s*(?:endif|else|elif)\b", re.DOTALL
)


_JINJA_ENV: Any = None


def _jinja_env() -> Any:
    """A sandboxed environment like the one llama-cpp-python compiles chat templates in:
    loop controls, ``{% generation %}`` blocks ignored, a ``tojson`` filter."""
    global _JINJA_ENV
    if _JINJA_ENV is None:
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class GenerationTags(Extension):
            tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.Scope(body, lineno=lineno)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[GenerationTags, "jinja2.ext.loopcontrols"],
        )
        env.filters["tojson"] = lambda x, *a, **k: x
        _JINJA_ENV = env
    return _JINJA_ENV


@functools.lru_cache(maxsize=32)
def template_error(template: str) -> str | None:
    """Why ``template`` would not compile as a chat template, or None if it does."""
    if len(template) > MAX_TEMPLATE_LENGTH:
        return f"it is {len(template)} characters long, over the limit of {MAX_TEMPLATE_LENGTH}"
    from jinja2.exceptions import TemplateError as JinjaError
    from jinja2.exceptions import TemplateSyntaxError

    try:
        _jinja_env().from_string(template)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    except JinjaError as exc:
        return str(exc.message or exc)
    except (RecursionError, MemoryError):
        return "it is nested too deeply"
    except Exception as exc:  # jinja's compiler on hostile input: anything is a rejection
        return f"{type(exc).__name__}: {exc}"
    return None


def _template_variables(template: str) -> set[str] | None:
    from jinja2 import meta
    from jinja2.exceptions import TemplateError as JinjaError

    try:
        return set(meta.find_undeclared_variables(_jinja_env().parse(template)))
    except (JinjaError, RecursionError, MemoryError):
        return None


def thinking_mechanism(template: str | None) -> str:
    """Which way a chat template lets a caller control reasoning.

    * ``"harmony"``: OpenAI harmony channels (``<|channel|>``, ``reasoning_effort``);
    * ``"enable_thinking"``: a boolean ``enable_thinking`` variable (Qwen3, SmolLM3, ...);
    * ``"thinking"``: a ``thinking`` variable (DeepSeek V3.1, Granite, ...);
    * ``"prefill"``: the template itself opens ``<think>`` after the generation prompt, so the
      model always thinks (DeepSeek R1, QwQ);
    * ``"none"``: no template, or no thinking support.
    """
    if not template:
        return "none"
    variables = _template_variables(template)
    if variables is None:  # unparsable: fall back to words
        variables = set(re.findall(r"(?<![\w.'\"])([A-Za-z_]\w*)", template))
    if "<|channel|>" in template or "reasoning_effort" in variables:
        return "harmony"
    if "enable_thinking" in variables:
        return "enable_thinking"
    if "thinking" in variables:
        return "thinking"
    for match in _GEN_PROMPT_BLOCK.finditer(template):
        if "<think>" in match["body"]:
            return "prefill"
    return "none"


_INSTRUCT_HINT = re.compile(r"instruct|chat|(?:^|[-_. ])it(?:$|[-_. ])", re.IGNORECASE)


@dataclass
class ModelFileInfo:
    """What a model file is, for people (``localllm show``) and for the rest of the core."""

    path: Path
    name: str
    architecture: str
    structure: str
    parameters: int
    size_class: str
    layers: int | None
    embedding_size: int | None
    heads: int | None
    kv_heads: int | None
    context_length: int | None
    quantization: str
    file_size: int
    tokenizer: str
    tokenizer_model: str | None
    vocab_size: int | None
    special_tokens: dict[str, str]
    modality: str
    projector: Path | None
    tuning: str
    chat_template: str | None
    thinking: str
    split: list[Path]
    gguf_version: int
    tensor_count: int
    metadata: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def is_instruct(self) -> bool:
        return self.tuning == "instruct"

    @property
    def parameters_text(self) -> str:
        return format_count(self.parameters)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the raw metadata, JSON-ready."""
        return {
            "path": str(self.path),
            "name": self.name,
            "architecture": self.architecture,
            "structure": self.structure,
            "parameters": self.parameters,
            "parameters_text": self.parameters_text,
            "size_class": self.size_class,
            "layers": self.layers,
            "embedding_size": self.embedding_size,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "context_length": self.context_length,
            "quantization": self.quantization,
            "file_size": self.file_size,
            "tokenizer": self.tokenizer,
            "tokenizer_model": self.tokenizer_model,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(self.special_tokens),
            "modality": self.modality,
            "projector": str(self.projector) if self.projector else None,
            "tuning": self.tuning,
            "chat_template": self.chat_template,
            "thinking": self.thinking,
            "split": [str(p) for p in self.split],
            "gguf_version": self.gguf_version,
            "tensor_count": self.tensor_count,
        }


def _quantization(gf: GGUFFile) -> str:
    ftype = gf.get_int("general.file_type")
    if ftype is not None and ftype in FILE_TYPES:
        return FILE_TYPES[ftype]
    if not gf.tensor_types:
        return "unknown"
    # The most common type among matrices (norms and biases are F32 in every quantization).
    counts = gf.matrix_types or gf.tensor_types
    return GGML_TYPES[counts.most_common(1)[0][0]][0]


def _projectors(path: Path) -> Iterator[Path]:
    try:
        for p in sorted(path.parent.glob("mmproj*.gguf")):
            if p != path and p.is_file():
                yield p
    except OSError:
        return


def _has_vision_keys(meta: dict[str, Any], arch: str) -> bool:
    prefixes = ("clip.", f"{arch}.vision.", f"{arch}.audio.")
    return arch == "clip" or any(k.startswith(prefixes) for k in meta)


def read_info(path: str | Path) -> ModelFileInfo:
    """Validate ``path`` and describe the model in it (one header parse, cached)."""
    gf = parse_gguf(path)
    meta = gf.metadata
    arch = gf.get_str("general.architecture") or "unknown"
    name = _printable(gf.get_str("general.name") or gf.path.stem)

    def hp(suffix: str) -> int | None:
        return gf.get_int(f"{arch}.{suffix}")

    tokens = meta.get("tokenizer.ggml.tokens")
    tokens = tokens if isinstance(tokens, list) else None
    vocab_size = len(tokens) if tokens is not None else hp("vocab_size")
    special: dict[str, str] = {}
    if tokens is not None:
        for role, key in SPECIAL_TOKEN_KEYS.items():
            token_id = gf.get_int(key)
            if token_id is not None and 0 <= token_id < len(tokens):
                special[role] = _printable(tokens[token_id])

    template = _printable(gf.get_str("tokenizer.chat_template") or "") or None
    hints = " ".join(
        s for s in (name, gf.path.stem, gf.get_str("general.finetune")) if isinstance(s, str)
    )
    tuning = "instruct" if template or _INSTRUCT_HINT.search(hints) else "base"
    projector = next(_projectors(gf.path), None)
    multimodal = projector is not None or _has_vision_keys(meta, arch)
    heads = hp("attention.head_count")
    tokenizer_model = gf.get_str("tokenizer.ggml.model")
    tokenizer_model = _printable(tokenizer_model) if tokenizer_model is not None else None
    return ModelFileInfo(
        path=gf.path,
        name=name,
        architecture=arch,
        structure=structure_of(arch),
        parameters=gf.n_parameters,
        size_class=size_class(gf.n_parameters),
        layers=hp("block_count"),
        embedding_size=hp("embedding_length"),
        heads=heads,
        kv_heads=hp("attention.head_count_kv") or heads,
        context_length=hp("context_length"),
        quantization=_quantization(gf),
        file_size=gf.total_size,
        tokenizer=tokenizer_algorithm(tokenizer_model),
        tokenizer_model=tokenizer_model,
        vocab_size=vocab_size,
        special_tokens=special,
        modality="multimodal" if multimodal else "text",
        projector=projector,
        tuning=tuning,
        chat_template=template,
        thinking=thinking_mechanism(template),
        split=list(gf.parts),
        gguf_version=gf.version,
        tensor_count=gf.n_tensors,
        metadata=meta,
    )

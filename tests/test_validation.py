"""validate_gguf on hand-made corruptions: each must raise InvalidModelError saying what is
wrong, before llama.cpp ever sees the file."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from ggufgen import (
    ARRAY,
    INT32,
    STRING,
    UINT16,
    UINT32,
    encode_gguf,
    gguf_layout,
    read_gguf_contents,
    write_split_gguf,
    write_tiny_gguf,
)

from localllm.errors import InvalidModelError
from localllm.modelfile import (
    MAX_STRING_ITEMS,
    parse_gguf,
    read_info,
    validate_gguf,
)


def bytes_read() -> int:
    """Bytes this process has read so far (Linux ``/proc/self/io``): a check that a reader
    skipped what it should, which no machine load can make flaky (unlike a stopwatch)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/io")
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("valid") / "tiny.gguf")


@pytest.fixture
def corrupt(tmp_path: Path, valid: Path) -> Callable[..., Path]:
    """Write a patched copy of the valid file: ``corrupt(at=..., data=...)`` / ``size=``."""
    counter = iter(range(10_000))
    original = valid.read_bytes()

    def make(patches: list[tuple[int, bytes]] | None = None, size: int | None = None) -> Path:
        data = bytearray(original[:size])
        for at, blob in patches or []:
            data[at : at + len(blob)] = blob
        path = tmp_path / f"bad-{next(counter)}.gguf"
        path.write_bytes(data)
        return path

    return make


def rejects(path: Path, *needles: str) -> str:
    with pytest.raises(InvalidModelError) as info:
        validate_gguf(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert info.value.exit_code == 3
    return message


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def test_valid_file_passes(valid: Path) -> None:
    assert validate_gguf(valid) is None
    gf = parse_gguf(valid)
    assert gf.version == 3
    assert gf.alignment == 32
    assert gf.metadata["general.architecture"] == "llama"


# -- truncations -------------------------------------------------------------------------------


def test_truncated_at_every_section_boundary(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    last_data_end = max(t.data_end for t in layout.tensors)
    points = [p for p in layout.boundaries() if p < last_data_end]
    points += [p - 1 for p in points if p > 0] + [p + 1 for p in points]
    points = sorted({p for p in points if 0 <= p < last_data_end})
    assert len(points) > 150
    for point in points:
        message = rejects(corrupt(size=point), "truncated")
        assert str(point) in message or point < 4 or "data" in message, (point, message)


def test_truncated_tensor_data_names_the_tensor(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    last = max(layout.tensors, key=lambda t: t.data_end)
    size = last.data_end - 10
    rejects(
        corrupt(size=size),
        f"truncated: tensor '{last.name}' data ends at byte {last.data_end} "
        f"but the file has {size} bytes",
    )


def test_truncated_inside_a_tensor_info(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[3]
    rejects(corrupt(size=t.dims_at + 3), "truncated", f"tensor '{t.name}'")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    rejects(path, "truncated", "0 bytes")


def test_truncated_in_padding_before_data(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    assert layout.data_start > layout.tensor_info_end
    rejects(corrupt(size=layout.tensor_info_end), "truncated", "data section starts")


# -- header --------------------------------------------------------------------------------------


def test_bad_magic(corrupt: Callable[..., Path]) -> None:
    rejects(corrupt([(0, b"GGML")]), "bad magic b'GGML'")


def test_not_gguf_at_all(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 not found</html>")
    rejects(path, "bad magic")


@pytest.mark.parametrize("version", [99, 1, 0, 4])
def test_unsupported_version(corrupt: Callable[..., Path], version: int) -> None:
    rejects(corrupt([(4, u32(version))]), f"unsupported GGUF version {version}")


def test_big_endian(corrupt: Callable[..., Path]) -> None:
    rejects(corrupt([(4, struct.pack(">I", 3))]), "big-endian")


def test_huge_kv_count(corrupt: Callable[..., Path]) -> None:
    rejects(corrupt([(16, u64(1 << 40))]), "key/value count 1099511627776 is over the limit")


def test_kv_count_too_large_for_the_file(corrupt: Callable[..., Path]) -> None:
    rejects(corrupt([(16, u64(60_000))]), "truncated", "60000 keys")


def test_kv_count_off_by_one(corrupt: Callable[..., Path]) -> None:
    # One key too many: the first tensor info is read as a key/value and fails somewhere.
    layout = gguf_layout(corrupt())
    rejects(corrupt([(16, u64(len(layout.kvs) + 1))]))


def test_huge_tensor_count(corrupt: Callable[..., Path]) -> None:
    rejects(corrupt([(8, u64(1 << 62))]), "tensor count", "over the limit")


# -- key/values ----------------------------------------------------------------------------------


def test_huge_key_length(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = gguf_layout(valid).kvs[0]
    rejects(corrupt([(kv.start, u64(1 << 60))]), "key #0", "over the limit")


def test_huge_string_value_length(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "general.name")
    rejects(corrupt([(kv.value_at, u64(1 << 62))]), "'general.name'", "over the limit")


def test_string_length_past_end(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "tokenizer.chat_template")
    rejects(
        corrupt([(kv.value_at, u64(5_000_000))]),
        "truncated: string value of 'tokenizer.chat_template'",
        "has length 5000000",
    )


def test_bad_value_type(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "general.name")
    rejects(corrupt([(kv.type_at, u32(13))]), "key 'general.name' has unknown value type 13")


def test_bad_array_item_type(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "tokenizer.ggml.tokens")
    rejects(corrupt([(kv.value_at, u32(77))]), "'tokenizer.ggml.tokens' has unknown item type 77")


def test_huge_array_count(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "tokenizer.ggml.merges")
    rejects(corrupt([(kv.value_at + 4, u64(1 << 50))]), "'tokenizer.ggml.merges'", "items")


def test_array_count_past_end(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "tokenizer.ggml.token_type")
    rejects(corrupt([(kv.value_at + 4, u64(2_000_000))]), "truncated", "token_type")


def test_nested_array(tmp_path: Path) -> None:
    path = tmp_path / "nested.gguf"
    path.write_bytes(encode_gguf([("x.nested", ARRAY, (ARRAY, []))], []))
    rejects(path, "nested arrays")


def test_too_many_strings_without_allocating(tmp_path: Path) -> None:
    # A header claiming millions of empty strings, in a large sparse file of zeros.
    path = tmp_path / "strings.gguf"
    head = b"GGUF" + u32(3) + u64(0) + u64(1)
    key = b"tokenizer.ggml.tokens"
    head += u64(len(key)) + key + u32(ARRAY) + u32(STRING) + u64(MAX_STRING_ITEMS + 1)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + 8 * (MAX_STRING_ITEMS + 1) + 16)
    before = bytes_read()
    rejects(path, "too many strings")
    assert bytes_read() - before < 4 << 20  # the 32 MB of string lengths were never read


def test_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.gguf"
    path.write_bytes(encode_gguf([("a.b", UINT32, 1), ("a.b", UINT32, 2)], []))
    rejects(path, "duplicate key 'a.b'")


@pytest.mark.parametrize(
    ("key", "vtype", "value", "needle"),
    [
        ("general.alignment", STRING, "32", "key 'general.alignment' has type string"),
        ("general.alignment", INT32, 32, "expected uint32"),
        ("general.architecture", UINT32, 1, "'general.architecture' has type uint32"),
        ("tokenizer.ggml.tokens", STRING, "abc", "expected array of string"),
        ("tokenizer.ggml.scores", ARRAY, (STRING, ["a"]), "expected array of float32"),
        ("tokenizer.ggml.token_type", ARRAY, (UINT32, [1]), "expected array of int32"),
        ("tokenizer.ggml.merges", ARRAY, (INT32, [1]), "expected array of string"),
        ("tokenizer.chat_template", ARRAY, (STRING, ["x"]), "expected string"),
        ("split.count", UINT32, 2, "'split.count' has type uint32, expected uint16"),
    ],
)
def test_keys_llama_cpp_reads_with_asserts_are_typed(
    tmp_path: Path, key: str, vtype: int, value: object, needle: str
) -> None:
    path = tmp_path / "typed.gguf"
    path.write_bytes(encode_gguf([(key, vtype, value)], []))
    rejects(path, needle)


@pytest.mark.parametrize("alignment", [0, 3, 48, 1 << 20])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "align.gguf"
    path.write_bytes(encode_gguf([("general.alignment", UINT32, alignment)], []))
    rejects(path, f"general.alignment {alignment} is not a power of two")


def test_scores_shorter_than_vocabulary(tmp_path: Path, valid: Path) -> None:
    kvs, tensors = read_gguf_contents(write_tiny_gguf(tmp_path / "spm.gguf", vocab="llama"))
    kvs = [(k, t, (v[0], v[1][:10]) if k == "tokenizer.ggml.scores" else v) for k, t, v in kvs]
    path = tmp_path / "short.gguf"
    path.write_bytes(encode_gguf(kvs, tensors))
    rejects(path, "'tokenizer.ggml.scores' has 10 items but the vocabulary has")


def test_empty_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "novocab.gguf"
    path.write_bytes(encode_gguf([("tokenizer.ggml.tokens", ARRAY, (STRING, []))], []))
    rejects(path, "vocabulary", "empty")


# -- tensors -------------------------------------------------------------------------------------


def test_tensor_offset_past_the_end(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[2]
    rejects(corrupt([(t.offset_at, u64(1 << 40))]), f"tensor '{t.name}' offset", "past the end")


def test_negative_tensor_offset(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[2]
    rejects(corrupt([(t.offset_at, struct.pack("<q", -32))]), f"tensor '{t.name}'")


def test_misaligned_tensor_offset(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    t = layout.tensors[2]
    offset = t.data_start - layout.data_start + 4
    rejects(corrupt([(t.offset_at, u64(offset))]), "not aligned to 32 bytes")


def test_overlapping_tensors(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    a, b = layout.tensors[2], layout.tensors[3]
    rejects(
        corrupt([(b.offset_at, u64(a.data_start - layout.data_start))]),
        "overlap",
        a.name,
        b.name,
    )


def test_partly_overlapping_tensors(valid: Path, corrupt: Callable[..., Path]) -> None:
    layout = gguf_layout(valid)
    a, b = layout.tensors[0], layout.tensors[1]  # token_embd is large: land inside it
    rejects(corrupt([(b.offset_at, u64(64))]), "overlap", a.name)


@pytest.mark.parametrize("n_dims", [9, 0, 5])
def test_bad_n_dims(valid: Path, corrupt: Callable[..., Path], n_dims: int) -> None:
    t = gguf_layout(valid).tensors[0]
    rejects(corrupt([(t.n_dims_at, u32(n_dims))]), f"'{t.name}' has {n_dims} dimensions")


def test_zero_dimension(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[0]
    rejects(corrupt([(t.dims_at, u64(0))]), f"tensor '{t.name}' has dimension 0 of size 0")


def test_huge_dimensions(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[0]
    rejects(
        corrupt([(t.dims_at, u64(1 << 40)), (t.dims_at + 8, u64(1 << 40))]),
        "too many elements",
    )


@pytest.mark.parametrize("ggml_type", [4, 5, 31, 99, 1 << 31])
def test_unknown_ggml_type(valid: Path, corrupt: Callable[..., Path], ggml_type: int) -> None:
    t = gguf_layout(valid).tensors[1]
    rejects(corrupt([(t.type_at, u32(ggml_type))]), f"unknown ggml type {ggml_type}")


def test_row_not_a_multiple_of_the_block(valid: Path, corrupt: Callable[..., Path]) -> None:
    t = gguf_layout(valid).tensors[0]  # 64 columns; Q4_K blocks are 256
    rejects(corrupt([(t.type_at, u32(12))]), "not a multiple of its block size 256")


def test_tensor_name_too_long(tmp_path: Path) -> None:
    path = tmp_path / "name.gguf"
    path.write_bytes(encode_gguf([], [("x" * 64, (8,), 0, bytes(32))]))
    rejects(path, "name is 64 bytes long")
    path.write_bytes(encode_gguf([], [("x" * 63, (8,), 0, bytes(32))]))
    validate_gguf(path)


def test_duplicate_tensor(tmp_path: Path) -> None:
    path = tmp_path / "dup.gguf"
    path.write_bytes(encode_gguf([], [("w", (8,), 0, bytes(32)), ("w", (8,), 0, bytes(32))]))
    rejects(path, "duplicate tensor 'w'")


# -- split models --------------------------------------------------------------------------------


def test_split_model_is_valid(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    validate_gguf(parts[0])
    assert read_info(parts[0]).split == parts


def test_missing_split_part(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    parts[1].unlink()
    rejects(parts[0], "missing split part: tiny-00002-of-00003.gguf")


def test_non_first_split_part(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    with pytest.raises(InvalidModelError) as info:
        validate_gguf(parts[1])
    assert "part 2 of 3" in str(info.value)
    assert info.value.hint and "tiny-00001-of-00003.gguf" in info.value.hint


def test_split_part_renamed(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 2)
    renamed = parts[0].rename(tmp_path / "tiny.gguf")
    rejects(renamed, "part 1 of a 2-part model", "-00001-of-00002.gguf")


def _rewrite_split_kv(path: Path, key: str, vtype: int, value: object) -> None:
    kvs, tensors = read_gguf_contents(path)
    kvs = [(k, vtype, value) if k == key else (k, t, v) for k, t, v in kvs]
    path.write_bytes(encode_gguf(kvs, tensors))


def test_split_part_with_wrong_number(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    _rewrite_split_kv(parts[2], "split.no", UINT16, 1)
    rejects(parts[0], "split.no=1", "expected split.no=2")


def test_split_part_with_wrong_count(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    _rewrite_split_kv(parts[1], "split.count", UINT16, 4)
    rejects(parts[0], "split.count=4")


def test_split_tensor_count_mismatch(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 2)
    _rewrite_split_kv(parts[0], "split.tensors.count", INT32, 99)
    rejects(parts[0], "split.tensors.count is 99")


@pytest.mark.parametrize(("no", "count"), [(0, 0), (5, 3)])
def test_split_numbers_out_of_range(tmp_path: Path, no: int, count: int) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(encode_gguf([("split.no", UINT16, no), ("split.count", UINT16, count)], []))
    rejects(path, "out of range")


def test_corrupt_split_part(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    data = parts[2].read_bytes()
    parts[2].write_bytes(data[: len(data) - 100])
    rejects(parts[0], "tiny-00003-of-00003.gguf", "truncated")


# -- files that are not files ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    rejects(tmp_path / "nope.gguf", "not found")


def test_directory(tmp_path: Path) -> None:
    rejects(tmp_path, "not a regular file")


def test_fast_on_a_large_file_without_reading_data(tmp_path: Path, valid: Path) -> None:
    # A valid header followed by 8 GB of (sparse) tensor data: only the header is read.
    kvs, _ = read_gguf_contents(valid)
    big = tmp_path / "big.gguf"
    header = encode_gguf(kvs, [("w", (1 << 20, 2048), 0, b"")])
    with big.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + (1 << 20) * 2048 * 4)
    before = bytes_read()
    validate_gguf(big)
    assert bytes_read() - before < len(header) + (4 << 20)  # the header, not 8 GB of data
    assert read_info(big).parameters == (1 << 20) * 2048


# -- what llama.cpp asserts or indexes without checking ------------------------------------------


def _rewrite(src: Path, dst: Path, change: Callable[[str, int, object], object]) -> Path:
    """Copy a GGUF, passing each (key, type, value) through ``change``."""
    kvs, tensors = read_gguf_contents(src)
    dst.write_bytes(encode_gguf([(k, t, change(k, t, v)) for k, t, v in kvs], tensors))
    return dst


def test_duplicate_tokens(tmp_path: Path, valid: Path) -> None:
    def change(key: str, vtype: int, value: object) -> object:
        if key == "tokenizer.ggml.tokens":
            items = list(value[1])  # type: ignore[index]
            items[260] = items[40]
            return (value[0], items)  # type: ignore[index]
        return value

    rejects(_rewrite(valid, tmp_path / "dup.gguf", change), "token '(' twice (ids 40 and 260)")


def test_tokens_equal_up_to_a_nul(tmp_path: Path, valid: Path) -> None:
    def change(key: str, vtype: int, value: object) -> object:
        if key == "tokenizer.ggml.tokens":
            items = list(value[1])  # type: ignore[index]
            items[260] = items[40] + "\0tail"
            return (value[0], items)  # type: ignore[index]
        return value

    rejects(_rewrite(valid, tmp_path / "nul.gguf", change), "twice")


@pytest.mark.parametrize("layers", [0, 513, 1 << 31])
def test_block_count_out_of_range(tmp_path: Path, valid: Path, layers: int) -> None:
    path = _rewrite(
        valid,
        tmp_path / "layers.gguf",
        lambda k, t, v: layers if k == "llama.block_count" else v,
    )
    rejects(path, f"'llama.block_count' is {layers}")


def test_unknown_token_id_outside_a_small_bert_vocabulary(tmp_path: Path) -> None:
    # Out of range, llama.cpp falls back to BERT's default unknown id 100, also out of range.
    src = write_tiny_gguf(tmp_path / "bert.gguf", arch="bert", vocab="bert", weights=False)
    path = _rewrite(
        src,
        tmp_path / "unk.gguf",
        lambda k, t, v: 63 if k == "tokenizer.ggml.unknown_token_id" else v,
    )
    rejects(path, "'tokenizer.ggml.unknown_token_id' is 63", "default id 100")


def test_special_ids_that_fall_back_to_valid_defaults_pass(tmp_path: Path) -> None:
    # A padding id past the vocabulary (as in some Llama 2 fine-tunes) is ignored by llama.cpp,
    # and an eos id past it falls back to SentencePiece's default 2.
    src = write_tiny_gguf(tmp_path / "spm.gguf", vocab="llama")
    extra = [("tokenizer.ggml.padding_token_id", UINT32, 32000)]
    kvs, tensors = read_gguf_contents(src)
    kvs = [(k, t, 99_999 if k == "tokenizer.ggml.eos_token_id" else v) for k, t, v in kvs]
    path = tmp_path / "pad.gguf"
    path.write_bytes(encode_gguf(kvs + extra, tensors))
    validate_gguf(path)


def test_sentencepiece_without_byte_tokens(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "spm.gguf", vocab="llama")

    def change(key: str, vtype: int, value: object) -> object:
        if key == "tokenizer.ggml.tokens":
            items = ["<0xE9>x" if t == "<0xE9>" else t for t in value[1]]  # type: ignore[index]
            return (value[0], items)  # type: ignore[index]
        return value

    rejects(_rewrite(src, tmp_path / "nobyte.gguf", change), "no token for byte 0xE9")


@pytest.mark.parametrize("ggml_type", [24, 25, 26, 27, 28])
def test_integer_weights(valid: Path, corrupt: Callable[..., Path], ggml_type: int) -> None:
    t = gguf_layout(valid).tensors[0]
    rejects(corrupt([(t.type_at, u32(ggml_type))]), f"tensor '{t.name}' has type")


def test_invalid_chat_template(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", chat_template="{% if x %}never closed")
    message = rejects(path, "chat template 'tokenizer.chat_template' is not a valid Jinja")
    assert "line 1" in message


def test_named_chat_templates_are_checked_too(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "t.gguf", extra_kv={"tokenizer.chat_template.tool_use": "{{ x | nofilter }}"}
    )
    rejects(path, "'tokenizer.chat_template.tool_use'", "nofilter")


def test_deeply_nested_chat_template(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", chat_template="{{" + "(" * 5000 + "}}")
    rejects(path, "chat template")


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}",
        "{% generation %}{{ messages[0].content }}{% endgeneration %}",
        "{{ messages | tojson }}",
    ],
)
def test_chat_templates_llama_cpp_python_accepts(tmp_path: Path, template: str) -> None:
    validate_gguf(write_tiny_gguf(tmp_path / "t.gguf", chat_template=template))


def test_metadata_string_not_utf8(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "general.name")
    rejects(corrupt([(kv.value_at + 8, b"\xff\xfe")]), "'general.name' is not valid UTF-8")


def test_metadata_string_with_nul(valid: Path, corrupt: Callable[..., Path]) -> None:
    kv = next(k for k in gguf_layout(valid).kvs if k.key == "general.name")
    rejects(corrupt([(kv.value_at + 9, b"\0")]), "'general.name' holds a NUL byte")


def test_error_messages_never_carry_raw_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "esc.gguf"
    # Build by hand: a key with an escape sequence and an unknown value type.
    key = b"evil\x1b[2Jkey"
    path.write_bytes(b"GGUF" + u32(3) + u64(0) + u64(1) + u64(len(key)) + key + u32(99))
    message = rejects(path, "unknown value type 99")
    assert "\x1b" not in message
    assert "\\x1b" in message


def test_byte_token_in_a_wordpiece_vocabulary(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "bert.gguf", arch="bert", vocab="bert", weights=False)

    def change(key: str, vtype: int, value: object) -> object:
        if key == "tokenizer.ggml.token_type":
            items = list(value[1])  # type: ignore[index]
            items[10] = 6
            return (value[0], items)  # type: ignore[index]
        return value

    rejects(_rewrite(src, tmp_path / "byte.gguf", change), "token 10 has type BYTE")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("llama.attention.head_count_kv", 0xC0000002, "'llama.attention.head_count_kv' is"),
        ("llama.attention.head_count_kv", 3, "4 attention heads and 3 key/value heads"),
        ("llama.attention.head_count_kv", 8, "4 attention heads and 8 key/value heads"),
        ("llama.attention.head_count_kv", 0, "4 attention heads and 0 key/value heads"),
        ("llama.embedding_length", 1 << 30, "'llama.embedding_length' is 1073741824"),
    ],
)
def test_hyperparameters_that_wrap_around(
    tmp_path: Path, valid: Path, key: str, value: int, needle: str
) -> None:
    path = _rewrite(valid, tmp_path / "hp.gguf", lambda k, t, v: value if k == key else v)
    rejects(path, needle)


def test_per_layer_heads(tmp_path: Path) -> None:
    # Per-layer head counts (as in OpenELM or Jamba, where 0 marks a layer without attention).
    ok = write_tiny_gguf(
        tmp_path / "ok.gguf",
        extra_kv={"llama.attention.head_count": [4, 0], "llama.attention.head_count_kv": [2, 0]},
        weights=False,
    )
    validate_gguf(ok)
    bad = write_tiny_gguf(
        tmp_path / "bad.gguf",
        extra_kv={"llama.attention.head_count": [4, 4], "llama.attention.head_count_kv": [2, 3]},
        weights=False,
    )
    rejects(bad, "layer 1 has 4 attention heads and 3 key/value heads")

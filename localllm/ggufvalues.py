"""The GGUF value decoder shared by both header readers.

:mod:`localllm.modelfile` reads a local file strictly (every error is an ``InvalidModelError``
naming the byte offset); :mod:`localllm.fit` reads the first megabytes of a file fetched with an
HTTP Range request, tolerantly (what the prefix holds, and whether it was complete). Both read
values through the :class:`Cursor` and :func:`read_value` here, so the formats, the caps and the
string decoding are one code. Two neutral signals leave the wording to the caller:

* :class:`Truncated`: the bytes ended before the value did (a cut file, or simply the end of a
  prefix);
* :class:`Malformed`: the bytes cannot be right (a length over a cap, an unknown type).

Strings are decoded with ``surrogateescape``: invalid UTF-8 survives as lone surrogates, which
the strict reader rejects where llama.cpp would and the tolerant one ignores.

Pure logic: ``struct`` over bytes, no other dependencies.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, BinaryIO, ClassVar

__all__ = [
    "MAX_ARRAY_LENGTH",
    "MAX_STRING_ITEMS",
    "MAX_STRING_LENGTH",
    "SCALAR_FORMATS",
    "Cursor",
    "Malformed",
    "Truncated",
    "ValueType",
    "read_value",
]

MAX_STRING_LENGTH = 1 << 24  # 16 MiB for one string value (chat templates are ~10-100 KiB)
MAX_ARRAY_LENGTH = 1 << 24
MAX_STRING_ITEMS = 1 << 22  # string array items kept in memory, over the whole file

_CHUNK = 1 << 20


class ValueType:
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12

    NAMES: ClassVar[dict[int, str]] = {
        0: "uint8",
        1: "int8",
        2: "uint16",
        3: "int16",
        4: "uint32",
        5: "int32",
        6: "float32",
        7: "bool",
        8: "string",
        9: "array",
        10: "uint64",
        11: "int64",
        12: "float64",
    }


#: Fixed-size scalar types: struct code.
SCALAR_FORMATS: dict[int, str] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}


def _array_code(fmt: str) -> str:
    """An ``array`` typecode with the same item size as the struct code ``fmt``."""
    size = struct.calcsize("<" + fmt)
    signed = fmt.islower()
    candidates = ("b", "h", "i", "l", "q") if signed else ("B", "H", "I", "L", "Q")
    if fmt in "fd":
        candidates = (fmt,)
    return next(c for c in candidates if array(c).itemsize == size)


_ARRAY_CODES: dict[int, str] = {
    t: _array_code(f) for t, f in SCALAR_FORMATS.items() if t != ValueType.BOOL
}


class Truncated(Exception):
    """The bytes ended before the value did. ``detail`` says what, where, and how short."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Malformed(Exception):
    """The bytes cannot be a valid value (a length over a cap, an unknown type)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Cursor:
    """Little-endian reads over a file handle or a byte buffer.

    With a file (``f`` and its ``size``), every read is bounded by what is left in the file and
    the buffer refills in 1 MiB chunks. With ``data`` alone (a prefix of a file whose size is
    unknown), reading past its end is :class:`Truncated`. ``string_items`` counts the strings
    of arrays kept so far, against :data:`MAX_STRING_ITEMS`.
    """

    def __init__(
        self, f: BinaryIO | None = None, size: int | None = None, data: bytes = b""
    ) -> None:
        self.f = f
        self.size = size
        self.buf: bytes | memoryview = data if f is None else b""
        self.bpos = 0
        self.base = 0  # offset of buf[0]
        self.string_items = 0

    @property
    def pos(self) -> int:
        return self.base + self.bpos

    @property
    def left(self) -> int | None:
        """Bytes left in the whole file; ``None`` when its size is unknown (a prefix)."""
        return None if self.size is None else self.size - self.pos

    def _ensure(self, n: int, what: str) -> None:
        if self.bpos + n <= len(self.buf):
            return
        if self.f is None:
            have = len(self.buf) - self.bpos
            raise Truncated(f"{what} at byte {self.pos} needs {n} bytes but only {have} are here")
        left = self.left
        if left is not None and n > left:
            raise Truncated(
                f"{what} at byte {self.pos} needs {n} bytes but the file has {self.size} bytes"
            )
        rest = self.buf[self.bpos :]
        self.base = self.pos
        chunk = self.f.read(max(n - len(rest), _CHUNK))
        self.buf = bytes(rest) + chunk
        self.bpos = 0
        if len(self.buf) < n:  # the file shrank under us
            raise Truncated(f"{what} at byte {self.pos}: short read")

    def unpack(self, fmt: str, size: int, what: str) -> Any:
        self._ensure(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.bpos)
        self.bpos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", 8, what))

    def raw(self, n: int, what: str) -> bytes:
        self._ensure(n, what)
        data = bytes(self.buf[self.bpos : self.bpos + n])
        self.bpos += n
        return data

    def skip(self, n: int, what: str) -> None:
        """Pass over ``n`` bytes without keeping them (a prefix: they must still be here)."""
        self._ensure(n, what)
        self.bpos += n

    def string(self, what: str, cap: int = MAX_STRING_LENGTH) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > cap:
            raise Malformed(f"{what} at byte {start} has length {n}, over the limit of {cap}")
        left = self.left
        if left is not None and n > left:
            raise Truncated(
                f"{what} at byte {start} has length {n} "
                f"but only {left} bytes are left (the file has {self.size} bytes)"
            )
        return self.raw(n, what).decode("utf-8", errors="surrogateescape")


def read_value(
    r: Cursor, vtype: int, key: str, *, keep_arrays: bool = True
) -> tuple[Any, int | None]:
    """One metadata value of type ``vtype``; returns (value, array item type).

    Number arrays come back as compact ``array.array``, bool arrays as lists, string arrays as
    lists of str. With ``keep_arrays=False`` an array is read past and summarised as
    ``("array", item type, count)`` (a header prefix needs only the scalars).
    """
    fmt = SCALAR_FORMATS.get(vtype)
    if fmt is not None:
        return r.unpack(fmt, struct.calcsize(fmt), f"value of '{key}'"), None
    if vtype == ValueType.STRING:
        return r.string(f"string value of '{key}'", MAX_STRING_LENGTH), None
    if vtype != ValueType.ARRAY:
        raise Malformed(f"key '{key}' has unknown value type {vtype}")
    start = r.pos
    itype = r.u32(f"array type of '{key}'")
    count = r.u64(f"array length of '{key}'")
    if itype not in ValueType.NAMES:
        raise Malformed(f"array '{key}' has unknown item type {itype}")
    if itype == ValueType.ARRAY:
        raise Malformed(f"array '{key}' holds arrays: nested arrays are not supported")
    if count > MAX_ARRAY_LENGTH:
        raise Malformed(
            f"array '{key}' at byte {start} has {count} items, over the limit of {MAX_ARRAY_LENGTH}"
        )
    min_size = 8 if itype == ValueType.STRING else struct.calcsize(SCALAR_FORMATS[itype])
    left = r.left
    if left is not None and count * min_size > left:
        raise Truncated(
            f"array '{key}' at byte {start} has {count} items "
            f"({count * min_size}+ bytes) but only {left} bytes are left "
            f"(the file has {r.size} bytes)"
        )
    if itype == ValueType.STRING:
        if not keep_arrays:
            for i in range(count):
                n = r.u64(f"length of item {i} of array '{key}'")
                if n > MAX_STRING_LENGTH:
                    raise Malformed(
                        f"item {i} of array '{key}' has length {n}, over the limit of "
                        f"{MAX_STRING_LENGTH}"
                    )
                r.skip(n, f"item {i} of array '{key}'")
            return ("array", itype, count), itype
        r.string_items += count
        if r.string_items > MAX_STRING_ITEMS:
            raise Malformed(f"too many strings in arrays (over {MAX_STRING_ITEMS})")
        return _read_string_array(r, key, count), itype
    if not keep_arrays:
        r.skip(count * min_size, f"array '{key}'")
        return ("array", itype, count), itype
    data = r.raw(count * min_size, f"array '{key}'")
    if itype == ValueType.BOOL:
        return [b != 0 for b in data], itype
    # Numbers stay compact (an array.array holds them at their size in the file).
    values = array(_ARRAY_CODES[itype])
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover - GGUF is little-endian
        values.byteswap()
    return values, itype


def _read_string_array(r: Cursor, key: str, count: int) -> list[str]:
    out: list[str] = []
    append = out.append
    unpack_from = struct.unpack_from
    i = 0
    while i < count:
        # Fast path: decode every item already in the buffer without touching the cursor.
        buf = r.buf
        end = len(buf)
        bpos = r.bpos
        while i < count and bpos + 8 <= end:
            (n,) = unpack_from("<Q", buf, bpos)
            stop = bpos + 8 + n
            if stop > end or n > MAX_STRING_LENGTH:
                break
            append(bytes(buf[bpos + 8 : stop]).decode("utf-8", errors="surrogateescape"))
            bpos = stop
            i += 1
        r.bpos = bpos
        if i < count:  # an item straddles the buffer's end (or is bad): the careful path
            append(r.string(f"item {i} of array '{key}'", MAX_STRING_LENGTH))
            i += 1
    return out

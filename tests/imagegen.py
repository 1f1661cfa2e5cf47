"""Encode small test images without an imaging library: PNG (any size, one colour or a
pattern), GIF and BMP headers for the format checks."""

from __future__ import annotations

import struct
import zlib


def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A valid RGB PNG of ``width`` × ``height``, a vertical gradient over ``rgb``."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        shade = (y * 255 // max(1, height - 1)) // 4
        rows += bytes(((rgb[0] + shade) % 256, rgb[1], (rgb[2] + shade) % 256)) * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` but stops after its header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + body
        + struct.pack(">I", zlib.crc32(body))
    )


def pillow_bytes(frames: list[bytes], fmt: str, **options: object) -> bytes:
    """``frames`` (encoded images) saved by Pillow as one ``fmt`` file ("WEBP", "GIF"),
    animated when there are several (each later frame scaled to the first one's size)."""
    import io

    from PIL import Image

    pictures = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    pictures = [pictures[0]] + [p.resize(pictures[0].size) for p in pictures[1:]]
    out = io.BytesIO()
    extra = {"save_all": True, "append_images": pictures[1:], "duration": 100} if frames[1:] else {}
    pictures[0].save(out, fmt, **extra, **options)
    return out.getvalue()

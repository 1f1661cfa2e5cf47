"""Images given to a vision model: read, identified and sized before llama.cpp sees them.

Pure logic (no llama_cpp): the image's format and dimensions come from its header, so a file
that is not an image, a truncated header, an unsupported format or a picture too big to decode
is refused with a clear error instead of reaching the decoder. Decoding itself is done by
llama.cpp's bundled stb_image (PNG, JPEG, GIF first frame, BMP). stb_image cannot read WebP,
so a WebP (its first frame, if animated) is converted to PNG with Pillow here, once, after its
header passed the size check; :attr:`Image.decodable` is what llama.cpp is given, while
:attr:`Image.data` (and its sha256) stays the file as it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from localllm.errors import UsageError

MAX_PIXELS = 64_000_000  # 64 megapixels: decoding more would take gigabytes of memory
MAX_BYTES = 256 << 20  # an encoded image larger than this is refused before it is read
DECODABLE = ("png", "jpeg", "gif", "bmp")  # what llama.cpp's stb_image reads itself
CONVERTED = ("webp",)  # converted to PNG with Pillow first


@dataclass(frozen=True)
class Image:
    """One image: where it came from, its bytes, and what its header says."""

    name: str
    data: bytes
    format: str
    width: int
    height: int
    # the PNG llama.cpp decodes in place of ``data`` (a format stb_image cannot read)
    converted: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def decodable(self) -> bytes:
        """The bytes to give llama.cpp's decoder: the file itself, or its PNG conversion."""
        return self.data if self.converted is None else self.converted

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> str:
        size = _size(len(self.data))
        return f"{self.name} ({self.format.upper()} {self.width}×{self.height}, {size})"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def sniff(data: bytes, name: str = "the image") -> tuple[str, int, int]:
    """The format, width and height of an encoded image; :class:`UsageError` if it is not
    one llama.cpp can decode, its header is cut short, or it is over :data:`MAX_PIXELS`."""
    fmt, (width, height) = _header(data, name)
    if width <= 0 or height <= 0:
        raise UsageError(f"{name} says it is {width}×{height} pixels: not a usable image")
    if width * height > MAX_PIXELS:
        raise UsageError(
            f"{name} is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels), "
            f"more than the {MAX_PIXELS // 1_000_000} megapixels accepted",
            hint="scale it down first",
        )
    return fmt, width, height


def _header(data: bytes, name: str) -> tuple[str, tuple[int, int]]:
    truncated = UsageError(f"{name} is truncated: its header is incomplete")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise truncated
        w, h = struct.unpack(">II", data[16:24])
        return "png", (w, h)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise truncated
        w, h = struct.unpack("<HH", data[6:10])
        return "gif", (w, h)
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg", _jpeg_size(data, truncated)
    if data.startswith(b"BM"):
        if len(data) < 26:
            raise truncated
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", (w, abs(h))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", _webp_size(data, truncated)
    if not data:
        raise UsageError(f"{name} is empty")
    raise UsageError(
        f"{name} is not an image llama.cpp can read",
        hint="give a PNG, JPEG, WebP, GIF or BMP file",
    )


def _jpeg_size(data: bytes, truncated: UsageError) -> tuple[int, int]:
    """Width and height from the first start-of-frame marker."""
    i = 2
    while True:
        while i < len(data) and data[i] == 0xFF:
            i += 1
        if i + 3 > len(data):
            raise truncated
        marker = data[i]
        i += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue  # markers without a length
        length = struct.unpack(">H", data[i : i + 2])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > len(data):
                raise truncated
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            return w, h
        if length < 2:
            raise truncated
        i += length


def _webp_size(data: bytes, truncated: UsageError) -> tuple[int, int]:
    """Width and height from the first chunk: lossy (VP8), lossless (VP8L) or extended
    (VP8X, which animated and alpha WebPs use)."""
    kind, body = data[12:16], data[20:]
    if kind == b"VP8 " and len(body) >= 10:
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(body) >= 5:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(body) >= 10:
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    raise truncated


def _undecodable(name: str) -> UsageError:
    return UsageError(
        f"{name} could not be decoded (corrupt or truncated?)",
        hint="check that the file opens in an image viewer",
    )


def to_png(data: bytes, name: str) -> bytes:
    """``data`` (an image Pillow reads; its first frame if animated) re-encoded as PNG.
    Call it only after :func:`sniff`: the pixel count is checked there, before decoding."""
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise UsageError(
            f"{name} needs Pillow to be decoded, and it is not installed",
            hint="pip install Pillow, or convert the image to PNG",
        ) from None
    try:
        with warnings.catch_warnings():
            # sniff() already held the image to MAX_PIXELS; Pillow's own bomb check would
            # only print a warning the user cannot act on.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as picture:
                picture.load()
                mode = "RGBA" if "A" in picture.getbands() else "RGB"
                out = io.BytesIO()
                picture.convert(mode).save(out, "PNG", compress_level=1)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise _undecodable(name) from exc
    except PILImage.DecompressionBombError as exc:
        raise UsageError(f"{name} is too big to decode", hint="scale it down first") from exc
    return out.getvalue()


def from_bytes(data: bytes, name: str) -> Image:
    fmt, width, height = sniff(data, name)
    converted = to_png(data, name) if fmt in CONVERTED else None
    return Image(name, data, fmt, width, height, converted)


def is_remote(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def read_image(ref: str, *, stdin: bytes | None = None, allow_remote: bool = False) -> Image:
    """The image at ``ref``: a path, ``-`` (``stdin``'s bytes) or, with ``allow_remote``,
    an http(s) URL."""
    if ref == "-":
        if stdin is None:
            raise UsageError("no image on stdin", hint="pipe the image in: ... < picture.png")
        return from_bytes(stdin, "the image on stdin")
    if is_remote(ref):
        if not allow_remote:
            raise UsageError(
                f"refusing to fetch {ref}: localllm works offline",
                hint="download it yourself, or pass --allow-remote",
            )
        return from_bytes(_fetch(ref), ref)
    path = Path(ref).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(f"{ref} is {_size(size)}: too big for an image")
        data = path.read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{ref} is a folder, not an image") from None
    except FileNotFoundError:
        raise UsageError(f"image not found: {ref}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the image {ref}: {exc.strerror or exc}") from exc
    return from_bytes(data, path.name)


def _fetch(url: str) -> bytes:
    import urllib.request

    from localllm.errors import NetworkError

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise NetworkError(f"could not fetch {url}: {exc}") from exc
    if len(data) > MAX_BYTES:
        raise UsageError(f"{url} is more than {_size(MAX_BYTES)}: too big for an image")
    return data


def from_data_url(url: str, *, allow_remote: bool = False) -> Image:
    """An image from an OpenAI-style ``image_url``: a ``data:image/...;base64,`` URL, or
    (with ``allow_remote``) an http(s) URL."""
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise UsageError("an image data URL must be base64: data:image/png;base64,...")
        return from_base64(payload, "the image")
    return read_image(url, allow_remote=allow_remote) if is_remote(url) else _bad_url(url)


def _bad_url(url: str) -> Image:
    raise UsageError(
        f"unsupported image URL {url[:40]!r}",
        hint="send a data:image/...;base64 URL",
    )


def from_base64(payload: str, name: str) -> Image:
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"{name} is not valid base64: {exc}") from exc
    return from_bytes(data, name)

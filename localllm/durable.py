"""Durable file writes: atomic replacement and directory fsync.

The lowest layer beside :mod:`localllm.paths` and :mod:`localllm.errors`: plain file-system
calls, no knowledge of models, profiles or conversations, so the pure layer (profiles) and the
storage layer (store, conversations, the Hub download) can all use it without importing each
other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["file_identity", "fsync_dir", "fsync_file", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` so that ``path`` is either the old file or the new one, never half.

    ``durable`` also fsyncs the file and its folder (manifests, profiles); bookkeeping that may
    be lost in a power cut without harm (download sidecars) skips that.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """Flush a finished file's data to disk (it survives a power cut, not just a crash)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_identity(path: str | Path) -> tuple[str, int, int, int] | None:
    """What tells one version of a file from another: its resolved path, inode, size and
    modification time (ns); None when it cannot be read. Keys for caches of facts about
    files (a validated header, a saved prompt prefix)."""
    try:
        st = os.stat(path)
        return (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def read_json_table(path: Path, version: int, member: str) -> dict[str, Any]:
    """The ``member`` table of a versioned JSON cache file; empty when the file is missing,
    unreadable, damaged or of another version (a cache is only ever a shortcut)."""
    import json

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version:
        return {}
    table = data.get(member)
    return table if isinstance(table, dict) else {}


def write_json_table(path: Path, version: int, member: str, table: dict[str, Any]) -> None:
    """Keep ``table`` as the ``member`` of a versioned JSON cache file (what
    :func:`read_json_table` reads back); a cache that cannot be written is left as it was."""
    import contextlib
    import json

    with contextlib.suppress(OSError, ValueError):
        data = json.dumps({"version": version, member: table}).encode()
        write_atomic(path, data, durable=False)

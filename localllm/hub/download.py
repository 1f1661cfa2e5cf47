"""Downloading one Hub file, our own way where huggingface_hub falls short.

``hf_hub_download`` keeps an interrupted download only within one process, checks sizes but
never the sha256, only warns about disk space and reports progress through tqdm with no way to
cancel. So the byte stream is ours: a partial file in :func:`localllm.paths.downloads_dir` with
a JSON sidecar (url, etag, size, bytes done); the next try (in any process) continues with
``Range`` and starts over only when the etag changed (a 416 or a server that ignores ``Range``
too); the sha256 is computed while writing, by a helper thread, and checked before the file
enters the store; the finished partial is fsynced; free disk space is checked first. A mismatch
deletes the partial and downloads once more, then fails. The file's metadata comes from the
library (``get_hf_file_metadata``), the bytes through its HTTP session (its proxy settings and
user agent), the per-file lock from ``filelock``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm import durable, paths, refs, store
from localllm.errors import ChecksumError, LocalLLMError, NetworkError, ResourceError
from localllm.hub import client
from localllm.hub.client import Transient

Progress = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)
Say = Callable[[str], None]

CHUNK = 1 << 20
SIDECAR_EVERY = 5.0  # seconds between sidecar updates while downloading
STALE_AFTER = 7 * 24 * 3600.0  # partial downloads untouched this long are removed by a pull
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass
class FileMeta:
    """What the Hub says about one file before it is downloaded."""

    url: str
    etag: str | None
    size: int | None
    sha256: str | None
    commit: str | None
    git_sha1: str | None = None  # for files kept in git (not LFS)


def file_meta(repo: str, filename: str, revision: str = "main") -> FileMeta:
    """The file's size, etag (its LFS sha256, or git sha1 for files kept in git) and commit,
    from a HEAD of its resolve URL (``get_hf_file_metadata``), retried when transient."""
    from huggingface_hub import get_hf_file_metadata

    client.check_online(f"download {filename}")
    url = client.resolve_url(repo, filename, revision)

    def head() -> Any:
        client.sync_library()
        return get_hf_file_metadata(
            url,
            token=client.token() or False,
            timeout=client.timeout(),
            library_name=client.LIBRARY_NAME,
            library_version=client.LIBRARY_VERSION,
            endpoint=client.endpoint(),
        )

    meta = client.call(head, repo, filename, what=f"checking {filename}")
    etag = meta.etag or None
    sha = etag if etag and _SHA256.fullmatch(etag) else None
    git_sha1 = etag if etag and _SHA1.fullmatch(etag) else None
    return FileMeta(url, etag, meta.size, sha, meta.commit_hash, git_sha1)


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock held across processes and threads (``filelock``); ``on_wait`` is
    called once when someone else holds it."""
    import filelock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if on_wait:
            on_wait()
        lock.acquire(poll_interval=0.05)
    try:
        yield
    finally:
        lock.release()


def free_space(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def device(path: Path) -> int | None:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return p.stat().st_dev
    except OSError:
        return None


def check_disk_space(need: int, where: Path, what: str) -> None:
    """Raise :class:`ResourceError` with the numbers when ``where`` has less than ``need``."""
    free = free_space(where)
    if need > free:
        raise ResourceError(
            f"not enough disk space for {what}: needs {refs.format_bytes(need)}, "
            f"{refs.format_bytes(free)} free in {where}",
            hint=f"free {refs.format_bytes(need - free)} or more, then run the same pull again",
        )


def download_key(repo: str, filename: str) -> str:
    """The name partials, sidecars and locks of one Hub file share in the downloads folder."""
    digest = hashlib.sha256(f"{repo}\0{filename}".encode()).hexdigest()[:16]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name)[-80:]
    return f"{base}.{digest}"


@dataclass
class Partial:
    """A partial download: the data file, its sidecar (url, etag, size, bytes done; once the
    file is finished, where it went), and the lock file."""

    part: Path
    sidecar: Path
    lock: Path

    @classmethod
    def of(cls, repo: str, filename: str) -> Partial:
        root = paths.downloads_dir()
        key = download_key(repo, filename)
        return cls(
            root / f"{key}.part",
            root / f"{key}.json",
            root / f"{key}.lock",
        )

    def read_sidecar(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def write_sidecar(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=1) + "\n"
        durable.write_atomic(self.sidecar, text.encode(), durable=False)

    def bytes_done(self) -> int:
        try:
            return self.part.stat().st_size
        except OSError:
            return 0

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)


def partial_bytes(repo: str, filename: str) -> int:
    """Bytes already downloaded for a file (0 when no partial)."""
    return Partial.of(repo, filename).bytes_done()


def _stamp_matches(partial: Partial, dest: Path, sha256: str | None) -> bool:
    """Whether the sidecar says this very ``dest`` (same inode, size and mtime) was finished
    and verified: then a second process that waited on the lock need not re-hash it."""
    stamp = (partial.read_sidecar() or {}).get("complete")
    try:
        st = dest.stat()
    except OSError:
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("dest") == str(dest.absolute())
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and stamp.get("ino") == st.st_ino
        and (sha256 is None or stamp.get("sha256") == sha256)
    )


def _write_stamp(partial: Partial, dest: Path, sha256: str | None) -> None:
    st = dest.stat()
    stamp = {
        "dest": str(dest.absolute()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "sha256": sha256,
    }
    partial.write_sidecar({"complete": stamp})


class _Worker:
    """A thread that applies ``fn`` to each item handed to it, in order; the first error is
    kept for the caller to raise."""

    def __init__(self, name: str, fn: Callable[[Any], None]) -> None:
        self._fn = fn
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self.error is None:
                    self._fn(item)
            except BaseException as exc:  # handed to the downloading thread
                self.error = exc
            finally:
                self._queue.task_done()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def wait(self) -> None:
        if not self._closed:
            self._queue.join()

    def close(self) -> None:
        if not self._closed:
            self.wait()
            self._closed = True
            self._queue.put(None)
            self._thread.join()


class _Sink:
    """Where received bytes go: appended to the partial file and hashed (sha256, plus a git
    blob sha1 for files kept in git) by a helper thread, so the disk and the hash overlap the
    network (file writes, hashlib and socket reads all release the GIL). One helper rather
    than two measured faster on two cores. ``written`` counts bytes on disk."""

    _RESET = object()

    def __init__(self, part: Path, git_sha1: str | None, size: int | None, keep: int) -> None:
        self._git_sha1, self._size = git_sha1, size
        self._new_hashers()
        self._f = part.open("r+b" if keep and part.exists() else "wb", buffering=0)
        self.written = 0
        while self.written < keep:  # re-hash what earlier tries left
            data = self._f.read(min(CHUNK, keep - self.written))
            if not data:
                break
            self._hash(data)
            self.written += len(data)
        self._f.truncate(self.written)
        self._f.seek(self.written)
        self._worker = _Worker("localllm-download", self._consume)
        self._closed = False

    def _new_hashers(self) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = None
        if self._git_sha1 and self._size is not None:
            self._sha1 = hashlib.sha1(usedforsecurity=False)
            self._sha1.update(f"blob {self._size}\0".encode())

    def _hash(self, data: bytes) -> None:
        self._sha256.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)

    def _consume(self, data: Any) -> None:
        if data is self._RESET:
            self._f.seek(0)
            self._f.truncate(0)
            self.written = 0
            self._new_hashers()
            return
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += self._f.write(view[done:]) or 0
        self.written += len(view)
        self._hash(data)

    def check(self) -> None:
        """Raise the error the helper thread met (a full disk), if any."""
        if self._worker.error is not None:
            raise self._worker.error

    def put(self, data: bytes) -> None:
        self.check()
        self._worker.put(data)

    def reset(self) -> None:
        """Drop everything: the server is sending the file from its start."""
        self._worker.put(self._RESET)
        self.wait()

    def wait(self) -> int:
        """Wait until every chunk handed over is on disk and hashed; the bytes on disk."""
        self._worker.wait()
        return self.written

    def digests(self) -> tuple[str, str | None]:
        """(sha256, git sha1 or None) of the whole file, once everything is written."""
        self.wait()
        self.check()
        return self._sha256.hexdigest(), self._sha1.hexdigest() if self._sha1 else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._worker.close()
            self._f.close()


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(?:\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _stream_once(
    meta: FileMeta,
    sink: _Sink,
    total: int | None,
    progress: Progress | None,
    save_sidecar: Callable[[int], None],
    repo: str,
    filename: str,
) -> None:
    """One GET through huggingface_hub's HTTP session, with Range from what is on disk, the
    body handed to the sink as it arrives. The token goes to the Hub only: the session drops
    it on a redirect to another host (the CDN)."""
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    start = sink.wait()
    extra = {"Accept-Encoding": "identity"}
    if start:
        extra["Range"] = f"bytes={start}-"
    client.sync_library()
    try:
        with get_session().stream(
            "GET",
            meta.url,
            headers=client.headers(extra),
            timeout=client.timeout(),
            follow_redirects=True,
        ) as resp:
            status = resp.status_code
            if status == 416:
                if total is not None and start >= total:
                    return
                sink.reset()  # our partial is longer than the file: start over
                raise Transient("the server refused the resume offset; starting over")
            if status >= 400:
                resp.read()
                hf_raise_for_status(resp)
            if start and status != 206:  # the server ignored Range: take the whole body
                sink.reset()
                start = 0
            elif start and _content_range_start(resp.headers.get("Content-Range")) != start:
                raise Transient("the server answered a different range than asked")
            received = start
            last_sidecar = time.monotonic()
            try:
                # What has arrived, as it arrives, so progress and the partial follow the
                # network closely and a kill loses little.
                for data in resp.iter_raw():
                    sink.put(data)
                    received += len(data)
                    if progress:
                        progress(received, total)
                    now = time.monotonic()
                    if now - last_sidecar >= SIDECAR_EVERY:
                        save_sidecar(sink.written)
                        last_sidecar = now
            finally:
                save_sidecar(sink.wait())
    except Exception as exc:
        from huggingface_hub import errors as hf

        # The library's HTTP errors are OSErrors too: they are ours to translate first.
        if isinstance(exc, httpx2.HTTPError | hf.HfHubHTTPError | hf.OfflineModeIsEnabled):
            client.reraise(exc, repo, filename)
        if isinstance(exc, ConnectionError | TimeoutError) and exc.errno != errno.ENOSPC:
            raise Transient(str(exc) or type(exc).__name__) from exc
        raise


def _fetch(
    repo: str,
    filename: str,
    meta: FileMeta,
    partial: Partial,
    progress: Progress | None,
    say: Say | None,
) -> tuple[str, str | None]:
    """Bring the partial to the full file, resuming, retrying transient failures. Returns
    (sha256, git sha1 or None) of what was received."""
    total = meta.size
    previous = partial.read_sidecar()
    if previous is None or previous.get("etag") != meta.etag or previous.get("size") != total:
        if previous is not None and partial.bytes_done() and say:
            say(f"{filename} changed on the Hub since the last try: starting over")
        partial.discard()
    done = partial.bytes_done()
    if total is not None and done > total:
        partial.discard()
        done = 0
    sidecar = {
        "repo": repo,
        "filename": filename,
        "url": meta.url,
        "etag": meta.etag,
        "size": total,
        "sha256": meta.sha256,
        "commit": meta.commit,
        "done": done,
    }

    def save_sidecar(on_disk: int) -> None:
        sidecar["done"] = on_disk
        with contextlib.suppress(OSError):
            partial.write_sidecar(sidecar)

    partial.write_sidecar(sidecar)
    if done and say:
        say(f"resuming {filename} at {refs.format_bytes(done)}")
    try:
        sink = _Sink(partial.part, meta.git_sha1, total, keep=done)
        try:
            if progress and done:
                progress(done, total)
            return _fetch_loop(repo, filename, meta, sink, progress, say, save_sidecar)
        finally:
            sink.close()  # no helper thread outlives a download
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceError(
                f"the disk filled up while downloading {filename} "
                f"({refs.format_bytes(partial.bytes_done())} kept in {partial.part.parent})",
                hint="free some space, then run the same pull again to resume",
            ) from None
        raise


def _fetch_loop(
    repo: str,
    filename: str,
    meta: FileMeta,
    sink: _Sink,
    progress: Progress | None,
    say: Say | None,
    save_sidecar: Callable[[int], None],
) -> tuple[str, str | None]:
    total = meta.size
    failures = 0
    delay = client.retry_backoff()
    while True:
        before = sink.wait()
        try:
            _stream_once(meta, sink, total, progress, save_sidecar, repo, filename)
            done = sink.wait()
            sink.check()
            if total is None or done == total:
                break
            if done > total:
                sink.reset()
                raise Transient("the server sent more bytes than the file has")
            raise Transient("the connection closed before the end of the file")
        except Transient as exc:
            sink.check()
            if sink.wait() > before:
                failures = 0
                delay = client.retry_backoff()
            failures += 1
            if failures >= client.MAX_FAILURES:
                cause = exc.__cause__
                if isinstance(cause, LocalLLMError):
                    raise cause from None
                raise NetworkError(
                    f"download of {filename} failed after {failures} tries: {exc}",
                    hint="run the same pull again to resume",
                ) from None
            if say:
                say(f"{filename}: {exc}; retrying in {delay:.1f}s")
            client.sleep_backoff(delay)
            delay = min(delay * 2, 30.0)
    return sink.digests()


def download_file(
    repo: str,
    filename: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    revision: str = "main",
    say: Say | None = None,
    meta: FileMeta | None = None,
) -> Path:
    """Download ``repo``'s ``filename`` to ``dest``, resumably, and check its sha256 (``sha256``
    if given, else the Hub's LFS oid) before ``dest`` appears. Safe to run from two processes
    at once: the second waits, then finds the file done. ``progress(done, total)`` is called
    as bytes arrive; raising :class:`Cancelled` from it stops the download, partial kept."""
    client.check_online(f"download {filename}")
    dest = Path(dest)
    partial = Partial.of(repo, filename)
    paths.downloads_dir().mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        if say:
            say(f"another localllm is downloading {filename}; waiting for it")

    with file_lock(partial.lock, waiting):
        if dest.is_file() and _stamp_matches(partial, dest, sha256):
            if progress:
                size = dest.stat().st_size
                progress(size, size)
            return dest
        meta = meta or file_meta(repo, filename, revision)
        expected = sha256 or meta.sha256
        if sha256 and meta.sha256 and sha256 != meta.sha256:
            raise ChecksumError(
                f"the Hub's {filename} is not the expected file: its sha256 is "
                f"{meta.sha256[:12]}…, expected {sha256[:12]}…",
                hint="the repo changed since this checksum was recorded",
            )
        if (
            dest.is_file()
            and expected
            and dest.stat().st_size == (meta.size or -1)
            and store.sha256_file(dest) == expected
        ):
            _write_stamp(partial, dest, expected)
            return dest
        total = meta.size
        if total is not None:
            need = total - partial.bytes_done()
            check_disk_space(need, partial.part.parent, filename)
            if device(dest.parent) != device(partial.part.parent):
                check_disk_space(total, dest.parent, filename)
        for attempt in (1, 2):
            digest, git_sha1 = _fetch(repo, filename, meta, partial, progress, say)
            bad = (expected is not None and digest != expected) or (
                expected is None and meta.git_sha1 is not None and git_sha1 != meta.git_sha1
            )
            if not bad:
                break
            partial.discard()
            if attempt == 1:
                if say:
                    say(f"checksum mismatch for {filename}, downloading it again")
                continue
            want = (expected or meta.git_sha1 or "")[:12]
            got = (digest if expected else git_sha1 or "")[:12]
            raise ChecksumError(
                f"checksum mismatch for {filename}: expected {want}…, got {got}…, twice",
                hint="the server or a proxy is corrupting data; try again later or another mirror",
            )
        durable.fsync_file(partial.part)  # survives a power cut, not just a crash
        store.place_file(partial.part, dest)
        _write_stamp(partial, dest, expected or digest)
    return dest


def clean_stale_partials(say: Say | None = None, max_age: float = STALE_AFTER) -> int:
    """Delete partial downloads nobody touched for ``max_age`` seconds (a week) and that no
    other process is writing; say how many and how much. Returns the bytes freed."""
    import filelock

    root = paths.downloads_dir()
    if not root.is_dir():
        return 0
    cutoff = time.time() - max_age
    removed, freed = 0, 0
    for part in sorted(root.glob("*.part")):
        try:
            st = part.stat()
        except OSError:
            continue
        if st.st_mtime >= cutoff:
            continue
        lock = filelock.FileLock(str(part.with_suffix(".lock")), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue  # another localllm is resuming it right now
        try:
            part.unlink(missing_ok=True)
            part.with_suffix(".json").unlink(missing_ok=True)
        finally:
            lock.release()
        removed += 1
        freed += st.st_size
    if removed and say:
        s = "" if removed == 1 else "s"
        say(
            f"removed {removed} stale partial download{s} untouched for over a week "
            f"({refs.format_bytes(freed)}) from {root}"
        )
    return freed

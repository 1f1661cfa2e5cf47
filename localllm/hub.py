"""Talking to the Hugging Face Hub: the only module that does network I/O for models.

* Listings: ``GET /api/models/{repo}/revision/{rev}?blobs=true`` gives the commit, the files,
  their sizes and LFS sha256; :func:`list_repo` groups GGUFs, reads one header with an HTTP
  Range request to size the KV cache, and marks each file fits / tight / won't fit.
* Downloads (:func:`download_file`) are resumable across processes: bytes go to a partial file
  in :func:`localllm.paths.downloads_dir` with a JSON sidecar (url, etag, size, bytes done);
  the next try continues with ``Range`` and starts over only if the etag changed. The sha256
  (the LFS oid, ``X-Linked-Etag``) is checked before a file enters the store; a mismatch
  deletes the partial and downloads once more, then fails. Transient errors are retried with
  backoff; a per-file lock keeps two processes from writing the same partial; free disk space
  is checked first.
* ``HF_ENDPOINT`` (mirrors), ``HF_TOKEN`` (gated or private repos) and ``HF_HUB_OFFLINE``
  (fail at once, no connection) are honoured. huggingface_hub itself is imported only to scan
  its cache (:func:`scan_hf_cache`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import queue
import random
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localllm import fit, paths, refs, store
from localllm.errors import (
    ChecksumError,
    InvalidModelError,
    LocalLLMError,
    ModelNotFoundError,
    NetworkError,
    OfflineError,
    ResourceError,
    UsageError,
)

Progress = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)
Say = Callable[[str], None]

DEFAULT_ENDPOINT = "https://huggingface.co"
USER_AGENT = "localllm/0.1"
CHUNK = 1 << 20
# Bytes read to size a model's KV cache before downloading it: the architecture keys come
# before the vocabulary, so the first read almost always suffices; more only when it does not.
HEADER_PREFIXES = (256 << 10, 2 << 20, 16 << 20)
MAX_FAILURES = 5  # consecutive failed attempts (without progress) before giving up
SIDECAR_EVERY = 5.0  # seconds between sidecar updates while downloading


class GatedRepoError(NetworkError):
    """The repo is gated or private and this request is not allowed to read it."""


class RepoNotFoundError(ModelNotFoundError):
    """No such repository (or revision) on the Hub."""


class EntryNotFoundError(ModelNotFoundError):
    """The repository exists but has no such file."""


class NoGGUFError(ModelNotFoundError):
    """The repository has no GGUF file."""


class Cancelled(Exception):
    """Raise this (or anything) from a progress callback to stop a download, e.g. when a TUI
    worker is cancelled: the partial file is kept and the next try resumes it."""


class _Transient(Exception):
    """A failure worth retrying (connection reset, timeout, 5xx, 429, short read)."""


# -- configuration -----------------------------------------------------------------------


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def token() -> str | None:
    """``HF_TOKEN``, else the token `hf auth login` saved (``HF_TOKEN_PATH``, else
    ``$HF_HOME/token``, else ``~/.cache/huggingface/token``)."""
    value = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if value and value.strip():
        return value.strip()
    if os.environ.get("HF_TOKEN_PATH"):
        path = Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    elif os.environ.get("HF_HOME"):
        path = Path(os.environ["HF_HOME"]).expanduser() / "token"
    else:
        path = Path.home() / ".cache" / "huggingface" / "token"
    try:
        saved = path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return saved or None


def timeout() -> float:
    """Seconds to wait for a connection or for the next bytes (``LOCALLLM_HUB_TIMEOUT``)."""
    try:
        return max(0.1, float(os.environ.get("LOCALLLM_HUB_TIMEOUT", "30")))
    except ValueError:
        return 30.0


def retry_backoff() -> float:
    """First retry delay in seconds, doubled each time (``LOCALLLM_RETRY_BACKOFF``)."""
    try:
        return max(0.0, float(os.environ.get("LOCALLLM_RETRY_BACKOFF", "1")))
    except ValueError:
        return 1.0


def resolve_url(repo: str, filename: str, revision: str = "main") -> str:
    rev = urllib.parse.quote(revision, safe="")
    return f"{endpoint()}/{repo}/resolve/{rev}/{urllib.parse.quote(filename)}"


def repo_url(repo: str) -> str:
    return f"{endpoint()}/{repo}"


def _check_online(what: str) -> None:
    if is_offline():
        raise OfflineError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot {what}; the Hub was not contacted",
            hint="unset HF_HUB_OFFLINE to use the network",
        )


# -- HTTP --------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(follow: bool) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [] if follow else [_NoRedirect()]
    return urllib.request.build_opener(*handlers)


def _request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    follow: bool = True,
) -> http.client.HTTPResponse:
    """Open ``url``; HTTP errors come back as :class:`urllib.error.HTTPError`. The token is
    sent to the Hub only, never to the host a redirect leads to."""
    req = urllib.request.Request(url, method=method)
    req.add_header("User-Agent", USER_AGENT)
    req.add_header("Accept-Encoding", "identity")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    tok = token()
    if tok and url.startswith(endpoint()):
        req.add_unredirected_header("Authorization", f"Bearer {tok}")
    return _opener(follow).open(req, timeout=timeout())  # type: ignore[no-any-return]


def _is_transient_status(code: int) -> bool:
    return code == 429 or code == 408 or 500 <= code < 600


def _http_error(exc: urllib.error.HTTPError, repo: str, filename: str | None) -> LocalLLMError:
    code = exc.code
    error_code = exc.headers.get("X-Error-Code", "") if exc.headers else ""
    message = exc.headers.get("X-Error-Message", "") if exc.headers else ""
    what = f"{repo}/{filename}" if filename else repo
    licence_hint = (
        f"accept its licence at {repo_url(repo)} and set HF_TOKEN to a token of that account"
    )
    if error_code == "GatedRepo" or (code in (401, 403) and error_code not in ("RepoNotFound",)):
        if code == 401 and not token() and error_code != "GatedRepo":
            return GatedRepoError(
                f"{repo} needs a login: it is gated or private (the Hub answered 401)",
                hint=licence_hint,
            )
        if token():
            return GatedRepoError(
                f"access to {repo} was refused with your HF_TOKEN (the Hub answered {code}): "
                "the repo is gated and its licence is not accepted, or the token lacks access",
                hint=f"accept the licence at {repo_url(repo)}, or use a token that has access",
            )
        return GatedRepoError(
            f"{repo} is gated: the Hub answered {code}" + (f" ({message})" if message else ""),
            hint=licence_hint,
        )
    if error_code == "RevisionNotFound":
        return RepoNotFoundError(f"{repo} has no such revision", hint="check the @revision")
    if error_code == "EntryNotFound" or (code == 404 and filename and error_code != "RepoNotFound"):
        return EntryNotFoundError(
            f"{repo} has no file '{filename}'", hint=f"see `localllm pull {repo} --list`"
        )
    if error_code == "RepoNotFound" or code == 404:
        hint = "check the name; if it is private, set HF_TOKEN"
        return RepoNotFoundError(f"no repository '{repo}' on {endpoint()}", hint=hint)
    return NetworkError(f"the Hub answered {code} for {what}" + (f": {message}" if message else ""))


def _network_error(exc: BaseException) -> NetworkError:
    reason = getattr(exc, "reason", None) or exc
    return NetworkError(
        f"could not reach the Hub at {endpoint()}: {reason}",
        hint="check the connection, or set HF_ENDPOINT to a mirror",
    )


_TRANSIENT_ERRORS = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    http.client.HTTPException,
)


def _retrying(fn: Callable[[], Any], what: str, say: Say | None = None) -> Any:
    """Call ``fn``, retrying transient failures with exponential backoff."""
    delay = retry_backoff()
    for attempt in range(1, MAX_FAILURES + 1):
        try:
            return fn()
        except _Transient as exc:
            if attempt == MAX_FAILURES:
                cause = exc.__cause__
                if isinstance(cause, LocalLLMError):
                    raise cause from None
                raise _network_error(cause or exc) from None
            if say:
                say(f"{what}: {exc}; retrying in {delay:.1f}s")
            time.sleep(delay * (1 + random.random() / 4))
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _get_json(url: str, repo: str) -> tuple[Any, http.client.HTTPMessage]:
    def attempt() -> tuple[Any, http.client.HTTPMessage]:
        try:
            with _request(url, headers={"Accept": "application/json"}) as resp:
                body = resp.read()
                return json.loads(body), resp.headers
        except urllib.error.HTTPError as exc:
            err = _http_error(exc, repo, None)
            if _is_transient_status(exc.code):
                raise _Transient(f"the Hub answered {exc.code}") from err
            raise err from None
        except ValueError as exc:
            raise NetworkError(f"the Hub sent a reply that is not JSON for {repo}") from exc
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(str(getattr(exc, "reason", exc))) from exc

    return _retrying(attempt, f"reading {repo}")  # type: ignore[no-any-return]


# -- listings ----------------------------------------------------------------------------


@dataclass
class RepoInfo:
    repo: str
    commit: str | None
    files: list[refs.RepoFile]
    gated: bool | str = False
    revision: str | None = None

    @property
    def ggufs(self) -> list[refs.GGUFEntry]:
        return refs.group_ggufs(self.files)


def repo_info(repo: str, revision: str | None = None) -> RepoInfo:
    """The repo's commit and files with sizes and LFS sha256."""
    _check_online(f"list {repo}")
    if not refs.is_repo_id(repo):
        raise UsageError(f"'{repo}' is not a valid Hub repository name")
    base = f"{endpoint()}/api/models/{repo}"
    if revision:
        base += f"/revision/{urllib.parse.quote(revision, safe='')}"
    data, _headers = _get_json(base + "?blobs=true", repo)
    if not isinstance(data, dict):
        raise NetworkError(f"the Hub sent an unexpected reply for {repo}")
    files = []
    for s in data.get("siblings") or []:
        if not isinstance(s, dict) or not isinstance(s.get("rfilename"), str):
            continue
        lfs = s.get("lfs") if isinstance(s.get("lfs"), dict) else {}
        sha = lfs.get("sha256") or lfs.get("oid")
        size = lfs.get("size", s.get("size"))
        files.append(
            refs.RepoFile(
                s["rfilename"],
                int(size) if isinstance(size, int) else 0,
                sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None,
            )
        )
    commit = data.get("sha") if isinstance(data.get("sha"), str) else None
    return RepoInfo(repo, commit, files, data.get("gated") or False, revision)


@dataclass
class FitRow:
    entry: refs.GGUFEntry
    estimate: fit.MemoryEstimate
    verdict: str
    gpu_verdict: str | None = None


@dataclass
class Listing:
    """Every GGUF of a repo with its memory estimate at ``n_ctx``."""

    info: RepoInfo
    rows: list[FitRow]
    projectors: list[refs.GGUFEntry]
    n_ctx: int
    budget: fit.MemoryBudget
    method: str  # "header" (from a header read over HTTP) or "size" (size heuristic)
    shape: fit.ModelShape | None = None

    @property
    def verdicts(self) -> dict[str, str]:
        return {r.entry.name: r.verdict for r in self.rows}

    def row(self, entry: refs.GGUFEntry) -> FitRow | None:
        return next((r for r in self.rows if r.entry.name == entry.name), None)


def fetch_header(repo: str, filename: str, revision: str = "main") -> fit.HeaderPrefix | None:
    """The metadata at the start of a remote GGUF (Range requests of growing size, usually
    one), or None when it cannot be read."""
    _check_online(f"read {filename}")
    head = None
    for size in HEADER_PREFIXES:
        try:
            with _request(
                resolve_url(repo, filename, revision), headers={"Range": f"bytes=0-{size - 1}"}
            ) as resp:
                data = resp.read(size)
        except (*_TRANSIENT_ERRORS, OSError):
            return head
        try:
            head = fit.parse_header_prefix(data)
        except ValueError:
            return None
        if head.complete or head.shape() is not None or len(data) < size:
            return head
    return head


def list_repo(
    repo: str,
    *,
    revision: str | None = None,
    n_ctx: int = 4096,
    read_header: bool = True,
    budget: fit.MemoryBudget | None = None,
) -> Listing:
    """List ``repo``'s GGUFs with fit marks; raises :class:`NoGGUFError` when it has none."""
    info = repo_info(repo, revision)
    entries = info.ggufs
    models = [e for e in entries if not e.mmproj]
    if not models:
        raise NoGGUFError(
            f"{repo} has no GGUF files",
            hint="localllm runs GGUF models: look for a repo with GGUF in its name",
        )
    budget = budget or fit.available_memory()
    shape = None
    if read_header:
        probe = min((e for e in models if e.complete), key=lambda e: e.size, default=models[0])
        head = fetch_header(repo, probe.name, info.commit or revision or "main")
        shape = head.shape() if head else None
    rows = []
    for e in models:
        if shape is not None:
            est = fit.estimate_for_shape(e.size, shape, n_ctx)
        else:
            est = fit.estimate_from_size(e.size, n_ctx, refs.quant_bits(e.quant))
        gpu = fit.fit_verdict(est, budget.vram) if budget.vram is not None else None
        rows.append(FitRow(e, est, fit.fit_verdict(est, budget.ram), gpu))
    projectors = [e for e in entries if e.mmproj]
    return Listing(info, rows, projectors, n_ctx, budget, "header" if shape else "size", shape)


def search(query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Repos matching ``query`` that carry GGUF files, most downloaded first."""
    _check_online("search the Hub")
    params = urllib.parse.urlencode(
        {"search": query, "filter": "gguf", "sort": "downloads", "limit": str(limit)}
    )
    data, _ = _get_json(f"{endpoint()}/api/models?{params}", query)
    if not isinstance(data, list):
        return []
    return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]


# -- downloading one file ----------------------------------------------------------------


@dataclass
class FileMeta:
    """What the Hub says about one file before it is downloaded."""

    url: str
    etag: str | None
    size: int | None
    sha256: str | None
    commit: str | None
    git_sha1: str | None = None  # for files kept in git (not LFS)


def _clean_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    value = value.removeprefix("W/")
    return value.strip('"') or None


def file_meta(repo: str, filename: str, revision: str = "main") -> FileMeta:
    """HEAD the file's resolve URL (no redirect) and read the Hub's headers."""
    _check_online(f"download {filename}")
    url = resolve_url(repo, filename, revision)

    def attempt() -> FileMeta:
        target = url
        for _ in range(5):
            try:
                resp = _request(target, method="HEAD", follow=False)
                resp.close()
                status, headers = resp.status, resp.headers
            except urllib.error.HTTPError as exc:
                if 300 <= exc.code < 400:
                    status, headers = exc.code, exc.headers
                else:
                    err = _http_error(exc, repo, filename)
                    if _is_transient_status(exc.code):
                        raise _Transient(f"the Hub answered {exc.code}") from err
                    raise err from None
            except _TRANSIENT_ERRORS as exc:
                raise _Transient(str(getattr(exc, "reason", exc))) from exc
            linked = _clean_etag(headers.get("X-Linked-Etag"))
            location = headers.get("Location")
            if 300 <= status < 400 and not linked and location:
                target = urllib.parse.urljoin(target, location)  # a renamed repo: follow
                continue
            etag = linked or _clean_etag(headers.get("ETag"))
            size_text = headers.get("X-Linked-Size") or headers.get("Content-Length")
            size = int(size_text) if size_text and size_text.isdigit() else None
            sha = linked if linked and re.fullmatch(r"[0-9a-f]{64}", linked) else None
            git_sha1 = None
            if not linked and etag and re.fullmatch(r"[0-9a-f]{40}", etag):
                git_sha1 = etag
            return FileMeta(url, etag, size, sha, headers.get("X-Repo-Commit"), git_sha1)
        raise NetworkError(f"too many redirects for {repo}/{filename}")

    return _retrying(attempt, f"checking {filename}")  # type: ignore[no-any-return]


def free_space(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _device(path: Path) -> int | None:
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


class FileLock:
    """An exclusive lock on a file, held across processes (flock / msvcrt). ``on_wait`` is
    called once if another process holds it."""

    def __init__(self, path: Path, on_wait: Callable[[], None] | None = None) -> None:
        self.path = path
        self.on_wait = on_wait
        self._f: Any = None

    def _try(self) -> bool:
        fd = self._f.fileno()
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                return False
            raise
        return True

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a+b")
        waited = False
        try:
            while not self._try():
                if not waited and self.on_wait:
                    self.on_wait()
                waited = True
                time.sleep(0.1)
        except BaseException:
            self._f.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                with contextlib.suppress(OSError):
                    msvcrt.locking(self._f.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
        finally:
            self._f.close()


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
        store.write_atomic(self.sidecar, text.encode(), durable=False)

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
    """One GET, with Range from what is on disk, handed to the sink chunk by chunk."""
    start = sink.wait()
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        resp = _request(meta.url, headers=headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and total is not None and start >= total:
            return
        if exc.code == 416:  # our partial is longer than the file: start over
            sink.reset()
            raise _Transient("the server refused the resume offset; starting over") from None
        err = _http_error(exc, repo, filename)
        if _is_transient_status(exc.code):
            raise _Transient(f"the server answered {exc.code}") from err
        raise err from None
    except _TRANSIENT_ERRORS as exc:
        raise _Transient(str(getattr(exc, "reason", exc))) from exc
    with resp:
        if start and resp.status != 206:  # the server ignored Range: take the whole body
            sink.reset()
            start = 0
        elif start and _content_range_start(resp.headers.get("Content-Range")) != start:
            raise _Transient("the server answered a different range than asked")
        received = start
        last_sidecar = time.monotonic()
        try:
            while True:
                # read1: what has arrived (up to CHUNK), so progress and the partial follow the
                # network closely and a kill loses little.
                data = resp.read1(CHUNK)
                if not data:
                    break
                sink.put(data)
                received += len(data)
                if progress:
                    progress(received, total)
                now = time.monotonic()
                if now - last_sidecar >= SIDECAR_EVERY:
                    save_sidecar(sink.written)
                    last_sidecar = now
        except OSError as exc:
            if isinstance(exc, _TRANSIENT_ERRORS) and exc.errno != errno.ENOSPC:
                raise _Transient(str(exc) or type(exc).__name__) from exc
            raise
        except http.client.HTTPException as exc:
            raise _Transient(str(exc) or type(exc).__name__) from exc
        finally:
            save_sidecar(sink.wait())


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
    delay = retry_backoff()
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
                raise _Transient("the server sent more bytes than the file has")
            raise _Transient("the connection closed before the end of the file")
        except _Transient as exc:
            sink.check()
            if sink.wait() > before:
                failures = 0
                delay = retry_backoff()
            failures += 1
            if failures >= MAX_FAILURES:
                cause = exc.__cause__
                if isinstance(cause, LocalLLMError):
                    raise cause from None
                raise NetworkError(
                    f"download of {filename} failed after {failures} tries: {exc}",
                    hint="run the same pull again to resume",
                ) from None
            if say:
                say(f"{filename}: {exc}; retrying in {delay:.1f}s")
            time.sleep(delay * (1 + random.random() / 4))
            delay = min(delay * 2, 30.0)
    return sink.digests()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


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
    _check_online(f"download {filename}")
    dest = Path(dest)
    partial = Partial.of(repo, filename)
    paths.downloads_dir().mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        if say:
            say(f"another localllm is downloading {filename}; waiting for it")

    with FileLock(partial.lock, waiting):
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
            if _device(dest.parent) != _device(partial.part.parent):
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
        _fsync(partial.part)  # a finished download survives a power cut, not just a crash
        store.place_file(partial.part, dest)
        _write_stamp(partial, dest, expected or digest)
    return dest


# -- pulling a model into the store ------------------------------------------------------


@dataclass
class PullPlan:
    """What :func:`pull` will fetch: one GGUF entry of a repo, under a store name."""

    ref: refs.ModelRef
    name: str
    repo: str
    commit: str | None
    entry: refs.GGUFEntry
    reason: str | None = None  # why this quant, when it was picked automatically
    listing: Listing | None = None
    expected: dict[str, str] = field(default_factory=dict)  # file path -> sha256 override

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def files(self) -> list[refs.RepoFile]:
        return self.entry.files

    def store_names(self) -> list[str]:
        return [Path(f.path).name for f in self.entry.files]


def model_name(repo: str, entry: refs.GGUFEntry, unique_quant: bool = True) -> str:
    """The store name of a pulled model: ``owner/repo:QUANT``, or ``owner/repo/file`` when the
    file names no quant or other files of the repo share its quant."""
    if entry.quant and unique_quant:
        return f"{repo}:{entry.quant}"
    return f"{repo}/{refs.split_base(Path(entry.name).name).removesuffix('.gguf')}"


def _unique_quant(entries: list[refs.GGUFEntry], entry: refs.GGUFEntry) -> bool:
    return sum(1 for e in entries if not e.mmproj and e.quant == entry.quant) == 1


def plan_pull(
    ref: str | refs.ModelRef,
    *,
    n_ctx: int = 4096,
    name: str | None = None,
    budget: fit.MemoryBudget | None = None,
) -> PullPlan:
    """Resolve a reference against the Hub: list the repo, choose the file(s), say why."""
    from localllm import catalog

    parsed = refs.parse_ref(ref) if isinstance(ref, str) else ref
    if parsed.kind == "path":
        raise UsageError(
            f"{parsed.raw} is a local path", hint=f"use `localllm import {parsed.raw}` to add it"
        )
    if parsed.kind == "name":
        raise ModelNotFoundError(
            f"'{parsed.raw}' is not a catalog alias or a Hub repository",
            hint="use owner/repo, owner/repo:QUANT or one of: "
            + ", ".join(e.alias for e in catalog.CATALOG),
        )
    _check_online(f"pull {parsed.display()}")
    expected: dict[str, str] = {}
    if parsed.kind == "alias":
        entry_c = catalog.lookup(parsed.alias or parsed.raw)
        assert entry_c is not None
        parsed = refs.ModelRef(parsed.raw, "hub", repo=entry_c.repo, filename=entry_c.filename)
        expected[entry_c.filename] = entry_c.sha256
        name = name or entry_c.alias
    assert parsed.repo is not None
    listing = list_repo(parsed.repo, revision=parsed.revision, n_ctx=n_ctx, budget=budget)
    if listing.info.gated and not token():
        raise GatedRepoError(
            f"{parsed.repo} is gated: downloading it needs a login",
            hint=f"accept its licence at {repo_url(parsed.repo)} and set HF_TOKEN to a token "
            "of that account",
        )
    entries = listing.info.ggufs
    reason = None
    if parsed.filename or parsed.quant:
        entry = refs.select_entry(
            entries, parsed.repo, quant=parsed.quant, filename=parsed.filename
        )
    else:
        pick = refs.auto_pick([r.entry for r in listing.rows], listing.verdicts)
        entry, reason = pick.entry, pick.reason
    if entry.missing_parts:
        raise ModelNotFoundError(
            f"{entry.name} is split, but parts {entry.missing_parts} are missing from {parsed.repo}"
        )
    return PullPlan(
        ref=parsed,
        name=name or model_name(parsed.repo, entry, unique_quant=_unique_quant(entries, entry)),
        repo=parsed.repo,
        commit=listing.info.commit,
        entry=entry,
        reason=reason,
        listing=listing,
        expected=expected,
    )


def _installed_same(plan: PullPlan) -> store.Manifest | None:
    existing = store.get(plan.name)
    if existing is None:
        return None
    wanted = {Path(f.path).name: plan.expected.get(f.path) or f.sha256 for f in plan.files}
    if existing.files != plan.store_names():
        return None
    if all(sha is None or existing.sha256.get(n) == sha for n, sha in wanted.items()):
        return existing
    return None


def _from_hf_cache(plan: PullPlan) -> store.Manifest | None:
    """Register the model in place when the HF cache already holds the exact files."""
    if not plan.commit:
        return None
    snapshot = store.hf_repo_folder(plan.repo) / "snapshots" / plan.commit
    sha: dict[str, str] = {}
    for f in plan.files:
        want = plan.expected.get(f.path) or f.sha256
        p = snapshot / f.path
        if not want or not p.is_file() or p.resolve().name != want:
            return None
        if Path(f.path).parent != Path(plan.files[0].path).parent:
            return None
        sha[f.path] = want
    first_dir = Path(plan.files[0].path).parent
    manifest = store.Manifest(
        name=plan.name,
        files=[Path(f.path).name for f in plan.files],
        sha256={Path(k).name: v for k, v in sha.items()},
        sizes={Path(f.path).name: f.size for f in plan.files},
        size=plan.size,
        repo=plan.repo,
        revision=plan.commit,
        quant=plan.entry.quant,
        source="hf-cache",
        location=str(snapshot / first_dir),
    )
    store.fill_info(manifest)
    store.save_manifest(manifest)
    return manifest


def pull(
    plan: PullPlan,
    *,
    progress: Progress | None = None,
    say: Say | None = None,
) -> store.Manifest:
    """Download the plan's files (resuming partials), verify them, validate the GGUF, and
    add the model to the store with its manifest written last."""
    _check_online(f"pull {plan.name}")
    existing = _installed_same(plan)
    if existing is not None:
        if say:
            say(f"{plan.name} is already installed")
        return existing
    cached = _from_hf_cache(plan)
    if cached is not None:
        if say:
            say(f"{plan.name} is already in the Hugging Face cache: using it in place")
        return cached
    folder = store.Manifest(name=plan.name, files=plan.store_names()).folder
    left = sum(f.size - partial_bytes(plan.repo, f.path) for f in plan.files)
    check_disk_space(left, paths.downloads_dir(), plan.name)
    if _device(folder) != _device(paths.downloads_dir()):
        check_disk_space(plan.size, folder, plan.name)
    total = plan.size
    if progress:
        progress(plan.size - left, total)  # what earlier tries already brought
    base = 0
    staged: dict[str, Path] = {}
    sha: dict[str, str] = {}
    commit = plan.commit
    for f in plan.files:
        dest = folder / Path(f.path).name

        def file_progress(done: int, _total: int | None, base: int = base) -> None:
            if progress:
                progress(base + done, total)

        meta = file_meta(plan.repo, f.path, plan.commit or plan.ref.revision or "main")
        commit = commit or meta.commit
        want = plan.expected.get(f.path) or f.sha256 or meta.sha256
        download_file(
            plan.repo,
            f.path,
            dest,
            sha256=want,
            progress=file_progress,
            say=say,
            meta=meta,
        )
        staged[dest.name] = dest
        if not want:  # a file kept in git: checked by git sha1; record what was received
            stamp = (Partial.of(plan.repo, f.path).read_sidecar() or {}).get("complete") or {}
            want = stamp.get("sha256") if isinstance(stamp, dict) else None
        if want:
            sha[dest.name] = want
        base += f.size
    manifest = store.Manifest(
        name=plan.name,
        files=plan.store_names(),
        sha256=sha,
        sizes={Path(f.path).name: f.size for f in plan.files},
        size=plan.size,
        repo=plan.repo,
        revision=commit,
        quant=plan.entry.quant,
        source="hub",
    )
    try:
        store.validate_file(manifest.primary)
    except InvalidModelError as exc:
        for p in staged.values():
            p.unlink(missing_ok=True)
        raise InvalidModelError(
            f"{plan.repo}/{plan.entry.name} was downloaded intact but is not a usable GGUF: "
            f"{exc.message}",
            hint="the file was deleted; report it to the repo's owner",
        ) from None
    store.fill_info(manifest)
    return store.add_model(manifest, staged)


# -- the Hugging Face cache --------------------------------------------------------------


def scan_hf_cache() -> list[store.Manifest]:
    """GGUF models in the Hugging Face cache, as unsaved manifests (``source="hf-cache"``)
    naming their snapshot folder. Empty when huggingface_hub or the cache is absent."""
    cache = store.hf_cache_dir()
    if not cache.is_dir():
        return []
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return list(_scan_hf_cache_plain(cache))
    try:
        info = scan_cache_dir(cache)
    except Exception:
        return list(_scan_hf_cache_plain(cache))
    found: list[store.Manifest] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        seen: set[str] = set()
        for rev in revisions:
            files = []
            for f in rev.files:
                rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                blob = f.blob_path.name
                sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
                files.append(refs.RepoFile(rel, f.size_on_disk, sha))
            found.extend(
                _cache_manifests(repo.repo_id, rev.commit_hash, rev.snapshot_path, files, seen)
            )
    return found


def _scan_hf_cache_plain(cache: Path) -> Iterator[store.Manifest]:
    for folder in sorted(cache.glob("models--*")):
        repo = folder.name.removeprefix("models--").replace("--", "/", 1)
        snaps = folder / "snapshots"
        if not snaps.is_dir():
            continue
        seen: set[str] = set()
        for snap in sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            files = []
            for p in snap.rglob("*.gguf"):
                if not p.is_file():
                    continue
                blob = p.resolve().name
                sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
                files.append(refs.RepoFile(p.relative_to(snap).as_posix(), p.stat().st_size, sha))
            yield from _cache_manifests(repo, snap.name, snap, files, seen)


def _cache_manifests(
    repo: str, commit: str, snapshot: Path, files: list[refs.RepoFile], seen: set[str]
) -> Iterator[store.Manifest]:
    for entry in refs.group_ggufs(files):
        if entry.mmproj or not entry.complete or entry.name in seen:
            continue
        seen.add(entry.name)
        parent = Path(entry.name).parent
        yield store.Manifest(
            name=model_name(repo, entry),
            files=[Path(f.path).name for f in entry.files],
            sha256={Path(f.path).name: f.sha256 for f in entry.files if f.sha256},
            sizes={Path(f.path).name: f.size for f in entry.files},
            size=entry.size,
            repo=repo,
            revision=commit,
            quant=entry.quant,
            source="hf-cache",
            location=str(snapshot / parent),
        )

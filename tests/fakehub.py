"""A loopback Hugging Face Hub for tests and benchmarks.

A real ``http.server.ThreadingHTTPServer`` on 127.0.0.1 in a thread, speaking the part of the
Hub protocol localllm uses:

* ``GET /api/models/{repo}[/revision/{rev}]`` -> ``{id, sha, gated, private, siblings: [{rfilename,
  size, blobId, lfs: {sha256, size, pointerSize}}]}``;
* ``GET /api/models/{repo}/tree/{rev}`` -> ``[{type, path, size, oid, lfs: {oid, size}}]``;
* ``GET /api/models?search=...&filter=gguf&sort=downloads&limit=N`` -> ``[{id, downloads, likes,
  tags}]``, most downloaded first (what ``HfApi.list_models`` asks), in pages of
  ``page_size`` linked by ``Link: rel="next"`` when set; ``fail["api:search"]`` injects
  statuses;
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` -> ``302`` to ``{cdn_url}/cdn/{sha256}`` with
  ``ETag``, ``X-Linked-Etag``, ``X-Linked-Size``, ``X-Repo-Commit`` (LFS files), or ``200``
  with the bytes and a git-sha1 ``ETag`` (files kept in git);
* ``HEAD|GET /cdn/{sha256}`` -> the bytes, with ``Range``/``206``. The CDN listens on a second
  port, another origin as the real CDN is another host, so huggingface_hub's HEAD stops at the
  redirect (and reads the ``X-Linked-*`` headers there) and the token never reaches it;
* gated repos answer ``401``/``403`` with ``X-Error-Code: GatedRepo``; unknown repos ``404
  RepoNotFound``; unknown files ``404 EntryNotFound``.

It misbehaves on demand (per file name): cut a transfer after N bytes, serve wrong bytes,
answer a status code, throttle, ignore ``Range``, or hold a transfer at a byte offset until the
test releases it (:meth:`FakeHub.hold`: a test that kills or interrupts a download waits for
the hold, so the download can never finish before the signal was sent, however loaded the
machine); and it counts connections, requests and body bytes sent per file.

Run it by hand: ``python tests/fakehub.py owner/repo FILE.gguf...`` prints its URL.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class FakeFile:
    path: str
    data: bytes | None = None
    source: Path | None = None
    lfs: bool = True
    sha256: str = ""
    size: int = 0
    git_sha1: str = ""

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        g = hashlib.sha1()
        if self.data is not None:
            self.size = len(self.data)
            g.update(f"blob {self.size}\0".encode())
            h.update(self.data)
            g.update(self.data)
        else:
            assert self.source is not None
            self.size = self.source.stat().st_size
            g.update(f"blob {self.size}\0".encode())
            with self.source.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    g.update(chunk)
        self.sha256 = h.hexdigest()
        self.git_sha1 = g.hexdigest()

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.source is not None
        with self.source.open("rb") as f:
            f.seek(start)
            return f.read(end - start)


class Hold:
    """Transfers of one file stop once they have sent the bytes before ``offset`` (an offset in
    the file, so a resumed transfer stops at the same place) and wait for :meth:`release`.
    ``reached`` is set when the server first stops there. Every transfer is held until the
    release (a client that times out and resumes is held again), or only the first one with
    ``once``."""

    def __init__(self, offset: int, once: bool = False) -> None:
        self.offset = offset
        self.once = once
        self.reached = threading.Event()
        self.released = threading.Event()
        self.used = False

    def wait(self, timeout: float = 60) -> None:
        """Wait until the server holds the transfer."""
        if not self.reached.wait(timeout):
            raise AssertionError(f"no transfer reached byte {self.offset}")

    def release(self) -> None:
        self.released.set()


@dataclass
class FakeRepo:
    repo: str
    files: dict[str, FakeFile] = field(default_factory=dict)
    commit: str = ""
    gated: bool = False
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens that may read a gated/private repo
    downloads: int = 0

    @property
    def tags(self) -> list[str]:
        return ["gguf"] if any(p.endswith(".gguf") for p in self.files) else []

    def __post_init__(self) -> None:
        if not self.commit:
            self.commit = hashlib.sha1(self.repo.encode()).hexdigest()


class FakeHub:
    """The server and its knobs. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.cdn: dict[str, FakeFile] = {}
        # Misbehaviour, keyed by file path in the repo (the basename works too).
        self.cut_after: dict[str, int] = {}  # close the connection after N body bytes...
        self.cut_times: dict[str, int] = {}  # ...this many times (default: once)
        self.corrupt: dict[str, int] = {}  # serve flipped bytes this many times
        self.fail: dict[str, list[int]] = defaultdict(list)  # statuses to answer first
        self.holds: dict[str, list[Hold]] = defaultdict(list)  # see hold()
        self.throttle: dict[str, float] = {}  # bytes per second ("*" for every file)
        self.ignore_range = False
        self.page_size: int | None = None  # search answers in pages with Link: rel="next"
        # Counters.
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization header) per request
        self.agents: list[tuple[str, str | None]] = []  # (path, User-Agent header) per request
        self.bytes_sent: Counter[str] = Counter()
        # (file, first byte, end) of each GET of a file's bytes, in the order they came: what a
        # client asked for, whatever an earlier connection is still pushing into its socket
        self.transfers: list[tuple[str, int, int]] = []
        self.last_transfer: dict[str, tuple[float, float]] = {}  # file -> (start, end) monotonic
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None

    # -- content ---------------------------------------------------------------------------

    def add_repo(
        self,
        repo: str,
        files: dict[str, bytes | Path] | None = None,
        *,
        gated: bool = False,
        private: bool = False,
        tokens: set[str] | None = None,
        lfs: bool = True,
    ) -> FakeRepo:
        r = FakeRepo(repo, gated=gated, private=private, tokens=set(tokens or ()))
        self.repos[repo] = r
        for path, content in (files or {}).items():
            self.add_file(repo, path, content, lfs=lfs)
        return r

    def add_file(
        self, repo: str, path: str, content: bytes | Path, *, lfs: bool = True
    ) -> FakeFile:
        if isinstance(content, Path):
            f = FakeFile(path, source=content, lfs=lfs)
        else:
            f = FakeFile(path, data=bytes(content), lfs=lfs)
        r = self.repos[repo]
        r.files[path] = f
        r.commit = hashlib.sha1((r.commit + path + f.sha256).encode()).hexdigest()
        self.cdn[f.sha256] = f
        return f

    def file(self, repo: str, path: str) -> FakeFile:
        return self.repos[repo].files[path]

    def hold(self, path: str, offset: int, *, once: bool = False) -> Hold:
        """Hold the next transfer of ``path`` (or its basename) that passes byte ``offset`` of
        the file there until the returned hold is released; :meth:`stop` releases every hold.
        Several holds on one file stop a transfer at each in turn."""
        h = Hold(offset, once)
        with self.lock:
            self.holds[path].append(h)
        return h

    # -- running ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        assert self._cdn is not None
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with hub.lock:
                    hub.connections += 1
                super().process_request(request, client_address)

        self._server = Server(("127.0.0.1", 0), _handler(self))
        self._cdn = Server(("127.0.0.1", 0), _handler(self))
        for server in (self._server, self._cdn):
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        return self

    def stop(self) -> None:
        with self.lock:
            holds = [h for hs in self.holds.values() for h in hs]
        for h in holds:
            h.release()
        for server in (self._server, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._server = self._cdn = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self.lock:
            self.connections = 0
            self.requests.clear()
            self.auth.clear()
            self.agents.clear()
            self.bytes_sent.clear()

    def sent(self, path: str) -> int:
        return self.bytes_sent[path]

    def _knob(self, table: dict[str, Any], path: str) -> Any:
        if path in table:
            return path
        base = path.rsplit("/", 1)[-1]
        if base in table:
            return base
        return "*" if "*" in table else None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeHub/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- helpers -------------------------------------------------------------------------

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(data).encode()
            self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(
                status,
                body,
                {
                    "Content-Type": "application/json",
                    "X-Error-Code": code,
                    "X-Error-Message": message,
                },
            )

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:] if auth.startswith("Bearer ") else None

        def _repo(self, repo: str, *, files: bool) -> FakeRepo | None:
            r = hub.repos.get(repo)
            tok = self._token()
            if r is None or (r.private and tok not in r.tokens):
                if tok is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                else:
                    self._error(404, "RepoNotFound", "Repository not found")
                return None
            if files and r.gated and tok not in r.tokens:
                if tok is None:
                    self._error(401, "GatedRepo", "Access to this model is restricted")
                else:
                    self._error(403, "GatedRepo", "You have not accepted the conditions")
                return None
            return r

        def _injected(self, key: str) -> bool:
            k = hub._knob(hub.fail, key)
            with hub.lock:
                statuses = hub.fail.get(k) if k else None
                status = statuses.pop(0) if statuses else None
            if status is None:
                return False
            self._error(status, "Injected", f"injected {status}")
            return True

        # -- routes --------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            with hub.lock:
                hub.requests.append((self.command, self.path))
                hub.auth.append((self.path, self.headers.get("Authorization")))
                hub.agents.append((self.path, self.headers.get("User-Agent")))
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            query = urllib.parse.parse_qs(url.query)
            try:
                if path == "/api/models":
                    return self._search(query)
                m = re.match(
                    r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", path
                )
                if m:
                    return self._api(m.group(1), m.group(2), m.group(3))
                m = re.match(r"^/cdn/([0-9a-f]{64})$", path)
                if m:
                    return self._cdn(m.group(1))
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    return self._resolve(m.group(1), m.group(2), m.group(3))
                self._error(404, "NotFound", "no such route")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _search(self, query: dict[str, list[str]]) -> None:
            if self._injected("api:search"):
                return
            words = (query.get("search") or [""])[0].lower()
            tags = set(query.get("filter") or [])
            found = [
                {"id": r.repo, "downloads": r.downloads, "likes": 0, "tags": r.tags}
                for r in hub.repos.values()
                if words in r.repo.lower() and not r.private and tags <= set(r.tags)
            ]
            if (query.get("sort") or [""])[0] == "downloads":
                found.sort(key=lambda d: -d["downloads"])
            limit = (query.get("limit") or [""])[0]
            found = found[: int(limit)] if limit.isdigit() else found
            if not hub.page_size:
                return self._json(found)
            cursor = int((query.get("cursor") or ["0"])[0])
            end = cursor + hub.page_size
            headers = {}
            if end < len(found):
                rest = {**query, "cursor": [str(end)]}
                link = f"{hub.url}/api/models?{urllib.parse.urlencode(rest, doseq=True)}"
                headers["Link"] = f'<{link}>; rel="next"'
            self._json(found[cursor:end], headers)

        def _api(self, repo: str, kind: str | None, rev: str | None) -> None:
            if self._injected("api:" + repo):
                return
            r = self._repo(repo, files=False)
            if r is None:
                return
            if rev not in (None, "main", r.commit):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            if kind == "tree":
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": f.path,
                            "size": f.size,
                            "oid": f.git_sha1,
                            **(
                                {"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}}
                                if f.lfs
                                else {}
                            ),
                        }
                        for f in r.files.values()
                    ]
                )
            siblings = []
            for f in r.files.values():
                s: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.git_sha1}
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
                siblings.append(s)
            self._json(
                {
                    "id": r.repo,
                    "modelId": r.repo,
                    "sha": r.commit,
                    "gated": "manual" if r.gated else False,
                    "private": r.private,
                    "siblings": siblings,
                    "tags": ["gguf"],
                }
            )

        def _resolve(self, repo: str, rev: str, filename: str) -> None:
            if self._injected(filename):
                return
            r = self._repo(repo, files=True)
            if r is None:
                return
            if rev not in ("main", r.commit):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            f = r.files.get(filename)
            if f is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist")
            if self.command == "GET":
                r.downloads += 1
            if not f.lfs:
                return self._serve(f, {"ETag": f'"{f.git_sha1}"', "X-Repo-Commit": r.commit})
            self._send(
                302,
                b"",
                {
                    "Location": f"{hub.cdn_url}/cdn/{f.sha256}",
                    "ETag": f'"{f.git_sha1}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "X-Repo-Commit": r.commit,
                },
            )

        def _cdn(self, sha: str) -> None:
            f = hub.cdn.get(sha)
            if f is None:
                return self._error(404, "NotFound", "no such blob")
            if self._injected("cdn:" + f.path):
                return
            self._serve(f, {"ETag": f'"{sha}"'})

        def _serve(self, f: FakeFile, headers: dict[str, str]) -> None:
            start, end = 0, f.size
            status = 200
            rng = self.headers.get("Range")
            if rng and not hub.ignore_range:
                m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, f.size) if m.group(2) else f.size
                    if start >= f.size:
                        return self._send(416, b"", {"Content-Range": f"bytes */{f.size}"})
                    status = 206
            length = end - start
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with hub.lock:
                hub.transfers.append((f.path, start, end))
            self._body(f, start, end)

        def _body(self, f: FakeFile, start: int, end: int) -> None:
            key_cut = hub._knob(hub.cut_after, f.path)
            key_bad = hub._knob(hub.corrupt, f.path)
            key_hold = hub._knob(hub.holds, f.path)
            key_slow = hub._knob(hub.throttle, f.path)
            cut_at = None
            with hub.lock:
                if key_cut is not None and hub.cut_times.get(key_cut, 1) > 0:
                    cut_at = hub.cut_after[key_cut]
                    hub.cut_times[key_cut] = hub.cut_times.get(key_cut, 1) - 1
                corrupt = key_bad is not None and hub.corrupt[key_bad] > 0
                if corrupt:
                    hub.corrupt[key_bad] -= 1
                holds = sorted(
                    (
                        h
                        for h in (hub.holds[key_hold] if key_hold else [])
                        if not (h.once and h.used) and not h.released.is_set()
                        if start <= h.offset < end
                    ),
                    key=lambda h: h.offset,
                )
                for h in holds:
                    h.used = True

            rate = hub.throttle.get(key_slow) if key_slow else None
            plain = cut_at is None and not corrupt and not holds and rate is None
            began = time.monotonic()
            if plain and f.source is not None:
                self.wfile.flush()
                with f.source.open("rb") as src:
                    sent = self.connection.sendfile(src, start, end - start)
                with hub.lock:
                    hub.bytes_sent[f.path] += sent
                    hub.last_transfer[f.path] = (began, time.monotonic())
                return
            pos = start
            chunk = 64 * 1024 if rate is None else max(1024, min(64 * 1024, int(rate / 20)))
            sent_here = 0
            while pos < end:
                n = min(chunk, end - pos)
                if cut_at is not None:
                    n = min(n, max(cut_at - sent_here, 0))
                    if n == 0:
                        self._cut()
                        return
                if holds:
                    if pos == holds[0].offset:
                        holds[0].reached.set()
                        holds.pop(0).released.wait(120)
                        continue
                    n = min(n, holds[0].offset - pos)
                data = f.read(pos, pos + n)
                if corrupt:
                    mid = f.size // 2
                    if pos <= mid < pos + n:
                        b = bytearray(data)
                        b[mid - pos] ^= 0xFF
                        data = bytes(b)
                self.wfile.write(data)
                self.wfile.flush()
                pos += n
                sent_here += n
                with hub.lock:
                    hub.bytes_sent[f.path] += n
                if rate is not None:
                    ahead = sent_here / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            with hub.lock:
                hub.last_transfer[f.path] = (began, time.monotonic())

        def _cut(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def main(argv: list[str]) -> None:  # pragma: no cover - manual use
    repo, *files = argv
    hub = FakeHub().start()
    hub.add_repo(repo, {Path(f).name: Path(f) for f in files})
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

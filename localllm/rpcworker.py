"""Running llama.cpp's RPC worker (``ggml-rpc-server``) for ``localllm worker``.

The worker is llama.cpp's own binary from :mod:`localllm.rpcbuild`; this module starts it,
says when it listens, and stops it cleanly. ``--mem MB`` needs one more piece: the vendored
server lost its ``--mem`` option when it learned several devices, so the worker then listens on
a private loopback port behind a small relay that passes the protocol through byte for byte and
caps the free and total memory in the replies to ``GET_DEVICE_MEMORY`` (the figures the
client's layer split is made from). Nothing else on the wire changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from localllm.errors import LocalLLMError

# Commands the server answers (ggml-rpc.cpp, rpc_serve_client): every other one is one-way.
_ANSWERED = frozenset({0, 1, 2, 3, 7, 8, 9, 11, 13, 14, 15})
_GET_DEVICE_MEMORY = 11
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        part = sock.recv(min(n - len(out), 1 << 20))
        if not part:
            raise ConnectionError("closed")
        out += part
    return bytes(out)


def _copy(src: socket.socket, dst: socket.socket, n: int) -> None:
    buf = bytearray(min(n, 1 << 20) or 1)
    view = memoryview(buf)
    while n > 0:
        got = src.recv_into(view, min(n, len(buf)))
        if not got:
            raise ConnectionError("closed")
        dst.sendall(view[:got])
        n -= got


class _Session:
    """One client connection relayed to the worker, with its memory replies capped."""

    def __init__(self, client: socket.socket, backend: socket.socket, cap: int) -> None:
        self.client, self.backend, self.cap = client, backend, cap
        self.pending: deque[int] = deque()
        self.ready = threading.Condition()
        self.closed = False

    def upstream(self) -> None:
        """Client → worker: forward each request, remembering which ones get a reply."""
        try:
            while True:
                head = _recv_exact(self.client, 9)
                cmd, size = struct.unpack("<BQ", head)
                if cmd in _ANSWERED:
                    with self.ready:
                        self.pending.append(cmd)
                        self.ready.notify()
                self.backend.sendall(head)
                _copy(self.client, self.backend, size)
        except OSError:
            pass
        finally:
            self.close()

    def downstream(self) -> None:
        """Worker → client: forward each reply, capping GET_DEVICE_MEMORY's figures."""
        try:
            while True:
                with self.ready:
                    while not self.pending and not self.closed:
                        self.ready.wait()
                    if not self.pending:
                        return
                    cmd = self.pending.popleft()
                head = _recv_exact(self.backend, 8)
                (size,) = struct.unpack("<Q", head)
                if cmd == _GET_DEVICE_MEMORY and size == 16:
                    free, total = struct.unpack("<QQ", _recv_exact(self.backend, 16))
                    body = struct.pack("<QQ", min(free, self.cap), min(total, self.cap))
                    self.client.sendall(head + body)
                else:
                    self.client.sendall(head)
                    _copy(self.backend, self.client, size)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()
        for s in (self.client, self.backend):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def _relay(listener: socket.socket, backend_port: int, cap: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            backend = socket.create_connection(("127.0.0.1", backend_port))
        except OSError:
            client.close()
            continue
        for s in (client, backend):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(client, backend, cap)
        threading.Thread(target=session.upstream, daemon=True).start()
        threading.Thread(target=session.downstream, daemon=True).start()


def _wait_listening(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    """Until the worker accepts connections (a bare connect-and-close is a client it drops)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalLLMError(
                f"the worker exited at start (exit {proc.returncode})",
                hint="is the port already in use? its own message is above",
            )
        try:
            with socket.create_connection((target, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise LocalLLMError(f"the worker did not listen on port {port} within {timeout:g} s")


def run_worker(
    binary: Path,
    *,
    host: str,
    port: int,
    threads: int | None,
    mem_mb: int | None,
    cache: bool,
    cache_dir: Path,
    say: Callable[[str], None],
) -> int:
    """Run the worker until it exits or Ctrl-C; returns its exit code (0 after Ctrl-C)."""
    inner_port = free_port() if mem_mb else port
    bind_host = "127.0.0.1" if mem_mb else host
    cmd = [str(binary), "-H", bind_host, "-p", str(inner_port)]
    if threads:
        cmd += ["-t", str(threads)]
    if cache:
        cmd.append("-c")
    env = dict(os.environ)
    env.setdefault("LLAMA_CACHE", str(cache_dir))
    listener = None
    if mem_mb:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError as exc:
            listener.close()
            raise LocalLLMError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        listener.listen(16)
    # restore_signals=False: the worker inherits Python's ignored SIGPIPE. llama.cpp's server
    # writes with plain send(), so a client that goes away before reading its reply (a probe
    # that timed out) would otherwise kill the worker with SIGPIPE instead of an EPIPE it
    # handles by dropping that client.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, restore_signals=False)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # a service manager's SIGTERM: stop the worker with us

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        _wait_listening(bind_host, inner_port, proc)
        if listener is not None:
            threading.Thread(
                target=_relay, args=(listener, inner_port, mem_mb * (1 << 20)), daemon=True
            ).start()
        cap = f", offering at most {mem_mb} MiB per device" if mem_mb else ""
        say(f"ready: listening on {host}:{port}{cap} (Ctrl-C stops it)")
        code = proc.wait()
        # a Ctrl-C in the terminal reaches the worker too: stopped by it is a clean stop
        return 0 if code in (-signal.SIGINT, -signal.SIGTERM) else code
    except KeyboardInterrupt:
        say("stopping the worker…")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if listener is not None:
            listener.close()

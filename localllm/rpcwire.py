"""Asking a llama.cpp RPC worker who it is, over its own wire protocol, before llama.cpp does.

llama.cpp's RPC client aborts the whole process (``GGML_ABORT``) when a worker refuses the
connection, answers with another protocol version or goes away; and a worker serves one client
at a time, so connecting to a busy one waits forever. Before any worker is handed to llama.cpp
it is probed here with a timeout: the HELLO handshake (protocol version), the number of devices
and each device's free and total memory. Three commands of the protocol, read from the vendored
``ggml-rpc.cpp``; nothing of our own is added to the wire.

A request is ``| cmd (1 byte) | size (8 bytes, little-endian) | payload |``; a reply is
``| size (8 bytes) | payload |``.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from localllm.profiles import parse_rpc_endpoint

CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # transport capabilities: zeros ask for plain TCP
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker said, or why it said nothing."""

    endpoint: str
    reachable: bool
    protocol: str = ""  # e.g. "7.0.0"
    devices: tuple[tuple[int, int], ...] = field(default=())  # (free, total) bytes per device
    problem: str = ""  # why it cannot be used ("" when it can)

    @property
    def free(self) -> int:
        return sum(f for f, _ in self.devices)

    @property
    def total(self) -> int:
        return sum(t for _, t in self.devices)


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        part = sock.recv(n - len(chunks))
        if not part:
            raise _Closed
        chunks += part
    return bytes(chunks)


def _call(sock: socket.socket, cmd: int, payload: bytes, reply: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply:
        raise ValueError(f"unexpected reply size {size} (wanted {reply})")
    return _recv_exact(sock, size)


def probe(
    endpoint: str, *, timeout: float = DEFAULT_TIMEOUT, expect: str | None = None
) -> WorkerInfo:
    """Connect to ``endpoint`` (``HOST:PORT``) and ask its version, devices and memory.
    ``expect`` (``"7.0.0"``: this build's protocol) makes a different major version, or a
    newer minor one, a problem, as llama.cpp's handshake would refuse it."""
    try:
        host, port = parse_rpc_endpoint(endpoint)
    except ValueError as exc:
        return WorkerInfo(endpoint, False, problem=str(exc))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return WorkerInfo(endpoint, False, problem=f"no answer within {timeout:g} s")
    except OSError as exc:
        return WorkerInfo(endpoint, False, problem=exc.strerror or str(exc))
    try:
        with sock:
            sock.settimeout(timeout)
            try:
                hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
            except TimeoutError:
                return WorkerInfo(
                    endpoint,
                    True,
                    problem=f"connected but no handshake within {timeout:g} s "
                    "(a worker serves one client at a time: is another one using it?)",
                )
            protocol = "{}.{}.{}".format(*hello[:3])
            if expect and not _compatible(protocol, expect):
                return WorkerInfo(
                    endpoint,
                    True,
                    protocol,
                    problem=f"speaks RPC protocol {protocol}, this build {expect}",
                )
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for i in range(count):
                raw = _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16)
                devices.append(struct.unpack("<QQ", raw))
            problem = "" if count else "it has no devices"
            return WorkerInfo(endpoint, True, protocol, tuple(devices), problem)
    except TimeoutError:
        return WorkerInfo(endpoint, True, problem=f"stopped answering within {timeout:g} s")
    except (_Closed, ConnectionError):
        return WorkerInfo(
            endpoint,
            True,
            problem="closed the connection during the handshake (not a llama.cpp RPC worker, "
            "or an incompatible version)",
        )
    except (OSError, ValueError) as exc:
        return WorkerInfo(endpoint, True, problem=f"unexpected answer: {exc}")


def listening(endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> WorkerInfo:
    """Only whether ``endpoint`` accepts connections, without a handshake: for a worker this
    process already uses (its connection keeps the worker busy, so a handshake would wait)."""
    try:
        host, port = parse_rpc_endpoint(endpoint)
        with socket.create_connection((host, port), timeout=timeout):
            return WorkerInfo(endpoint, True)
    except ValueError as exc:
        return WorkerInfo(endpoint, False, problem=str(exc))
    except TimeoutError:
        return WorkerInfo(endpoint, False, problem=f"no answer within {timeout:g} s")
    except OSError as exc:
        return WorkerInfo(endpoint, False, problem=exc.strerror or str(exc))


def _compatible(theirs: str, ours: str) -> bool:
    """llama.cpp's rule: the same major version and a minor no newer than the client's."""
    try:
        t = [int(x) for x in theirs.split(".")]
        o = [int(x) for x in ours.split(".")]
    except ValueError:
        return True  # unknown: let llama.cpp judge
    return t[0] == o[0] and t[1] <= o[1]

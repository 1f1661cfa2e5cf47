"""Run ``localllm`` with every outgoing connection recorded and refused.

    python tests/netguard.py LOGFILE localllm-args...

Used by the offline tests: a command that needs no network must not even try to connect. This
patches the socket layer (the environment), not localllm.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    log_path = sys.argv[1]
    sys.argv = ["localllm", *sys.argv[2:]]

    def refuse(address: object) -> None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{address!r}\n")
        raise OSError(101, "network is unreachable (blocked by the offline test)")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        refuse(address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family == socket.AF_UNIX:
            return real_connect_ex(self, address)
        refuse(address)
        return 1

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        refuse(host)
        return []

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]

    from localllm.cli import main as localllm_main

    localllm_main()


if __name__ == "__main__":
    main()

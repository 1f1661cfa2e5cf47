"""Start ``localllm serve`` as a real subprocess on a free port and wait until it answers.

``grammar``: every generation is forced by this GBNF grammar (through tests/serve_forced.py,
which wraps ``Engine.generate`` as test_cli_modes does in-process), so tiny random-weight
models give known text: reasoning blocks, stop strings, endless streams to cancel.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
URL_RE = re.compile(r"at (http://\S+) ")


class ServerProcess:
    def __init__(self, *args: str, grammar: str | None = None, env: dict[str, str] | None = None):
        environ = dict(os.environ)
        environ.update(env or {})
        if grammar is not None:
            environ["LOCALLLM_TEST_GRAMMAR"] = grammar
            cmd = [sys.executable, str(HERE / "serve_forced.py"), "serve"]
        else:
            cmd = [sys.executable, "-m", "localllm", "serve"]
        cmd += ["--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 60) -> str:
        """The first stderr line matching ``pattern`` (waits for it)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r}; stderr:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.5))

    def start(self, *, ready: bool = True) -> ServerProcess:
        line = self.wait_line(r"localllm serving")
        match = URL_RE.search(line)
        assert match, line
        self.url = match.group(1)
        if ready:
            self.wait_until(lambda: self.get("/health")[0] == 200)
        return self

    def wait_until(self, condition: Any, timeout: float = 60) -> None:
        """Poll the server's state until ``condition()`` holds (an event, not a guess)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError("the server exited:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting; stderr:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, _lower(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, _lower(exc.headers), exc.read()

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, body = self.request("GET", path, **kw)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request("POST", path, body, **kw)
        return status, json.loads(data)

    def health(self) -> dict[str, Any]:
        return self.get("/health")[1]

    def worker(self, name: str | None = None) -> dict[str, Any]:
        models = self.health()["models"]
        if name is None:
            return models[0]
        return next(m for m in models if m["name"] == name)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}

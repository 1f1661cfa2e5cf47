"""An engine in a child process, so that llama.cpp aborting cannot take the front end down.

llama.cpp ends the whole process when something below it fails hard (an RPC worker that dies
mid-generation is a ``GGML_ABORT``; a driver fault is a segfault). :class:`EngineProcess` has
the interface of :class:`localllm.engine.Engine` that :class:`localllm.session.ChatSession`
and the front ends use, but the real engine lives in ``python -m localllm.enginechild``.
When that process dies, the call in flight raises :class:`~localllm.errors.EngineCrashed`
naming the signal or exit code, the last lines the process wrote (llama.cpp's abort message)
and, for RPC, the workers that no longer answer; :meth:`EngineProcess.reopen` loads the model
again.

The protocol, over two pipes (frames: 4-byte length + pickle):

* parent to child: ``("load", path, what, force, need_tokens)`` (``what``: LoadOptions, or a
  Profile the child plans the load for), ``("call", method, args, kwargs)``,
  ``("gen", prompt, settings, grammar, special, lazy_after, asks, shared_prefix)``,
  ``("close",)``;
* child to parent: ``("ok", value)``, ``("err", class, message, hint)``, and while generating
  ``("ask", events)`` / ``("end", events)``.

While generating, the engine asks its ``cancel`` callback once per token (and between prompt
chunks). In the child that callback sends the events produced so far with an ``ask`` and waits
for the parent's answer: ``("stop",)`` or ``("go", injected_text)``. The parent answers by
calling the session's own ``cancel`` and taking its :class:`~localllm.engine.Steering`, at the
same point of the stream as in-process, so output, cancelling and injections match the
in-process engine token for token. One round trip per token costs a few microseconds.

The child's lifetime: it watches its stdin (never written) and exits at end-of-file, so it
ends with the parent however the parent ends (even SIGKILL); it ignores SIGINT, which the
terminal sends to the whole process group: the parent decides when it stops.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from localllm.engine import Engine, Event, LoadOptions, ModelInfo, Steering, TextEvent
from localllm.errors import EngineCrashed, InferenceError, LocalLLMError, UsageError
from localllm.profiles import Profile

_HEADER = struct.Struct("<I")
STDERR_LINES = 40  # the child's last output lines kept for the crash report
CLOSE_WAIT_S = 10.0  # a child asked to close gets this long before it is killed
ISOLATE_ENV = "LOCALLLM_ISOLATE"  # 1: every engine the front ends open runs in a child
RPC_TIMEOUT_ENV = "LOCALLLM_RPC_TIMEOUT"  # seconds without a token before RPC is given up
RPC_TIMEOUT_S = 120.0


def rpc_timeout() -> float | None:
    """How long a generation over RPC workers may go without a token (or a prompt chunk)
    before the engine process is stopped: ``LOCALLLM_RPC_TIMEOUT`` seconds (default 120),
    ``0`` or ``off`` for never. llama.cpp's RPC client waits for a worker's answer without a
    limit, so a worker that hangs without closing its connection (stopped, or its host
    gone quiet) would hold the model, and a server's every later request, for good."""
    raw = os.environ.get(RPC_TIMEOUT_ENV, "").strip().lower()
    if not raw:
        return RPC_TIMEOUT_S
    if raw in ("0", "off", "none", "never"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise UsageError(
            f"{RPC_TIMEOUT_ENV} must be a number of seconds, 0 or off, not {raw!r}",
            hint=f"e.g. {RPC_TIMEOUT_ENV}=300 for workers on a slow network",
        )
    return value


def wants_isolation(profile: Profile) -> bool:
    """Whether the front ends should load ``profile``'s model in a child process: when the
    profile uses RPC workers (its ``rpc`` list, when the build has that field) or when
    ``LOCALLLM_ISOLATE=1`` asks for it."""
    if getattr(profile, "rpc", None):
        return True
    return os.environ.get(ISOLATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def child_env(profile: Profile) -> dict[str, str]:
    """What the engine process of ``profile`` adds to this process's environment when the
    caller gives none (``open_engine(env=None)``): the place to choose another llama.cpp
    build (``LLAMA_CPP_LIB_PATH``) for a profile that needs one. Nothing yet."""
    return {}


# -- framing ----------------------------------------------------------------------------------


def _write(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read(stream: io.BufferedReader) -> Any:
    """The next message, or ``EOFError`` when the other side is gone."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _error_message(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, LocalLLMError):
        return type(exc).__name__, exc.message, exc.hint
    return type(exc).__name__, str(exc), None


def _rebuild_error(name: str, message: str, hint: str | None) -> BaseException:
    """The child's exception as the parent raises it: the same LocalLLMError subclass (hint
    kept), the same builtin exception, else an InferenceError naming the type."""
    from localllm import errors

    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, LocalLLMError):
        return cls(message, hint=hint)
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return InferenceError(f"{name}: {message}")


# -- the parent's side ------------------------------------------------------------------------


class EngineProcess:
    """A loaded model in a child process, used like :class:`~localllm.engine.Engine`.

    ``load`` is either the :class:`LoadOptions` to open the file with, or a
    :class:`Profile`: the child then runs :func:`localllm.loading.open_engine` itself (the
    plan, the memory check, a draft model, RPC workers registered in *its* llama.cpp: this
    process never connects to them), with ``force`` and ``need_tokens``; its warnings go to
    ``warn``. ``env`` is added to the child's environment (e.g. ``LLAMA_CPP_LIB_PATH`` for an
    RPC-enabled llama.cpp build); ``endpoints`` are the RPC workers (``host:port``) checked
    when the process dies, so the error names the one that stopped answering. Not
    thread-safe, like the engine: one thread uses it at a time (:meth:`kill` excepted).
    """

    isolated = True  # front ends: no vision projector, it needs the engine in-process

    def __init__(
        self,
        path: str | Path,
        load: LoadOptions | Profile,
        *,
        env: Mapping[str, str] | None = None,
        endpoints: Sequence[str] = (),
        force: bool = False,
        need_tokens: int | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._load = load
        self._force = force
        self._need_tokens = need_tokens
        self._warn = warn
        self.options: LoadOptions | None = load if isinstance(load, LoadOptions) else None
        self.env = dict(env or {})
        self.endpoints = tuple(endpoints)
        self.draft: Any = None  # a draft model lives in the child
        self.info: ModelInfo
        self.load_phases: list[tuple[str, float]] = []
        self.load_log: list[str] = []  # llama.cpp's load log, when the engine keeps one
        self.rpc_devices: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd = -1
        self._events: io.BufferedReader | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._reader: threading.Thread | None = None
        self._dead: EngineCrashed | None = None
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._n_ctx = 0
        self._n_vocab = 0
        # a generation over RPC workers is stopped after this long without progress
        self.stall_s = rpc_timeout() if self.endpoints else None
        self._progress = 0.0  # when the child last said something during a generation
        self._stalled: float | None = None  # the limit a stopped generation went past
        self._start()

    # -- life ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id (None when there is none)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._dead is None and self._proc.poll() is None

    def _start(self) -> None:
        start = time.perf_counter()
        cmd_read, cmd_write = os.pipe()
        ev_read, ev_write = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # the parent's localllm, not another
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("GGML_NO_BACKTRACE", "1")  # no gdb attaching to an aborting child
        env.update(self.env)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "localllm.enginechild", str(cmd_read), str(ev_write)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_read, ev_write),
                env=env,
            )
        except OSError as exc:
            for fd in (cmd_write, ev_read):
                os.close(fd)
            raise InferenceError(f"could not start the engine process: {exc}") from exc
        finally:
            os.close(cmd_read)  # the child's ends: this process keeps only its own
            os.close(ev_write)
        self._cmd = cmd_write
        self._events = open(ev_read, "rb", buffering=1 << 16)  # noqa: SIM115 - closed in _reap
        self._tail = collections.deque(maxlen=STDERR_LINES)
        self._reader = threading.Thread(
            target=self._read_output,
            args=(self._proc.stdout, self._tail, bool(self._load.verbose)),
            name="localllm-engine-output",
            daemon=True,
        )
        self._reader.start()
        self._dead = None
        self._stalled = None
        self._pieces.clear()
        self._n_ctx = 0
        spawned = time.perf_counter() - start
        try:
            reply = self._call_raw(
                ("load", str(self.path), self._load, self._force, self._need_tokens)
            )
        except BaseException:
            self._reap(kill=True)
            raise
        self.info, self._n_ctx, self._n_vocab, phases, self.options, warnings, log, devices = reply
        self.rpc_devices = dict(devices)  # the child's RPC devices, for the split's labels
        self.load_phases = [("start engine process", spawned), *phases]
        self.load_log = list(log)
        self._tail.clear()  # a later crash is told by what comes after the load
        for warning in warnings:
            if self._warn is not None:
                self._warn(warning)

    @staticmethod
    def _read_output(stream: Any, tail: collections.deque[str], echo: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if echo:
                with contextlib.suppress(Exception):
                    sys.stderr.write(line + "\n")
                    sys.stderr.flush()
        stream.close()

    def reopen(self) -> EngineProcess:
        """Load the model again in a new child (after a crash, or to start afresh)."""
        self._reap(kill=True)
        self._start()
        return self

    def close(self) -> None:
        """Ask the child to free the model and exit (killed if it does not within
        :data:`CLOSE_WAIT_S`)."""
        if self._proc is None:
            return
        if self._dead is None:
            with contextlib.suppress(OSError):
                _write(self._cmd, ("close",))
        self._reap(kill=False)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the child (tests; a server giving up on it)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.send_signal(sig)

    def _reap(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._cmd)
        self._cmd = -1
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the lifeline: the child exits at its end
        if kill:
            self.kill()
        try:
            proc.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=CLOSE_WAIT_S)
        if self._events is not None:
            with contextlib.suppress(OSError):
                self._events.close()
            self._events = None
        self._proc = None

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a proxy dropped without close()
        with contextlib.suppress(Exception):
            if self._proc is not None:
                self._reap(kill=True)

    # -- the pipe ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._dead is not None:
            raise EngineCrashed(
                f"{self._dead.message}; the model must be loaded again", hint=self._dead.hint
            )
        if self._proc is None:
            raise UsageError("this model has been closed")

    def _send(self, message: Any) -> None:
        try:
            _write(self._cmd, message)
        except OSError:
            raise self._crashed() from None

    def _recv(self) -> Any:
        assert self._events is not None
        try:
            return _read(self._events)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise self._crashed() from None

    def _call_raw(self, message: Any) -> Any:
        self._send(message)
        reply = self._recv()
        if reply[0] == "ok":
            return reply[1]
        raise _rebuild_error(*reply[1:])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self._call_raw(("call", method, args, kwargs))

    def _crashed(self) -> EngineCrashed:
        """The error for a child that died, its output read to the end."""
        proc = self._proc
        code: int | None = None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                code = proc.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:  # a pipe broke but it lives: end it
                self.kill()
                code = proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=CLOSE_WAIT_S)
        error = crash_error(
            code, list(self._tail), self.endpoints, loading=not self._n_ctx, stalled=self._stalled
        )
        self._dead = error
        return error

    def _watch(self, done: threading.Event, limit: float) -> None:
        """Stop the child when a generation has gone ``limit`` seconds without a message
        (the blocked read then ends, and says why)."""
        while not done.wait(min(1.0, limit / 4)):
            if time.monotonic() - self._progress > limit:
                self._stalled = limit
                self.kill()
                return

    # -- the engine's interface ----------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def is_chat_model(self) -> bool:
        return self.info.chat_template is not None

    @property
    def n_kv(self) -> int:
        return int(self._call("n_kv"))

    def tokenize(
        self, text: str, *, special: bool = True, add_bos: bool | None = None
    ) -> list[int]:
        return list(self._call("tokenize", text, special=special, add_bos=add_bos))

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return str(self._call("detokenize", list(tokens), special=special))

    def piece(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        cached = self._pieces.get(key)
        if cached is None:
            cached = self._pieces[key] = bytes(self._call("piece", token, special))
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._call("is_end_of_generation", token))

    def reset(self) -> None:
        self._call("reset")

    def render(
        self,
        messages: Sequence[Any],
        *,
        variables: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> str:
        """The prompt text, rendered here (only the model's metadata is needed)."""
        return Engine.render(
            self,  # type: ignore[arg-type]
            messages,
            variables=variables,
            chat_template=chat_template,
        )

    def generate(
        self,
        prompt: str | Sequence[int],
        settings: Profile,
        *,
        cancel: Callable[[], bool] | None = None,
        grammar: str | None = None,
        steering: Steering | None = None,
        special: bool = False,
        grammar_lazy_after: str | None = None,
        shared_prefix: str | None = None,
    ) -> Iterator[Event]:
        """:meth:`Engine.generate` in the child: the same events, ``cancel`` asked and
        ``steering`` taken at the same points."""
        self._check()
        request = prompt if isinstance(prompt, str) else list(prompt)
        # over RPC the child reports every token and prompt chunk, which the watchdog needs
        asks = cancel is not None or steering is not None or self.stall_s is not None
        self._send(
            ("gen", request, settings, grammar, special, grammar_lazy_after, asks, shared_prefix)
        )
        finished = False
        done = threading.Event()
        if self.stall_s is not None:
            self._progress = time.monotonic()
            threading.Thread(
                target=self._watch,
                args=(done, self.stall_s),
                name="localllm-rpc-watch",
                daemon=True,
            ).start()
        try:
            while True:
                message = self._recv()
                self._progress = time.monotonic()
                kind = message[0]
                if kind == "ask":
                    for item in message[1]:
                        yield TextEvent(*item) if type(item) is tuple else item
                    if cancel is not None and cancel():
                        self._send(("stop",))
                    else:
                        self._send(("go", steering.take() if steering is not None else ""))
                elif kind == "end":
                    finished = True
                    for item in message[1]:
                        yield TextEvent(*item) if type(item) is tuple else item
                    return
                else:
                    finished = True
                    raise _rebuild_error(*message[1:])
        except EngineCrashed:
            finished = True
            raise
        except BaseException:  # the consumer stopped reading, or its callback raised
            if not finished:
                self._drain()
            raise
        finally:
            done.set()

    def _drain(self) -> None:
        """Stop the generation in flight and read it to its end, so the next call starts in
        step; a child that will not stop is killed (reopen loads it again)."""
        try:
            self._send(("stop",))
            while True:
                message = self._recv()
                if message[0] == "ask":
                    self._send(("stop",))
                elif message[0] in ("end", "err"):
                    return
        except EngineCrashed:
            return
        except BaseException:  # interrupted again while draining: give up on this child
            self.kill()
            with contextlib.suppress(EngineCrashed):
                self._crashed()
            raise


def crash_error(
    code: int | None,
    tail: Sequence[str],
    endpoints: Sequence[str] = (),
    *,
    loading: bool = False,
    stalled: float | None = None,
) -> EngineCrashed:
    """The error for an engine process that ended with ``code`` (a negative code is the
    signal that killed it) after writing ``tail``; ``endpoints`` (RPC workers) are tried,
    and the ones that do not answer are named. ``stalled``: this process stopped it after
    that many seconds without a token (:func:`rpc_timeout`)."""
    when = "while loading the model" if loading else "while running the model"
    if stalled is not None:
        return _stall_error(stalled, endpoints)
    if code is None:
        how = "stopped answering"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}" + (" (llama.cpp aborted)" if name == "SIGABRT" else "")
    else:
        how = f"exited with code {code}"
    message = f"the engine process {how} {when}"
    down = unreachable(endpoints)
    if down:
        message += f"; RPC worker{'s' if len(down) > 1 else ''} not answering: {', '.join(down)}"
    lines = _telling_lines(tail, endpoints)
    if lines:
        message += ": " + " | ".join(lines)
    if endpoints:
        hint = "check the workers (localllm doctor --rpc HOST:PORT); the next request loads again"
    else:
        hint = "the next request loads the model again (--verbose shows llama.cpp's log)"
    return EngineCrashed(message, hint=hint)


def _stall_error(limit: float, endpoints: Sequence[str]) -> EngineCrashed:
    """A generation stopped for going ``limit`` seconds without a token: the workers are
    asked for a handshake (the engine's connections are closed by now, so a live worker is
    free to answer), and the ones that do not answer are named."""
    from localllm import rpcwire

    silent = [e for e in endpoints if rpcwire.probe(e, timeout=2.0).problem]
    if silent:
        state = f"RPC worker{'s' if len(silent) > 1 else ''} not answering: {', '.join(silent)}"
    else:
        state = f"the RPC workers answer now: {', '.join(endpoints)}"
    return EngineCrashed(
        f"no token for {limit:g} s from the model split across RPC workers, so its engine "
        f"process was stopped ({state})",
        hint=f"check the workers (localllm doctor --rpc HOST:PORT), or allow more time "
        f"with {RPC_TIMEOUT_ENV}=SECONDS; the next request loads the model again",
    )


_ENDPOINT = re.compile(r"\b[\w.-]+:\d{2,5}\b|\[[0-9a-fA-F:]+\]:\d{2,5}")
_TELLING = re.compile(r"abort|assert|error|fail|rpc|crash|segmentation|fatal", re.IGNORECASE)


def _telling_lines(tail: Sequence[str], endpoints: Sequence[str], most: int = 3) -> list[str]:
    """The last lines worth showing: those naming an endpoint or an error, newest last; else
    the last non-empty ones."""
    lines = [line.strip() for line in tail if line.strip()]
    named = [
        line
        for line in lines
        if any(e in line for e in endpoints) or (_ENDPOINT.search(line) and _TELLING.search(line))
    ]
    telling = [line for line in lines if _TELLING.search(line)]
    chosen = named[-most:] or telling[-most:] or lines[-most:]
    return [line if len(line) <= 300 else line[:297] + "..." for line in chosen]


def unreachable(endpoints: Sequence[str], timeout: float = 2.0) -> list[str]:
    """The ``host:port`` endpoints that refuse or ignore a TCP connection."""
    import socket

    down = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError):
            down.append(endpoint)
    return down


# -- the child's side -------------------------------------------------------------------------


class _Child:
    """The child's loop: one engine, commands from the parent, events back."""

    def __init__(self, commands: io.BufferedReader, out: int) -> None:
        self.commands = commands
        self.out = out
        self.engine: Engine | None = None

    def serve(self) -> None:
        while True:
            try:
                message = _read(self.commands)
            except EOFError:
                return
            kind = message[0]
            if kind == "close":
                return
            if kind in ("stop", "go"):  # an answer to an ask already answered: ignore it
                continue
            try:
                if kind == "load":
                    reply = self._load(*message[1:])
                elif kind == "gen":
                    self._generate(*message[1:])
                    continue
                elif kind == "call":
                    reply = self._method(message[1], message[2], message[3])
                else:
                    raise InferenceError(f"unknown engine command {kind!r}")
            except Exception as exc:
                _write(self.out, ("err", *_error_message(exc)))
            else:
                _write(self.out, ("ok", reply))

    def _load(
        self, path: str, load: LoadOptions | Profile, force: bool, need_tokens: int | None
    ) -> Any:
        warnings: list[str] = []
        if isinstance(load, LoadOptions):
            engine = Engine(path, load)
        else:  # the whole open, as in-process: plan, memory check, draft, RPC workers
            from localllm.loading import open_engine

            engine = open_engine(
                path,
                load,
                force=force,
                warn=warnings.append,
                need_tokens=need_tokens,
                isolate=False,
            )
        self.engine = engine
        return (
            engine.info,
            engine.n_ctx,
            engine.n_vocab,
            list(engine.load_phases),
            engine.options,
            warnings,
            [str(line) for line in getattr(engine, "load_log", None) or ()],
            _rpc_devices(engine),
        )

    def _method(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        engine = self._need()
        if name == "n_kv":
            return engine.n_kv
        if name not in ("tokenize", "detokenize", "piece", "is_end_of_generation", "reset"):
            raise InferenceError(f"unknown engine method {name!r}")
        return getattr(engine, name)(*args, **kwargs)

    def _need(self) -> Engine:
        if self.engine is None:
            raise UsageError("no model is loaded in the engine process")
        return self.engine

    def _generate(
        self,
        prompt: str | list[int],
        settings: Profile,
        grammar: str | None,
        special: bool,
        lazy_after: str | None,
        asks: bool,
        shared_prefix: str | None = None,
    ) -> None:
        out = self.out
        pending: list[Any] = []  # text events as (text, tokens, injected): cheaper to pickle
        steering = Steering()
        stopped = False

        def cancel() -> bool:
            nonlocal stopped
            if stopped:
                return True
            _write(out, ("ask", pending.copy()))
            pending.clear()
            try:
                answer = _read(self.commands)
            except EOFError:  # the parent is gone
                os._exit(0)
            if answer[0] == "stop":
                stopped = True
                return True
            if answer[1]:
                steering.inject(answer[1])
            return False

        try:
            engine = self._need()
            for event in engine.generate(
                prompt,
                settings,
                cancel=cancel if asks else None,
                grammar=grammar,
                steering=steering if asks else None,
                special=special,
                grammar_lazy_after=lazy_after,
                shared_prefix=shared_prefix,
            ):
                if type(event) is TextEvent:
                    pending.append((event.text, event.tokens, event.injected))
                else:
                    pending.append(event)
        except Exception as exc:
            _write(out, ("err", *_error_message(exc)))
            return
        _write(out, ("end", pending))


def _watch_parent() -> None:
    """Exit when stdin ends: the parent closed it, or died."""
    with contextlib.suppress(Exception):
        while sys.stdin.buffer.read(1 << 12):
            pass
    os._exit(0)


class _LogToStderr:
    """Takes llama.cpp's log lines (the engine's capture hook) to stderr, which the parent
    keeps the end of: an RPC error logged before an abort then names the worker. With
    ``verbose`` the engine prints them itself."""

    def append(self, text: str) -> None:
        from localllm import backend

        if not backend.log_route.get("verbose"):
            with contextlib.suppress(Exception):
                sys.stderr.write(text)
                sys.stderr.flush()


def main(argv: Sequence[str]) -> None:
    """The child process: ``python -m localllm.enginechild CMD_FD EVENT_FD``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(Exception):  # no multi-GB core file when llama.cpp aborts
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    threading.Thread(target=_watch_parent, name="localllm-lifeline", daemon=True).start()
    from localllm import backend

    backend.log_route["capture"] = _LogToStderr()
    commands = open(int(argv[0]), "rb", buffering=1 << 16)  # noqa: SIM115 - lives until exit
    child = _Child(commands, int(argv[1]))
    try:
        child.serve()
    except (BrokenPipeError, EOFError):
        pass
    finally:
        if child.engine is not None:
            with contextlib.suppress(Exception):
                child.engine.close()
    os._exit(0)


def _rpc_devices(engine: Engine) -> dict[str, str]:
    """The RPC devices the child registered (none without workers): names for the split."""
    if not getattr(engine.options, "rpc", ()):
        return {}
    from localllm.rpc import rpc_device_names

    return rpc_device_names()


if __name__ == "__main__":
    main(sys.argv[1:])

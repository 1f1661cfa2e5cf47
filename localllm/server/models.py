"""The loaded-model pool: one worker thread per loaded engine, a bounded FIFO per model, and
least-recently-used unloading.

A llama.cpp context is not thread-safe, so each engine belongs to one thread for its whole
life: the thread loads it, runs every request for it in arrival order, and closes it. The
asynchronous side hands a :class:`Job` to :meth:`ModelPool.submit` and reads the job's events
from the job's :class:`Events`, which the worker feeds and which wakes the loop only when it
waits for an item; it never waits on the token loop. A job's ``cancel`` event is checked
between tokens (through the session's ``cancel`` callback), so a client that goes away stops its
generation within a token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localllm.errors import EngineCrashed, InferenceError, LocalLLMError, ModelNotFoundError
from localllm.profiles import Profile

Log = Callable[[str], None]


@dataclass(frozen=True)
class Done:
    """The last item of a job's stream: the finished turn (see :class:`localllm.session.Turn`)."""

    turn: Any


@dataclass(frozen=True)
class Started:
    """The first item of a job's stream: the worker took the job (its place in line)."""

    seq: int


class QueueFull(Exception):
    """The model's queue holds ``--queue`` waiting requests already."""


class Events:
    """A job's items, from the worker thread to the event loop: the part of
    :class:`asyncio.Queue` the routes use (``get``, ``get_nowait``, ``empty``,
    ``put_nowait``), plus :meth:`put_threadsafe` and :meth:`drain`.

    The worker wakes the loop only when the loop is waiting for an item (its queue went from
    empty to not empty), not once per item: a consumer that falls behind the token loop finds
    several items waiting and takes them all at once (:meth:`drain`), which costs one wake-up
    and one socket write instead of one per token. On a machine whose cores all run llama.cpp,
    every wake-up of the loop thread takes a core from the token loop.

    ``interval`` (seconds) paces the items of the kinds in ``paced`` (streamed text): after a
    wake-up for one of them, the next waits up to ``interval`` for company, so a model faster
    than one token per ``interval`` sends several tokens per write (a fast stream's chunks
    carry a few tokens each, as the OpenAI API's do), and a slower one still sends each token
    at once. The first paced item and every other item wake the loop at once; a timer on the
    loop's side sends a paced item that has waited ``interval`` even if no other item follows.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float = 0.0, paced: tuple[type, ...] = ()
    ) -> None:
        self.loop = loop
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        # True: the consumer wants the end only (a reply that is not streamed), so the worker
        # wakes the loop for the last item (or an error), not for each token on the way.
        self.final_only = False
        self.interval = interval
        self.paced = paced
        self._paced_at = -math.inf  # when a paced item last woke the loop (time.monotonic)
        self.wakeups = 0  # times the worker woke the loop (tests and benchmarks read it)

    def put_threadsafe(self, item: Any) -> None:
        """Add ``item`` (from any thread); wake the loop only if it waits for one (and, for a
        paced item, only once ``interval`` has passed since the last paced wake-up)."""
        with self._lock:
            self._items.append(item)
            if self.final_only and not is_final(item):
                return
            if self._waiter is None:
                return
            if type(item) in self.paced:
                now = time.monotonic()
                if now - self._paced_at < self.interval:
                    return  # the loop's timer (wait) or the next item sends it
                self._paced_at = now
            waiter, self._waiter = self._waiter, None
        self.wakeups += 1
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is stopping
            self.loop.call_soon_threadsafe(_wake, waiter)

    def put_nowait(self, item: Any) -> None:
        """Add ``item`` from the event loop's own thread."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        with self._lock:
            if not self._items:
                raise asyncio.QueueEmpty
            return self._items.popleft()

    def drain(self) -> list[Any]:
        """Every item waiting now (maybe none), oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    async def wait(self) -> None:
        """Return once at least one item is waiting."""
        while True:
            with self._lock:
                if self._items:
                    return
                waiter = self._waiter = self.loop.create_future()
                due = self._paced_at + self.interval - time.monotonic()
            # A paced item that arrives before ``due`` is left for this timer to send.
            timer = self.loop.call_later(due, self._due, waiter) if due > 0 else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    def _due(self, waiter: asyncio.Future[None]) -> None:
        """The pacing timer (on the loop): wake ``waiter`` if items wait for it."""
        with self._lock:
            if not self._items or self._waiter is not waiter:
                return
            self._waiter = None
            self._paced_at = time.monotonic()
        _wake(waiter)

    async def get(self) -> Any:
        while True:
            await self.wait()
            with self._lock:
                if self._items:
                    return self._items.popleft()


def is_final(item: Any) -> bool:
    """Whether ``item`` ends a job's stream: its :class:`Done`, an error, or None (the job
    was dropped before it started)."""
    return item is None or isinstance(item, (Done, BaseException))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class Job:
    """One request for a worker. ``start(session)`` returns the session's event iterator."""

    loop: asyncio.AbstractEventLoop
    profile: Profile
    start: Callable[[Any, Callable[[], bool]], Iterator[Any]]
    events: Events = field(init=False)
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.events = Events(self.loop)

    def pace(self, interval: float, kinds: tuple[type, ...]) -> None:
        """Pace the stream's items of ``kinds`` (see :class:`Events`)."""
        self.events.interval = interval
        self.events.paced = kinds

    def emit(self, item: Any) -> None:
        """Hand ``item`` to the event loop (called from the worker thread)."""
        self.events.put_threadsafe(item)


@dataclass(frozen=True)
class ModelEntry:
    """A model the server can answer with: its public name and its file."""

    name: str
    path: Path
    size: int = 0
    architecture: str | None = None
    quant: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    modified: str | None = None
    owned_by: str = "localllm"  # or the tool whose store holds it: ollama, lmstudio, llama.cpp


class Worker:
    """Owns one engine on one thread; runs jobs one at a time in arrival order."""

    def __init__(
        self,
        entry: ModelEntry,
        profile: Profile,
        *,
        log: Log,
        on_failed: Callable[[Worker], None],
        wait_for: list[threading.Thread],
        force: bool = False,
        isolate: bool | None = None,
        engine_env: dict[str, str] | None = None,
        cache_ram: int = 0,
    ) -> None:
        self.entry = entry
        self.cache_ram = cache_ram  # bytes of earlier prompts' KV states (engine.PromptCache)
        self.profile = profile
        self.log = log
        self.force = force
        self.isolate = isolate  # None: as the profile asks (see loading.open_engine)
        self.engine_env = engine_env
        self.crashed: EngineCrashed | None = None  # the engine process died: reload first
        self.on_failed = on_failed
        self.wait_for = wait_for
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.state = "loading"  # loading | ready | failed | closing | closed
        self.error: LocalLLMError | None = None
        self.engine: Any = None
        self.projector: Any = None  # a vision.Projector when the model has one beside it
        self.waiting = 0  # jobs submitted and not yet taken
        self.busy = False
        self.seq = 0
        self.generated = 0  # tokens generated by this engine, counted as they come
        self.last: dict[str, Any] | None = None
        self.current: Job | None = None
        self.lock = threading.Lock()
        self.loaded = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"localllm-model-{entry.name}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            self.waiting += 1
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish the queued jobs, then close the engine and end the thread."""
        self.state = "closing" if self.state != "failed" else self.state
        self.jobs.put(None)

    def cancel_all(self) -> None:
        """Cancel the running job and every waiting one (server shutdown)."""
        current = self.current
        if current is not None:
            current.cancel.set()
        for job in list(self.jobs.queue):
            if job is not None:
                job.cancel.set()

    def status(self) -> dict[str, Any]:
        status = {
            "name": self.entry.name,
            "state": self.state,
            "queued": self.waiting,
            "busy": self.busy,
            "jobs": self.seq,
            "generated_tokens": self.generated,
            "last": self.last,
        }
        if getattr(self.engine, "isolated", False):  # the model runs in a child process
            status["engine_pid"] = self.engine.pid
            status["engine_crashed"] = self.crashed.message if self.crashed else None
        return status

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        for thread in self.wait_for:  # an unloaded model frees its memory first
            thread.join()
        try:
            from localllm.loading import open_engine

            self.engine = open_engine(
                self.entry.path,
                self.profile,
                force=self.force,
                warn=self.log,
                isolate=self.isolate,
                env=self.engine_env,
            )
        except LocalLLMError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # llama.cpp may raise anything on a load
            self._fail(InferenceError(f"could not load {self.entry.name}: {exc}"))
            return
        self._load_projector()
        if self.cache_ram > 0 and hasattr(self.engine, "prompt_cache"):  # not in a child
            from localllm.promptcache import PromptCache

            self.engine.prompt_cache = PromptCache(self.cache_ram)
        if self.state == "loading":
            self.state = "ready"
        self.loaded.set()
        self.log(f"loaded {self.entry.name}")
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    break
                with self.lock:
                    self.waiting -= 1
                if job.cancel.is_set():  # the client left while waiting
                    job.emit(None)
                    continue
                if (self.crashed is not None or not getattr(self.engine, "alive", True)) and (
                    not self._reload(job)
                ):
                    continue
                self._serve(job)
        finally:
            if self.projector is not None:
                with contextlib.suppress(Exception):
                    self.projector.close()
            with contextlib.suppress(Exception):
                self.engine.close()
            self.engine = None
            self.state = "closed"
            self.log(f"unloaded {self.entry.name}")

    def _reload(self, job: Job) -> bool:
        """Load the model again after its engine process died; on failure ``job`` gets the
        error (the next job tries again)."""
        self.log(f"reloading {self.entry.name} after its engine process died")
        self.state = "loading"
        try:
            self.engine.reopen()
        except LocalLLMError as exc:
            self.state = "ready"
            self.log(f"error: could not reload {self.entry.name}: {exc.message}")
            job.emit(exc)
            return False
        self.crashed = None
        self.state = "ready"
        self.log(f"reloaded {self.entry.name}")
        return True

    def _load_projector(self) -> None:
        """Load the vision projector beside the model, if any; a bad one leaves the model
        text-only (logged). An engine in a child process has none: the projector needs the
        model in this process."""
        from localllm import vision

        if getattr(self.engine, "isolated", False):
            return
        found = vision.find_projector(self.entry.path)
        if found is None:
            return
        try:
            self.projector = vision.Projector(self.engine, found)
        except LocalLLMError as exc:
            self.log(f"warning: {self.entry.name} answers text only: {exc.message}")
        else:
            self.log(f"loaded the projector {found.name} for {self.entry.name}")

    def _fail(self, exc: LocalLLMError) -> None:
        self.error = exc
        self.state = "failed"
        self.on_failed(self)  # the pool forgets us: nothing new is queued from here on
        self.loaded.set()
        self.log(f"error: could not load {self.entry.name}: {exc.message}")
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(exc)

    def _serve(self, job: Job) -> None:
        from localllm.session import ChatSession, Stats

        self.seq += 1
        self.busy = True
        self.current = job
        job.emit(Started(self.seq))
        session = ChatSession(self.engine, job.profile, projector=self.projector)

        def cancel() -> bool:  # asked once per generated token
            self.generated += 1
            return job.cancel.is_set()

        stats = None
        try:
            for event in job.start(session, cancel):
                if isinstance(event, Stats):
                    stats = event
                job.emit(event)
            job.emit(Done(session.last_turn))
        except EngineCrashed as exc:  # the server stays up; the next job loads the model again
            self.crashed = exc
            self.log(f"error: {self.entry.name}: {exc.message}")
            job.emit(exc)
        except LocalLLMError as exc:
            job.emit(exc)
        except Exception as exc:  # reported to the client, never a traceback
            job.emit(InferenceError(f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            self.last = {
                "seq": self.seq,
                "stop_reason": stats.stop_reason if stats is not None else None,
                "generated_tokens": stats.generated_tokens if stats is not None else 0,
            }
            self.current = None
            self.busy = False


class ModelPool:
    """Which models are loaded, and the one place that loads and unloads them."""

    def __init__(
        self,
        default: ModelEntry,
        profile: Profile,
        *,
        max_loaded: int = 1,
        queue_size: int = 16,
        cache_ram: int = 0,
        aliases: dict[str, str] | None = None,
        log: Log = lambda _m: None,
        force: bool = False,
        isolate: bool | None = None,
        engine_env: dict[str, str] | None = None,
    ) -> None:
        self.default = default
        self.isolate = isolate  # run engines in child processes (None: as the profile asks)
        self.engine_env = engine_env  # added to those processes' environment
        self.profile = profile
        self.max_loaded = max(1, max_loaded)
        self.queue_size = max(1, queue_size)
        self.cache_ram = max(0, cache_ram)  # bytes per loaded model (engine.PromptCache)
        self.aliases = dict(aliases or {})
        self.log = log
        self.force = force
        self.workers: OrderedDict[Path, Worker] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    # -- names ---------------------------------------------------------------------------

    def installed(self, *, foreign: bool = True) -> list[ModelEntry]:
        """Every model a request may name: the default, then the store's models, then (with
        ``foreign``) the models in Ollama's, LM Studio's and llama.cpp's stores, named by
        their references (``ollama:llama3.2:3b``) and used in place."""
        from localllm import store

        entries = {self.default.path.resolve(): self.default}
        for manifest in store.installed():
            path = manifest.primary
            key = path.resolve()
            if key in entries and entries[key] is not self.default:
                continue
            entry = _entry(manifest)
            if key in entries:  # the default model is installed: use its store name
                entry = ModelEntry(**{**entry.__dict__, "name": manifest.name})
                self.default = entry
            entries[key] = entry
        if foreign:
            for entry in foreign_entries():
                entries.setdefault(entry.path.resolve(), entry)
        return list(entries.values())

    def listed(self) -> list[ModelEntry]:
        """Installed models, the loaded ones first (most recently used first)."""
        entries = self.installed()
        with self.lock:
            loaded = [w.entry.path.resolve() for w in reversed(self.workers.values())]
        rank = {p: i for i, p in enumerate(loaded)}
        return sorted(entries, key=lambda e: rank.get(e.path.resolve(), len(rank)))

    def lookup(self, name: str | None) -> ModelEntry:
        """The model a request names: missing or ``default`` is the server's default, an
        alias its target, an installed model's name, or a reference to another tool's store
        (``ollama:llama3.2:3b``, loaded in place); anything else is a 404."""
        if name is None or name == "" or name == "default":
            return self.default
        target = self.aliases.get(name, name)
        entries = self.installed(foreign=False)
        wanted = target.lower()
        for entry in entries:
            if entry.name.lower() == wanted:
                return entry
        if self.default.name.lower() == wanted or target == str(self.default.path):
            return self.default
        from localllm import foreign, refs

        parts = refs.foreign_ref(target)
        # ``ollama:llama3.2:3b`` (its own 404 names what that store holds), or Ollama's own
        # spelling without the prefix (llama3.2, llama3.2:3b)
        found = foreign.lookup(*parts) if parts is not None else _bare_ollama(target)
        if found is not None:
            if found.primary.resolve() == self.default.path.resolve():
                return self.default
            return _foreign_entry(found, foreign.describe([found]).get(found.ref, {}))
        names = ", ".join(e.name for e in entries)
        hint = f"installed: {names}" if names else None
        try:
            other = foreign.suggest(target)
        except Exception:  # a hint must never turn a clear 404 into a 500
            other = None
        if other is not None:
            hint = f"{other.label} has it: use {other.ref}"
        raise ModelNotFoundError(f"the model '{name}' does not exist", hint=hint)

    # -- workers -------------------------------------------------------------------------

    def worker(self, entry: ModelEntry) -> Worker:
        """The worker for ``entry``, started (and others unloaded) when needed."""
        key = entry.path.resolve()
        with self.lock:
            worker = self.workers.get(key)
            if worker is not None:
                self.workers.move_to_end(key)
                return worker
            evicted: list[threading.Thread] = []
            while len(self.workers) >= self.max_loaded:
                idle = [k for k, w in self.workers.items() if not w.busy and not w.waiting]
                old_key = idle[0] if idle else next(iter(self.workers))
                old = self.workers.pop(old_key)
                self.log(f"unloading {old.entry.name} (least recently used)")
                old.stop()
                evicted.append(old.thread)
            worker = Worker(
                entry,
                self.profile,
                log=self.log,
                on_failed=self._forget,
                wait_for=evicted,
                force=self.force,
                isolate=self.isolate,
                engine_env=self.engine_env,
                cache_ram=self.cache_ram,
            )
            self.workers[key] = worker
            worker.start()
            return worker

    def submit(self, entry: ModelEntry, job: Job) -> Worker:
        """Queue ``job`` for ``entry``'s worker; :class:`QueueFull` when its line is full."""
        while True:
            worker = self.worker(entry)
            with self.lock:
                if worker.state == "failed" or self.workers.get(entry.path.resolve()) is not worker:
                    if worker.error is not None:
                        raise worker.error
                    continue  # unloaded between the two steps: start a new one
                if worker.waiting >= self.queue_size:
                    raise QueueFull(entry.name)
                worker.submit(job)
            return worker

    def _forget(self, worker: Worker) -> None:
        with self.lock:
            key = worker.entry.path.resolve()
            if self.workers.get(key) is worker:
                del self.workers[key]

    def loading(self) -> bool:
        with self.lock:
            return any(w.state == "loading" for w in self.workers.values())

    def status(self) -> list[dict[str, Any]]:
        with self.lock:
            return [w.status() for w in reversed(self.workers.values())]

    def cancel_all(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.cancel_all()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything, close every engine, wait for the threads (at most ``timeout``)."""
        with self.lock:
            workers = list(self.workers.values())
            self.workers.clear()
        for worker in workers:
            worker.cancel_all()
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))


def _entry(manifest: Any) -> ModelEntry:
    return ModelEntry(
        name=manifest.name,
        path=manifest.primary,
        size=manifest.size,
        architecture=manifest.architecture,
        quant=manifest.quant,
        parameters=manifest.parameters,
        context_length=manifest.context_length,
        modified=manifest.added,
    )


def _bare_ollama(name: str) -> Any:
    """The model of Ollama's store (when `localllm list` shows that store) that a name without
    the ``ollama:`` prefix means, as Ollama clients send it; None when there is none."""
    from localllm import foreign

    if foreign.OLLAMA not in foreign.enabled_stores():
        return None
    try:
        return foreign.lookup(foreign.OLLAMA, name)
    except Exception:  # not there, ambiguous or broken: the caller's clear 404, never a 500
        return None


def foreign_entries() -> list[ModelEntry]:
    """The usable models of the enabled foreign stores (none when switched off)."""
    from localllm import foreign

    if not foreign.enabled_stores():
        return []
    models = [m for scan in foreign.scan() for m in scan.usable()]
    facts = foreign.describe(models)
    return [_foreign_entry(m, facts.get(m.ref, {})) for m in models]


def _foreign_entry(model: Any, info: dict[str, Any]) -> ModelEntry:
    from datetime import datetime, timezone

    try:
        stamp = model.primary.stat().st_mtime
        modified: str | None = datetime.fromtimestamp(stamp, timezone.utc).isoformat()
    except OSError:
        modified = None
    return ModelEntry(
        name=model.ref,
        path=model.primary,
        size=model.size,
        architecture=info.get("architecture"),
        quant=model.quant or info.get("quant"),
        parameters=info.get("parameters"),
        context_length=info.get("context_length"),
        modified=modified,
        owned_by=model.store,
    )


def entry_for_path(path: Path) -> ModelEntry:
    """A model given by file (``serve -m FILE``): named by its store name when installed, by
    its reference when another tool's store holds it, else by the file's stem."""
    from localllm import store

    resolved = path.resolve()
    for manifest in store.installed():
        if manifest.primary.resolve() == resolved:
            return _entry(manifest)
    for entry in foreign_entries():  # serve -m ollama:llama3.2:3b: named by its reference
        if entry.path.resolve() == resolved:
            return entry
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    name = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
    return ModelEntry(name=name, path=path, size=size)

"""Routes, the request guard, and running the server.

Every generating route does the same four steps: read and check the body, translate it
(:mod:`~localllm.server.openai` or :mod:`~localllm.server.ollama`) into a profile plus messages,
queue a :class:`~localllm.server.models.Job` on the model's worker, and translate the session
events the worker sends back into the wire format. A task watches for the client going away
and sets the job's cancel flag, which the session checks between tokens.

Other endpoints (``/v1/embeddings``, ``/api/embed``, ...) live in their own modules: a module
with a ``routes(state) -> list[Route]`` function, named in :data:`ROUTE_MODULES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from localllm import __version__
from localllm.errors import LocalLLMError, ProfileError
from localllm.profiles import Profile
from localllm.server import ollama, openai
from localllm.server.errors import HTTPError, bad_request, from_core
from localllm.server.models import Done, Job, ModelEntry, ModelPool, QueueFull, Started

MAX_BODY = 8 << 20  # 8 MiB
TOO_LARGE = f"the request body is over {MAX_BODY >> 20} MiB"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# Modules that add routes: each has ``routes(state: ServerState) -> list[Route]``.
ROUTE_MODULES: tuple[str, ...] = ("localllm.server.embeddings",)
PARAM_NAMES = {"mode": "reasoning_effort"}

Log = Callable[[str], None]


@dataclass
class ServerState:
    """What the routes share: the pool, the server's profile, and the access log."""

    pool: ModelPool
    profile: Profile
    log: Log
    grammar: str | None = None  # a GBNF grammar forced on every generation (None: free)
    allow_remote: bool = False  # fetch http(s) image URLs (off: offline by default)
    in_flight: int = 0  # requests being handled now (the event loop's count, /health shows it)
    embeddings_only: bool = False  # the default model is an encoder: no chat, no completions
    # Seconds a streamed token may wait to share a write with the next (``--stream-interval``):
    # each write wakes the event loop, which on a machine whose cores all run llama.cpp takes
    # a core from the token loop; a model slower than this sends every token at once.
    stream_interval: float = 0.02
    started: float = field(default_factory=time.monotonic)

    def profile_for(self, request: openai.Request) -> Profile:
        """Built-in < the server's profile < the request's ``profile`` < request fields."""
        from localllm import profiles

        base = self.profile
        if request.profile is not None:
            try:
                base = profiles.load_profile(request.profile)
            except ProfileError as exc:
                raise bad_request(_core_text(exc), "profile") from None
        values: dict[str, Any] = {}
        for key, value in request.overrides.items():
            try:
                values.update(profiles.validate_overrides({key: value}))
            except ProfileError as exc:
                param = PARAM_NAMES.get(key, key)
                text = re.sub(r"^option --[\w-]+: ", "", exc.message)
                raise bad_request(f"'{param}' {text}", param) from None
        resolved = base.replace(**values)
        try:
            profiles.check_consistency(resolved)
        except ProfileError as exc:
            raise bad_request(_core_text(exc)) from None
        return resolved

    def chat_entry(self, name: str | None) -> ModelEntry:
        """The model a generating request names; 400 for the default of an embeddings-only
        server (an encoder cannot generate text)."""
        entry = self.pool.lookup(name)
        if self.embeddings_only and entry.path == self.pool.default.path:
            raise HTTPError(
                400,
                f"{entry.name} is an embedding model: this server answers embeddings only "
                "(POST /v1/embeddings, /api/embed); start `localllm serve -m` with a chat "
                "model for chat and completions",
                param="model",
                code="embeddings_only",
            )
        return entry


def is_encoder(path: Any) -> bool:
    """Whether the model file is encoder-only (BERT and its kin: vectors, no text). A file
    that cannot be read is not called one here: loading it reports what is wrong."""
    from localllm import loading

    try:
        return loading.header_summary(path).get("structure") == "encoder-only"
    except (LocalLLMError, OSError, ValueError):
        return False


def _core_text(exc: LocalLLMError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


# -- bodies and errors ------------------------------------------------------------------------


async def read_json(request: Any) -> dict[str, Any]:
    """The request body as a JSON object: at most 8 MiB, invalid UTF-8 and lone surrogates
    replaced by U+FFFD."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise HTTPError(413, TOO_LARGE, code="too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPError(413, TOO_LARGE, code="too_large")
    try:
        data = json.loads(bytes(body).decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return openai.clean(data)


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_response(exc: HTTPError, path: str) -> Any:
    from starlette.responses import JSONResponse

    body = exc.ollama_body() if is_ollama(path) else exc.openai_body()
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def as_http(exc: BaseException) -> HTTPError:
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, LocalLLMError):
        return from_core(exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}")


# -- running a job ----------------------------------------------------------------------------


class _Gone:
    """Put on a job's queue when the client disconnects."""


GONE = _Gone()
STOPPING = HTTPError(503, "the server is stopping", code="shutting_down")


@dataclass
class Running:
    job: Job
    entry: ModelEntry
    watcher: asyncio.Task[None]
    t0: float
    seq: int = 0
    first_at: float | None = None
    turn: Any = None
    status: int = 200

    def close(self) -> None:
        self.job.cancel.set()
        self.watcher.cancel()


async def _watch(request: Any, job: Job) -> None:
    """Wait for the client to go away; then cancel the job."""
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel.set()
            job.events.put_nowait(GONE)
            return


def start(
    state: ServerState,
    request: Any,
    parsed: openai.Request,
    run: Callable[[Any, Callable[[], bool], str | None], Iterator[Any]],
) -> Running:
    """Queue the request's job on its model's worker and watch for a disconnect."""
    t0 = time.perf_counter()
    profile = state.profile_for(parsed)
    entry = state.chat_entry(parsed.model)
    grammar = state.grammar
    job = Job(
        asyncio.get_running_loop(), profile, lambda session, cancel: run(session, cancel, grammar)
    )
    job.pace(state.stream_interval, _streamed_kinds())
    try:
        state.pool.submit(entry, job)
    except QueueFull:
        raise HTTPError(
            503,
            f"the queue for {entry.name} is full ({state.pool.queue_size} waiting)",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    watcher = asyncio.get_running_loop().create_task(_watch(request, job))
    request.scope["localllm.logged"] = True
    return Running(job, entry, watcher, t0)


def _streamed_kinds() -> tuple[type, ...]:
    """The events a stream sends one per token (paced by ``--stream-interval``)."""
    from localllm.session import AnswerText, ReasoningText
    from localllm.tools import ToolCallDelta

    return (AnswerText, ReasoningText, ToolCallDelta)


async def first_event(running: Running) -> Any:
    """Wait until the worker takes the job and produces its first event (or an error)."""
    while True:
        item = await running.job.events.get()
        if isinstance(item, Started):
            running.seq = item.seq
            continue
        if isinstance(item, BaseException):
            raise item
        if item is None:  # cancelled before it started: the server is stopping
            raise STOPPING
        return item


def log_access(
    state: ServerState, method: str, path: str, running: Running | None, status: int
) -> None:
    parts = [method, path]
    if running is not None:
        parts.append(running.entry.name)
        stats = running.turn.stats if running.turn is not None else None
        if stats is not None:
            ttft = ((running.first_at or running.t0) - running.t0) * 1000
            parts.append(
                f"prompt {stats.prompt_tokens} ({stats.cached_tokens} cached) · "
                f"completion {stats.generated_tokens} · TTFT {ttft:.0f} ms · "
                f"{stats.tokens_per_s:.1f} tok/s · {stats.stop_reason}"
            )
    parts.append(str(status))
    state.log(" ".join(parts))


# -- the routes -------------------------------------------------------------------------------


def routes(state: ServerState) -> list[Any]:
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def chat_run(
        messages: list[dict[str, Any]], parsed: Any = None
    ) -> Callable[..., Iterator[Any]]:
        extra: dict[str, Any] = {}
        if parsed is not None:
            extra = {
                "constraint": parsed.constraint,
                "tools": parsed.tools,
                "tool_choice": parsed.tool_choice,
            }
        return lambda session, cancel, grammar: session.respond(
            messages, cancel=cancel, grammar=grammar, **extra
        )

    def text_run(prompt: str, parsed: Any = None) -> Callable[..., Iterator[Any]]:
        constraint = getattr(parsed, "constraint", None)
        if constraint is not None:
            return lambda session, cancel, grammar: session.complete(
                prompt, cancel=cancel, grammar=constraint.grammar
            )
        return lambda session, cancel, grammar: session.complete(
            prompt, cancel=cancel, grammar=grammar
        )

    async def health(request: Any) -> Response:
        loading = state.pool.loading()
        body = {
            "status": "loading" if loading else "ok",
            "requests": state.in_flight,
            "models": state.pool.status(),
        }
        return JSONResponse(body, status_code=503 if loading else 200)

    async def root(request: Any) -> Response:
        return PlainTextResponse("localllm is running")

    def loaded_names() -> set[str]:
        return {m["name"] for m in state.pool.status()}

    async def models(request: Any) -> Response:
        return JSONResponse(openai.models_list(state.pool.listed(), loaded_names()))

    async def model(request: Any) -> Response:
        entry = state.pool.lookup(request.path_params["model"])
        return JSONResponse(openai.models_list([entry], loaded_names())["data"][0])

    # -- OpenAI --------------------------------------------------------------------------

    async def openai_generate(request: Any, *, completion: bool) -> Response:
        body = await read_json(request)
        parsed = openai.parse_completion(body) if completion else openai.parse_chat(body)
        await _images(state, parsed)
        run = (
            text_run(parsed.prompt or "", parsed)
            if completion
            else chat_run(parsed.messages or [], parsed)
        )
        running = start(state, request, parsed, run)
        name = parsed.model if parsed.model and parsed.model != "default" else running.entry.name
        try:
            first = await first_event(running)
        except BaseException as exc:
            running.close()
            status = as_http(exc).status if not isinstance(exc, asyncio.CancelledError) else 499
            log_access(state, request.method, request.url.path, running, status)
            raise
        running.first_at = time.perf_counter()
        headers = {"X-Localllm-Job": str(running.seq)}
        if not parsed.stream:
            try:
                turn = await _collect(running, first)
            finally:
                running.close()
            running.turn = turn
            status = 499 if turn is None else 200
            log_access(state, request.method, request.url.path, running, status)
            if turn is None:
                return Response(status_code=204)  # nobody is listening any more
            build = openai.completion_response if completion else openai.chat_response
            rid = openai.new_id("cmpl" if completion else "chatcmpl")
            return JSONResponse(build(rid, int(time.time()), name, turn), headers=headers)

        chunks = openai.ChatChunks(name, include_usage=parsed.include_usage, completion=completion)
        return event_stream(
            state,
            request,
            running,
            first,
            chunks,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def chat_completions(request: Any) -> Response:
        return await openai_generate(request, completion=False)

    async def completions(request: Any) -> Response:
        return await openai_generate(request, completion=True)

    # -- Ollama --------------------------------------------------------------------------

    async def ollama_generate(request: Any, *, chat: bool) -> Response:
        body = await read_json(request)
        parsed = ollama.parse_chat(body) if chat else ollama.parse_generate(body)
        await _images(state, parsed)
        if parsed.extra.get("empty"):  # Ollama loads the model and answers done at once
            entry = state.chat_entry(parsed.model)
            worker = state.pool.worker(entry)
            await asyncio.get_running_loop().run_in_executor(None, worker.loaded.wait)
            if worker.error is not None:
                raise worker.error
            return JSONResponse(
                {**ollama.piece(entry.name, chat=False), "done": True, "done_reason": "load"}
            )
        if parsed.prompt is not None:
            run = text_run(parsed.prompt, parsed)
        else:
            run = chat_run(parsed.messages or [], parsed)
        running = start(state, request, parsed, run)
        name = parsed.model or running.entry.name
        try:
            first = await first_event(running)
        except BaseException as exc:
            running.close()
            status = as_http(exc).status if not isinstance(exc, asyncio.CancelledError) else 499
            log_access(state, request.method, request.url.path, running, status)
            raise
        running.first_at = time.perf_counter()
        headers = {"X-Localllm-Job": str(running.seq)}
        if not parsed.stream:
            try:
                turn = await _collect(running, first)
            finally:
                running.close()
            running.turn = turn
            log_access(state, request.method, request.url.path, running, 200)
            total = time.perf_counter() - running.t0
            return JSONResponse(
                ollama.final(name, turn, chat=chat, total_s=total, whole=True), headers=headers
            )

        lines = ollama.Lines(name, chat=chat, t0=running.t0)
        return event_stream(
            state,
            request,
            running,
            first,
            lines,
            media_type="application/x-ndjson",
            headers=headers,
        )

    async def api_chat(request: Any) -> Response:
        return await ollama_generate(request, chat=True)

    async def api_generate(request: Any) -> Response:
        return await ollama_generate(request, chat=False)

    async def api_tags(request: Any) -> Response:
        return JSONResponse(ollama.tags(state.pool.listed()))

    async def api_ps(request: Any) -> Response:
        loaded = loaded_names()
        return JSONResponse(ollama.ps([e for e in state.pool.listed() if e.name in loaded]))

    async def api_version(request: Any) -> Response:
        return JSONResponse({"version": __version__})

    async def api_show(request: Any) -> Response:
        body = await read_json(request)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str):
            raise bad_request("'model' must be a model name")
        entry = state.pool.lookup(name)
        template, capabilities = _template_info(entry)
        return JSONResponse(ollama.show(entry, template, capabilities))

    table = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/api/tags", api_tags, methods=["GET"]),
        Route("/api/ps", api_ps, methods=["GET"]),
        Route("/api/version", api_version, methods=["GET"]),
        Route("/api/show", api_show, methods=["POST"]),
        Route("/api/chat", api_chat, methods=["POST"]),
        Route("/api/generate", api_generate, methods=["POST"]),
    ]
    for name in ROUTE_MODULES:
        table.extend(importlib.import_module(name).routes(state))
    return table


async def _images(state: ServerState, parsed: openai.Request) -> None:
    """Decode and check the request's images (a remote fetch runs off the event loop)."""
    messages = parsed.messages
    if not messages or not any("image_urls" in m or "image_b64" in m for m in messages):
        return
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: openai.resolve_images(messages, allow_remote=state.allow_remote)
    )


class WireFormat(Protocol):
    """How one wire format writes a stream: :class:`openai.ChatChunks` (SSE) and
    :class:`ollama.Lines` (NDJSON)."""

    def role(self) -> bytes: ...
    def answer(self, text: str) -> bytes: ...
    def reasoning(self, text: str) -> bytes: ...
    def tool_call(self, delta: Any) -> bytes: ...
    def end(self, turn: Any) -> bytes: ...
    def error(self, exc: HTTPError) -> bytes: ...


def joined(items: list[Any]) -> Iterator[Any]:
    """``items`` with runs of text events of one kind joined into one event: a client that
    keeps up gets a chunk per token; one that fell behind gets what waits in one chunk."""
    from localllm.session import AnswerText, ReasoningText

    i = 0
    while i < len(items):
        item = items[i]
        kind = type(item)
        if kind is AnswerText or kind is ReasoningText:
            j = i + 1
            while j < len(items) and type(items[j]) is kind:
                j += 1
            yield kind("".join(t.text for t in items[i:j])) if j > i + 1 else item
            i = j
            continue
        yield item
        i += 1


async def pump(running: Running, first: Any, wire: WireFormat) -> AsyncIterator[bytes]:
    """The job's events from ``first`` on, written by ``wire``: everything waiting when the
    loop looks goes out as one write. Sets ``running.status`` (499: the client went away, or
    the server stopped) and ``running.turn``."""
    from localllm.session import AnswerText, ReasoningText
    from localllm.tools import ToolCallDelta

    events = running.job.events
    out = [wire.role()]
    items = [first, *events.drain()]
    while True:
        for item in joined(items):
            kind = type(item)
            if kind is AnswerText:
                out.append(wire.answer(item.text))
            elif kind is ReasoningText:
                out.append(wire.reasoning(item.text))
            elif kind is ToolCallDelta:
                out.append(wire.tool_call(item))
            elif kind is Done:
                running.turn = item.turn
                if item.turn.stopped and running.job.cancel.is_set():
                    running.status = 499
                    if not running.watcher.done():  # the client is still reading:
                        running.status = STOPPING.status  # Ctrl-C on the server, say so
                        out.append(wire.error(STOPPING))
                else:
                    out.append(wire.end(item.turn))
                yield b"".join(out)
                return
            elif item is None or item is GONE:
                running.status = 499
                return
            elif isinstance(item, BaseException):
                error = as_http(item)
                running.status = error.status
                out.append(wire.error(error))
                yield b"".join(out)
                return
        if out:
            data = b"".join(out)
            out.clear()
            if data:
                yield data
        await events.wait()
        items = events.drain()


class EventStream:
    """A streamed answer as a plain ASGI response: each write of :func:`pump` is one
    ``http.response.body`` message (no per-chunk task group or thread hand-off). The
    disconnect watcher is the job's own (:func:`_watch`)."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: dict[str, str],
        on_close: Callable[[], None],
    ) -> None:
        self.body = body
        self.on_close = on_close
        self.raw_headers = [(b"content-type", media_type.encode("latin-1"))] + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self.body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            pass
        finally:
            await self.body.aclose()  # type: ignore[attr-defined]
            self.on_close()


def event_stream(
    state: ServerState,
    request: Any,
    running: Running,
    first: Any,
    wire: WireFormat,
    *,
    media_type: str,
    headers: dict[str, str],
) -> EventStream:
    """The streamed answer of every generating route, in ``wire``'s format."""

    def close() -> None:
        running.close()
        log_access(state, request.method, request.url.path, running, running.status)

    return EventStream(
        pump(running, first, wire), media_type=media_type, headers=headers, on_close=close
    )


async def _collect(running: Running, first: Any) -> Any:
    """Wait for the whole turn; ``None`` when the client went away first. The worker wakes
    the loop only for the end (``Events.final_only``), not once per token: on a machine whose
    cores all run llama.cpp, each wake-up of the loop slows the token loop."""
    events = running.job.events
    events.final_only = True
    items = [first, *events.drain()]
    while True:
        for item in items:
            if item is GONE:
                return None
            if item is None:  # cancelled before it started: the server is stopping
                raise STOPPING
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Done):
                return item.turn
        await events.wait()
        items = events.drain()


def _template_info(entry: ModelEntry) -> tuple[str | None, list[str]]:
    """A model's chat template and Ollama-style capabilities, from its GGUF header."""
    from localllm import modelfile, reasoning

    try:
        info = modelfile.read_info(entry.path)
    except (LocalLLMError, OSError, ValueError):
        return None, ["completion"]
    template = getattr(info, "chat_template", None)
    capabilities = ["completion"]
    if template and reasoning.choose_adapter(template) != "instruction":
        capabilities.append("thinking")
    from localllm import store

    if store.projector_of(entry.path) or info.projector is not None:
        capabilities.append("vision")  # a projector beside it: images are accepted
    return template, capabilities


# -- the app ----------------------------------------------------------------------------------


class Guard:
    """Checks before any route: the Host header when bound to loopback (DNS rebinding), the
    API key (``/health`` and CORS preflights stay open), and the body size."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        loopback: bool,
        log: Log | None = None,
        state: ServerState | None = None,
    ) -> None:
        self.app = app
        self.log = log
        self.state = state
        self.api_key = api_key.encode() if api_key else None
        self.loopback = loopback

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        status = 0

        async def send_logged(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        problem = self.check(scope, headers, path)
        if self.state is not None:
            self.state.in_flight += 1
        try:
            if problem is not None and problem.status == 413:
                await _drain(receive)  # so the client reads the answer, not a reset
            if problem is not None:
                await error_response(problem, path)(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        except asyncio.CancelledError:
            # The server is stopping and gave up waiting for this request: nothing to report.
            status = status or 499
        finally:
            if self.state is not None:
                self.state.in_flight -= 1
            # Generating routes log their own line, with tokens and speed.
            if self.log is not None and path != "/health" and not scope.get("localllm.logged"):
                self.log(f"{scope.get('method')} {path} {status or 499}")

    def check(self, scope: Any, headers: dict[str, bytes], path: str) -> HTTPError | None:
        if self.loopback:
            host = headers.get("host", b"").decode("latin-1").strip().lower()
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if host and name not in LOOPBACK_NAMES and not name.startswith("127."):
                return HTTPError(
                    403, f"the Host header '{host}' is not a loopback name", code="bad_host"
                )
        if self.api_key and path != "/health" and scope.get("method") != "OPTIONS":
            given = headers.get("authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
            token = token or headers.get("x-api-key", b"").strip()
            if not hmac.compare_digest(token, self.api_key):
                return HTTPError(
                    401,
                    "a valid API key is required (Authorization: Bearer KEY)",
                    code="invalid_api_key",
                )
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY:
            return HTTPError(413, TOO_LARGE, code="too_large")
        return None


async def _drain(receive: Any, limit: int = 8 * MAX_BODY) -> None:
    """Read and drop a request body (up to ``limit`` bytes)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def build_app(
    state: ServerState,
    *,
    api_key: str | None = None,
    loopback: bool = True,
    cors_origins: list[str] | None = None,
) -> Any:
    """The ASGI application: Starlette routes inside the guard (inside CORS, when asked)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    async def http_error(request: Any, exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            messages = {404: "no such endpoint", 405: "method not allowed"}
            exc = HTTPError(
                exc.status_code,
                f"{messages.get(exc.status_code, exc.detail)}: {request.method} {request.url.path}",
                headers=dict(exc.headers or {}),
            )
        return error_response(as_http(exc), request.url.path)

    app = Starlette(
        routes=routes(state),
        exception_handlers={
            HTTPException: http_error,
            HTTPError: http_error,
            LocalLLMError: http_error,
            Exception: http_error,
        },
    )
    guarded: Any = Guard(app, api_key=api_key, loopback=loopback, log=state.log, state=state)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            guarded, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    return guarded


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the system picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    state: ServerState,
    sock: socket.socket,
    *,
    api_key: str | None,
    cors_origins: list[str] | None,
    loopback: bool,
) -> int:
    """Run until Ctrl-C: the first cancels running generations and stops cleanly (0), a
    second one stops at once (130)."""
    import uvicorn

    app = build_app(state, api_key=api_key, loopback=loopback, cors_origins=cors_origins)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        # httptools and uvloop when installed (dependencies on Linux and macOS): per streamed
        # token they take about a third less of the event loop thread's CPU than h11 and
        # asyncio's own loop, CPU that a machine whose cores all run llama.cpp takes from
        # the token loop (scripts/bench_serve.py).
        http="auto",
        loop="auto",
    )

    class Server(uvicorn.Server):
        interrupts = 0

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Not recorded for re-raising (uvicorn would turn it into a KeyboardInterrupt).
            Server.interrupts += 1
            state.pool.cancel_all()
            if self.should_exit:
                self.force_exit = True
            else:
                state.log(
                    "stopping: running generations cancelled, open requests finishing "
                    "(Ctrl-C again to quit at once)"
                )
            self.should_exit = True

    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        state.pool.shutdown(timeout=5)
        with contextlib.suppress(OSError):
            sock.close()
    return 130 if Server.interrupts > 1 else 0


def stderr_log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()

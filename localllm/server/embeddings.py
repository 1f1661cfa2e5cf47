"""``POST /v1/embeddings`` (OpenAI), ``POST /api/embed`` and Ollama's older
``POST /api/embeddings`` (``{"model", "prompt"}`` -> ``{"embedding": [...]}``): a translation onto
:class:`localllm.embeddings.Embedder`, like the chat routes are onto the session.

Embedding models are loaded on first use into a small host of their own, apart from the chat
pool: one thread owns every :class:`Embedder` (llama.cpp contexts are not thread-safe), runs
the requests one after another, and keeps the two most recently used models loaded. The event
loop only awaits that thread.

OpenAI: ``input`` is a string, a list of strings, a list of token ids or a list of such lists;
``encoding_format`` is ``float`` or ``base64`` (little-endian float32 bytes, which the
``openai`` client asks for by default and decodes itself); ``dimensions`` other than the
model's own is a 400, as the model cannot shorten its vectors; ``usage.prompt_tokens`` counts
the tokens embedded. Ollama: ``input`` a string or a list of strings, ``truncate`` (default
true, as in Ollama) cuts texts longer than the context instead of failing. Vectors are
L2-normalized in both, as both APIs return them.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localllm.errors import LocalLLMError
from localllm.server.errors import HTTPError, bad_request, from_core

MAX_LOADED = 2
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request


class EmbedderHost:
    """Embedding models, each loaded once and used by one thread only."""

    def __init__(self, log: Callable[[str], None], threads: int | None = None) -> None:
        self.log = log
        self.threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="localllm-embed"
        )
        self._loaded: OrderedDict[Path, Any] = OrderedDict()  # touched by the thread only
        self._closed = threading.Event()

    def _get(self, path: Path) -> tuple[Any, float]:
        from localllm.embeddings import Embedder

        key = path.resolve()
        embedder = self._loaded.get(key)
        if embedder is not None:
            self._loaded.move_to_end(key)
            return embedder, 0.0
        while len(self._loaded) >= MAX_LOADED:
            _, old = self._loaded.popitem(last=False)
            self.log(f"unloading embedding model {old.name} (least recently used)")
            old.close()
        t0 = time.perf_counter()
        embedder = Embedder(path, threads=self.threads)
        self._loaded[key] = embedder
        self.log(
            f"loaded embedding model {embedder.name} ({embedder.dimension} dimensions, "
            f"{embedder.pooling} pooling)"
        )
        if embedder.note:
            self.log(embedder.note)
        return embedder, time.perf_counter() - t0

    async def run(self, path: Path, work: Callable[[Any], Any]) -> tuple[Any, float]:
        """``work(embedder)`` on the embedding thread; returns its result and the load time."""

        def job() -> tuple[Any, float]:
            embedder, load_s = self._get(path)
            return work(embedder), load_s

        if self._closed.is_set():
            raise HTTPError(503, "the server is stopping", code="server_stopping")
        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def close(self) -> None:
        """Unload every model (on the embedding thread while it runs; at interpreter exit the
        thread is gone and this one may touch them)."""
        if self._closed.is_set():
            return
        self._closed.set()

        def unload() -> None:
            for embedder in self._loaded.values():
                embedder.close()
            self._loaded.clear()

        try:
            self._pool.submit(unload).result()
            self._pool.shutdown(wait=True)
        except RuntimeError:  # the interpreter is shutting down: the thread has ended
            unload()


# -- request bodies ---------------------------------------------------------------------------


def parse_openai_input(value: Any) -> list[str] | list[list[int]]:
    """OpenAI's ``input``: texts, or lists of token ids."""
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' is an empty string", "input")
        return [value]
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'input' must be a non-empty string, a list of strings or a list of token ids",
            "input",
        )
    if len(value) > MAX_INPUTS:
        raise bad_request(f"'input' has {len(value)} items; at most {MAX_INPUTS}", "input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [list(value)]
    if all(isinstance(v, str) for v in value):
        for i, v in enumerate(value):
            if not v:
                raise bad_request(f"'input[{i}]' is an empty string", "input")
        return list(value)
    if all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise bad_request(f"'input[{i}]' must be a non-empty list of token ids", "input")
        return [list(v) for v in value]
    raise bad_request("'input' mixes strings and token ids", "input")


def encode_vector(row: Any, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


def core_error(exc: LocalLLMError) -> HTTPError:
    """A core error as an HTTP answer; a too-long input names the input, without CLI hints."""
    from localllm.embeddings import InputTooLongError

    if isinstance(exc, InputTooLongError):
        size = f"at least {exc.n_tokens:,}" if exc.at_least else f"{exc.n_tokens:,}"
        return HTTPError(
            400,
            f"input {exc.index} is {size} tokens, longer than the {exc.limit:,}-token context "
            "of the model",
            param="input",
            code="context_length_exceeded",
        )
    return from_core(exc)


# -- routes -----------------------------------------------------------------------------------


def routes(state: Any) -> list[Any]:
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from localllm.server.app import read_json

    host = EmbedderHost(state.log, threads=getattr(state.profile, "threads", None))
    atexit.register(host.close)

    def log(path: str, name: str, result: Any | None, status: int) -> None:
        what = (
            f" {len(result.token_counts)} inputs · {result.prompt_tokens} tokens" if result else ""
        )
        state.log(f"POST {path} {name}{what} {status}")

    async def embed(path: Path, inputs: list[Any], *, truncate: bool) -> tuple[Any, Any, float]:
        def work(embedder: Any) -> tuple[Any, Any]:
            if inputs and isinstance(inputs[0], list):
                return embedder, embedder.embed_tokens(inputs, truncate=truncate)
            return embedder, embedder.embed(inputs, truncate=truncate)

        try:
            (embedder, result), load_s = await host.run(path, work)
        except LocalLLMError as exc:
            raise core_error(exc) from None
        return embedder, result, load_s

    async def openai_embeddings(request: Any) -> Response:
        body = await read_json(request)
        if "input" not in body:
            raise bad_request("'input' is required", "input")
        inputs = parse_openai_input(body["input"])
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad_request(
                f"'encoding_format' must be 'float' or 'base64', not {encoding!r}",
                "encoding_format",
            )
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise bad_request("'model' must be a string", "model")
        try:
            entry = state.pool.lookup(model)
        except LocalLLMError as exc:
            raise from_core(exc) from None
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise bad_request("'dimensions' must be a positive integer", "dimensions")
        embedder, result, _ = await embed(entry.path, inputs, truncate=False)
        if dimensions is not None and dimensions != embedder.dimension:
            raise HTTPError(
                400,
                f"'dimensions' {dimensions} is not supported: {entry.name} makes "
                f"{embedder.dimension}-dimensional vectors and cannot shorten them",
                param="dimensions",
                code="unsupported_parameter",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(row, encoding)}
            for i, row in enumerate(result.vectors)
        ]
        tokens = result.prompt_tokens
        log("/v1/embeddings", entry.name, result, 200)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": entry.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def ollama_model(body: dict[str, Any]) -> tuple[str, Any]:
        """Ollama's required ``model`` and the pool entry it names."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required")
        try:
            return model, state.pool.lookup(model)
        except LocalLLMError as exc:
            raise from_core(exc) from None

    async def ollama_embed(request: Any) -> Response:
        t0 = time.perf_counter()
        body = await read_json(request)
        value = body.get("input")
        if isinstance(value, str):
            inputs: list[Any] = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            inputs = list(value)
        else:
            raise bad_request("'input' must be a string or a non-empty list of strings")
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise bad_request("'truncate' must be true or false")
        model, entry = ollama_model(body)
        _, result, load_s = await embed(entry.path, inputs, truncate=truncate)
        log("/api/embed", entry.name, result, 200)
        return JSONResponse(
            {
                "model": model,
                "embeddings": [[float(x) for x in row] for row in result.vectors],
                "total_duration": int((time.perf_counter() - t0) * 1e9),
                "load_duration": int(load_s * 1e9),
                "prompt_eval_count": result.prompt_tokens,
            }
        )

    async def ollama_embeddings(request: Any) -> Response:
        """Ollama's older route: one ``prompt``, one ``embedding`` (an empty prompt loads the
        model and answers an empty vector, as Ollama does)."""
        body = await read_json(request)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string")
        _, entry = ollama_model(body)
        if not prompt:
            await host.run(entry.path, lambda embedder: None)
            log("/api/embeddings", entry.name, None, 200)
            return JSONResponse({"embedding": []})
        _, result, _ = await embed(entry.path, [prompt], truncate=True)
        log("/api/embeddings", entry.name, result, 200)
        return JSONResponse({"embedding": [float(x) for x in result.vectors[0]]})

    def logged(path: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def route(request: Any) -> Response:
            request.scope["localllm.logged"] = True  # one access line: ours, with the counts
            try:
                return await handler(request)
            except HTTPError as exc:
                log(path, "-", None, exc.status)
                raise

        return route

    return [
        Route("/v1/embeddings", logged("/v1/embeddings", openai_embeddings), methods=["POST"]),
        Route("/api/embed", logged("/api/embed", ollama_embed), methods=["POST"]),
        Route(
            "/api/embeddings",
            logged("/api/embeddings", ollama_embeddings),
            methods=["POST"],
        ),
    ]

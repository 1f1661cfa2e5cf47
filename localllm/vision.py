"""Images in, text out: a vision projector (mmproj) beside a loaded text model.

Engine layer (imports llama_cpp lazily). llama.cpp's ``mtmd`` library, through
llama-cpp-python's ``mtmd_cpp`` bindings, turns a prompt with image markers into chunks (text
tokens and images), encodes each image with the projector and writes its embeddings into the
text model's KV cache. The rest of the turn is the engine's own token loop: :func:`prefill`
evaluates everything but the prompt's last token and returns the prompt as a token list in
which every image position holds a placeholder id (negative, derived from the image's sha256),
and the caller hands that list to :meth:`Engine.generate`. The engine sees the placeholders as
an already cached prefix, evaluates the last text token itself, and streams, stops, steers and
cancels exactly as for text; image positions count as prompt tokens in its stats. A later turn
whose prompt repeats the same images at the same places reuses the cache instead of encoding
them again.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm.errors import InferenceError, InvalidModelError, UsageError
from localllm.images import Image

# A marker no user text will contain by accident (mtmd's default "<__media__>" might).
MARKER = "<__localllm_image__>"


@dataclass
class ImageStats:
    """What the images of the last prefill cost."""

    images: int = 0
    image_tokens: int = 0
    encoded: int = 0  # images encoded now (not found in the cache)
    encode_s: float = 0.0
    text_tokens: int = 0
    cached: int = 0  # prompt positions found in the KV cache
    prefill_s: float = 0.0  # the whole prefill: images and text


_logs: dict[str, Any] = {"callback": None, "verbose": False, "tail": []}


def _route_logs(verbose: bool) -> None:
    """mtmd and clip log through their own hook: keep the last lines for error messages and
    print them only when ``verbose``."""
    _logs["verbose"] = verbose
    if _logs["callback"] is not None:
        return
    import llama_cpp
    from llama_cpp import mtmd_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if not text:
            return
        line = text.decode("utf-8", errors="replace")
        tail: list[str] = _logs["tail"]
        tail.append(line)
        del tail[:-20]
        if _logs["verbose"]:
            sys.stderr.write(line)
            sys.stderr.flush()

    _logs["callback"] = callback  # kept alive: the library holds a raw pointer
    mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))


def _keep_engine_log_route() -> None:
    """Importing llama-cpp-python's package (mtmd_cpp does) installs its own llama.cpp log
    callback; put the engine's back, so llama.cpp stays quiet unless verbose."""
    import llama_cpp

    from localllm import backend

    route = getattr(backend, "log_route", None)
    callback = route.get("callback") if isinstance(route, dict) else None
    if callback is not None:
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _last_error() -> str:
    lines = [line.strip() for line in _logs["tail"] if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "mismatch" in line.lower() or "fail" in line.lower():
            return line
    return lines[-1] if lines else ""


def forget_images(engine: Any) -> None:
    """Cut the engine's KV cache before its first image, before a prompt of text alone: the
    engine may read its cached tokens back as text, and an image placeholder has none."""
    cached = engine.kv_tokens
    first = next((i for i, t in enumerate(cached) if t < 0), None)
    if first is not None:
        engine.keep_kv(first)


def placeholder(image_id: str) -> int:
    """The token id that stands for every position of one image in the engine's cache."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return -1 - int.from_bytes(digest[:4], "little") % (1 << 30)


class Projector:
    """A projector loaded for one engine's model. Not thread-safe, like the engine."""

    def __init__(self, engine: Any, path: str | Path, *, verbose: bool = False) -> None:
        from llama_cpp import mtmd_cpp

        from localllm import modelfile

        if getattr(engine, "isolated", False):  # an enginechild.EngineProcess
            raise UsageError(
                "images need the model in this process, but it runs in a child process "
                "(LOCALLLM_ISOLATE=1 or RPC workers)",
                hint="unset LOCALLLM_ISOLATE to use images with this model",
            )
        _keep_engine_log_route()
        self.path = Path(path)
        self.engine = engine
        self.stats = ImageStats()
        if not self.path.is_file():
            raise InvalidModelError(
                f"projector file not found: {self.path}",
                hint="pass the mmproj .gguf that belongs to this model with --mmproj",
            )
        gf = modelfile.parse_gguf(self.path)
        if gf.get_str("general.architecture") != "clip":
            raise InvalidModelError(
                f"{self.path.name} is not a vision projector (its architecture is "
                f"{gf.get_str('general.architecture')!r}, not 'clip')",
                hint="pass the mmproj-*.gguf file that belongs to the model",
            )
        if not gf.get("clip.has_vision_encoder"):
            raise InvalidModelError(
                f"{self.path.name} has no vision encoder (an audio-only projector?)",
                hint="pass a projector with a vision encoder",
            )
        _route_logs(verbose)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = bool(engine.options.n_gpu_layers)
        params.n_threads = int(engine.options.n_threads_batch or engine.options.n_threads)
        params.print_timings = False
        params.warmup = False
        self._marker = MARKER.encode()
        params.media_marker = self._marker
        self._params = params
        _logs["tail"].clear()
        ctx = mtmd_cpp.mtmd_init_from_file(str(self.path).encode(), engine.native.model, params)
        if not ctx:
            raise self._refused(gf)
        self._m = mtmd_cpp
        self._ctx = ctx
        if not mtmd_cpp.mtmd_support_vision(ctx):
            self.close()
            raise InvalidModelError(f"{self.path.name} cannot read images")

    def _refused(self, gf: Any) -> InvalidModelError:
        text_width = self.engine.info.metadata.get(
            f"{self.engine.info.architecture}.embedding_length"
        )
        reason = _last_error()
        if "mismatch" in reason or "n_embd" in reason:
            width = gf.get_int("clip.vision.projection_dim")
            theirs = f" its output has {width} values per token," if width else ""
            return InvalidModelError(
                f"the projector {self.path.name} does not match {self.engine.path.name}:"
                f"{theirs} the model's embedding size is {text_width}",
                hint="use the mmproj file published with this model",
            )
        return InvalidModelError(
            f"llama.cpp could not load the projector {self.path.name}"
            + (f": {reason}" if reason else ""),
            hint="check the file with `localllm show FILE`, or run with --verbose",
        )

    @property
    def marker(self) -> str:
        return MARKER

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx:
            self._m.mtmd_free(ctx)
            self._ctx = None

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one prompt ----------------------------------------------------------------------

    def _bitmap(self, image: Image) -> Any:
        m = self._m
        data = image.decodable
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = m.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(data), False)
        if not bitmap:
            raise UsageError(
                f"{image.name} could not be decoded (corrupt or truncated?)",
                hint="check that the file opens in an image viewer",
            )
        return bitmap

    def prefill(
        self,
        prompt: str,
        images: Sequence[Image],
        *,
        cancel: Callable[[], bool] | None = None,
    ) -> list[int] | None:
        """Evaluate ``prompt`` (with one :data:`MARKER` per image) up to its last token and
        return the prompt as tokens for :meth:`Engine.generate`; None if ``cancel`` said stop
        between two chunks (the cache is then left consistent)."""
        m = self._m
        engine = self.engine
        count = prompt.count(MARKER)
        if count != len(images):
            raise UsageError(f"the prompt has {count} image markers for {len(images)} images")
        bitmaps = [self._bitmap(image) for image in images]
        chunks = m.mtmd_input_chunks_init()
        try:
            text = m.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text = encoded
            text.text_len = len(encoded)
            # BOS as the engine adds it: per the model's metadata, never twice (a chat
            # template that writes the BOS text already gives one).
            bos = engine.info.bos_token
            text.add_special = bool(
                engine.lib.llama_vocab_get_add_bos(engine.native.vocab)
            ) and not (bos and prompt.startswith(bos))
            text.parse_special = True
            arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = m.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), arr, len(bitmaps))
            if rc != 0:
                raise InferenceError(f"could not tokenize the prompt with its images (code {rc})")
            return self._eval(chunks, images, cancel)
        finally:
            m.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                m.mtmd_bitmap_free(bitmap)

    def _layout(self, chunks: Any) -> list[tuple[Any, list[int]]]:
        """Each chunk with the tokens that stand for it in the engine's cache."""
        m = self._m
        out = []
        for i in range(m.mtmd_input_chunks_size(chunks)):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                out.append((chunk, [int(ptr[j]) for j in range(n.value)]))
            else:
                raw = m.mtmd_input_chunk_get_id(chunk) or b""
                image_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
                out.append((chunk, [placeholder(image_id)] * n_pos))
        return out

    def _eval(
        self, chunks: Any, images: Sequence[Image], cancel: Callable[[], bool] | None
    ) -> list[int] | None:
        m = self._m
        engine = self.engine
        layout = self._layout(chunks)
        tokens = [t for _, toks in layout for t in toks]
        n_ctx = engine.n_ctx
        if len(tokens) >= n_ctx:
            raise UsageError(
                f"the prompt with its images is {len(tokens)} tokens but the context holds {n_ctx}",
                hint="raise the context with --ctx N, or send fewer images",
            )
        if not layout or not layout[-1][1] or layout[-1][1][0] < 0:
            raise UsageError("the prompt must not end with an image", hint="add text after it")
        stats = ImageStats(images=len(images))
        stats.image_tokens = sum(len(t) for _, t in layout if t and t[0] < 0)
        stats.text_tokens = len(tokens) - stats.image_tokens
        # Keep the cached prefix up to the first chunk that differs, then evaluate the rest
        # chunk by chunk, all but the prompt's last token (the engine evaluates that one).
        cached = engine.kv_tokens
        start = 0
        keep = 0
        for _chunk, toks in layout:
            if cached[start : start + len(toks)] != toks:
                if toks and toks[0] >= 0:  # a text chunk may be reused in part
                    common = 0
                    for a, b in zip(cached[start:], toks, strict=False):
                        if a != b:
                            break
                        common += 1
                    keep = start + common
                break
            start += len(toks)
            keep = start
        keep = min(keep, len(tokens) - 1)
        kept = engine.keep_kv(keep)
        if kept != keep:
            kept = engine.keep_kv(0)
        n_past = kept
        stats.cached = kept
        t_start = time.perf_counter()
        n_batch = engine.native.n_batch
        lctx = engine.native.ctx
        done: list[int] = tokens[:kept]
        try:
            pos = 0
            for chunk, toks in layout:
                end = pos + len(toks)
                if end <= n_past:
                    pos = end
                    continue
                if cancel is not None and cancel():
                    engine.adopt_kv(done)
                    return None
                is_image = bool(toks) and toks[0] < 0
                if is_image:
                    t0 = time.perf_counter()
                    new_past = ctypes.c_int32(0)
                    rc = m.mtmd_helper_eval_chunk_single(
                        self._ctx, lctx, chunk, n_past, 0, n_batch, False, ctypes.byref(new_past)
                    )
                    if rc != 0:
                        raise InferenceError(f"encoding an image failed (code {rc})")
                    stats.encoded += 1
                    stats.encode_s += time.perf_counter() - t0
                    n_past = int(new_past.value)
                    done.extend(toks)
                else:
                    skip = n_past - pos  # the cached part of this text chunk
                    todo = toks[skip:]
                    if end == len(tokens):
                        todo = todo[:-1]  # the last token is the engine's
                    if todo:
                        self._decode_text(todo, n_past, lctx, n_batch)
                        n_past += len(todo)
                        done.extend(todo)
                pos = end
        except BaseException:
            engine.adopt_kv([])
            engine.keep_kv(0)
            raise
        engine.adopt_kv(done)
        stats.prefill_s = time.perf_counter() - t_start
        self.stats = stats
        return tokens

    def _decode_text(self, tokens: Sequence[int], n_past: int, lctx: Any, n_batch: int) -> None:
        import llama_cpp

        for i in range(0, len(tokens), n_batch):
            part = tokens[i : i + n_batch]
            batch = llama_cpp.llama_batch_init(len(part), 0, 1)
            try:
                for j, token in enumerate(part):
                    batch.token[j] = token
                    batch.pos[j] = n_past + i + j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = 0
                batch.n_tokens = len(part)
                rc = llama_cpp.llama_decode(lctx, batch)
            finally:
                llama_cpp.llama_batch_free(batch)
            if rc != 0:
                raise InferenceError(f"llama_decode failed (code {rc}) on the prompt's text")


def find_projector(model_path: str | Path) -> Path | None:
    """The model's projector: the one its store manifest records, else one published
    beside the file (``mmproj*.gguf`` in its folder)."""
    from localllm import modelfile, store

    recorded = store.projector_of(Path(model_path))
    if recorded is not None:
        return recorded
    try:
        return modelfile.read_info(model_path).projector
    except Exception:
        return None

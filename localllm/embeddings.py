"""Embeddings: text in, one vector per text out (engine layer: imports ``llama_cpp`` lazily).

:class:`Embedder` loads a GGUF with ``embedding=True`` and turns many texts into a float32
matrix with few llama.cpp calls: every text is tokenized first, then as many whole texts as fit
are packed into one batch, each under its own sequence id (positions restart at 0 per text), and
one ``llama_decode`` returns a pooled vector per sequence. The batch is a ``llama_batch`` whose
arrays are numpy buffers, so filling it is a handful of array copies rather than a Python loop
per token, and vectors are read straight from llama.cpp's output buffer.

The context is sized for embeddings: ``n_batch = n_ubatch = n_ctx``, so the longest input the
model accepts fits in one micro-batch (encoder models need the whole sequence at once).

Pooling comes from the GGUF's ``<arch>.pooling_type`` (what the converter copied from the
sentence-transformers Pooling module) unless overridden. A model without one was not trained
to produce similarity vectors: it still embeds (mean pooling for encoders, the last token for
decoders) and :attr:`Embedder.note` says so.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localllm.errors import InferenceError, InvalidModelError, UsageError

if TYPE_CHECKING:
    import numpy as np

# llama.cpp's enum llama_pooling_type
POOLING_TYPES: dict[str, int] = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
POOLING_NAMES: dict[int, str] = {v: k for k, v in POOLING_TYPES.items()}
POOLING_CHOICES = ("mean", "cls", "last")  # the ones that give one vector per text

DEFAULT_DECODER_CONTEXT = 2048  # context for a decoder model (its trained one may be huge)
# Tokens packed into one llama.cpp call on the CPU (a longer text still goes whole, alone). An
# encoder attends over the whole batch under a mask, so big batches waste work on the CPU:
# all-MiniLM-L6-v2 on one core, 400 texts: 2.8 s of CPU at 64 tokens per call, 2.3 at 128 and
# 256, 2.6 at 512 (with flash attention; without it 512 cost twice 128). With GPU layers the
# batch is the whole context.
DEFAULT_BATCH_TOKENS = 128
# Texts longer than this many characters per allowed token are first tokenized by a prefix:
# a 10 MB line is rejected (or truncated) without tokenizing all of it.
_PREFIX_CHARS_PER_TOKEN = 16


def file_pooling(metadata: dict[str, Any]) -> str | None:
    """The pooling a GGUF declares (``mean``, ``cls``, ``last``, ``rank``, ``none``), or None
    when it declares none (then the model is not an embedding model)."""
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.pooling_type") if isinstance(arch, str) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return POOLING_NAMES.get(value)


def is_embedding_model(metadata: dict[str, Any]) -> bool:
    """Whether the file declares a pooling that yields a vector per text."""
    return file_pooling(metadata) in POOLING_CHOICES


class InputTooLongError(UsageError):
    """An input has more tokens than the model accepts in one sequence."""

    def __init__(self, index: int, n_tokens: int, limit: int, *, at_least: bool = False) -> None:

        size = f"at least {n_tokens:,}" if at_least else f"{n_tokens:,}"
        super().__init__(
            f"input {index} is {size} tokens, longer than the {limit:,} tokens the model "
            "takes in one sequence",
            hint="pass --truncate to embed its first tokens, or split the text",
        )
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit
        self.at_least = at_least


@dataclass
class Embeddings:
    """The vectors of one call, in input order, and what they took."""

    vectors: np.ndarray  # float32, shape (n_inputs, dimension)
    token_counts: list[int]
    truncated: list[int] = field(default_factory=list)  # indices of truncated inputs
    calls: int = 0  # llama.cpp decode calls

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


class _Batch:
    """A ``llama_batch`` over numpy arrays (never passed to ``llama_batch_free``)."""

    def __init__(self, lib: Any, capacity: int) -> None:
        import numpy as np

        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.ones(capacity, np.int32)
        self.seq = np.zeros(capacity, np.int32)
        self.logits = np.ones(capacity, np.int8)  # every token is an output in embedding mode
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (i32p * capacity)(
            *(ctypes.cast(base + 4 * j, i32p) for j in range(capacity))
        )
        self.struct = lib.llama_batch(
            n_tokens=0,
            token=self.token.ctypes.data_as(i32p),
            embd=None,
            pos=self.pos.ctypes.data_as(i32p),
            n_seq_id=self.n_seq_id.ctypes.data_as(i32p),
            seq_id=ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p)),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self._arange = np.arange(capacity, dtype=np.int32)

    def fill(self, seqs: Sequence[np.ndarray]) -> None:
        n = 0
        for i, toks in enumerate(seqs):
            k = len(toks)
            self.token[n : n + k] = toks
            self.pos[n : n + k] = self._arange[:k]
            self.seq[n : n + k] = i
            n += k
        self.struct.n_tokens = n


class Embedder:
    """A model loaded for embeddings. Not thread-safe: one thread uses it at a time."""

    def __init__(
        self,
        path: str | Path,
        *,
        pooling: str | None = None,
        n_ctx: int | None = None,
        threads: int | None = None,
        gpu_layers: int | str | None = "auto",
        batch_tokens: int | None = None,
        flash_attn: bool | None = None,
        verbose: bool = False,
    ) -> None:
        import numpy as np

        from localllm import modelfile

        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidModelError(f"model file not found: {self.path}")
        modelfile.validate_gguf(self.path)
        info = modelfile.read_info(self.path)
        self.info = info
        self.name = info.name
        self.architecture = info.architecture
        self.structure = info.structure
        self.declared_pooling = file_pooling(info.metadata)
        if pooling is not None and pooling not in POOLING_CHOICES:
            raise UsageError(
                f"unknown pooling '{pooling}'", hint="use one of: " + ", ".join(POOLING_CHOICES)
            )
        if self.declared_pooling == "rank" and pooling is None:
            raise UsageError(
                f"{info.name} is a reranker (pooling: rank): it scores text pairs, it does not "
                "embed text",
                hint="use an embedding model, or force a pooling with --pooling mean",
            )
        encoder = info.structure == "encoder-only"
        self.note: str | None = None
        if pooling is not None:
            chosen = pooling
        elif self.declared_pooling in POOLING_CHOICES:
            chosen = self.declared_pooling
        else:
            chosen = "mean" if encoder else "last"
            kind = "a chat model" if info.chat_template else "not an embedding model"
            self.note = (
                f"note: {info.name} is {kind} (its file declares no pooling): its vectors are "
                f"not trained for similarity; using {chosen} pooling"
            )
        self.pooling = chosen
        trained = info.context_length or 512
        if n_ctx is None:
            n_ctx = trained if encoder else min(trained, DEFAULT_DECODER_CONTEXT)
        if n_ctx < 8:
            raise UsageError(f"context of {n_ctx} tokens is too small for embeddings")
        self.n_ctx = n_ctx

        from localllm.backend import (
            flash_attn_mode,
            gpu_offload_supported,
            route_llama_logs,
        )
        from localllm.hardware import default_threads

        if gpu_layers in (None, "auto"):
            layers = -1 if gpu_offload_supported() else 0
        else:
            layers = int(gpu_layers)
        default_batch = DEFAULT_BATCH_TOKENS if layers == 0 else n_ctx
        self.batch_tokens = max(1, min(batch_tokens or default_batch, n_ctx))
        self.threads = threads or default_threads()
        route_llama_logs(verbose)
        import llama_cpp
        from llama_cpp import Llama

        self._lib = llama_cpp
        try:
            # Flash attention defaults to llama.cpp's auto, which takes it on the CPU too: an
            # encoder attends over the whole batch, and all-MiniLM-L6-v2 needed a third less
            # CPU time with it (same vectors to 1e-6), unlike decoding (see plan_load).
            with flash_attn_mode(flash_attn):
                self._llm = self._load(Llama, layers, chosen, bool(flash_attn), verbose)
        except ValueError as exc:
            raise InvalidModelError(
                f"llama.cpp could not load {self.path.name} for embeddings: {exc}",
                hint="check that the file is a complete GGUF model (localllm show FILE)",
            ) from exc
        except (MemoryError, OSError) as exc:
            raise InferenceError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        model = self._llm._model.model
        self._ctx = self._llm._ctx.ctx
        self._vocab = self._llm._model.vocab
        n_out = getattr(llama_cpp, "llama_model_n_embd_out", None)
        self.dimension = int(n_out(model) if n_out else llama_cpp.llama_model_n_embd(model))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(self._ctx))
        self._batch = _Batch(llama_cpp, n_ctx)
        self._tok_cap = n_ctx + 1
        self._tok_buf = (llama_cpp.llama_token * self._tok_cap)()
        self._tok_view = np.ctypeslib.as_array(self._tok_buf)
        # What add_special puts around every text: a trailing SEP/EOS is kept on truncation.
        self._closed = False
        empty = self._tokenize(b"")
        self._tail = empty[-1:] if len(empty) >= 2 or self._adds_end() else empty[:0]

    def _load(self, llama: Any, layers: int, pooling: str, flash: bool, verbose: bool) -> Any:
        n_ctx = self.n_ctx
        return llama(
            model_path=str(self.path),
            embedding=True,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            n_gpu_layers=layers,
            pooling_type=POOLING_TYPES[pooling],
            flash_attn=flash,
            verbose=verbose,
        )

    # -- tokens -----------------------------------------------------------------------------

    def _adds_end(self) -> bool:
        lib = self._lib
        return bool(
            lib.llama_vocab_get_add_sep(self._vocab) or lib.llama_vocab_get_add_eos(self._vocab)
        )

    def _tokenize(self, data: bytes) -> np.ndarray:
        import numpy as np

        if self._closed:
            raise InferenceError("the embedding model is closed")
        lib = self._lib
        n = lib.llama_tokenize(
            self._vocab, data, len(data), self._tok_buf, self._tok_cap, True, False
        )
        if n >= 0:
            return self._tok_view[:n].copy()
        buf = (lib.llama_token * -n)()
        m = lib.llama_tokenize(self._vocab, data, len(data), buf, -n, True, False)
        if m < 0:  # pragma: no cover - llama.cpp said how many it needed
            raise InferenceError("llama.cpp could not tokenize the input")
        return np.ctypeslib.as_array(buf)[:m].copy()

    def _cut(self, tokens: np.ndarray, limit: int) -> np.ndarray:
        import numpy as np

        tail = self._tail
        if len(tail) and len(tokens) and tokens[-1] == tail[-1]:
            return np.concatenate([tokens[: limit - len(tail)], tail])
        return tokens[:limit]

    def tokenize(self, text: str, *, index: int = 0, truncate: bool = False) -> np.ndarray:
        """The tokens of ``text`` as the model reads it (with its special tokens), at most
        :attr:`n_ctx`: longer is an :class:`InputTooLongError` unless ``truncate``."""
        return self._prepare(text, index, truncate)[0]

    def _prepare(self, text: str, index: int, truncate: bool) -> tuple[np.ndarray, bool]:
        limit = self.n_ctx
        if len(text) > limit * _PREFIX_CHARS_PER_TOKEN:
            # Long text: tokenize a prefix first; if even that is too long, so is the whole.
            prefix = text[: limit * _PREFIX_CHARS_PER_TOKEN]
            cut = prefix.rfind(" ")
            if cut > len(prefix) // 2:
                prefix = prefix[:cut]
            tokens = self._tokenize(_utf8(prefix))
            if len(tokens) > limit:
                if not truncate:
                    raise InputTooLongError(index, len(tokens), limit, at_least=True)
                return self._cut(tokens, limit), True
        tokens = self._tokenize(_utf8(text))
        if len(tokens) == 0:
            raise UsageError(f"input {index} is empty: it has no tokens to embed")
        if len(tokens) > limit:
            if not truncate:
                raise InputTooLongError(index, len(tokens), limit)
            return self._cut(tokens, limit), True
        return tokens, False

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(_utf8(text)))

    # -- embedding --------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = False,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Embeddings:
        """One vector per text, in order. ``batch_size``: most texts per llama.cpp call."""

        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        if len(texts) == 0:
            raise UsageError("nothing to embed: the list of inputs is empty")
        seqs: list[np.ndarray] = []
        truncated: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UsageError(f"input {i} is not text")
            toks, cut = self._prepare(text, i, truncate)
            if cut:
                truncated.append(i)
            seqs.append(toks)
        result = self._run(seqs, normalize=normalize, batch_size=batch_size, progress=progress)
        result.truncated = truncated
        return result

    def embed_tokens(
        self,
        token_lists: Sequence[Sequence[int]],
        *,
        normalize: bool = True,
        truncate: bool = False,
        batch_size: int | None = None,
    ) -> Embeddings:
        """One vector per list of token ids, used as given (no special tokens added)."""
        import numpy as np

        if len(token_lists) == 0:
            raise UsageError("nothing to embed: the list of inputs is empty")
        seqs: list[np.ndarray] = []
        truncated: list[int] = []
        for i, ids in enumerate(token_lists):
            arr = np.asarray(ids, dtype=np.int64)
            if arr.ndim != 1 or len(arr) == 0:
                raise UsageError(f"input {i} is not a non-empty list of token ids")
            if arr.min() < 0 or arr.max() >= self.n_vocab:
                raise UsageError(
                    f"input {i} has a token id outside the vocabulary (0..{self.n_vocab - 1})"
                )
            if len(arr) > self.n_ctx:
                if not truncate:
                    raise InputTooLongError(i, len(arr), self.n_ctx)
                arr = arr[: self.n_ctx]
                truncated.append(i)
            seqs.append(arr.astype(np.int32))
        result = self._run(seqs, normalize=normalize, batch_size=batch_size, progress=None)
        result.truncated = truncated
        return result

    def _groups(self, seqs: Sequence[np.ndarray], batch_size: int | None) -> list[range]:
        """Consecutive runs of inputs that fit one call: at most ``batch_tokens`` tokens
        (a longer single input goes alone, up to ``n_ctx``) and ``n_seq_max`` sequences."""
        most = min(self.n_seq_max, batch_size or self.n_seq_max)
        groups: list[range] = []
        start, tokens = 0, 0
        for i, s in enumerate(seqs):
            n = len(s)
            if i > start and (tokens + n > self.batch_tokens or i - start >= most):
                groups.append(range(start, i))
                start, tokens = i, 0
            tokens += n
        groups.append(range(start, len(seqs)))
        return groups

    def _run(
        self,
        seqs: list[np.ndarray],
        *,
        normalize: bool,
        batch_size: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> Embeddings:
        import numpy as np

        if self._closed:
            raise InferenceError("the embedding model is closed")
        if batch_size is not None and batch_size < 1:
            raise UsageError("--batch must be at least 1")
        lib, ctx, dim = self._lib, self._ctx, self.dimension
        out = np.empty((len(seqs), dim), dtype=np.float32)
        memory = lib.llama_get_memory(ctx)
        calls = 0
        done = 0
        for group in self._groups(seqs, batch_size):
            part = [seqs[i] for i in group]
            self._batch.fill(part)
            if memory:
                lib.llama_memory_clear(memory, True)
            rc = lib.llama_decode(ctx, self._batch.struct)
            calls += 1
            if rc != 0:
                raise InferenceError(f"llama.cpp failed to embed a batch (code {rc})")
            for j, row in enumerate(group):
                ptr = lib.llama_get_embeddings_seq(ctx, j)
                if not ptr:
                    raise InferenceError("llama.cpp returned no pooled embedding")
                out[row] = np.ctypeslib.as_array(ptr, shape=(dim,))
            done += len(part)
            if progress is not None:
                progress(done, len(seqs))
        if memory:
            lib.llama_memory_clear(memory, True)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return Embeddings(out, [len(s) for s in seqs], calls=calls)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._llm.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _utf8(text: str) -> bytes:
    """UTF-8 for llama.cpp; a lone surrogate (undecodable input) becomes U+FFFD."""
    from localllm.textin import clean_text

    return clean_text(text)[0].encode("utf-8")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    import numpy as np

    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def rank(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``query`` to every row of ``vectors``."""
    import numpy as np

    q = query / (np.linalg.norm(query) or 1.0)
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    return (vectors @ q) / norms

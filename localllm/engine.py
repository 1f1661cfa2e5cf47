"""The inference engine: a loaded model, its context and the token loop.

It plans a load (:func:`plan_load`), loads a GGUF through llama.cpp's C API, renders prompts
with the model's chat template (through :mod:`localllm.templates`), and runs its own token
loop:

* incremental, UTF-8-safe detokenization: bytes of a character split over several tokens are
  held back until the character is whole;
* stop sequences matched across token boundaries, with no partial stop text ever emitted;
* typed events (:class:`TextEvent`, :class:`Stats`) that the CLI and the TUI both consume.

The KV cache keeps the longest matching prefix of the previous call, so a multi-turn chat
whose rendered history stays identical only evaluates the new tokens.

Its neighbours: :mod:`localllm.backend` loads the shared library and reports on the build and
its devices; :mod:`localllm.sampling` builds the sampler chain that picks each token;
:mod:`localllm.speculative` drafts tokens for the loop to verify; :mod:`localllm.promptcache`
keeps earlier prompts' KV states; :mod:`localllm.hardware` counts cores for the thread count.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from localllm import backend, preload, templates
from localllm.durable import file_identity
from localllm.errors import InferenceError, InvalidModelError, UsageError
from localllm.hardware import default_threads
from localllm.profiles import Profile
from localllm.promptcache import PrefixStore, PromptCache, common_prefix
from localllm.sampling import Sampler, watch_trigger
from localllm.speculative import (
    SPECULATIVE_AUTO_MIN_PROMPT,
    SPECULATIVE_MAX_DRAFT,
    ModelDrafter,
    NgramDrafter,
)

StopReason = Literal["stop", "length", "context", "cancelled"]
DEFAULT_CONTEXT = 4096
MIN_CONTEXT = 512  # the smallest context plan_load sizes for a one-shot run


@dataclass(frozen=True)
class TextEvent:
    """A piece of generated text, always whole UTF-8 characters.

    ``tokens`` is how many generated tokens it took to produce (0 for injected text).
    """

    text: str
    tokens: int = 1
    injected: bool = False


class Steering:
    """Lets the consumer of a running generation inject text (a closing tag, a bridge
    sentence) that the model then reads as if it had written it.

    The reasoning module owns the policy (when to close a think block); the engine owns the
    mechanism: injected text is tokenized, appended to the context after the current token,
    and echoed as a :class:`TextEvent` with ``injected=True``.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []

    def inject(self, text: str) -> None:
        if text:
            self._pending.append(text)

    @property
    def pending(self) -> bool:
        """Whether text waits to be injected (asked once per token: kept cheap)."""
        return bool(self._pending)

    def take(self) -> str:
        text = "".join(self._pending)
        self._pending.clear()
        return text


@dataclass(frozen=True)
class Stats:
    """Figures for one generation; the last event of every stream."""

    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    ttft_s: float
    generation_s: float
    stop_reason: StopReason
    drafted_tokens: int = 0  # speculative decoding: tokens proposed by the drafter
    accepted_tokens: int = 0  # ... and how many of them the model's own sampling confirmed

    @property
    def evaluated_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        if self.generated_tokens < 2 or self.generation_s <= 0:
            return 0.0
        return (self.generated_tokens - 1) / self.generation_s

    @property
    def prompt_tokens_per_s(self) -> float:
        if self.ttft_s <= 0:
            return 0.0
        return self.evaluated_prompt_tokens / self.ttft_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
            "ttft_s": round(self.ttft_s, 4),
            "generation_s": round(self.generation_s, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "prompt_tokens_per_s": round(self.prompt_tokens_per_s, 2),
            "stop_reason": self.stop_reason,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
        }


Event = TextEvent | Stats


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded. :func:`plan_load` is the one place that decides these."""

    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    n_batch: int = 512
    verbose: bool = False
    vocab_only: bool = False
    n_ubatch: int = 512
    n_threads_batch: int | None = None  # None: n_threads
    kv_cache_type: str = "f16"  # f16 | q8_0 | q4_0, for both K and V
    flash_attn: bool | None = False  # None: llama.cpp decides (auto)
    use_mmap: bool = True
    # What plan_load chose and why, for --stats and the TUI status bar.
    n_layers_total: int | None = None  # offloadable layers (n_layer + 1) when known
    offload_reason: str = ""
    backend: str = "CPU"
    rpc: tuple[str, ...] = ()  # RPC workers registered before the load (localllm.rpc)

    @property
    def offload_summary(self) -> str:
        """``CPU`` or e.g. ``CUDA 25/31 layers (partial: limited by GPU memory)``."""
        if self.n_gpu_layers == 0:
            return "CPU" + (f" ({self.offload_reason})" if self.offload_reason else "")
        total = self.n_layers_total
        layers = "all" if self.n_gpu_layers < 0 else str(self.n_gpu_layers)
        if total:
            layers = f"{min(self.n_gpu_layers, total) if self.n_gpu_layers >= 0 else total}/{total}"
        why = f" ({self.offload_reason})" if self.offload_reason else ""
        return f"{self.backend} {layers} layers{why}"


class _phase_timer:
    """Records how long each phase of a load took, for ``run --stats -v``."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases.append((name, now - self._last))
        self._last = now


def plan_load(
    profile: Profile,
    n_ctx_train: int | None = None,
    *,
    vocab_only: bool = False,
    path: str | Path | None = None,
    gpu_free: int | None = None,
    need_tokens: int | None = None,
    model_shape: dict[str, Any] | None = None,
) -> LoadOptions:
    """Threads, context size, GPU layers, KV cache type and flash attention for ``profile``
    on this machine.

    ``gpu_layers: auto`` is 0 on a CPU-only build (silently). With a GPU backend it offloads the
    layers that fit in the devices' free memory (``gpu_free``, else asked of llama.cpp) after
    the KV cache at the chosen context and a margin, using the model at ``path`` for its shape;
    without ``path`` it offloads everything. ``need_tokens`` (a one-shot run: an upper bound
    on prompt plus answer tokens) keeps an unset context from being sized bigger than the
    work needs: a smaller KV cache loads faster and takes less memory.

    ``flash_attn: auto`` (or a profile without the field) is off on the CPU and llama.cpp's own
    auto with GPU layers. A quantized KV cache needs flash attention: it switches ``auto`` on,
    and ``flash_attn: false`` with ``kv_cache_type: q8_0`` is a usage error that says why.
    """
    from localllm import offload

    kv_type = str(getattr(profile, "kv_cache_type", "f16") or "f16")
    flash = getattr(profile, "flash_attn", "auto")
    if kv_type not in offload.KV_CACHE_TYPES:
        raise UsageError(
            f"unknown KV cache type '{kv_type}'",
            hint="use one of: " + ", ".join(offload.KV_CACHE_TYPES),
        )
    auto_flash = flash in (None, "auto")
    flash_attn: bool | None = None if auto_flash else bool(flash)
    if kv_type != "f16":
        if flash_attn is False:
            raise UsageError(
                f"a {kv_type} KV cache needs flash attention, which is switched off",
                hint="llama.cpp can only quantize the V cache inside its flash-attention kernel: "
                "set flash_attn to true or auto, or use kv_cache_type f16",
            )
        flash_attn = True

    info = model_shape or None  # {}: known to have no usable shape
    if model_shape is None and path is not None and not vocab_only:
        info = _model_shape(path)
    if n_ctx_train is None and info is not None:
        n_ctx_train = info.get("context_length")
    n_ctx = profile.context_length or DEFAULT_CONTEXT
    if n_ctx_train and not profile.context_length:
        n_ctx = min(n_ctx, n_ctx_train)
    if need_tokens is not None and not profile.context_length:
        room = -(-max(need_tokens, 1) // 256) * 256  # whole blocks of 256, as llama.cpp pads
        n_ctx = min(n_ctx, max(MIN_CONTEXT, room))
    threads = profile.threads or default_threads()
    workers = tuple(getattr(profile, "rpc", ()) or ()) if not vocab_only else ()
    if workers:
        from localllm import rpc

        rpc.attach(workers)  # probes and registers them: their devices count as GPUs below

    total: int | None = None
    reason = ""
    backend_label = "CPU"
    if vocab_only:
        layers = 0
    elif profile.gpu_layers == "auto":
        if not backend.gpu_offload_supported():
            layers, reason = 0, ""
        else:
            backend_label = backend.gpu_backend_name()
            free = gpu_free if gpu_free is not None else backend.gpu_free_memory()
            if info is None:
                layers, reason = -1, "auto: model shape unknown, offloading all"
            else:
                sizes = offload.layer_sizes(
                    info["file_size"],
                    info["n_layer"],
                    info["n_embd"],
                    info["n_head"],
                    info["n_head_kv"],
                    n_ctx,
                    kv_type,
                    key_length=info.get("key_length"),
                    value_length=info.get("value_length"),
                    tensors=info.get("tensors"),
                )
                choice = offload.choose_gpu_layers(free, sizes)
                layers, total, reason = choice.layers, choice.total, "auto: " + choice.reason
    else:
        layers = int(profile.gpu_layers)
        if layers and backend.gpu_offload_supported():
            backend_label = backend.gpu_backend_name()
        elif layers:
            layers, reason = 0, "this llama.cpp build has no GPU backend"
        if info is not None:
            total = info["n_layer"] + 1
    if workers:
        if layers == 0:
            raise UsageError(
                "--rpc needs layers offloaded to the workers, but none are"
                + (f" ({reason})" if reason else " (--gpu-layers 0)"),
                hint="use --gpu-layers N (N > 0) or auto",
            )
        backend_label = "RPC" if backend_label in ("CPU", "GPU", "RPC") else backend_label + "+RPC"
    if layers == 0:
        backend_label = "CPU"
    if flash_attn is None:
        # auto: on the CPU flash attention slowed decoding at depth (SmolLM2, 2048 tokens of
        # context: 16-20 tokens/s with it, 27-32 without), so it stays off; with layers on a
        # GPU, llama.cpp's own auto switches it on where the device supports it.
        flash_attn = None if layers != 0 else False
    return LoadOptions(
        n_ctx=n_ctx,
        n_threads=threads,
        n_gpu_layers=layers,
        verbose=profile.verbose,
        vocab_only=vocab_only,
        kv_cache_type=kv_type,
        flash_attn=flash_attn,
        n_layers_total=total,
        offload_reason=reason,
        backend=backend_label,
        rpc=workers,
    )


def _model_shape(path: str | Path) -> dict[str, Any] | None:
    """What the offload arithmetic needs from a GGUF's headers (no weights read), or None."""
    from localllm.errors import LocalLLMError

    try:
        from localllm.fit import shape_from_metadata
        from localllm.modelfile import parse_gguf

        gf = parse_gguf(path)
    except (LocalLLMError, OSError, ValueError):
        return None
    shape = shape_from_metadata(gf.metadata)
    if shape is None:
        return None
    split = len(gf.parts) > 1
    return {
        "file_size": gf.total_size or gf.file_size,
        "n_layer": shape.n_layer,
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_head_kv": shape.n_head_kv,
        "key_length": shape.key_length,
        "value_length": shape.value_length,
        "context_length": shape.context_length,
        # the tensors of the first part only: a split model gets an even split per layer
        "tensors": None if split else [(t.name, t.n_bytes) for t in gf.tensors],
    }


_validated: set[tuple[str, int, int, int]] = set()


def mark_validated(path: str | Path) -> None:
    """Record that this version of ``path`` passed :func:`localllm.modelfile.validate_gguf`
    (the loader's persistent header cache says so), so the engine need not parse it again."""
    ident = file_identity(Path(path))
    if ident is not None:
        _validated.add(ident)


def _was_validated(path: Path) -> bool:
    ident = file_identity(path)
    return ident is not None and ident in _validated


class StopMatcher:
    """Holds back text that might be the start of a stop sequence.

    ``feed`` returns the text that is safe to emit and whether a stop sequence was completed;
    text from the stop sequence on is never returned. The stop that is complete first wins
    (at the same end, the one that starts earlier): a stream knows no more when it stops, so
    the answer is the same however the text comes in chunks. With stops ``O`` and ``POO``,
    "POO" ends at "P" whether it comes whole or as "PO" then "O".
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        pending = self._pending + text
        first: tuple[int, int] | None = None  # (end, start) of the stop complete first
        for stop in self.stops:
            at = pending.find(stop)
            if at >= 0 and (first is None or (at + len(stop), at) < first):
                first = (at + len(stop), at)
        if first is not None:
            self._pending = ""
            return pending[: first[1]], True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(pending)), 0, -1):
                if pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


@dataclass
class ModelInfo:
    """What the engine knows about a loaded model."""

    path: Path
    name: str
    architecture: str
    chat_template: str | None
    bos_token: str
    eos_token: str
    n_ctx_train: int
    metadata: dict[str, str] = field(repr=False)


class Engine:
    """A loaded model. Not thread-safe: one thread uses an engine at a time.

    The model and its context are driven through llama.cpp's C API (``llama_cpp.llama_cpp``):
    prompt chunks and single tokens go through ``llama_decode`` and every token is sampled by
    a llama.cpp sampler chain, so no logits cross into Python.
    """

    def __init__(self, path: str | Path, options: LoadOptions) -> None:
        self.path = Path(path)
        self.options = options
        if not self.path.is_file():
            raise InvalidModelError(f"model file not found: {self.path}")
        from localllm.modelfile import validate_gguf

        timer = _phase_timer()
        if not _was_validated(self.path):
            validate_gguf(self.path)  # never hand llama.cpp a file our checks refuse
        timer("validate")
        lib = backend.llama_lib()
        timer("import llama_cpp")
        self._lib = lib
        backend.route_llama_logs(options.verbose)
        self.load_log: list[str] = []  # llama.cpp's load log, kept for the RPC split
        try:
            if options.rpc:
                with backend.capture_llama_log() as self.load_log:
                    self._llm = Native(lib, self.path, options)
            else:
                self._llm = Native(lib, self.path, options)
        except ValueError as exc:
            if options.kv_cache_type != "f16" and "context" in str(exc):
                raise InvalidModelError(
                    f"llama.cpp could not create a {options.kv_cache_type} KV cache for "
                    f"{self.path.name}: {exc}",
                    hint="this model's head size may not suit a quantized cache: "
                    "use kv_cache_type f16",
                ) from exc
            raise InvalidModelError(
                f"llama.cpp could not load {self.path.name}: {exc}",
                hint="check that the file is a complete GGUF model (localllm show FILE)",
            ) from exc
        except (MemoryError, OSError) as exc:
            raise InferenceError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        timer("load weights + context")
        self._vocab = self._llm.vocab
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # The tokens in the KV cache, in order (sequence 0): prompt, generated and injected
        # tokens alike, so a later prompt that repeats them is not evaluated again.
        self._kv: list[int] = []
        self.draft: Engine | None = None  # a draft model for speculative decoding
        # Earlier prompts' KV states kept in memory (the server turns it on): see PromptCache.
        self.prompt_cache: PromptCache | None = None
        self.prefix_store: PrefixStore | None = None  # open_engine sets it (localllm.promptcache)
        self._greedy: Any = None  # its greedy sampler, when this engine drafts for another
        meta = self._llm.metadata()
        self.info = ModelInfo(
            path=self.path,
            name=meta.get("general.name") or self.path.stem,
            architecture=meta.get("general.architecture", "unknown"),
            chat_template=meta.get("tokenizer.chat_template") or None,
            bos_token=self._special_text(lib.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(lib.llama_vocab_eos(self._vocab)),
            n_ctx_train=int(lib.llama_model_n_ctx_train(self._llm.model)),
            metadata=meta,
        )
        timer("metadata")
        self.load_phases: list[tuple[str, float]] = timer.phases

    # -- tokens ---------------------------------------------------------------------------

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached: this is on the per-token path)."""
        key = token if not special else -token - 1
        cached = self._pieces.get(key)
        if cached is None:
            buf = self._piece_buf
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:  # pragma: no cover - a piece longer than 256 bytes
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            cached = buf.raw[:n]
            self._pieces[key] = cached
        return cached

    def tokenize(
        self, text: str, *, special: bool = True, add_bos: bool | None = None
    ) -> list[int]:
        """Tokens of ``text``; BOS is added per the model's metadata, never twice."""
        lib = self._lib
        if add_bos is None:
            add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        raw = text.encode("utf-8")
        size = len(raw) + 2
        buf = (ctypes.c_int32 * size)()
        n = lib.llama_tokenize(self._vocab, raw, len(raw), buf, size, add_bos, special)
        if n < 0:
            size = -n
            buf = (ctypes.c_int32 * size)()
            n = lib.llama_tokenize(self._vocab, raw, len(raw), buf, size, add_bos, special)
        tokens = buf[:n]
        bos = lib.llama_vocab_bos(self._vocab)
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of ``tokens`` (invalid UTF-8 replaced)."""
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx

    @property
    def n_vocab(self) -> int:
        return int(self._lib.llama_vocab_n_tokens(self._vocab))

    # -- prompts --------------------------------------------------------------------------

    @property
    def is_chat_model(self) -> bool:
        return self.info.chat_template is not None

    def render(
        self,
        messages: Sequence[templates.Message],
        *,
        variables: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> str:
        """The prompt text for ``messages``: the chat template, or plain text for base models."""
        source = chat_template or self.info.chat_template
        if source is None:
            return "\n\n".join(str(m["content"]) for m in messages)
        return templates.render(
            source,
            messages,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            variables=variables,
        )

    # -- the KV cache ---------------------------------------------------------------------

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens of ``prompt``, reusing the KV cache's own tokens where their text is the
        prompt's start.

        A chat's next prompt repeats the previous answer as text; tokenizing that text again
        need not give the ids the model generated ("Hel"+"lo" versus "Hello"), and every token
        after the first difference would be evaluated again. So the cached tokens are kept as
        far as their bytes spell the start of the prompt, and only the rest is tokenized, when
        that rest's tokens spell it back exactly (always true for byte-level vocabularies).
        """
        full = self.tokenize(prompt)
        kv = self._kv
        if not kv or common_prefix(kv, full) >= len(kv) - 1:
            return full
        raw = prompt.encode("utf-8")
        lib = self._lib
        start = 0
        if lib.llama_vocab_get_add_bos(self._vocab) and kv[0] == lib.llama_vocab_bos(self._vocab):
            start = 1  # the BOS that tokenize adds is not in the text
        if full[:start] != kv[:start]:
            return full
        pos = 0
        k = start
        for token in kv[start:]:
            piece = self.piece(token, special=True)
            if not raw.startswith(piece, pos):
                break
            pos += len(piece)
            k += 1
        if k <= common_prefix(kv, full) or pos == 0:
            return full
        try:  # a match may end inside a character whose first bytes agree
            rest = raw[pos:].decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            return full
        tail = self.tokenize(rest, add_bos=False) if rest else []
        if b"".join(self.piece(t, special=True) for t in tail) != raw[pos:]:
            return full
        return kv[:k] + tail

    # -- the KV cache: the prompt caches, the drafters and the projector work through these --

    @property
    def kv_tokens(self) -> list[int]:
        """The tokens the KV cache holds, in order (a copy; images are negative ids)."""
        return list(self._kv)

    @property
    def native(self) -> Native:
        """The loaded llama.cpp objects (``ctx``, ``model``, ``vocab``, ``memory``,
        ``n_batch``), for the engine layer's own modules: the sampler chain and the projector
        act on the same context."""
        return self._llm

    @property
    def lib(self) -> Any:
        """llama.cpp's C API (:func:`localllm.backend.llama_lib`) as this engine loaded it."""
        return self._lib

    def greedy_token(self) -> int:
        """The most likely next token after the KV cache (a draft model's proposal)."""
        if self._greedy is None:
            self._greedy = self._lib.llama_sampler_init_greedy()
        return int(self._lib.llama_sampler_sample(self._greedy, self._llm.ctx, -1))

    def adopt_kv(self, tokens: Sequence[int]) -> None:
        """Record that the KV cache now holds ``tokens``, evaluated outside the engine (the
        projector's images and text)."""
        self._kv[:] = list(tokens)

    def save_kv(self) -> bytes | None:
        """A copy of sequence 0's KV state (what :meth:`load_kv` puts back), or None."""
        lib, ctx = self._lib, self._llm.ctx
        size = lib.llama_state_seq_get_size(ctx, 0)
        if size <= 0:
            return None
        buf = (ctypes.c_uint8 * size)()
        written = lib.llama_state_seq_get_data(ctx, buf, size, 0)
        return ctypes.string_at(buf, written) if written else None

    def load_kv(self, tokens: Sequence[int], state: bytes) -> bool:
        """Make the KV cache hold ``tokens`` from their saved ``state``; False (and an empty
        cache) when llama.cpp refuses it."""
        self.keep_kv(0)
        lib = self._lib
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if lib.llama_state_seq_set_data(self._llm.ctx, buf, len(state), 0) != len(state):
            lib.llama_memory_clear(self._llm.memory, True)
            return False
        self._kv[:] = tokens
        return True

    def keep_kv(self, n: int) -> int:
        """Keep the first ``n`` tokens of the KV cache; returns how many are kept."""
        if n >= len(self._kv) and n > 0:
            return len(self._kv)
        lib = self._lib
        mem = self._llm.memory
        if n > 0 and lib.llama_memory_seq_rm(mem, -1, n, -1):
            del self._kv[n:]
            return n
        lib.llama_memory_clear(mem, True)
        self._kv.clear()
        return 0

    def reset(self) -> None:
        """Empty the KV cache (benchmarks: the next prompt is evaluated in full)."""
        self.keep_kv(0)

    def renew_context(self, n_ctx: int) -> None:
        """A fresh context of ``n_ctx`` tokens in place of this one (same threads, batch
        sizes, KV cache type), its KV cache empty: ``localllm bench`` runs each test in a
        context sized for it, as llama-bench does. Costs about what creating the context
        at load did, not a model load."""
        if self._llm.ctx is None:
            raise UsageError("this model was loaded for its vocabulary only")
        self._kv.clear()
        self._llm.new_context(n_ctx)

    @property
    def n_kv(self) -> int:
        """Tokens in the KV cache."""
        return len(self._kv)

    def attach_draft(self, draft: Engine) -> None:
        """Use ``draft`` (a smaller model) to propose tokens for speculative decoding; its
        vocabulary must be this model's, token for token, or it is refused."""
        mine, theirs = self.n_vocab, draft.n_vocab
        if mine != theirs:
            raise UsageError(
                f"the draft model {draft.path.name} has {theirs} tokens in its vocabulary, "
                f"{self.path.name} has {mine}",
                hint="a draft model must share the main model's tokenizer "
                "(e.g. a smaller model of the same family)",
            )
        for token in range(mine):
            if self.piece(token, True) != draft.piece(token, True):
                raise UsageError(
                    f"the draft model {draft.path.name} spells token {token} differently from "
                    f"{self.path.name}",
                    hint="a draft model must share the main model's tokenizer "
                    "(e.g. a smaller model of the same family)",
                )
        self.draft = draft

    def evaluate(self, tokens: Sequence[int], cancel: Callable[[], bool] | None = None) -> bool:
        """Evaluate ``tokens`` after the KV cache's in chunks of ``n_batch``, logits for the
        last only. Returns False when ``cancel`` said stop between two chunks."""
        if len(tokens) == 1:  # a draft model's token loop: the reused one-token batch
            self._decode_one(tokens[0])
            return True
        lib, llm = self._lib, self._llm
        n_batch = llm.n_batch
        for i in range(0, len(tokens), n_batch):
            if i and cancel is not None and cancel():
                return False
            chunk = tokens[i : i + n_batch]
            arr = (ctypes.c_int32 * len(chunk))(*chunk)
            rc = lib.llama_decode(llm.ctx, lib.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                # the cache must hold self._kv again, whatever of this chunk llama.cpp kept
                lib.llama_memory_seq_rm(llm.memory, -1, len(self._kv), -1)
                raise InferenceError(
                    f"llama_decode failed (code {rc}) after {len(self._kv)} tokens"
                )
            self._kv.extend(chunk)
        return True

    def _decode_one(self, token: int) -> None:
        """Evaluate one token through the reused single-token batch."""
        llm = self._llm
        llm.one[0] = token
        rc = self._lib.llama_decode(llm.ctx, llm.one_batch)
        if rc != 0:
            raise InferenceError(f"llama_decode failed (code {rc}) after {len(self._kv)} tokens")
        self._kv.append(token)

    def _decode_all(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` (a token and its draft) in one batch with logits for every
        position, to verify the draft."""
        lib, llm = self._lib, self._llm
        batch = llm.verify_batch(len(tokens))
        pos = len(self._kv)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = len(tokens)
        rc = lib.llama_decode(llm.ctx, batch)
        if rc != 0:
            self.keep_kv(0)
            raise InferenceError(f"llama_decode failed (code {rc}) verifying a draft")
        self._kv.extend(tokens)

    # -- generation -----------------------------------------------------------------------

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
        """Stream the completion of ``prompt``: text events, then one :class:`Stats`.

        ``special`` renders control tokens as text (harmony channel markers need it).
        ``steering`` lets the consumer inject text between tokens. ``grammar`` (GBNF)
        constrains the tokens; with ``grammar_lazy_after`` only those after that text has
        appeared in the output (generated or injected), e.g. ``"</think>"``. A grammar that
        does not parse is a :class:`UsageError`. ``shared_prefix`` is text the prompt starts
        with that every prompt of this session would (the template's opening, the system
        prompt): with a :attr:`prefix_store` and an empty KV cache, its state comes from disk.
        """
        if self._llm.ctx is None:
            raise UsageError("this model was loaded for its vocabulary only")
        tokens = self._prompt_tokens(prompt) if isinstance(prompt, str) else list(prompt)
        n_ctx = self.n_ctx
        if not tokens:
            raise UsageError("the prompt is empty", hint="give a prompt or pipe text on stdin")
        if len(tokens) >= n_ctx:
            raise UsageError(
                f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}",
                hint="raise the context with --ctx N, or shorten the prompt",
            )
        began = time.perf_counter()
        evaluated = 0  # prompt tokens the prefix store evaluated (not cached, though in the KV)
        store = self.prefix_store
        if store is not None and shared_prefix and not self._kv and isinstance(prompt, str):
            n = min(common_prefix(tokens, self.tokenize(shared_prefix)), len(tokens) - 1)
            try:  # a prefix too short to be worth a file is left for the token loop
                if not store.prepare(self, tokens[:n], cancel):
                    evaluated = len(self._kv)
            except BaseException:
                self.keep_kv(0)
                raise
        if self.prompt_cache is not None:
            self.prompt_cache.prepare(self, tokens)
        seed = settings.seed if settings.seed is not None else random.getrandbits(31)
        sampler = Sampler(self, settings, seed, grammar, lazy=grammar_lazy_after is not None)
        try:
            speculative = str(getattr(settings, "speculative", "off") or "off")
            yield from self._run(
                tokens,
                settings,
                sampler,
                cancel,
                steering,
                special,
                grammar_lazy_after,
                speculative,
                began,
                evaluated,
            )
        except GeneratorExit:  # the consumer stopped reading: the cache is consistent
            raise
        except BaseException:  # Ctrl-C may land between a decode and its bookkeeping
            self.keep_kv(0)
            raise
        finally:
            sampler.close()

    def _run(
        self,
        tokens: list[int],
        settings: Profile,
        sampler: Sampler,
        cancel: Callable[[], bool] | None,
        steering: Steering | None,
        special: bool,
        trigger: str | None,
        speculative: str,
        start: float,
        evaluated: int = 0,
    ) -> Iterator[Event]:
        vocab = self._vocab
        is_eog = self._lib.llama_vocab_is_eog
        eog = self._eog  # token -> end of generation, asked of llama.cpp once per token id
        clock = time.perf_counter
        cached = common_prefix(self._kv, tokens)
        if cached == len(tokens):
            cached -= 1  # the last prompt token is evaluated again to get fresh logits
        cached = self.keep_kv(cached)
        limit = settings.max_tokens
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(settings.stop)
        first = last = start
        n = 0
        since_event = 0
        reason: StopReason = "length"
        hit = False
        piece = self.piece
        context_len = len(tokens)
        room = self.n_ctx - 1
        seen = ""  # the end of the output, while waiting for the lazy grammar's trigger
        sample = sampler.sample
        decode_one = self._decode_one
        drafter: NgramDrafter | ModelDrafter | None = None
        if self.draft is not None:  # a draft model is attached only when the profile names one
            drafter = ModelDrafter(self.draft, tokens)
        elif speculative == "ngram":
            drafter = NgramDrafter(tokens, size=SPECULATIVE_MAX_DRAFT, adaptive=True)
        elif speculative == "auto" and len(tokens) >= SPECULATIVE_AUTO_MIN_PROMPT:
            drafter = NgramDrafter(tokens, size=8, adaptive=True, pause=True)
        # Speculation: after a draft is verified in one batch, ``token`` may already be in the
        # KV cache (an accepted draft token, at ``batch[vpos]``); the next token is then drawn
        # from that position's logits, so every token is sampled from exactly the logits, and
        # in exactly the order, that plain decoding would have used.
        in_kv = False
        batch: list[int] = []
        base = vpos = 0
        drafted = accepted = 0
        try:
            if not self.evaluate(tokens[cached:], cancel):
                reason = "cancelled"
            token = sample() if reason != "cancelled" else -1
            while reason != "cancelled":
                last = clock()
                if n == 0:
                    first = last
                end = eog.get(token)
                if end is None:
                    end = eog[token] = bool(is_eog(vocab, token))
                if end:
                    reason = "stop"
                    break
                n += 1
                since_event += 1
                context_len += 1
                raw_text = decoder.decode(piece(token, special))
                if trigger is not None and raw_text:
                    seen = watch_trigger(seen, raw_text, trigger, sampler)
                    if seen is None:
                        trigger, seen = None, ""
                text, hit = stopper.feed(raw_text)
                if text:
                    yield TextEvent(text, since_event)
                    since_event = 0
                if hit:
                    reason = "stop"
                    break
                if n >= limit or context_len >= room:
                    reason = "length" if n >= limit else "context"
                    break
                if cancel is not None and cancel():
                    reason = "cancelled"
                    break
                extra = steering.take() if steering is not None and steering.pending else ""
                if extra:
                    pending = decoder.decode(b"", final=True) + extra
                    if trigger is not None:
                        seen = watch_trigger(seen, pending, trigger, sampler)
                        if seen is None:
                            trigger, seen = None, ""
                    text, hit = stopper.feed(pending)
                    if text:
                        yield TextEvent(text, 0, injected=True)
                    if hit:
                        reason = "stop"
                        break
                    injected = self.tokenize(extra, add_bos=False)
                    context_len += len(injected)
                    if context_len >= room:
                        reason = "context"
                        break
                    if in_kv:  # drop the rest of the draft: the injection comes first
                        self.keep_kv(base + vpos + 1)
                        self.evaluate(injected)
                    else:
                        self.evaluate([token, *injected])
                    sampler.accept_injected(injected)
                    if drafter is not None:
                        drafter.extend([token, *injected])
                    in_kv = False
                    token = sample()
                    continue
                if drafter is not None:
                    drafter.extend((token,))
                if in_kv:  # the next token comes from the verified batch
                    token = sampler.sample_at(vpos)
                    if vpos + 1 < len(batch) and token == batch[vpos + 1]:
                        vpos += 1
                        accepted += 1
                    else:
                        self.keep_kv(base + vpos + 1)
                        in_kv = False
                        drafter.verified(vpos, len(batch) - 1)  # type: ignore[union-attr]
                    continue
                draft: Sequence[int] = ()
                if drafter is not None and drafter.keep_going(drafted, accepted):
                    most = min(drafter.draft_size(), limit - n - 1, room - context_len - 1)
                    draft = drafter.draft(most) if most > 0 else ()
                if not draft:
                    if drafter is None:
                        decode_one(token)
                    else:
                        began = clock()
                        decode_one(token)
                        drafter.timed_single(clock() - began)
                    token = sample()
                    continue
                batch = [token, *draft]
                base = len(self._kv)
                began = clock()
                self._decode_all(batch)
                drafter.timed_batch(clock() - began, len(batch))  # type: ignore[union-attr]
                drafted += len(draft)
                vpos = 0
                token = sampler.sample_at(0)
                if token == batch[1]:
                    vpos = 1
                    accepted += 1
                    in_kv = True
                else:
                    self.keep_kv(base + 1)
                    drafter.verified(0, len(batch) - 1)  # type: ignore[union-attr]
            if in_kv:  # as plain decoding: the last sampled token is not in the cache
                self.keep_kv(base + vpos)
        except (RuntimeError, OSError) as exc:
            raise InferenceError(f"generation failed: {exc}") from exc
        if not hit:
            tail = stopper.feed(decoder.decode(b"", final=True))[0] + stopper.flush()
            if tail:
                yield TextEvent(tail, since_event)
        yield Stats(
            prompt_tokens=len(tokens),
            cached_tokens=max(0, cached - evaluated),
            generated_tokens=n,
            ttft_s=first - start,
            generation_s=last - first,
            stop_reason=reason,
            drafted_tokens=drafted,
            accepted_tokens=accepted,
        )

    def close(self) -> None:
        draft = getattr(self, "draft", None)
        if draft is not None:
            draft.close()
            self.draft = None
        if getattr(self, "_greedy", None) is not None:
            self._lib.llama_sampler_free(self._greedy)
            self._greedy = None
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None  # type: ignore[assignment]

    def abandon(self) -> None:
        """Let go of the native model and context without freeing them, for a process that
        exits right after (a one-shot ``run``): the operating system takes the memory back at
        once, where freeing it piece by piece takes time (llama_model_free: about 15 ms for
        the starter model, most of it in the vocabulary's destructor). Nothing here can be
        used afterwards."""
        self.draft = None
        self._greedy = None
        self._llm = None  # type: ignore[assignment]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ggml_type ids of the KV cache types (ggml.h: GGML_TYPE_F16 = 1, Q4_0 = 2, Q8_0 = 8).
_KV_GGML_TYPES: dict[str, int] = {"f16": 1, "q4_0": 2, "q8_0": 8}


class Native:
    """A llama.cpp model and its context, owned through the C API."""

    def __init__(self, lib: Any, path: Path, options: LoadOptions) -> None:
        backend.backend_init(lib)
        self._lib = lib
        self.ctx: Any = None
        self.model: Any = None
        self._verify: Any = None
        self._verify_size = 0
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0x7FFFFFFF if options.n_gpu_layers < 0 else options.n_gpu_layers
        mp.vocab_only = options.vocab_only
        if hasattr(lib, "LLAMA_LOAD_MODE_MMAP"):
            mp.load_mode = (
                lib.LLAMA_LOAD_MODE_MMAP if options.use_mmap else lib.LLAMA_LOAD_MODE_NONE
            )
        else:  # pragma: no cover - older bindings
            mp.use_mmap = options.use_mmap
        self.model_params = mp
        # loaded while the command line was read (not when its log is to be shown)
        model = None if options.verbose else preload.claim(lib, path, mp)
        if model is None:
            model = lib.llama_model_load_from_file(str(path).encode("utf-8"), mp)
        if not model:
            raise ValueError("failed to load the model")
        self.model = model
        self.vocab = lib.llama_model_get_vocab(model)
        self._options = options
        self.new_context(options.n_ctx)

    def new_context(self, n_ctx: int) -> None:
        """Create the context (freeing one there was) for ``n_ctx`` tokens, with the load
        options' threads, batch sizes, flash attention and KV cache type."""
        lib, model, options = self._lib, self.model, self._options
        if self.ctx is not None:
            lib.llama_free(self.ctx)
            self.ctx = None
        n_batch = min(options.n_batch, n_ctx)
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = min(options.n_ubatch, n_batch)
        cp.n_threads = options.n_threads
        cp.n_threads_batch = options.n_threads_batch or options.n_threads
        cp.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_AUTO
            if options.flash_attn is None
            else lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if options.flash_attn
            else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        kv_type = _KV_GGML_TYPES.get(options.kv_cache_type)
        if kv_type is not None:
            cp.type_k = kv_type
            cp.type_v = kv_type
        cp.no_perf = True
        self.context_params = cp
        ctx = lib.llama_init_from_model(model, cp)
        if not ctx:
            self.close()
            raise ValueError("failed to create the context (llama_init_from_model)")
        self.ctx = ctx
        self.memory = lib.llama_get_memory(ctx)
        self.n_ctx = int(lib.llama_n_ctx(ctx))
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.one = (ctypes.c_int32 * 1)()
        self.one_batch = lib.llama_batch_get_one(self.one, 1)

    def metadata(self) -> dict[str, str]:
        lib, model = self._lib, self.model
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1024)
        for i in range(lib.llama_model_meta_count(model)):
            n = lib.llama_model_meta_key_by_index(model, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = lib.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
            if n >= len(buf):
                buf = ctypes.create_string_buffer(n + 1)
                n = lib.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
            if n < 0:
                continue
            out[key] = buf.raw[:n].decode("utf-8", "replace")
        return out

    def verify_batch(self, n: int) -> Any:
        """A batch for ``n`` tokens with per-token positions and logits (allocated once)."""
        if self._verify is None or self._verify_size < n:
            if self._verify is not None:
                self._lib.llama_batch_free(self._verify)
            size = max(n, SPECULATIVE_MAX_DRAFT + 1)
            self._verify = self._lib.llama_batch_init(size, 0, 1)
            self._verify_size = size
        return self._verify

    def reset(self) -> None:  # kept for scripts written against Llama
        if self.ctx is not None:
            self._lib.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self._verify is not None:
            self._lib.llama_batch_free(self._verify)
            self._verify = None
        if self.ctx is not None:
            self._lib.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            self._lib.llama_model_free(self.model)
            self.model = None


# Primitives for `localllm bench` (localllm.bench): they time llama.cpp through the same
# decode calls and sampler chain the engine's token loop uses, with no text decoding or stops.


def bench_vocab_size(engine: Engine) -> int:
    return engine.n_vocab


def bench_prompt(engine: Engine, tokens: Sequence[int]) -> float:
    """Seconds to evaluate ``tokens`` into an empty context (prompt processing)."""
    engine.reset()
    start = time.perf_counter()
    engine.evaluate(list(tokens))
    return time.perf_counter() - start


def bench_generate(engine: Engine, first: int, n: int, settings: Profile) -> float:
    """Seconds to generate ``n`` tokens after the single token ``first`` in an empty context,
    sampling with ``settings`` as the engine does but never stopping early (an end-of-generation
    token is decoded like any other)."""
    engine.reset()
    if n <= 0:
        return 0.0
    room = engine.n_ctx - 1
    seed = settings.seed if settings.seed is not None else 0
    sampler = Sampler(engine, settings, seed, None, lazy=False)
    try:
        start = time.perf_counter()
        engine._decode_one(first)
        for count in range(1, n + 1):
            token = sampler.sample()
            if count >= n or len(engine._kv) >= room:
                break
            engine._decode_one(token)
        return time.perf_counter() - start
    finally:
        sampler.close()

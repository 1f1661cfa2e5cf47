"""The inference engine: the only module that imports ``llama_cpp``.

It loads a GGUF, renders prompts with the model's chat template (through
:mod:`localllm.templates`), and runs its own token loop over ``Llama.generate``:

* incremental, UTF-8-safe detokenization: bytes of a character split over several tokens are
  held back until the character is whole;
* stop sequences matched across token boundaries, with no partial stop text ever emitted;
* typed events (:class:`TextEvent`, :class:`Stats`) that the CLI and the TUI both consume.

``Llama.generate`` keeps the longest matching prefix of the previous call in the KV cache, so a
multi-turn chat whose rendered history stays identical only evaluates the new tokens.
"""

from __future__ import annotations

import codecs
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from localllm import templates
from localllm.errors import InferenceError, InvalidModelError, UsageError
from localllm.profiles import Profile

if TYPE_CHECKING:
    from llama_cpp import Llama

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
        }


Event = TextEvent | Stats


def physical_cores() -> int:
    """Physical cores this process may use: the default thread count."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


def _runnable_tasks() -> int | None:
    """Tasks runnable on this machine right now, this process included (Linux), else None."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def default_threads() -> int:
    """Threads for a model when the profile names none: the physical cores, less the CPUs that
    other work keeps busy right now.

    llama.cpp's CPU threads meet at a barrier after every operation; when the machine has
    fewer free CPUs than threads, every barrier waits for a descheduled thread's time slice and
    decoding gets an order of magnitude slower (measured on 2 cores with two other busy
    processes: 2 threads gave 0.4 tokens/s, 1 thread 9.5). When the machine looks busy the
    count of runnable tasks is read twice more, a millisecond apart, and the smallest taken, so
    a passing blip does not cost a thread; a quiet machine costs one read of /proc/loadavg.
    """
    cores = physical_cores()
    running = _runnable_tasks()
    if running is None:
        return cores
    for _ in range(2):
        if running <= 1:
            break
        time.sleep(0.001)
        again = _runnable_tasks()
        running = min(running, again if again is not None else running)
    busy = max(0, running - 1)  # the others: not this process
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return max(1, min(cores, logical - busy))


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


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend (CUDA, Metal, Vulkan, ...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def plan_load(
    profile: Profile,
    n_ctx_train: int | None = None,
    *,
    vocab_only: bool = False,
    path: str | Path | None = None,
    gpu_free: int | None = None,
    need_tokens: int | None = None,
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

    info = None
    if path is not None and not vocab_only:
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

    total: int | None = None
    reason = ""
    backend = "CPU"
    if vocab_only:
        layers = 0
    elif profile.gpu_layers == "auto":
        if not gpu_offload_supported():
            layers, reason = 0, ""
        else:
            backend = gpu_backend_name()
            free = gpu_free if gpu_free is not None else gpu_free_memory()
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
        if layers and gpu_offload_supported():
            backend = gpu_backend_name()
        elif layers:
            layers, reason = 0, "this llama.cpp build has no GPU backend"
        if info is not None:
            total = info["n_layer"] + 1
    if layers == 0:
        backend = "CPU"
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
        backend=backend,
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


class StopMatcher:
    """Holds back text that might be the start of a stop sequence.

    ``feed`` returns the text that is safe to emit and whether a stop sequence was completed;
    text from the stop sequence on is never returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return pending[:cut], True
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
    """A loaded model. Not thread-safe: one thread uses an engine at a time."""

    def __init__(self, path: str | Path, options: LoadOptions) -> None:
        from llama_cpp import Llama

        self.path = Path(path)
        self.options = options
        if not self.path.is_file():
            raise InvalidModelError(f"model file not found: {self.path}")
        from localllm.modelfile import validate_gguf

        validate_gguf(self.path)  # never hand llama.cpp a file our checks refuse
        _route_llama_logs(options.verbose)
        n_batch = min(options.n_batch, options.n_ctx)
        kv_type = _KV_GGML_TYPES.get(options.kv_cache_type)
        try:
            with _flash_attn_mode(options.flash_attn):
                self._llm: Llama = Llama(
                    model_path=str(self.path),
                    n_ctx=options.n_ctx,
                    n_batch=n_batch,
                    n_ubatch=min(options.n_ubatch, n_batch),
                    n_threads=options.n_threads,
                    n_threads_batch=options.n_threads_batch or options.n_threads,
                    n_gpu_layers=options.n_gpu_layers,
                    vocab_only=options.vocab_only,
                    use_mmap=options.use_mmap,
                    flash_attn=bool(options.flash_attn),
                    type_k=kv_type,
                    type_v=kv_type,
                    verbose=options.verbose,
                )
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
        except Exception as exc:  # e.g. llama-cpp-python compiling a broken chat template
            raise InvalidModelError(
                f"llama-cpp-python refused {self.path.name}: {type(exc).__name__}: {exc}",
                hint="check the file with `localllm show FILE`",
            ) from exc
        import llama_cpp

        self._lib = llama_cpp
        self._vocab = self._llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = __import__("ctypes").create_string_buffer(256)
        meta = dict(self._llm.metadata)
        self.info = ModelInfo(
            path=self.path,
            name=meta.get("general.name") or self.path.stem,
            architecture=meta.get("general.architecture", "unknown"),
            chat_template=meta.get("tokenizer.chat_template") or None,
            bos_token=self._special_text(self._llm.token_bos()),
            eos_token=self._special_text(self._llm.token_eos()),
            n_ctx_train=self._llm._model.n_ctx_train(),
            metadata=meta,
        )

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
                buf = __import__("ctypes").create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            cached = buf.raw[:n]
            self._pieces[key] = cached
        return cached

    def tokenize(
        self, text: str, *, special: bool = True, add_bos: bool | None = None
    ) -> list[int]:
        """Tokens of ``text``; BOS is added per the model's metadata, never twice."""
        llm = self._llm
        if add_bos is None:
            add_bos = llm._model.add_bos_token()
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
        bos = llm.token_bos()
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

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
    ) -> Iterator[Event]:
        """Stream the completion of ``prompt``: text events, then one :class:`Stats`.

        ``special`` renders control tokens as text (harmony channel markers need it).
        ``steering`` lets the consumer inject text between tokens.
        """
        llm = self._llm
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        n_ctx = llm.n_ctx()
        if not tokens:
            raise UsageError("the prompt is empty", hint="give a prompt or pipe text on stdin")
        if len(tokens) >= n_ctx:
            raise UsageError(
                f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}",
                hint="raise the context with --ctx N, or shorten the prompt",
            )
        limit = settings.max_tokens
        cached = _common_prefix(llm._input_ids[: llm.n_tokens], tokens)
        if cached == len(tokens):
            cached -= 1  # the last prompt token is evaluated again to get fresh logits
        seed = settings.seed if settings.seed is not None else random.getrandbits(31)
        llm.set_seed(seed)
        llama_grammar = None
        if grammar is not None:
            from llama_cpp import LlamaGrammar

            llama_grammar = LlamaGrammar.from_string(grammar, verbose=False)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(settings.stop)
        start = time.perf_counter()
        first = last = start
        n = 0
        since_event = 0
        reason: StopReason = "length"
        hit = False
        piece = self.piece
        sampling = {**sampling_kwargs(settings), "grammar": llama_grammar}
        context = list(tokens)
        room = n_ctx - 1
        try:
            # One pass per segment: an injection ends the segment, and the next pass resumes
            # from the whole context (prompt + generated + injected). Llama.generate reuses
            # the KV cache for the common prefix, so only the injected tokens are evaluated.
            segment = True
            while segment:
                segment = False
                for token in llm.generate(context, **sampling):
                    last = time.perf_counter()
                    if n == 0:
                        first = last
                    if self.is_end_of_generation(token):
                        reason = "stop"
                        break
                    n += 1
                    since_event += 1
                    context.append(token)
                    text, hit = stopper.feed(decoder.decode(piece(token, special)))
                    if text:
                        yield TextEvent(text, since_event)
                        since_event = 0
                    if hit:
                        reason = "stop"
                        break
                    if n >= limit or len(context) >= room:
                        reason = "length" if n >= settings.max_tokens else "context"
                        break
                    if cancel is not None and cancel():
                        reason = "cancelled"
                        break
                    extra = steering.take() if steering is not None else ""
                    if extra:
                        pending = decoder.decode(b"", final=True) + extra
                        text, hit = stopper.feed(pending)
                        if text:
                            yield TextEvent(text, 0, injected=True)
                        if hit:
                            reason = "stop"
                            break
                        context.extend(self.tokenize(extra, add_bos=False))
                        segment = len(context) < room
                        if not segment:
                            reason = "context"
                        break
        except (RuntimeError, OSError) as exc:
            raise InferenceError(f"generation failed: {exc}") from exc
        if not hit:
            tail = stopper.feed(decoder.decode(b"", final=True))[0] + stopper.flush()
            if tail:
                yield TextEvent(tail, since_event)
        yield Stats(
            prompt_tokens=len(tokens),
            cached_tokens=max(0, cached),
            generated_tokens=n,
            ttft_s=first - start,
            generation_s=last - first,
            stop_reason=reason,
        )

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None  # type: ignore[assignment]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sampling_kwargs(settings: Profile) -> dict[str, Any]:
    """A profile's sampling settings as ``Llama.generate`` keyword arguments."""
    return {
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "min_p": settings.min_p,
        "temp": settings.temperature,
        "repeat_penalty": settings.repeat_penalty,
        "frequency_penalty": settings.frequency_penalty,
        "presence_penalty": settings.presence_penalty,
    }


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- backends and devices ------------------------------------------------------------------
#
# What this llama.cpp build can run on: its version, the backends compiled in, the devices with
# their memory, the CPU features from llama.cpp's system info. ggml's backend device API is not
# bound by llama_cpp, so it is called through ctypes on the same libggml llama_cpp loaded.

# ggml_type ids of the KV cache types (ggml.h: GGML_TYPE_F16 = 1, Q4_0 = 2, Q8_0 = 8).
_KV_GGML_TYPES: dict[str, int] = {"f16": 1, "q4_0": 2, "q8_0": 8}
# CPU flags in the system info that are build options, not instruction sets.
_BUILD_FLAGS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE", "BLAS"})
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
_GPU_LABELS = (
    ("CUDA", "CUDA"),
    ("HIP", "ROCm"),
    ("ROCm", "ROCm"),
    ("MTL", "Metal"),
    ("Metal", "Metal"),
    ("Vulkan", "Vulkan"),
    ("SYCL", "SYCL"),
    ("OpenCL", "OpenCL"),
    ("CANN", "CANN"),
    ("MUSA", "MUSA"),
    ("RPC", "RPC"),
)


@dataclass(frozen=True)
class Device:
    """One ggml backend device: ``CPU``, ``CUDA0``, ``Metal``, ``Vulkan0``, ..."""

    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel | meta
    backend: str  # the registry it belongs to: CPU, CUDA, Metal, ...
    free: int  # bytes
    total: int  # bytes

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("gpu", "igpu")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "type": self.kind,
            "backend": self.backend,
            "free_bytes": self.free,
            "total_bytes": self.total,
        }


class _flash_attn_mode:
    """Load with llama.cpp's own ``auto`` flash attention when ``flash_attn`` is None.

    llama-cpp-python maps its boolean ``flash_attn`` to ENABLED or DISABLED only; while a model
    loads with ``flash_attn=None`` its DISABLED constant reads AUTO, so llama.cpp probes the
    device (and turns flash attention on where the backend supports it). A lock keeps two
    loads from interleaving; any other value leaves the library untouched.
    """

    _lock = __import__("threading").Lock()

    def __init__(self, flash_attn: bool | None) -> None:
        self.auto = flash_attn is None
        self._saved: int | None = None

    def __enter__(self) -> None:
        if not self.auto:
            return
        import llama_cpp.llama_cpp as lib

        self._lock.acquire()
        self._saved = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        lib.LLAMA_FLASH_ATTN_TYPE_DISABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO

    def __exit__(self, *exc: object) -> None:
        if not self.auto:
            return
        import llama_cpp.llama_cpp as lib

        lib.LLAMA_FLASH_ATTN_TYPE_DISABLED = self._saved
        self._lock.release()


_log_route: dict[str, Any] = {"verbose": False, "callback": None}


def _route_llama_logs(verbose: bool) -> None:
    """Show llama.cpp's log only when ``verbose``.

    llama-cpp-python filters the log by ggml's old level numbers; ggml has since renumbered
    them (WARN is now 3, which it reads as ERROR), so warnings such as "n_ctx_seq > n_ctx_train"
    reached stderr with verbose off, in the middle of ``run`` and ``tokenize`` output. The
    engine installs its own callback once (the last loaded engine's setting applies); failures
    still surface as localllm errors.
    """
    import ctypes
    import sys

    import llama_cpp

    _log_route["verbose"] = verbose
    if _log_route["callback"] is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if _log_route["verbose"] and text:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()

    _log_route["callback"] = callback  # keep it alive: llama.cpp holds a raw pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


_ggml_lib: Any = None


def _ggml() -> Any:
    """libggml with the backend registry functions typed (the library llama_cpp loaded)."""
    global _ggml_lib
    if _ggml_lib is not None:
        return _ggml_lib
    import ctypes

    import llama_cpp  # noqa: F401  (loads libllama and libggml first)
    from llama_cpp import _ggml as ggml_mod

    lib = ctypes.CDLL(ggml_mod.libggml._name)
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, args, res in (
        ("ggml_backend_reg_count", [], sz),
        ("ggml_backend_reg_get", [sz], vp),
        ("ggml_backend_reg_name", [vp], cp),
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_name", [vp], cp),
        ("ggml_backend_dev_description", [vp], cp),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_version", [], cp),
        ("ggml_commit", [], cp),
    ):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes, fn.restype = args, res
    _ggml_lib = lib
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def system_info() -> str:
    """llama.cpp's system info line (``CPU : SSE3 = 1 | AVX2 = 1 | ...``)."""
    import llama_cpp

    return _text(llama_cpp.llama_print_system_info()).strip()


def parse_system_info(info: str) -> dict[str, dict[str, str]]:
    """``"CPU : AVX2 = 1 | F16C = 1 | CUDA : ARCHS = 900 |"`` → per backend, its flags."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:
            section, _, part = part.partition(" : ")
            current = sections.setdefault(section.strip(), {})
        if current is None:
            current = sections.setdefault("", {})
        key, sep, value = part.partition("=")
        current[key.strip()] = value.strip() if sep else ""
    return sections


def simd_features(info: str | None = None) -> list[str]:
    """The CPU instruction sets llama.cpp was built to use (AVX2, AVX512, NEON, ...), from its
    system info; flags set to 0 and build options (OPENMP, LLAMAFILE, ...) are left out."""
    sections = parse_system_info(system_info() if info is None else info)
    cpu = sections.get("CPU", {})
    return [k for k, v in cpu.items() if v == "1" and k not in _BUILD_FLAGS]


def llama_cpp_versions() -> dict[str, str]:
    """llama-cpp-python's version and the ggml (llama.cpp) version and commit it was built
    from."""
    import llama_cpp

    lib = _ggml()
    out = {"llama_cpp_python": getattr(llama_cpp, "__version__", "unknown")}
    for key, fn in (("ggml", "ggml_version"), ("ggml_commit", "ggml_commit")):
        f = getattr(lib, fn, None)
        out[key] = _text(f()) if f is not None else "unknown"
    return out


def backends() -> list[str]:
    """Names of the backends compiled into (or loaded by) this build: ``CPU``, ``CUDA``, ..."""
    lib = _ggml()
    return [
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    ]


def devices() -> list[Device]:
    """Every backend device with its free and total memory (a GPU's own memory; for the CPU,
    system RAM). Asking a CUDA device its memory initializes the driver."""
    import ctypes

    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = lib.ggml_backend_dev_backend_reg(dev)
        found.append(
            Device(
                name=_text(lib.ggml_backend_dev_name(dev)),
                description=_text(lib.ggml_backend_dev_description(dev)),
                kind=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
                backend=_text(lib.ggml_backend_reg_name(reg)) if reg else "",
                free=int(free.value),
                total=int(total.value),
            )
        )
    return found


def gpu_free_memory() -> int | None:
    """Free bytes over every GPU device (None when there is none); what ``gpu_layers: auto``
    fits layers into."""
    if not gpu_offload_supported():
        return None
    gpus = [d for d in devices() if d.is_gpu]
    return sum(d.free for d in gpus) if gpus else None


def install_fit_probe() -> None:
    """Let :mod:`localllm.fit` (``pull --list``, ``search``) judge fit against the free GPU
    memory llama.cpp reports, not RAM alone. Costs the llama_cpp import (and, on CUDA, the
    driver's start), so a command calls it only when it shows fit marks."""
    from localllm import fit

    def probe() -> tuple[int, str] | None:
        free = gpu_free_memory()
        return None if free is None else (free, gpu_backend_name())

    fit.set_gpu_probe(probe)


def gpu_backend_name() -> str:
    """The GPU backend of this build (``CUDA``, ``Metal``, ``Vulkan``, ...), ``CPU`` if none."""
    if not gpu_offload_supported():
        return "CPU"
    names = [b for b in backends() if b.upper() not in ("CPU", "BLAS", "RPC")]
    for name in names:
        for key, label in _GPU_LABELS:
            if key.lower() in name.lower():
                return label
    if names:
        return names[0]
    import sys

    return "Metal" if sys.platform == "darwin" else "GPU"


def backend_name(n_gpu_layers: int | None = None) -> str:
    """``CPU``, ``CUDA``, ``Metal``, ``Vulkan``, ``ROCm``, ...: where a model loaded with
    ``n_gpu_layers`` runs (``CPU`` when nothing is offloaded or this build has no GPU).
    (Kept for the TUI status bar; :attr:`LoadOptions.backend` says the same for a plan.)"""
    if n_gpu_layers == 0:
        return "CPU"
    return gpu_backend_name()


# Primitives for `localllm bench` (localllm.bench): they time llama.cpp through the same Llama
# object and token path the engine uses, with no text decoding or stop handling.


def bench_vocab_size(engine: Engine) -> int:
    return int(engine._llm.n_vocab())


def bench_prompt(engine: Engine, tokens: Sequence[int]) -> float:
    """Seconds to evaluate ``tokens`` into an empty context (prompt processing)."""
    llm = engine._llm
    llm.reset()
    start = time.perf_counter()
    llm.eval(list(tokens))
    return time.perf_counter() - start


def bench_generate(engine: Engine, first: int, n: int, settings: Profile) -> float:
    """Seconds to generate ``n`` tokens after the single token ``first`` in an empty context,
    sampling with ``settings`` as the engine does but never stopping early (an end-of-generation
    token is decoded like any other)."""
    llm = engine._llm
    llm.reset()
    if n <= 0:
        return 0.0
    room = llm.n_ctx() - 1
    start = time.perf_counter()
    for count, _ in enumerate(
        llm.generate([first], **sampling_kwargs(settings)),
        start=1,
    ):
        if count >= n or llm.n_tokens >= room:
            break
    return time.perf_counter() - start

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


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded. :func:`plan_load` is the one place that decides these."""

    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    n_batch: int = 512
    verbose: bool = False
    vocab_only: bool = False


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def plan_load(
    profile: Profile, n_ctx_train: int | None = None, *, vocab_only: bool = False
) -> LoadOptions:
    """Threads, context size and GPU layers for ``profile`` on this machine."""
    n_ctx = profile.context_length or DEFAULT_CONTEXT
    if n_ctx_train and not profile.context_length:
        n_ctx = min(n_ctx, n_ctx_train)
    threads = profile.threads or physical_cores()
    if profile.gpu_layers == "auto":
        layers = -1 if (not vocab_only and gpu_offload_supported()) else 0
    else:
        layers = int(profile.gpu_layers)
    return LoadOptions(
        n_ctx=n_ctx,
        n_threads=threads,
        n_gpu_layers=layers,
        verbose=profile.verbose,
        vocab_only=vocab_only,
    )


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
        try:
            self._llm: Llama = Llama(
                model_path=str(self.path),
                n_ctx=options.n_ctx,
                n_batch=min(options.n_batch, options.n_ctx),
                n_threads=options.n_threads,
                n_threads_batch=options.n_threads,
                n_gpu_layers=options.n_gpu_layers,
                vocab_only=options.vocab_only,
                verbose=options.verbose,
            )
        except ValueError as exc:
            raise InvalidModelError(
                f"llama.cpp could not load {self.path.name}: {exc}",
                hint="check that the file is a complete GGUF model (localllm show FILE)",
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
        sampling = {
            "top_k": settings.top_k,
            "top_p": settings.top_p,
            "min_p": settings.min_p,
            "temp": settings.temperature,
            "repeat_penalty": settings.repeat_penalty,
            "frequency_penalty": settings.frequency_penalty,
            "presence_penalty": settings.presence_penalty,
            "grammar": llama_grammar,
        }
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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- for front ends: where the layers run (added for the TUI status bar) ------------------


def backend_name(n_gpu_layers: int | None = None) -> str:
    """``CPU``, ``CUDA``, ``Metal``, ``Vulkan``, ``ROCm``, ...: where a model loaded with
    ``n_gpu_layers`` runs (``CPU`` when nothing is offloaded or this build has no GPU)."""
    if n_gpu_layers == 0 or not gpu_offload_supported():
        return "CPU"
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    for key, label in (
        ("CUDA", "CUDA"),
        ("HIP", "ROCm"),
        ("ROCm", "ROCm"),
        ("MTL", "Metal"),
        ("Metal", "Metal"),
        ("Vulkan", "Vulkan"),
        ("SYCL", "SYCL"),
        ("OpenCL", "OpenCL"),
    ):
        if key in info:
            return label
    import sys

    return "Metal" if sys.platform == "darwin" else "GPU"

"""Benchmarks like llama.cpp's ``llama-bench``, measured through localllm's own engine.

* ``pp{N}``: prompt processing, N random tokens evaluated into an empty context;
* ``tg{N}``: text generation, N tokens decoded and sampled one at a time from an empty context;
* end to end: :meth:`Engine.generate` on a prompt of N random tokens, giving time to first
  token, tokens/s over the whole call, and the decode rate after the prompt (``tg@d``), with
  the engine's detokenization and stop handling.

Each test runs in a fresh context sized for it, as llama-bench makes one per test, once to
warm up, then ``repetitions`` times; figures are the mean ± sample standard deviation of the
per-run rates, as llama-bench reports them. No typer or rich here.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localllm.errors import UsageError


@dataclass(frozen=True)
class BenchConfig:
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 3
    threads: int | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    gpu_layers: int | str = "auto"
    flash_attn: bool | None = None  # None: the profile's setting
    kv_cache_type: str | None = None  # None: the profile's setting
    e2e: bool = True
    seed: int = 1234
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers the model is split across

    def validate(self) -> None:
        """Raise :class:`UsageError` (exit code 2) for numbers that make no benchmark."""
        checks = (
            ("-p/--n-prompt", self.n_prompt, 0),
            ("-n/--n-gen", self.n_gen, 0),
            ("-r/--repetitions", self.repetitions, 1),
            ("--batch", self.n_batch, 1),
            ("--ubatch", self.n_ubatch, 1),
        )
        for name, value, low in checks:
            if value < low:
                raise UsageError(f"{name} must be at least {low}, not {value}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")
        if self.n_prompt == 0 and self.n_gen == 0:
            raise UsageError("nothing to measure", hint="give -p N or -n N greater than 0")
        from localllm.offload import KV_CACHE_TYPES

        if self.kv_cache_type is not None and self.kv_cache_type not in KV_CACHE_TYPES:
            raise UsageError(
                f"unknown KV cache type '{self.kv_cache_type}'",
                hint="use one of: " + ", ".join(KV_CACHE_TYPES),
            )
        if self.kv_cache_type not in (None, "f16") and self.flash_attn is False:
            raise UsageError(
                f"a {self.kv_cache_type} KV cache needs flash attention",
                hint="llama.cpp quantizes the V cache only inside flash attention: drop "
                "--no-flash-attn, or use --kv-cache-type f16",
            )
        if isinstance(self.gpu_layers, int) and self.gpu_layers < 0:
            raise UsageError(f"--gpu-layers must be a number ≥ 0 or 'auto', not {self.gpu_layers}")


@dataclass
class Measurement:
    """One test: its per-repetition durations and the rates derived from them."""

    test: str  # "pp512", "tg128", "ttft", "e2e"
    n_prompt: int
    n_gen: int
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens counted in each repetition
    unit: str = "t/s"  # "t/s", or "ms" for time to first token

    @property
    def samples(self) -> list[float]:
        if self.unit == "ms":
            return [s * 1000 for s in self.seconds]
        return [t / s if s > 0 else 0.0 for t, s in zip(self.tokens, self.seconds, strict=True)]

    @property
    def mean(self) -> float:
        values = self.samples
        return statistics.fmean(values) if values else 0.0

    @property
    def stdev(self) -> float:
        values = self.samples
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "n_prompt": self.n_prompt,
            "n_gen": self.n_gen,
            "unit": self.unit,
            "mean": round(self.mean, 3),
            "stdev": round(self.stdev, 3),
            "samples": [round(v, 3) for v in self.samples],
            "seconds": [round(s, 6) for s in self.seconds],
            "tokens": list(self.tokens),
        }


@dataclass
class BenchResult:
    model: dict[str, Any]
    backend: str
    n_gpu_layers: int
    offload: str
    threads: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool | None
    kv_cache_type: str
    n_ctx: int
    repetitions: int
    tests: list[Measurement]
    split: str = ""  # layers and MiB per device when split across RPC workers

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "n_gpu_layers": self.n_gpu_layers,
            "offload": self.offload,
            "threads": self.threads,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "flash_attn": self.flash_attn,
            "kv_cache_type": self.kv_cache_type,
            "n_ctx": self.n_ctx,
            "repetitions": self.repetitions,
            "results": [t.as_dict() for t in self.tests],
        } | ({"split": self.split} if self.split else {})

    def get(self, test: str) -> Measurement | None:
        return next((t for t in self.tests if t.test == test), None)


def describe_model(path: Path) -> dict[str, Any]:
    """Name, architecture, size, parameters and quantization from the GGUF headers."""
    from localllm.modelfile import read_info

    info = read_info(path)
    return {
        "path": str(path),
        "name": info.name,
        "architecture": info.architecture,
        "size_bytes": info.file_size,
        "parameters": info.parameters,
        "parameters_text": info.parameters_text,
        "quantization": info.quantization,
        "type": f"{info.architecture} {info.parameters_text} {info.quantization}",
    }


def run_bench(
    path: Path,
    config: BenchConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Load the model at ``path`` once and run the configured tests on it."""
    from dataclasses import replace

    from localllm import engine as eng
    from localllm.profiles import Profile

    config.validate()
    say = progress or (lambda _msg: None)
    model = describe_model(path)
    profile = Profile().replace(
        threads=config.threads, gpu_layers=config.gpu_layers, rpc=config.rpc or None
    )
    if config.kv_cache_type is not None:
        profile = replace(profile, kv_cache_type=config.kv_cache_type)
    if config.flash_attn is not None:
        profile = replace(profile, flash_attn=config.flash_attn)
    elif profile.kv_cache_type != "f16":
        profile = replace(profile, flash_attn=True)  # a quantized V cache needs it
    # Context as llama-bench sizes it: the prompt plus the generated tokens (and a little room).
    n_ctx = max(64, config.n_prompt + config.n_gen + 8)
    options = eng.plan_load(replace(profile, context_length=n_ctx), path=path)
    n_batch = min(config.n_batch, n_ctx)
    options = replace(
        options,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=min(config.n_ubatch, n_batch),
    )
    say(f"loading {path.name} ({options.offload_summary})…")
    rng = random.Random(config.seed)
    tests: list[Measurement] = []
    with eng.Engine(path, options) as engine:
        n_vocab = eng.bench_vocab_size(engine)

        def tokens(n: int) -> list[int]:
            return [rng.randrange(n_vocab) for _ in range(n)]

        # Each test in a context sized for it, as llama-bench makes one per test: a tg run in
        # the bigger context left by pp512 measured 2-3% slower here (its attention spans more
        # cells, and the compute buffer was laid out for a 512-token batch).
        if config.n_prompt > 0:
            engine.renew_context(max(64, config.n_prompt))
            m = Measurement(f"pp{config.n_prompt}", config.n_prompt, 0)
            eng.bench_prompt(engine, tokens(config.n_prompt))  # warm-up
            for i in range(config.repetitions):
                say(f"pp{config.n_prompt} {i + 1}/{config.repetitions}")
                m.seconds.append(eng.bench_prompt(engine, tokens(config.n_prompt)))
                m.tokens.append(config.n_prompt)
            tests.append(m)
        if config.n_gen > 0:
            engine.renew_context(max(64, config.n_gen + 8))
            m = Measurement(f"tg{config.n_gen}", 0, config.n_gen)
            eng.bench_generate(engine, tokens(1)[0], 1, profile)  # warm-up
            for i in range(config.repetitions):
                say(f"tg{config.n_gen} {i + 1}/{config.repetitions}")
                m.seconds.append(eng.bench_generate(engine, tokens(1)[0], config.n_gen, profile))
                m.tokens.append(config.n_gen)
            tests.append(m)
        if config.e2e and config.n_gen > 0:
            engine.renew_context(n_ctx)
            tests.extend(_end_to_end(engine, profile, config, tokens, say))
        split = ""
        if options.rpc:
            from localllm import rpc

            split = rpc.split_summary(rpc.engine_split(engine))
    return BenchResult(
        model=model,
        backend=options.backend,
        n_gpu_layers=options.n_gpu_layers,
        offload=options.offload_summary,
        threads=options.n_threads,
        n_batch=options.n_batch,
        n_ubatch=options.n_ubatch,
        flash_attn=options.flash_attn,
        kv_cache_type=options.kv_cache_type,
        n_ctx=n_ctx,
        repetitions=config.repetitions,
        tests=tests,
        split=split,
    )


def _end_to_end(
    engine: Any,
    profile: Any,
    config: BenchConfig,
    tokens: Callable[[int], list[int]],
    say: Callable[[str], None],
) -> list[Measurement]:
    """Engine.generate on a random prompt: time to first token and tokens/s over the call.

    Each repetition starts with a different token, so nothing is reused from the KV cache. The
    model may end its answer before ``n_gen`` tokens; the rate counts the tokens it made."""
    from localllm.engine import Stats

    n_prompt = max(1, config.n_prompt)
    label = f"p{config.n_prompt}+n{config.n_gen}"
    ttft = Measurement(f"ttft {label}", n_prompt, 0, unit="ms")
    e2e = Measurement(f"e2e {label}", n_prompt, config.n_gen)
    # decode speed after the prompt: llama-bench's "tg{n} @ d{p}"
    decode = Measurement(f"tg{config.n_gen} @ d{n_prompt}", n_prompt, config.n_gen)
    settings = profile.replace(max_tokens=config.n_gen, seed=config.seed)
    for i in range(config.repetitions + 1):
        if i:
            say(f"end to end {i}/{config.repetitions}")
        stats = None
        for event in engine.generate(tokens(n_prompt), settings):
            if isinstance(event, Stats):
                stats = event
        if i == 0 or stats is None:  # the first run warms up
            continue
        ttft.seconds.append(stats.ttft_s)
        ttft.tokens.append(stats.prompt_tokens)
        e2e.seconds.append(stats.ttft_s + stats.generation_s)
        e2e.tokens.append(stats.generated_tokens)
        if stats.generated_tokens >= 2 and stats.generation_s > 0:
            decode.seconds.append(stats.generation_s)
            decode.tokens.append(stats.generated_tokens - 1)
    return [ttft, e2e, decode] if decode.seconds else [ttft, e2e]


# -- rendering (plain text: the CLI prints it as is) --------------------------------------


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def table_rows(result: BenchResult) -> list[list[str]]:
    """Rows of the llama-bench style table (header first)."""
    head = ["model", "size", "params", "backend", "ngl", "threads", "test", "t/s"]
    rows = [head]
    m = result.model
    for t in result.tests:
        value = f"{t.mean:.2f} ± {t.stdev:.2f}"
        if t.unit != "t/s":
            value += f" {t.unit}"
        rows.append(
            [
                m["type"],
                _size(m["size_bytes"]),
                _params(m["parameters"]),
                result.backend,
                str(result.n_gpu_layers),
                str(result.threads),
                t.test,
                value,
            ]
        )
    return rows


def format_table(result: BenchResult) -> str:
    """A Markdown table like llama-bench prints."""
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {1, 2, 4, 5, 7}

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if i in numeric else "-" * w for i, w in enumerate(widths)
        )
        + " |"
    )
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])

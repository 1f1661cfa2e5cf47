"""Opening a model for use: validate the file, decide the load, refuse what cannot fit.

The one path from a model file to a loaded :class:`~localllm.engine.Engine` for the front
ends: the GGUF is checked in pure Python before llama.cpp sees it, :func:`plan_load` decides
threads, context and GPU layers, and the memory estimate (shared with ``pull --list``) refuses
a load that would not fit unless the user forces it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from localllm import fit, modelfile
from localllm.engine import Engine, LoadOptions, plan_load
from localllm.errors import ResourceError, UsageError
from localllm.profiles import Profile

Warn = Callable[[str], None]


def check_memory(
    estimate: fit.MemoryEstimate, available: int, *, force: bool = False
) -> str | None:
    """Raise :class:`ResourceError` when ``estimate`` exceeds ``available`` bytes (unless
    ``force``); return a warning when it will be tight or is forced."""
    verdict = fit.fit_verdict(estimate, available)
    need, have = _gib(estimate.total), _gib(available)
    detail = (
        f"~{need} GiB (weights {_gib(estimate.weights)} + KV cache {_gib(estimate.kv_cache)} "
        f"at {estimate.n_ctx} tokens + overhead {_gib(estimate.overhead)})"
    )
    if verdict == "won't fit":
        if not force:
            raise ResourceError(
                f"the model needs {detail} but only {have} GiB of memory is available",
                hint="use a smaller quant or a shorter context (--ctx), or pass --force to try",
            )
        return f"warning: forcing a load that needs {detail} with {have} GiB available"
    if verdict == "tight":
        return f"note: memory is tight: the model needs {detail}, {have} GiB available"
    return None


def plan(
    path: str | Path,
    profile: Profile,
    *,
    vocab_only: bool = False,
    force: bool = False,
    warn: Warn | None = None,
) -> LoadOptions:
    """Validate ``path`` and decide how to load it; warnings go to ``warn``."""
    info = modelfile.read_info(path)  # validates the file first (InvalidModelError)
    refuse_encoder(info)
    options = plan_load(profile, info.context_length or None, vocab_only=vocab_only, path=path)
    if vocab_only:
        return options
    trained = info.context_length
    if warn is not None and trained and options.n_ctx > trained:
        warn(
            f"note: context {options.n_ctx} is longer than the {trained} tokens "
            f"{info.name} was trained on: answers may degrade past that"
        )
    if info.layers and info.embedding_size and info.heads:
        from localllm.offload import kv_bytes_per_elem

        estimate = fit.estimate_memory(
            info.file_size + _projector_bytes(path, info),
            info.layers,
            info.embedding_size,
            info.heads,
            info.kv_heads or info.heads,
            options.n_ctx,
            kv_bytes_per_elem(options.kv_cache_type),
        )
        if options.n_gpu_layers != 0:
            from localllm.engine import install_fit_probe

            install_fit_probe()
        budget = fit.available_memory()
        offloading = options.n_gpu_layers != 0 and budget.vram is not None
        available = budget.ram + (budget.vram if offloading and budget.vram else 0)
        message = check_memory(estimate, available, force=force)
        if message and warn is not None:
            warn(message)
    return options


def refuse_encoder(info: modelfile.ModelFileInfo) -> None:
    """Encoder-only models (BERT and its kin) turn text into vectors and cannot generate:
    everything that loads a model to generate text (run, chat, serve) refuses them here."""
    if info.structure == "encoder-only":
        raise UsageError(
            f"{info.name} is an encoder-only model ({info.architecture}): it turns text into "
            "vectors and cannot generate text",
            hint=f"use `localllm embed -m {info.path}` to embed text with it",
        )


def open_engine(
    path: str | Path,
    profile: Profile,
    *,
    vocab_only: bool = False,
    force: bool = False,
    warn: Warn | None = None,
) -> Engine:
    """A loaded engine for ``path`` under ``profile`` (see :func:`plan`)."""
    return Engine(path, plan(path, profile, vocab_only=vocab_only, force=force, warn=warn))


def _projector_bytes(path: str | Path, info: modelfile.ModelFileInfo) -> int:
    """The vision projector's weights: loaded beside the model, so counted with it."""
    from localllm import store

    projector = store.projector_of(Path(path)) or info.projector
    try:
        return projector.stat().st_size if projector is not None else 0
    except OSError:
        return 0


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f}"

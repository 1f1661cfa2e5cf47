"""Opening a model for use: validate the file, decide the load, refuse what cannot fit.

The one path from a model file to a loaded :class:`~localllm.engine.Engine` for the front
ends: the GGUF is checked in pure Python before llama.cpp sees it, :func:`plan_load` decides
threads, context and GPU layers, and the memory estimate (shared with ``pull --list``) refuses
a load that would not fit unless the user forces it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localllm import backend, fit, paths, preload
from localllm.durable import file_identity, write_atomic
from localllm.engine import Engine, LoadOptions, plan_load
from localllm.errors import ResourceError, UsageError
from localllm.profiles import Profile
from localllm.promptcache import PrefixStore

if TYPE_CHECKING:
    from localllm.modelfile import ModelFileInfo

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
    need_tokens: int | None = None,
) -> LoadOptions:
    """Validate ``path`` and decide how to load it; warnings go to ``warn``. ``need_tokens``
    (a one-shot run: at most this many prompt and answer tokens) sizes an unset context to
    the work instead of the default. The GGUF headers are read once per file version (see
    :func:`header_summary`)."""
    info = header_summary(path)  # validates the file first (InvalidModelError)
    _refuse_encoder(info["structure"], info["name"], info["architecture"], Path(path))
    options = plan_load(
        profile,
        info["context_length"] or None,
        vocab_only=vocab_only,
        path=path,
        need_tokens=need_tokens,
        model_shape=info["shape"],
    )
    if vocab_only:
        return options
    trained = info["context_length"]
    if warn is not None and trained and options.n_ctx > trained:
        warn(
            f"note: context {options.n_ctx} is longer than the {trained} tokens "
            f"{info['name']} was trained on: answers may degrade past that"
        )
    if info["layers"] and info["embedding_size"] and info["heads"]:
        from localllm.offload import kv_bytes_per_elem

        estimate = fit.estimate_memory(
            info["file_size"] + _projector_bytes(path),
            info["layers"],
            info["embedding_size"],
            info["heads"],
            info["kv_heads"] or info["heads"],
            options.n_ctx,
            kv_bytes_per_elem(options.kv_cache_type),
        )
        if options.n_gpu_layers != 0:
            from localllm.backend import install_fit_probe

            install_fit_probe()
        budget = fit.available_memory()
        offloading = options.n_gpu_layers != 0 and budget.vram is not None
        available = budget.ram + (budget.vram if offloading and budget.vram else 0)
        message = check_memory(estimate, available, force=force)
        if message and warn is not None:
            warn(message)
    return options


def resolve_model_path(ref: str | None, say: Warn) -> Path:
    """The file a reference names (a path, an installed model, another tool's model), or
    with no reference the starter model, fetched on first use (progress to ``say``)."""
    from localllm import store

    if ref:
        return store.resolve_model(ref)
    from localllm.starter import ensure_starter

    return ensure_starter(say)


def model_to_generate(ref: str | None, say: Warn) -> Path:
    """The model file ``run`` and ``chat`` generate with (see :func:`resolve_model_path`),
    validated, and refused up front when it is an encoder-only model, before anything loads
    or a screen opens. The header is read through :func:`header_summary`, so the load that
    follows reads it from the cache."""
    path = resolve_model_path(ref, say)
    info = header_summary(path)  # validates the file first (InvalidModelError)
    _refuse_encoder(info["structure"], info["name"], info["architecture"], path)
    return path


def refuse_encoder(info: ModelFileInfo) -> None:
    """Encoder-only models (BERT and its kin) turn text into vectors and cannot generate:
    everything that loads a model to generate text (run, chat, serve) refuses them here."""
    _refuse_encoder(info.structure, info.name, info.architecture, info.path)


def _refuse_encoder(structure: str, name: str, architecture: str, path: Path) -> None:
    if structure == "encoder-only":
        raise UsageError(
            f"{name} is an encoder-only model ({architecture}): it turns text into "
            "vectors and cannot generate text",
            hint=f"use `localllm embed -m {path}` to embed text with it",
        )


# -- what a load needs from the headers, kept per file version ------------------------------
#
# Validating a GGUF means reading every header value: for a 49k-token vocabulary that is
# most of a one-shot run's start. The verdict and the few numbers a load needs are stored in
# the cache directory under the file's identity (path, inode, size, mtime) and the validator's
# own (modelfile.py's size and mtime), so a file is checked again only when it or the checks
# change. A missing or unreadable cache entry just means one more full check.

SUMMARY_VERSION = 2


def header_summary(path: str | Path) -> dict[str, Any]:
    """Validate ``path`` (unless this version of it passed before) and return what loading it
    needs: name, trained context, layer/embedding/head counts, size, and the offload shape."""
    from localllm import engine

    path = Path(path)
    key = _summary_key(path)
    if key is not None:
        cached = _read_summary(key)
        if cached is not None:
            engine.mark_validated(path)
            return cached
    from localllm import modelfile  # 5 ms of imports that a file seen before skips

    info = modelfile.read_info(path)  # validates (InvalidModelError)
    summary = {
        "version": SUMMARY_VERSION,
        "name": info.name,
        "architecture": info.architecture,
        "structure": info.structure,
        "context_length": info.context_length,
        "layers": info.layers,
        "embedding_size": info.embedding_size,
        "heads": info.heads,
        "kv_heads": info.kv_heads,
        "file_size": info.file_size,
        "shape": engine._model_shape(path) or {},
    }
    if key is not None:
        _write_summary(key, summary)
    return summary


def _summary_key(path: Path) -> str | None:
    import hashlib

    model = file_identity(path)
    checks = file_identity(Path(__file__).parent / "modelfile.py")  # the checks' own version
    if model is None or checks is None:
        return None  # validation will say what is wrong with the file
    ident = repr((SUMMARY_VERSION, model, checks))
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _summary_path(key: str) -> Path:
    return paths.cache_dir() / "headers" / f"{key}.json"


def _read_summary(key: str) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(_summary_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != SUMMARY_VERSION:
        return None
    shape = data.get("shape")
    if not isinstance(shape, dict):
        return None
    if shape.get("tensors") is not None:
        shape["tensors"] = [tuple(t) for t in shape["tensors"]]
    return data


def _write_summary(key: str, summary: dict[str, Any]) -> None:
    """Keep ``summary``; a cache that cannot be written costs the next run one more check."""
    import json

    with contextlib.suppress(OSError):
        write_atomic(_summary_path(key), json.dumps(summary).encode(), durable=False)


def open_engine(
    path: str | Path,
    profile: Profile,
    *,
    vocab_only: bool = False,
    force: bool = False,
    warn: Warn | None = None,
    need_tokens: int | None = None,
    isolate: bool | None = None,
    env: Mapping[str, str] | None = None,
    endpoints: Sequence[str] = (),
) -> Engine:
    """A loaded engine for ``path`` under ``profile`` (see :func:`plan`). Its
    ``load_phases`` say where the load's time went (``run --stats -v`` prints them).

    ``isolate`` runs the model in a child process (:class:`localllm.enginechild.EngineProcess`,
    used like an Engine) so that llama.cpp aborting does not end this one: the call in flight
    raises :class:`~localllm.errors.EngineCrashed` instead, and ``reopen()`` loads it again.
    The child runs this function (plan, memory check, draft model, RPC workers): this process
    never loads the model nor connects to a worker (one serves one client at a time).
    ``None`` decides by :func:`localllm.enginechild.wants_isolation` (a profile with RPC
    workers, or ``LOCALLLM_ISOLATE=1``). ``env`` is added to the child's environment and
    ``endpoints`` (RPC ``host:port``) are checked when it dies, to name the one that failed.
    """
    from localllm import enginechild

    if isolate is None:
        isolate = enginechild.wants_isolation(profile)
    if isolate and not vocab_only:  # the child plans and opens it, as below, in its process
        return enginechild.EngineProcess(  # type: ignore[return-value]  # an Engine but in name
            path,
            profile,
            force=force,
            warn=warn,
            need_tokens=need_tokens,
            env=enginechild.child_env(profile) if env is None else env,
            endpoints=endpoints or _endpoints(profile),
        )
    start = time.perf_counter()
    # With the model already loading (preload), the imports fill this thread's wait for it;
    # else they start beside the load.
    early = not vocab_only and preload.loading()
    warming = _warm_imports() if early else None
    options = plan(
        path, profile, vocab_only=vocab_only, force=force, warn=warn, need_tokens=need_tokens
    )
    planned = time.perf_counter() - start
    store = None if vocab_only else PrefixStore.from_env(paths.prefix_cache_dir())
    if not vocab_only and not early:
        warming = _warm_imports()
    try:
        with backend.quick_handoff(warming is not None):
            engine = Engine(path, options)
    finally:
        if warming is not None:
            warming.join()  # done by now: the load takes longer than the imports
    engine.prefix_store = store
    engine.load_phases.insert(0, ("read header + plan", planned))
    if not vocab_only:  # what the next run of this command line may start loading early
        preload.remember(engine.lib, engine.path, engine.native.model_params, options.verbose)
    draft_ref = getattr(profile, "draft_model", None)
    if draft_ref and not vocab_only:  # naming a draft model turns draft-model speculation on
        try:
            _attach_draft(engine, str(draft_ref), profile, options)
        except BaseException:
            engine.close()
            raise
    return engine


def _warm_imports() -> Any:
    """Import what comes after the load (the session layer and jinja2 for the chat template,
    some 30-50 ms) on a helper thread while llama.cpp loads the weights, which releases the
    GIL; returns the thread (None when there is nothing left to import)."""
    if "jinja2.sandbox" in sys.modules and "localllm.session" in sys.modules:
        return None

    def warm() -> None:
        # a failure here is left to the main thread, which imports again and says what failed
        try:
            import localllm.session  # noqa: F401
            from localllm import templates

            templates.warm()
        except Exception:
            return

    thread = threading.Thread(target=warm, name="localllm-warm-imports", daemon=True)
    thread.start()
    return thread


def _endpoints(profile: Profile) -> tuple[str, ...]:
    """The profile's RPC workers (``rpc``: a list, or one comma-separated string), if any."""
    value = getattr(profile, "rpc", None) or ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _attach_draft(engine: Engine, ref: str, profile: Profile, options: LoadOptions) -> None:
    """Load the profile's draft model beside ``engine`` (same context and threads) and attach
    it; a vocabulary that differs is a usage error."""
    from dataclasses import replace

    from localllm import store

    start = time.perf_counter()
    path = store.resolve_model(ref)
    header_summary(path)  # validated like the main model
    draft_options = replace(options, n_layers_total=None, offload_reason="")
    draft = Engine(path, draft_options)
    try:
        engine.attach_draft(draft)
    except BaseException:
        draft.close()
        raise
    engine.load_phases.append(("draft model", time.perf_counter() - start))


def need_tokens_for(text: str, profile: Profile) -> int:
    """An upper bound on the tokens a one-shot answer to ``text`` can use: its bytes and the
    system prompt's (no token is shorter than a byte), the chat template's own text, and
    ``max_tokens``."""
    system = profile.system_prompt or ""
    return (
        len(text.encode("utf-8", "replace"))
        + len(system.encode("utf-8", "replace"))
        + (TEMPLATE_ALLOWANCE + profile.max_tokens)
    )


TEMPLATE_ALLOWANCE = 256  # tokens of role markers and a default system prompt a template adds


def _projector_bytes(path: str | Path) -> int:
    """The vision projector's weights: loaded beside the model, so counted with it. Looked up
    on every plan (the store's record, else ``mmproj*.gguf`` beside the file, as
    ``modelfile.read_info`` finds it): a projector put there later is not in the header cache."""
    from localllm import store

    model = Path(path)
    projector = store.projector_of(model)
    if projector is None:
        try:
            beside = sorted(p for p in model.parent.glob("mmproj*.gguf") if p != model)
        except OSError:
            beside = []
        projector = next((p for p in beside if p.is_file()), None)
    try:
        return projector.stat().st_size if projector is not None else 0
    except OSError:
        return 0


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f}"

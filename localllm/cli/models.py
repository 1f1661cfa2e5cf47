"""Model management: ``pull``, ``search``, ``list``, ``rm``, ``import``, ``verify``.

Results go to stdout (tables, or JSON with ``--json``); progress, notes and warnings to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from localllm.cli._app import app, complete_model, err, print_json, print_table

if TYPE_CHECKING:
    from localllm import hub, store

CTX_HELP = "Context length the memory estimate assumes."
FIT_STYLES = {"fits": "green", "tight": "yellow", "won't fit": "red"}


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    err(message, style="dim")


def _bytes(n: float | None) -> str:
    from localllm.refs import format_bytes

    return format_bytes(n) if n is not None else "-"


def _count(n: int | None) -> str:
    if not n:
        return "-"
    from localllm.modelfile import format_count

    return format_count(n)


class _Bar:
    """A rich progress bar on stderr (bytes, speed, ETA) when stderr is a terminal; a final
    line otherwise."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self.done = 0
        self.first: int | None = None
        self.progress: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=_console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def update(self, done: int, total: int | None) -> None:
        if self.first is None:
            self.first = done  # bytes already there (a resumed partial)
        self.done = done
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.start, 1e-6)
        fetched = self.done - (self.first or 0)
        return f"{_bytes(fetched)} in {seconds:.2f}s ({_bytes(fetched / seconds)}/s)"


# -- pull / search -----------------------------------------------------------------------


def _listing_json(listing: hub.Listing, pick: Any) -> dict[str, Any]:
    return {
        "repo": listing.info.repo,
        "commit": listing.info.commit,
        "context": listing.n_ctx,
        "estimate_method": listing.method,
        "available_ram": listing.budget.ram,
        "available_vram": listing.budget.vram,
        "files": [
            {
                "name": r.entry.name,
                "quant": r.entry.quant,
                "size": r.entry.size,
                "parts": [f.path for f in r.entry.files],
                "missing_parts": r.entry.missing_parts,
                "memory": r.estimate.total,
                "weights": r.estimate.weights,
                "kv_cache": r.estimate.kv_cache,
                "overhead": r.estimate.overhead,
                "fit": r.verdict,
                "gpu_fit": r.gpu_verdict,
                # the vision projector `pull` fetches with this file, counted in "memory"
                "projector": (
                    {"name": r.projector.name, "size": r.projector.size} if r.projector else None
                ),
                "auto_pick": pick is not None and pick.entry.name == r.entry.name,
            }
            for r in listing.rows
        ],
        "projectors": [{"name": e.name, "size": e.size} for e in listing.projectors],
        "auto_pick": pick.entry.name if pick else None,
        "auto_pick_reason": pick.reason if pick else None,
    }


def _print_listing(listing: hub.Listing, as_json: bool) -> None:
    from rich.table import Table

    from localllm import refs
    from localllm.errors import LocalLLMError

    try:
        pick = refs.auto_pick([r.entry for r in listing.rows], listing.verdicts)
    except LocalLLMError:
        pick = None
    if as_json:
        print_json(_listing_json(listing, pick))
        return
    gpu = listing.budget.vram is not None
    table = Table(title=f"{listing.info.repo}", title_justify="left", box=None, pad_edge=False)
    table.add_column("QUANT")
    table.add_column("FILE", overflow="fold")
    table.add_column("SIZE", justify="right")
    table.add_column(f"NEEDS @{listing.n_ctx}", justify="right")
    table.add_column("RAM")
    if gpu:
        table.add_column("GPU")
    table.add_column("NOTE")
    for r in listing.rows:
        e = r.entry
        notes = []
        if e.split:
            notes.append(f"{len(e.files)} parts")
        if e.missing_parts:
            notes.append(f"incomplete: parts {e.missing_parts} missing")
        if r.projector is not None:
            notes.append(f"+ projector {_bytes(r.projector.size)}")
        if pick is not None and pick.entry.name == e.name:
            notes.append("← auto-pick")
        cells = [
            e.quant or "?",
            e.name,
            _bytes(e.size),
            _bytes(r.estimate.total),
            f"[{FIT_STYLES[r.verdict]}]{r.verdict}[/]",
        ]
        if gpu:
            gv = r.gpu_verdict or "-"
            cells.append(f"[{FIT_STYLES.get(gv, 'dim')}]{gv}[/]")
        cells.append(", ".join(notes))
        table.add_row(*cells)
    print_table(table)
    out = _console()
    if listing.info.gated:
        out.print(
            "gated: accept the licence on the Hub and set HF_TOKEN before pulling",
            markup=False,
            style="yellow",
        )
    fetched = {r.projector.name for r in listing.rows if r.projector is not None}
    for p in listing.projectors:
        how = "pulled with the model, counted in NEEDS" if p.name in fetched else "not pulled"
        out.print(f"multimodal projector: {p.name} ({_bytes(p.size)}; {how})", markup=False)
    if listing.method == "header" and listing.shape is not None:
        s = listing.shape
        how = (
            f"KV cache from the model's header ({s.n_layer} layers, {s.n_head_kv} KV heads, "
            f"width {s.n_embd})"
        )
    else:
        how = "KV cache guessed from the file size (the model's header could not be read)"
    ram = f"available RAM {_bytes(listing.budget.ram)}"
    if gpu:
        ram += f", VRAM {_bytes(listing.budget.vram)}"
    out.print(
        f"estimate = weights + KV cache + overhead at --ctx {listing.n_ctx}; {how}; {ram}",
        markup=False,
        style="dim",
    )
    if pick is not None:
        out.print(f"auto-pick: {pick.reason}", markup=False)


def _repo_of(ref: str) -> tuple[str, str | None]:
    from localllm import catalog, refs
    from localllm.errors import UsageError

    parsed = refs.parse_ref(ref)
    if parsed.kind == "alias":
        entry = catalog.lookup(parsed.alias or ref)
        assert entry is not None
        return entry.repo, None
    if parsed.kind != "hub" or parsed.repo is None:
        raise UsageError(f"'{ref}' is not a Hub repository", hint="use owner/repo")
    return parsed.repo, parsed.revision


@app.command()
def pull(
    ref: Annotated[
        str, typer.Argument(help="owner/repo[:QUANT], owner/repo/file.gguf, URL, alias.")
    ],
    list_files: Annotated[
        bool,
        typer.Option("--list", "-l", help="List the repo's GGUFs with fit marks, no download."),
    ] = False,
    ctx: Annotated[int, typer.Option("--ctx", min=1, help=CTX_HELP)] = 4096,
    name: Annotated[
        str | None, typer.Option("--name", help="Store the model under this name.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    mmproj: Annotated[
        str | None,
        typer.Option(
            "--mmproj",
            help="The vision projector to fetch with the model: a quant (F16 by default), "
            "a file name, or none.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download a GGUF model from the Hugging Face Hub into the local store.

    Without a quant, the best one that fits this machine is picked (Q4_K_M when it fits).
    Interrupted downloads resume where they stopped; files are sha256-checked.
    """
    from localllm import hub

    if list_files:
        repo, revision = _repo_of(ref)
        _gpu_fit_marks()
        listing = hub.list_repo(repo, revision=revision, n_ctx=ctx, mmproj=mmproj)
        _print_listing(listing, as_json)
        return
    _gpu_fit_marks()
    plan = hub.plan_pull(ref, n_ctx=ctx, name=name, mmproj=mmproj)
    if plan.reason:
        _say(f"picked {plan.reason}")
    parts = f" in {len(plan.files)} parts" if len(plan.files) > 1 else ""
    _say(f"pulling {plan.name}: {plan.entry.name} ({_bytes(plan.size)}{parts})")
    if plan.listing is not None:
        row = plan.listing.row(plan.entry)
        if row is not None and row.verdict == "won't fit":
            err(
                f"warning: {plan.name} needs about {_bytes(row.estimate.total)} at --ctx {ctx}, "
                f"more than the {_bytes(plan.listing.budget.ram)} of RAM available",
                style="yellow",
            )
    if plan.projector is not None:
        _say(f"with its vision projector {plan.projector.name} ({_bytes(plan.projector.size)})")
    elif plan.listing is not None and plan.listing.projectors:
        names = ", ".join(p.name for p in plan.listing.projectors)
        _say(f"note: the repo has vision projectors ({names}); not fetched (--mmproj none)")
    try:
        with _Bar(plan.name, plan.size) as bar:
            manifest = hub.pull(plan, progress=bar.update, say=_say)
    except KeyboardInterrupt:
        err(
            f"interrupted: the partial download is kept; run `localllm pull {ref}` again to resume",
            style="yellow",
        )
        raise typer.Exit(130) from None
    if bar.done:
        _say(f"downloaded {bar.summary()}")
    if as_json:
        print(json.dumps({**_model_row(manifest), "reason": plan.reason}, indent=2))
        return
    print(f"{manifest.name}\t{_bytes(manifest.size)}\t{manifest.primary}")
    _say(f'run it: localllm run -m {manifest.name} "your prompt"')


@app.command()
def search(
    query: Annotated[
        str, typer.Argument(help="owner/repo to list its GGUFs, or words to find repos.")
    ],
    ctx: Annotated[int, typer.Option("--ctx", min=1, help=CTX_HELP)] = 4096,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Most repos to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List a repo's GGUF files with fit marks, or search the Hub for GGUF repos."""
    from localllm import hub, refs

    if "/" in query.strip() or refs.parse_ref(query).kind == "alias":
        repo, revision = _repo_of(query)
        _gpu_fit_marks()
        _print_listing(hub.list_repo(repo, revision=revision, n_ctx=ctx), as_json)
        return
    found = hub.search(query, limit=limit)
    if as_json:
        print_json(found)
        return
    if not found:
        _say(f"no GGUF repos match '{query}'")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("REPO")
    table.add_column("DOWNLOADS", justify="right")
    table.add_column("LIKES", justify="right")
    for d in found:
        table.add_row(d["id"], str(d.get("downloads", "")), str(d.get("likes", "")))
    print_table(table, markup=False)
    _say("list one's files: localllm pull OWNER/REPO --list")


# -- list / rm / import / verify ---------------------------------------------------------


def _sync_hf_cache() -> None:
    from localllm import hub, store

    try:
        store.sync_hf_cache(hub.scan_hf_cache())
    except Exception as exc:  # the cache is a bonus: never fail `list` over it
        _say(f"note: could not read the Hugging Face cache: {exc}")


def _model_row(m: store.Manifest) -> dict[str, Any]:
    return {
        "name": m.name,
        "quant": m.quant,
        "size": m.size or sum(p.stat().st_size for p in m.paths() if p.is_file()),
        "parameters": m.parameters,
        "architecture": m.architecture,
        "context_length": m.context_length,
        "source": m.source,
        "repo": m.repo,
        "revision": m.revision,
        "files": m.files,
        "path": str(m.primary),
        "mmproj": m.mmproj,
        "modality": "text+image" if m.mmproj else "text",
        "added": m.added,
    }


LOCAL_SOURCES = ("hub", "pip", "import", "hf-cache", "local")


def _source_filter(source: str | None) -> str | None:
    """The canonical source ``--source`` names (``llamacpp`` -> ``llama.cpp``), or None."""
    if source is None:
        return None
    from localllm import foreign
    from localllm.errors import UsageError

    text = source.strip().lower()
    name = foreign.store_name(text) or (text if text in LOCAL_SOURCES else None)
    if name is None:
        choices = ", ".join((*LOCAL_SOURCES, *foreign.STORES))
        raise UsageError(f"unknown source '{source}'", hint=f"one of: {choices}")
    return name


def _foreign_rows(source: str | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Rows for models in other tools' stores (read in place), and their broken entries."""
    from localllm import foreign

    stores = foreign.enabled_stores()
    if source is not None:
        stores = tuple(s for s in stores if s == source)
    if not stores:
        return [], []
    scans = foreign.scan(stores)
    models = [m for s in scans for m in s.usable()]
    facts = foreign.describe(models)
    rows = []
    for m in models:
        info = facts.get(m.ref, {})
        row = m.as_dict()
        del row["sha256"]
        row.update(
            quant=m.quant or info.get("quant"),
            parameters=info.get("parameters"),
            architecture=info.get("architecture"),
            context_length=info.get("context_length"),
            repo=None,
            revision=None,
            added=None,
        )
        rows.append(row)
    return rows, [m for s in scans for m in s.broken()]


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Only models from one source: hub, import, hf-cache, ollama, lmstudio, llama.cpp.",
        ),
    ] = None,
) -> None:
    """The installed models, GGUFs found in the Hugging Face cache, and the models Ollama,
    LM Studio and llama.cpp keep (used in place, read-only)."""
    from localllm import store

    wanted = _source_filter(source)
    rows: list[dict[str, Any]] = []
    if wanted is None or wanted in LOCAL_SOURCES:
        _sync_hf_cache()
        models = [store.fill_info(m, save=True) for m in store.installed()]
        rows = [_model_row(m) for m in models if wanted is None or m.source == wanted]
    foreign_rows, broken = _foreign_rows(wanted)
    rows += foreign_rows
    if as_json:
        rows += [{**b.as_dict(), "path": str(b.location)} for b in broken]
        print_json(rows)
        return
    for b in broken:
        err(f"warning: broken {b.label} model {b.ref}: {b.broken}", style="yellow")
    if not rows:
        if wanted is not None:
            _say(f"no models from {wanted}")
        else:
            _say("no models installed; get one with `localllm pull owner/repo` (or `localllm run`)")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col, justify in (
        ("NAME", "left"),
        ("QUANT", "left"),
        ("SIZE", "right"),
        ("PARAMS", "right"),
        ("ARCH", "left"),
        ("CTX", "right"),
        ("SOURCE", "left"),
    ):
        # a long name (lmstudio:publisher/repo:QUANT) folds rather than losing its end: it is
        # what people copy into `run -m`
        overflow = "fold" if col == "NAME" else "ellipsis"
        table.add_column(col, justify=justify, overflow=overflow)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["name"] + (" (vision)" if r.get("mmproj") else ""),
            r["quant"] or "-",
            _bytes(r["size"]),
            _count(r["parameters"]),
            r["architecture"] or "-",
            str(r["context_length"] or "-"),
            r["source"],
        )
    print_table(table, markup=False)


def _refuse_foreign(ref: str) -> None:
    """``rm`` never touches another tool's store: say which command removes the model."""
    from localllm import foreign, refs
    from localllm.errors import UsageError

    parts = refs.foreign_ref(ref)
    if parts is None:
        return
    model = foreign.lookup(*parts, allow_broken=True)
    raise UsageError(
        f"{model.ref} belongs to {model.label}; localllm never modifies another tool's models",
        hint=model.remove_hint(),
    )


@app.command()
def rm(
    model: Annotated[
        str,
        typer.Argument(
            help="An installed model's name or reference.", autocompletion=complete_model
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete a model's files in the Hugging Face cache.")
    ] = False,
) -> None:
    """Remove a model from the store (asks first unless --yes)."""
    import click

    from localllm import store
    from localllm.errors import UsageError

    _refuse_foreign(model)
    manifest = store.lookup(model)
    if manifest.in_hf_cache and not purge:
        what = (
            f"unlist {manifest.name} (its files stay in the Hugging Face cache; "
            "--purge deletes them)"
        )
    elif manifest.in_hf_cache:
        what = f"delete {manifest.name} from the Hugging Face cache ({_bytes(manifest.size)})"
    elif manifest.source == "import" and manifest.location is None:
        what = f"remove {manifest.name} (imported links are removed; the original file stays)"
    else:
        what = f"delete {manifest.name} ({_bytes(manifest.size)})"
    if not yes:
        try:
            ok = click.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True)
        except click.Abort:
            click.echo(err=True)  # end the unanswered prompt: the error gets a line of its own
            raise UsageError("not confirmed; nothing removed", hint="pass --yes") from None
        if not ok:
            _say("nothing removed")
            raise typer.Exit(1)
    store.remove(manifest, purge=purge)
    _say(
        f"removed {manifest.name}"
        if not manifest.in_hf_cache or purge
        else f"unlisted {manifest.name}"
    )


@app.command("import")
def import_model(
    path: Annotated[str, typer.Argument(help="A .gguf file (the first part of a split model).")],
    name: Annotated[str | None, typer.Option("--name", help="The name in the store.")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy instead of linking.")] = False,
    mmproj: Annotated[
        str | None,
        typer.Option(
            "--mmproj", help="The model's vision projector (mmproj .gguf).", show_default=False
        ),
    ] = None,
) -> None:
    """Validate a local GGUF and add it to the store (hard link or symlink, or --copy).

    Another tool's model (``ollama:NAME``, ``lmstudio:...``, ``llamacpp:...``) is copied with
    --copy; it runs in place without importing."""
    from localllm import refs, store

    if refs.foreign_ref(path) is not None:
        _import_foreign(path, name=name, copy=copy)
        return
    src = refs.expand_path(path)
    projector = refs.expand_path(mmproj) if mmproj else None
    with _Bar(f"importing {src.name}", src.stat().st_size if src.is_file() else None) as bar:
        manifest = store.import_model(
            src, name=name, copy=copy, progress=bar.update, mmproj=projector
        )
    how = "copied" if copy else "linked"
    print(f"{manifest.name}\t{_bytes(manifest.size)}\t{manifest.primary}")
    _say(f'{how} into the store; run it: localllm run -m {manifest.name} "your prompt"')


def _import_foreign(ref: str, *, name: str | None, copy: bool) -> None:
    from localllm import foreign
    from localllm.errors import UsageError

    model = foreign.lookup_ref(ref)
    if not copy:
        raise UsageError(
            f"{model.ref} lives in {model.label}'s store; localllm does not link into it",
            hint=f"copy it with `localllm import {model.ref} --copy`, or run it in place: "
            f'localllm run -m {model.ref} "your prompt"',
        )
    with _Bar(f"copying {model.ref}", model.size or None) as bar:
        manifest = foreign.copy_into_store(model, name=name, progress=bar.update)
    print(f"{manifest.name}\t{_bytes(manifest.size)}\t{manifest.primary}")
    _say(
        f"copied from {model.label} (its copy is untouched); "
        f'run it: localllm run -m {manifest.name} "your prompt"'
    )


@app.command()
def verify(
    model: Annotated[
        str | None,
        typer.Argument(help="One model; all when omitted.", autocompletion=complete_model),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Re-hash stored files against their manifests."""
    from dataclasses import asdict

    from localllm import store
    from localllm.errors import InvalidModelError

    manifests = [store.lookup(model)] if model else store.all_manifests()
    checks = []
    for m in manifests:
        with _Bar(f"verifying {m.name}", m.size or None) as bar:
            checks.extend(store.verify(m, progress=bar.update))
    bad = [c for c in checks if c.status in ("mismatch", "missing")]
    if as_json:
        print_json([asdict(c) for c in checks])
    else:
        for c in checks:
            print(f"{c.status:9} {c.model}  {c.file}")
        if not checks:
            _say("nothing to verify")
    if bad:
        raise InvalidModelError(
            f"{len(bad)} file(s) failed verification",
            hint="remove the model with `localllm rm` and pull it again",
        )


def _gpu_fit_marks() -> None:
    """Judge fit against free GPU memory too, when this build can offload."""
    from localllm.backend import gpu_offload_supported, install_fit_probe

    if gpu_offload_supported():
        install_fit_probe()

"""Pulling a model into the store: resolve a reference against the Hub (pick the file, say
why), fetch its files resumably, validate the GGUF, write the manifest last. Partial downloads
untouched for a week are removed when a pull starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localllm import fit, paths, refs, store
from localllm.errors import InvalidModelError, ModelNotFoundError, UsageError
from localllm.hub import client, download
from localllm.hub.client import GatedRepoError
from localllm.hub.download import Partial, Progress, Say, check_disk_space, download_file
from localllm.hub.listing import Listing, list_repo, pick_projector


@dataclass
class PullPlan:
    """What :func:`pull` will fetch: one GGUF entry of a repo, under a store name."""

    ref: refs.ModelRef
    name: str
    repo: str
    commit: str | None
    entry: refs.GGUFEntry
    reason: str | None = None  # why this quant, when it was picked automatically
    listing: Listing | None = None
    expected: dict[str, str] = field(default_factory=dict)  # file path -> sha256 override
    projector: refs.GGUFEntry | None = None  # the vision projector fetched with the model

    @property
    def size(self) -> int:
        return self.entry.size + (self.projector.size if self.projector else 0)

    @property
    def files(self) -> list[refs.RepoFile]:
        """The model's files, then its projector's (the manifest keeps this order)."""
        return self.entry.files + (self.projector.files if self.projector else [])

    @property
    def mmproj(self) -> str | None:
        """The projector's file name in the store."""
        return Path(self.projector.files[0].path).name if self.projector else None

    def store_names(self) -> list[str]:
        return [Path(f.path).name for f in self.files]


def model_name(repo: str, entry: refs.GGUFEntry, unique_quant: bool = True) -> str:
    """The store name of a pulled model: ``owner/repo:QUANT``, or ``owner/repo/file`` when the
    file names no quant or other files of the repo share its quant."""
    if entry.quant and unique_quant:
        return f"{repo}:{entry.quant}"
    return f"{repo}/{refs.split_base(Path(entry.name).name).removesuffix('.gguf')}"


def _unique_quant(entries: list[refs.GGUFEntry], entry: refs.GGUFEntry) -> bool:
    return sum(1 for e in entries if not e.mmproj and e.quant == entry.quant) == 1


def plan_pull(
    ref: str | refs.ModelRef,
    *,
    n_ctx: int = 4096,
    name: str | None = None,
    budget: fit.MemoryBudget | None = None,
    mmproj: str | None = None,
) -> PullPlan:
    """Resolve a reference against the Hub: list the repo, choose the file(s), say why."""
    from localllm import catalog

    parsed = refs.parse_ref(ref) if isinstance(ref, str) else ref
    if parsed.kind == "path":
        raise UsageError(
            f"{parsed.raw} is a local path", hint=f"use `localllm import {parsed.raw}` to add it"
        )
    if parsed.kind == "foreign":
        shown = parsed.display()
        raise UsageError(
            f"{shown} is already on this machine, in another tool's store",
            hint=f"run it in place with `localllm run -m {shown}`, or copy it with "
            f"`localllm import {shown} --copy`",
        )
    if parsed.kind == "name":
        raise ModelNotFoundError(
            f"'{parsed.raw}' is not a catalog alias or a Hub repository",
            hint="use owner/repo, owner/repo:QUANT or one of: "
            + ", ".join(e.alias for e in catalog.CATALOG),
        )
    client.check_online(f"pull {parsed.display()}")
    expected: dict[str, str] = {}
    if parsed.kind == "alias":
        entry_c = catalog.lookup(parsed.alias or parsed.raw)
        assert entry_c is not None
        parsed = refs.ModelRef(parsed.raw, "hub", repo=entry_c.repo, filename=entry_c.filename)
        expected[entry_c.filename] = entry_c.sha256
        name = name or entry_c.alias
    assert parsed.repo is not None
    found = list_repo(
        parsed.repo, revision=parsed.revision, n_ctx=n_ctx, budget=budget, mmproj=mmproj
    )
    if found.info.gated and not client.token():
        raise GatedRepoError(
            f"{parsed.repo} is gated: downloading it needs a login",
            hint=f"accept its licence at {client.repo_url(parsed.repo)} and set HF_TOKEN to a "
            "token of that account",
        )
    entries = found.info.ggufs
    reason = None
    if parsed.filename or parsed.quant:
        entry = refs.select_entry(
            entries, parsed.repo, quant=parsed.quant, filename=parsed.filename
        )
    else:
        pick = refs.auto_pick([r.entry for r in found.rows], found.verdicts)
        entry, reason = pick.entry, pick.reason
    if entry.missing_parts:
        raise ModelNotFoundError(
            f"{entry.name} is split, but parts {entry.missing_parts} are missing from {parsed.repo}"
        )
    return PullPlan(
        ref=parsed,
        name=name or model_name(parsed.repo, entry, unique_quant=_unique_quant(entries, entry)),
        repo=parsed.repo,
        commit=found.info.commit,
        entry=entry,
        reason=reason,
        listing=found,
        expected=expected,
        projector=pick_projector(entries, mmproj, entry),
    )


def _installed_same(plan: PullPlan) -> store.Manifest | None:
    existing = store.get(plan.name)
    if existing is None:
        return None
    wanted = {Path(f.path).name: plan.expected.get(f.path) or f.sha256 for f in plan.files}
    if existing.files != plan.store_names():
        return None
    if all(sha is None or existing.sha256.get(n) == sha for n, sha in wanted.items()):
        return existing
    return None


def _from_hf_cache(plan: PullPlan) -> store.Manifest | None:
    """Register the model in place when the HF cache already holds the exact files."""
    if not plan.commit:
        return None
    snapshot = store.hf_repo_folder(plan.repo) / "snapshots" / plan.commit
    sha: dict[str, str] = {}
    for f in plan.files:
        want = plan.expected.get(f.path) or f.sha256
        p = snapshot / f.path
        if not want or not p.is_file() or p.resolve().name != want:
            return None
        if Path(f.path).parent != Path(plan.files[0].path).parent:
            return None
        sha[f.path] = want
    first_dir = Path(plan.files[0].path).parent
    manifest = store.Manifest(
        name=plan.name,
        files=[Path(f.path).name for f in plan.files],
        sha256={Path(k).name: v for k, v in sha.items()},
        sizes={Path(f.path).name: f.size for f in plan.files},
        size=plan.size,
        repo=plan.repo,
        revision=plan.commit,
        quant=plan.entry.quant,
        source="hf-cache",
        mmproj=plan.mmproj,
        location=str(snapshot / first_dir),
    )
    store.fill_info(manifest)
    store.save_manifest(manifest)
    return manifest


def pull(
    plan: PullPlan,
    *,
    progress: Progress | None = None,
    say: Say | None = None,
) -> store.Manifest:
    """Download the plan's files (resuming partials), verify them, validate the GGUF, and
    add the model to the store with its manifest written last."""
    client.check_online(f"pull {plan.name}")
    download.clean_stale_partials(say)
    existing = _installed_same(plan)
    if existing is not None:
        if say:
            say(f"{plan.name} is already installed")
        return existing
    cached = _from_hf_cache(plan)
    if cached is not None:
        if say:
            say(f"{plan.name} is already in the Hugging Face cache: using it in place")
        return cached
    folder = store.Manifest(name=plan.name, files=plan.store_names()).folder
    left = sum(f.size - download.partial_bytes(plan.repo, f.path) for f in plan.files)
    check_disk_space(left, paths.downloads_dir(), plan.name)
    if download.device(folder) != download.device(paths.downloads_dir()):
        check_disk_space(plan.size, folder, plan.name)
    total = plan.size
    if progress:
        progress(plan.size - left, total)  # what earlier tries already brought
    base = 0
    staged: dict[str, Path] = {}
    sha: dict[str, str] = {}
    commit = plan.commit
    for f in plan.files:
        dest = folder / Path(f.path).name

        def file_progress(done: int, _total: int | None, base: int = base) -> None:
            if progress:
                progress(base + done, total)

        meta = download.file_meta(plan.repo, f.path, plan.commit or plan.ref.revision or "main")
        commit = commit or meta.commit
        want = plan.expected.get(f.path) or f.sha256 or meta.sha256
        download_file(
            plan.repo,
            f.path,
            dest,
            sha256=want,
            progress=file_progress,
            say=say,
            meta=meta,
        )
        staged[dest.name] = dest
        if not want:  # a file kept in git: checked by git sha1; record what was received
            stamp = (Partial.of(plan.repo, f.path).read_sidecar() or {}).get("complete") or {}
            want = stamp.get("sha256") if isinstance(stamp, dict) else None
        if want:
            sha[dest.name] = want
        base += f.size
    manifest = store.Manifest(
        name=plan.name,
        files=plan.store_names(),
        sha256=sha,
        sizes={Path(f.path).name: f.size for f in plan.files},
        size=plan.size,
        repo=plan.repo,
        revision=commit,
        quant=plan.entry.quant,
        source="hub",
        mmproj=plan.mmproj,
    )
    try:
        store.validate_file(manifest.primary)
    except InvalidModelError as exc:
        for p in staged.values():
            p.unlink(missing_ok=True)
        raise InvalidModelError(
            f"{plan.repo}/{plan.entry.name} was downloaded intact but is not a usable GGUF: "
            f"{exc.message}",
            hint="the file was deleted; report it to the repo's owner",
        ) from None
    if plan.mmproj is not None:
        _keep_projector_if_usable(manifest, staged, say)
    store.fill_info(manifest)
    return store.add_model(manifest, staged)


def _keep_projector_if_usable(
    manifest: store.Manifest, staged: dict[str, Path], say: Say | None
) -> None:
    """Drop a downloaded projector that is not one (the model is kept, text only)."""
    from localllm.errors import LocalLLMError

    name = manifest.mmproj
    assert name is not None
    try:
        store.check_projector(staged[name])
    except LocalLLMError as exc:
        staged.pop(name).unlink(missing_ok=True)
        manifest.files.remove(name)
        manifest.sha256.pop(name, None)
        manifest.size -= manifest.sizes.pop(name, 0)
        manifest.mmproj = None
        if say:
            say(
                f"warning: {name} is not a usable vision projector ({exc.message}); "
                "the model is installed without it"
            )

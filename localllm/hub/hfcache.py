"""GGUF models already in the Hugging Face cache, found with huggingface_hub's
``scan_cache_dir`` (or a plain walk of the folders when it cannot read the cache)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from localllm import refs, store
from localllm.hub.pull import model_name


def scan_hf_cache() -> list[store.Manifest]:
    """GGUF models in the Hugging Face cache, as unsaved manifests (``source="hf-cache"``)
    naming their snapshot folder. Empty when huggingface_hub or the cache is absent."""
    cache = store.hf_cache_dir()
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache)
    except Exception:
        return list(_scan_hf_cache_plain(cache))
    found: list[store.Manifest] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        seen: set[str] = set()
        for rev in revisions:
            files = []
            for f in rev.files:
                rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                blob = f.blob_path.name
                sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
                files.append(refs.RepoFile(rel, f.size_on_disk, sha))
            found.extend(
                _cache_manifests(repo.repo_id, rev.commit_hash, rev.snapshot_path, files, seen)
            )
    return found


def _scan_hf_cache_plain(cache: Path) -> Iterator[store.Manifest]:
    for folder in sorted(cache.glob("models--*")):
        repo = folder.name.removeprefix("models--").replace("--", "/", 1)
        snaps = folder / "snapshots"
        if not snaps.is_dir():
            continue
        seen: set[str] = set()
        for snap in sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            files = []
            for p in snap.rglob("*.gguf"):
                if not p.is_file():
                    continue
                blob = p.resolve().name
                sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
                files.append(refs.RepoFile(p.relative_to(snap).as_posix(), p.stat().st_size, sha))
            yield from _cache_manifests(repo, snap.name, snap, files, seen)


def _cache_manifests(
    repo: str, commit: str, snapshot: Path, files: list[refs.RepoFile], seen: set[str]
) -> Iterator[store.Manifest]:
    for entry in refs.group_ggufs(files):
        if entry.mmproj or not entry.complete or entry.name in seen:
            continue
        seen.add(entry.name)
        parent = Path(entry.name).parent
        yield store.Manifest(
            name=model_name(repo, entry),
            files=[Path(f.path).name for f in entry.files],
            sha256={Path(f.path).name: f.sha256 for f in entry.files if f.sha256},
            sizes={Path(f.path).name: f.size for f in entry.files},
            size=entry.size,
            repo=repo,
            revision=commit,
            quant=entry.quant,
            source="hf-cache",
            location=str(snapshot / parent),
        )

"""GGUF models already in the Hugging Face cache, found by a walk of its folders
(``models--OWNER--NAME/snapshots/COMMIT/*.gguf``, blobs named by their sha256).

Not huggingface_hub's ``scan_cache_dir``: ``localllm list`` runs it, and a command that
never touches the network must not import the library (it loads its HTTP stack, ~0.1 s of
CPU); the walk also stats only the GGUF files, not every file of every cached repo."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from localllm import refs, store
from localllm.hub.pull import model_name


def scan_hf_cache() -> list[store.Manifest]:
    """GGUF models in the Hugging Face cache, as unsaved manifests (``source="hf-cache"``)
    naming their snapshot folder, newest snapshot first. Empty when there is no cache."""
    cache = store.hf_cache_dir()
    if not cache.is_dir():
        return []
    return list(_scan_hf_cache_plain(cache))


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

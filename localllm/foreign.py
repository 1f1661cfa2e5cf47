"""Models other tools keep on disk: Ollama's store, LM Studio's models folder, llama.cpp's cache.

They are found by reading each tool's own layout (never by hashing or reading weights: a scan
opens each manifest and reads four bytes of each model file), used in place, read-only, and
named with the owning tool as a prefix:

* ``ollama:llama3.2:3b`` (also ``ollama:namespace/model:tag``, ``ollama:host/ns/model:tag``);
* ``lmstudio:publisher/repo:Q4_K_M`` (or ``lmstudio:publisher/repo/file.gguf``);
* ``llamacpp:owner/repo:Q4_K_M`` (or ``llamacpp:owner/repo/file.gguf``, ``llamacpp:file-stem``).

Layouts read (checked against each tool's source):

* **Ollama** (0.1.x to 0.33): ``$OLLAMA_MODELS``, else ``~/.ollama/models`` and the Linux
  service's ``/usr/share/ollama/.ollama/models``; ``manifests/<host>/<namespace>/<model>/<tag>``
  is JSON whose layer of media type ``application/vnd.ollama.image.model`` names the GGUF blob
  ``blobs/sha256-<hex>`` (the blob's name is its sha256); ``...image.projector`` is a vision
  model's projector; the config blob carries ``file_type`` (the quant) and ``model_type``.
* **LM Studio** (0.2.x to 0.4.x): ``<models>/<publisher>/<repo>/*.gguf`` where ``<models>`` is
  ``downloadsFolder`` in LM Studio's ``settings.json``, else ``~/.lmstudio/models`` (the home
  may be moved by ``~/.lmstudio-home-pointer``); 0.2.x used ``~/.cache/lm-studio/models``.
  ``mmproj*.gguf`` beside a model is its projector.
* **llama.cpp** ``-hf``: since the 2026 cache rework it keeps the Hugging Face cache layout
  (``models--owner--repo/snapshots/<commit>/...``, ``refs/main``, blobs named by sha256) in
  ``$LLAMA_CACHE``, else in the Hugging Face cache itself (already listed as ``hf-cache``).
  Older builds kept flat files in ``$LLAMA_CACHE`` or ``~/.cache/llama.cpp``
  (``~/Library/Caches/llama.cpp`` on macOS, ``%LOCALAPPDATA%\\llama.cpp`` on Windows):
  ``<owner>_<repo>_<file>.gguf`` plus ``manifest=<owner>=<repo>=<tag>.json`` naming the GGUF,
  its sha256 and the projector. Both are read.

A broken entry (a manifest that is not JSON, a blob missing or not a GGUF, a dangling symlink,
an unreadable folder) is returned with ``broken`` set to the reason; the scan never raises.
``LOCALLLM_FOREIGN_STORES`` (comma-separated store names, or ``none``) limits what is scanned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localllm.errors import InvalidModelError, ModelNotFoundError, UsageError
from localllm.refs import FOREIGN_PREFIXES, GGUFEntry, foreign_ref

OLLAMA, LMSTUDIO, LLAMACPP = "ollama", "lmstudio", "llama.cpp"
STORES = (OLLAMA, LMSTUDIO, LLAMACPP)
LABELS = {OLLAMA: "Ollama", LMSTUDIO: "LM Studio", LLAMACPP: "llama.cpp"}
PREFIXES = {OLLAMA: "ollama", LMSTUDIO: "lmstudio", LLAMACPP: "llamacpp"}
# What a user may type before the colon (or after --source).
STORE_NAMES = dict(FOREIGN_PREFIXES)

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_TENSOR = "application/vnd.ollama.image.tensor"
MEDIA_EXTRAS = {
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.params": "params",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.license": "license",
    "application/vnd.ollama.image.adapter": "adapter",
}
OLLAMA_HOST, OLLAMA_NAMESPACE, OLLAMA_TAG = "registry.ollama.ai", "library", "latest"
_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_MANIFEST_RE = re.compile(r"^manifest=([^=]+)=([^=]+)=(.*)\.json$")
GGUF_MAGIC = b"GGUF"
MAX_MANIFEST = 1 << 20  # an Ollama manifest or config is a few KB; refuse to read giants


@dataclass
class ForeignModel:
    """One model found in another tool's store (``broken`` says why it cannot be used)."""

    store: str  # OLLAMA, LMSTUDIO or LLAMACPP
    name: str  # the reference without the store prefix
    files: list[Path] = field(default_factory=list)  # the model (every part when split)
    size: int = 0
    quant: str | None = None
    projector: Path | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> sha256 the layout names
    location: Path | None = None  # the manifest or folder that defines the model
    broken: str | None = None
    parameters_text: str | None = None  # Ollama's model_type, e.g. "3.2B"
    extras: dict[str, Path] = field(default_factory=dict)  # Ollama template/params/... blobs
    keys: set[str] = field(default_factory=set)  # lower-case names a reference may use

    @property
    def ref(self) -> str:
        return f"{PREFIXES[self.store]}:{self.name}"

    @property
    def label(self) -> str:
        return LABELS[self.store]

    @property
    def primary(self) -> Path:
        return self.files[0]

    def remove_hint(self) -> str:
        """How to delete it with the tool that owns it."""
        if self.store == OLLAMA:
            return f"remove it with `ollama rm {self.name}`"
        if self.store == LMSTUDIO:
            what = self.primary if self.files else self.location
            return f"delete it in LM Studio's My Models tab, or delete {what} yourself"
        if self.location is not None and self.location.name.startswith("models--"):
            return f"llama.cpp has no remove command: delete {self.location} yourself"
        what = self.primary if self.files else self.location
        return f"llama.cpp has no remove command: delete {what} yourself"

    def manifest(self) -> Any:
        """A :class:`localllm.store.Manifest` over the files in place (never saved)."""
        from localllm import store

        if self.broken:
            raise InvalidModelError(f"{self.ref} is broken: {self.broken}", hint=self.remove_hint())
        return store.Manifest(
            name=self.ref,
            files=[p.name for p in self.files],
            sha256=dict(self.sha256),
            size=self.size,
            quant=self.quant,
            source=self.store,
            location=str(self.files[0].parent),
            sizes={},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.ref,
            "source": self.store,
            "quant": self.quant,
            "size": self.size,
            "path": str(self.primary) if self.files else None,
            "files": [str(p) for p in self.files],
            "location": str(self.location) if self.location else None,
            "projector": str(self.projector) if self.projector else None,
            "sha256": dict(self.sha256),
            "read_only": True,
            "broken": self.broken,
        }


@dataclass
class StoreScan:
    """What one tool's store holds: the roots that exist and the models (broken ones too)."""

    store: str
    roots: list[Path]
    models: list[ForeignModel]

    @property
    def label(self) -> str:
        return LABELS[self.store]

    @property
    def found(self) -> bool:
        return bool(self.roots)

    def usable(self) -> list[ForeignModel]:
        return [m for m in self.models if not m.broken]

    def broken(self) -> list[ForeignModel]:
        return [m for m in self.models if m.broken]


# -- where each tool keeps its models -----------------------------------------------------


def _home() -> Path:
    return Path.home()


def _dedupe(dirs: Iterable[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for d in dirs:
        try:
            key = os.path.realpath(d)
        except OSError:
            key = str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def ollama_dirs() -> list[Path]:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` and the Linux service's folder."""
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return [Path(env).expanduser()]
    dirs = [_home() / ".ollama" / "models"]
    if sys.platform.startswith("linux"):
        dirs.append(Path("/usr/share/ollama/.ollama/models"))
    return _dedupe(dirs)


def lmstudio_home() -> Path:
    """LM Studio's home: the folder ``~/.lmstudio-home-pointer`` names, else ``~/.lmstudio``."""
    pointer = _home() / ".lmstudio-home-pointer"
    with contextlib.suppress(OSError, ValueError):
        text = pointer.read_text(encoding="utf-8").strip()
        if text:
            return Path(text).expanduser()
    return _home() / ".lmstudio"


def lmstudio_dirs() -> list[Path]:
    """The models folder LM Studio's settings name (``downloadsFolder``), else
    ``<home>/models``; and 0.2.x's ``~/.cache/lm-studio/models``."""
    home = lmstudio_home()
    models = home / "models"
    with contextlib.suppress(OSError, ValueError, TypeError):
        settings = json.loads((home / "settings.json").read_text(encoding="utf-8"))
        folder = settings.get("downloadsFolder") if isinstance(settings, dict) else None
        if isinstance(folder, str) and folder.strip():
            models = Path(folder).expanduser()
    return _dedupe([models, _home() / ".cache" / "lm-studio" / "models"])


def llamacpp_dir() -> Path:
    """llama.cpp's ``fs_get_cache_directory()``: ``$LLAMA_CACHE``, else the platform cache
    folder + ``llama.cpp``."""
    env = os.environ.get("LLAMA_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return _home() / "Library" / "Caches" / "llama.cpp"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else _home() / "AppData" / "Local") / "llama.cpp"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else _home() / ".cache") / "llama.cpp"


def enabled_stores() -> tuple[str, ...]:
    """The stores to scan: all, or those ``LOCALLLM_FOREIGN_STORES`` names (``none``: none)."""
    value = os.environ.get("LOCALLLM_FOREIGN_STORES")
    if value is None or not value.strip():
        return STORES
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names in (["none"], ["0"], ["off"]):
        return ()
    return tuple(s for s in STORES if s in {STORE_NAMES.get(n, n) for n in names})


def store_name(text: str) -> str | None:
    """``llamacpp`` / ``llama.cpp`` / ``LMStudio`` -> the canonical store name, else None."""
    return STORE_NAMES.get(text.strip().lower())


# -- small, cheap file checks -------------------------------------------------------------


def _probe(path: Path) -> tuple[str | None, int]:
    """(why ``path`` cannot be a model file, or None; its size). Reads four bytes."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symlink {path} -> {target}", 0
        return f"{path} is missing", 0
    except IsADirectoryError:
        return f"{path} is a folder, not a file", 0
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", 0
    if magic != GGUF_MAGIC:
        return f"{path} is not a GGUF file", 0
    return None, size


def _measure(fm: ForeignModel) -> None:
    """Add up the size of ``fm.files``, or mark ``fm`` broken by the first one that is not a
    readable GGUF (its size is then 0)."""
    for part in fm.files:
        problem, size = _probe(part)
        fm.size += size
        if problem:
            fm.broken, fm.size = problem, 0
            return


def _entry_model(
    store: str, name: str, location: Path, folder: Path, entry: GGUFEntry, keys: set[str]
) -> ForeignModel:
    """The model a group of GGUF files in ``folder`` makes (one file, or a split model's
    parts), known by ``keys``: its files and size, or why it is
    broken (parts missing, a file that is no GGUF)."""
    fm = ForeignModel(store, name, location=location, quant=entry.quant)
    fm.files = [folder / f.path for f in entry.files]
    fm.keys = keys
    if entry.missing_parts:
        fm.broken = f"split model {entry.name}: part(s) {entry.missing_parts} missing"
    else:
        _measure(fm)
    return fm


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a model file (missing, dangling link, not a GGUF), else None."""
    return _probe(path)[0]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_json(path: Path) -> Any:
    """Parse a small JSON file; raises ValueError with a short reason."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST:
                raise ValueError(f"{path} is too large for a manifest")
            data = f.read(size + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is not JSON") from None


def _scandir(path: Path) -> tuple[list[os.DirEntry[str]], str | None]:
    """The entries of a folder, or ([], reason) when it cannot be read."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name), None
    except FileNotFoundError:
        return [], None
    except NotADirectoryError:
        return [], f"{path} is not a folder"
    except OSError as exc:
        return [], f"cannot read folder {path}: {exc.strerror or exc}"


def _link_problem(entry: os.DirEntry[str]) -> str | None:
    """Why a symlinked entry cannot be followed (dangling, a loop), else None."""
    if not entry.is_symlink():
        return None
    try:
        os.stat(entry.path)
    except FileNotFoundError:
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return f"dangling symlink {entry.path} -> {target}"
    except OSError as exc:
        return f"cannot read {entry.path}: {exc.strerror or exc}"
    return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


# -- Ollama -------------------------------------------------------------------------------


def ollama_short_name(host: str, namespace: str, model: str, tag: str) -> str:
    """Ollama's shortest display name: ``llama3.2:3b``, ``user/model:tag``, ``host/ns/m:t``."""
    if host.lower() != OLLAMA_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != OLLAMA_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def ollama_full_name(name: str) -> str:
    """``llama3.2`` -> ``registry.ollama.ai/library/llama3.2:latest`` (lower case)."""
    name = name.strip().lower()
    tag = OLLAMA_TAG
    head, sep, maybe_tag = name.rpartition(":")
    if sep and "/" not in maybe_tag:
        name, tag = head, maybe_tag
    parts = name.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_HOST, OLLAMA_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_HOST, *parts]
    return "/".join(parts) + ":" + tag


def _ollama_blob(root: Path, digest: Any) -> Path | None:
    if not isinstance(digest, str):
        return None
    m = _DIGEST_RE.match(digest)
    return root / "blobs" / f"sha256-{m.group(1).lower()}" if m else None


def _ollama_model(root: Path, parts: list[str], path: Path) -> ForeignModel:
    host, namespace, model, tag = parts
    short = ollama_short_name(host, namespace, model, tag)
    fm = ForeignModel(OLLAMA, short, location=path)
    fm.keys = {short.lower(), f"{host}/{namespace}/{model}:{tag}".lower()}
    try:
        data = _read_json(path)
    except ValueError as exc:
        fm.broken = f"manifest {exc}" if "not JSON" in str(exc) else str(exc)
        return fm
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        fm.broken = f"manifest {path} has no layers"
        return fm
    model_layer = None
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        media = layer.get("mediaType")
        if media == MEDIA_MODEL and model_layer is None:
            model_layer = layer
        elif media == MEDIA_PROJECTOR and fm.projector is None:
            fm.projector = _ollama_blob(root, layer.get("digest"))
        elif media in MEDIA_EXTRAS:
            blob = _ollama_blob(root, layer.get("digest"))
            if blob is not None:
                fm.extras.setdefault(MEDIA_EXTRAS[media], blob)
    if model_layer is None:
        if any(isinstance(x, dict) and x.get("mediaType") == MEDIA_TENSOR for x in layers):
            fm.broken = "stored as tensor layers (Ollama's safetensors format), not a GGUF"
        else:
            fm.broken = "its manifest has no model layer"
        return fm
    blob = _ollama_blob(root, model_layer.get("digest"))
    if blob is None:
        fm.broken = f"bad digest in manifest: {model_layer.get('digest')!r}"
        return fm
    fm.files = [blob]
    fm.sha256 = {blob.name: blob.name.removeprefix("sha256-")}
    problem, fm.size = _probe(blob)
    if problem:
        fm.broken = problem
        return fm
    if fm.projector is not None and _file_problem(fm.projector):
        fm.projector = None  # a missing projector leaves a usable text model
    config = data.get("config")
    cblob = _ollama_blob(root, config.get("digest")) if isinstance(config, dict) else None
    if cblob is not None:
        fm.extras["config"] = cblob  # read on lookup, not during a scan (one file fewer)
    return fm


def _read_ollama_config(fm: ForeignModel) -> None:
    """Quant and size label from the model's config blob (``file_type``, ``model_type``)."""
    cblob = fm.extras.get("config")
    if cblob is None or fm.broken:
        return
    with contextlib.suppress(ValueError):
        cfg = _read_json(cblob)
        if isinstance(cfg, dict):
            from localllm.refs import normalize_quant

            if isinstance(cfg.get("file_type"), str) and cfg["file_type"]:
                fm.quant = normalize_quant(cfg["file_type"])
            if isinstance(cfg.get("model_type"), str) and cfg["model_type"]:
                fm.parameters_text = cfg["model_type"]


def _scan_ollama_root(root: Path) -> list[ForeignModel]:
    manifests = root / "manifests"
    found: list[ForeignModel] = []

    def walk(folder: Path, parts: list[str]) -> None:
        entries, problem = _scandir(folder)
        if problem:
            name = "/".join(parts) or str(folder)
            found.append(ForeignModel(OLLAMA, name, location=folder, broken=problem))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            path = Path(e.path)
            if len(parts) < 3:
                problem = _link_problem(e)
                if problem:
                    name = "/".join([*parts, e.name])
                    found.append(ForeignModel(OLLAMA, name, location=path, broken=problem))
                elif _is_dir(e):
                    walk(path, [*parts, e.name])
                continue
            if _is_dir(e):
                continue
            found.append(_ollama_model(root, [*parts, e.name], path))

    walk(manifests, [])
    return found


# -- LM Studio ----------------------------------------------------------------------------


def _folder_models(
    store: str,
    prefix_name: str,
    folder: Path,
    names: list[str],
    quant_refs: bool = True,
) -> list[ForeignModel]:
    """The models among ``names`` (GGUF file names in ``folder``): split parts grouped,
    projectors attached, each named ``<prefix_name>:<QUANT>`` when the quant is unique in the
    folder, else ``<prefix_name>/<file>``."""
    from localllm import refs

    files = [refs.RepoFile(n, 0) for n in names if refs.is_gguf(n)]
    entries = refs.group_ggufs(files)
    projectors = [e for e in entries if e.mmproj]
    models = [e for e in entries if not e.mmproj]
    out = []
    for e in models:
        by_quant = quant_refs and e.quant and sum(1 for o in models if o.quant == e.quant) == 1
        name = f"{prefix_name}:{e.quant}" if by_quant else f"{prefix_name}/{e.name}"
        keys = {name.lower(), f"{prefix_name}/{e.name}".lower(), prefix_name.lower()}
        fm = _entry_model(store, name, folder, folder, e, keys)
        for proj in projectors:
            ppath = folder / proj.name
            if not _file_problem(ppath):
                fm.projector = ppath
                break
        out.append(fm)
    return out


def _scan_lmstudio_root(root: Path) -> list[ForeignModel]:
    found: list[ForeignModel] = []
    publishers, problem = _scandir(root)
    if problem:
        return [ForeignModel(LMSTUDIO, str(root), location=root, broken=problem)]
    for pub in publishers:
        if pub.name.startswith("."):
            continue
        problem = _link_problem(pub)
        if problem:
            found.append(ForeignModel(LMSTUDIO, pub.name, location=Path(pub.path), broken=problem))
            continue
        if not _is_dir(pub):
            continue
        repos, problem = _scandir(Path(pub.path))
        if problem:
            found.append(ForeignModel(LMSTUDIO, pub.name, location=Path(pub.path), broken=problem))
            continue
        for repo in repos:
            if repo.name.startswith("."):
                continue
            folder = Path(repo.path)
            name = f"{pub.name}/{repo.name}"
            problem = _link_problem(repo)
            if not problem and not _is_dir(repo):
                continue
            entries, problem = ([], problem) if problem else _scandir(folder)
            if problem:
                found.append(ForeignModel(LMSTUDIO, name, location=folder, broken=problem))
                continue
            names = [e.name for e in entries if not e.name.startswith(".")]
            found.extend(_folder_models(LMSTUDIO, name, folder, names))
    return found


# -- llama.cpp ----------------------------------------------------------------------------


def _hf_layout_models(cache: Path) -> list[ForeignModel]:
    """``models--owner--repo/snapshots/<refs/main>/...`` under ``cache``."""
    found: list[ForeignModel] = []
    repos, problem = _scandir(cache)
    if problem:
        return [ForeignModel(LLAMACPP, str(cache), location=cache, broken=problem)]
    for entry in repos:
        if not entry.name.startswith("models--") or not _is_dir(entry):
            continue
        repo = entry.name.removeprefix("models--").replace("--", "/")
        repo_dir = Path(entry.path)
        snapshots = repo_dir / "snapshots"
        commit = None
        with contextlib.suppress(OSError, UnicodeDecodeError):
            commit = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip() or None
        if commit is not None and not _COMMIT_RE.match(commit):
            commit = None  # llama.cpp ignores a ref that is not a commit hash; so do we
        if commit is None:
            snaps, problem = _scandir(snapshots)
            if problem:
                found.append(ForeignModel(LLAMACPP, repo, location=repo_dir, broken=problem))
                continue
            dirs = [s for s in snaps if _is_dir(s)]
            if not dirs:
                continue
            commit = dirs[-1].name
        snap = snapshots / commit
        names: list[str] = []
        stack = [snap]
        while stack:
            folder = stack.pop()
            entries, problem = _scandir(folder)
            if problem:
                found.append(ForeignModel(LLAMACPP, repo, location=folder, broken=problem))
                continue
            for e in entries:
                if _is_dir(e) and not e.is_symlink():
                    stack.append(Path(e.path))
                elif e.name.lower().endswith(".gguf"):
                    names.append(Path(e.path).relative_to(snap).as_posix())
        by_dir: dict[str, list[str]] = {}
        for n in names:
            head, _, tail = n.rpartition("/")
            by_dir.setdefault(head, []).append(tail)
        for sub, files in sorted(by_dir.items()):
            folder = snap / sub if sub else snap
            for fm in _folder_models(LLAMACPP, repo, folder, files):
                if sub:
                    fm.keys.add(f"{repo}/{sub}/{fm.primary.name}".lower())
                for p in fm.files:
                    with contextlib.suppress(OSError):
                        target = os.path.basename(os.readlink(p))
                        if _HEX64_RE.match(target):
                            fm.sha256[p.name] = target  # the blob is named by its sha256
                fm.location = repo_dir
                found.append(fm)
    return found


def _flat_models(cache: Path) -> list[ForeignModel]:
    """Older llama.cpp: ``owner_repo_file.gguf`` with ``manifest=owner=repo=tag.json``."""
    entries, problem = _scandir(cache)
    if problem:
        return [ForeignModel(LLAMACPP, str(cache), location=cache, broken=problem)]
    names = {e.name for e in entries}
    claimed: set[str] = set()
    found: list[ForeignModel] = []
    for e in entries:
        m = _MANIFEST_RE.match(e.name)
        if not m:
            continue
        owner, repo, tag = m.group(1), m.group(2), m.group(3)
        ref = f"{owner}/{repo}:{tag}" if tag and tag != "latest" else f"{owner}/{repo}"
        fm = ForeignModel(LLAMACPP, ref, location=Path(e.path))
        fm.keys = {ref.lower(), f"{owner}/{repo}".lower()}
        try:
            data = _read_json(Path(e.path))
            gguf = data.get("ggufFile") if isinstance(data, dict) else None
            rfilename = gguf.get("rfilename") if isinstance(gguf, dict) else None
            if not isinstance(rfilename, str) or not rfilename:
                raise ValueError(f"manifest {e.path} names no ggufFile")
        except ValueError as exc:
            fm.broken = f"manifest {exc}" if "not JSON" in str(exc) else str(exc)
            found.append(fm)
            continue
        from localllm import refs

        local = f"{owner}_{repo}_{rfilename}".replace("/", "_")
        claimed.add(local)
        path = cache / local
        fm.files = [path]
        split = refs.split_info(local)
        if split is not None:  # llama.cpp fetched every part beside the first
            base = refs.split_base(local)
            parts = sorted(n for n in names if refs.split_base(n) == base and refs.split_info(n))
            claimed.update(parts)
            fm.files = [cache / n for n in parts]
            if len(parts) != split[1]:
                fm.broken = f"split model {local}: {split[1] - len(parts)} part(s) missing"

        fm.quant = refs.parse_quant(rfilename) or (
            refs.normalize_quant(tag) if tag and tag != "latest" else None
        )
        fm.keys.add(f"{owner}/{repo}/{rfilename}".lower())
        if fm.quant:
            fm.keys.add(f"{owner}/{repo}:{fm.quant}".lower())
        lfs = gguf.get("lfs") if isinstance(gguf, dict) else None
        sha = lfs.get("sha256") if isinstance(lfs, dict) else None
        if isinstance(sha, str) and _HEX64_RE.match(sha.lower()):
            fm.sha256 = {local: sha.lower()}
        if not fm.broken:
            _measure(fm)
        proj = data.get("mmprojFile")
        pname = proj.get("rfilename") if isinstance(proj, dict) else None
        if isinstance(pname, str) and pname:
            plocal = f"{owner}_{repo}_{pname}".replace("/", "_")
            claimed.add(plocal)
            if plocal in names and not _file_problem(cache / plocal):
                fm.projector = cache / plocal
        found.append(fm)
    from localllm import refs

    # GGUFs no manifest names (builds before manifests, or `-m` downloads): by file name.
    loose = [
        refs.RepoFile(e.name, 0)
        for e in entries
        if e.name not in claimed and refs.is_gguf(e.name) and not _is_dir(e)
    ]
    for entry in refs.group_ggufs(loose):
        if entry.mmproj:
            continue
        stem = re.sub(r"\.gguf$", "", refs.split_base(entry.name), flags=re.IGNORECASE)
        keys = {stem.lower(), entry.name.lower()}
        found.append(_entry_model(LLAMACPP, stem, cache / entry.name, cache, entry, keys))
    return found


def _scan_llamacpp(cache: Path) -> list[ForeignModel]:
    from localllm import store

    models = _flat_models(cache)
    same_as_hf = False
    with contextlib.suppress(OSError):
        same_as_hf = os.path.realpath(cache) == os.path.realpath(store.hf_cache_dir())
    if not same_as_hf:
        models += _hf_layout_models(cache)
    return models


# -- scanning and lookup ------------------------------------------------------------------


def _existing(dirs: Iterable[Path]) -> list[Path]:
    out = []
    for d in dirs:
        try:
            if d.is_dir():
                out.append(d)
        except OSError:
            continue
    return out


def scan_store(store: str) -> StoreScan:
    """Scan one store (never raises for what is on disk)."""
    if store == OLLAMA:
        roots = [d for d in _existing(ollama_dirs()) if (d / "manifests").exists()]
        models = [m for r in roots for m in _scan_ollama_root(r)]
    elif store == LMSTUDIO:
        roots = _existing(lmstudio_dirs())
        models = [m for r in roots for m in _scan_lmstudio_root(r)]
    elif store == LLAMACPP:
        roots = _existing([llamacpp_dir()])
        models = [m for r in roots for m in _scan_llamacpp(r)]
    else:
        raise ValueError(store)
    _dedupe_names(models)
    return StoreScan(store, roots, models)


def _dedupe_names(models: list[ForeignModel]) -> None:
    """Two roots (or folders) may yield the same reference: number the later ones."""
    seen: set[str] = set()
    for m in models:
        name = m.name
        n = 2
        while name.lower() in seen:
            name = f"{m.name}-{n}"
            n += 1
        if name != m.name:
            m.keys.discard(m.name.lower())
            m.name = name
            m.keys.add(name.lower())
        seen.add(name.lower())


def scan(stores: Iterable[str] | None = None) -> list[StoreScan]:
    """Scan every enabled store (or those named)."""
    wanted = tuple(stores) if stores is not None else enabled_stores()
    return [scan_store(s) for s in STORES if s in wanted]


def split_ref(text: str) -> tuple[str, str] | None:
    """``ollama:llama3.2:3b`` -> ``("ollama", "llama3.2:3b")``; None for other references."""
    return foreign_ref(text)


def lookup(store: str, name: str, *, allow_broken: bool = False) -> ForeignModel:
    """The model ``name`` in ``store`` (raises :class:`ModelNotFoundError` naming what is
    there, or :class:`InvalidModelError` with the reason when the entry is broken, unless
    ``allow_broken``)."""
    if not name:
        raise UsageError(
            f"empty model name after '{PREFIXES[store]}:'",
            hint=f"e.g. {_example(store)}",
        )
    result = scan_store(store)
    wanted = name.strip().lower().rstrip("/")
    keys = {wanted}
    if store == OLLAMA:
        keys.add(ollama_full_name(wanted))
    else:
        head, sep, quant = wanted.rpartition(":")
        if sep and "/" not in quant:
            from localllm.refs import normalize_quant

            keys.add(f"{head}:{normalize_quant(quant)}".lower())
    matches = [m for m in result.models if m.keys & keys]
    usable = [m for m in matches if not m.broken]
    if len(usable) == 1:
        if store == OLLAMA:
            _read_ollama_config(usable[0])
        return usable[0]
    if len(usable) > 1:
        raise ModelNotFoundError(
            f"'{PREFIXES[store]}:{name}' matches {len(usable)} {LABELS[store]} models",
            hint="name one: " + ", ".join(m.ref for m in usable),
        )
    if matches:
        m = matches[0]
        if allow_broken:
            return m
        raise InvalidModelError(f"{m.ref} is broken: {m.broken}", hint=m.remove_hint())
    if not result.found:
        where = ", ".join(str(d) for d in _candidate_dirs(store))
        raise ModelNotFoundError(
            f"no {LABELS[store]} models found (looked in {where})",
            hint=_env_hint(store),
        )
    names = [m.ref for m in result.usable()]
    shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
    raise ModelNotFoundError(
        f"{LABELS[store]} has no model '{name}'",
        hint=f"{LABELS[store]} models: {shown}" if names else "its store holds no usable model",
    )


def lookup_ref(text: str) -> ForeignModel:
    """:func:`lookup` for a prefixed reference (``ollama:llama3.2:3b``)."""
    parts = split_ref(text)
    if parts is None:
        raise UsageError(f"'{text}' is not a foreign model reference", hint=_REF_HINT)
    return lookup(*parts)


def _candidate_dirs(store: str) -> list[Path]:
    if store == OLLAMA:
        return ollama_dirs()
    if store == LMSTUDIO:
        return lmstudio_dirs()
    return [llamacpp_dir()]


def _env_hint(store: str) -> str:
    return {
        OLLAMA: "set OLLAMA_MODELS if Ollama keeps its models elsewhere",
        LMSTUDIO: "LM Studio's models folder comes from its settings.json (downloadsFolder)",
        LLAMACPP: "set LLAMA_CACHE if llama.cpp keeps its cache elsewhere",
    }[store]


def _example(store: str) -> str:
    return {
        OLLAMA: "ollama:llama3.2:3b",
        LMSTUDIO: "lmstudio:lmstudio-community/Qwen3-4B-GGUF:Q4_K_M",
        LLAMACPP: "llamacpp:ggml-org/gemma-3-1b-it-GGUF:Q4_K_M",
    }[store]


_REF_HINT = "use ollama:NAME[:TAG], lmstudio:PUBLISHER/REPO:QUANT or llamacpp:OWNER/REPO:QUANT"


def suggest(name: str) -> ForeignModel | None:
    """A usable foreign model a bare name probably means (``llama3.2:3b`` -> Ollama's), for
    hints; None when there is none or more than one."""
    wanted = name.strip().lower()
    if not wanted or split_ref(wanted) is not None:
        return None
    hits = []
    for result in scan():
        keys = {wanted}
        if result.store == OLLAMA:
            keys.add(ollama_full_name(wanted))
        hits += [m for m in result.usable() if m.keys & keys]
    return hits[0] if len(hits) == 1 else None


def projector_for(model_file: Path) -> Path | None:
    """The projector another tool's store records for the model in ``model_file`` (Ollama's
    projector layer, llama.cpp's ``mmprojFile``, an ``mmproj`` file beside it), else None."""
    try:
        target = os.path.realpath(model_file)
        for result in scan():
            for m in result.usable():
                if m.projector is not None and os.path.realpath(m.primary) == target:
                    return m.projector
    except OSError:
        return None
    return None


# -- copying into our store ---------------------------------------------------------------

Progress = Callable[[int, "int | None"], None]


def default_store_name(model: ForeignModel) -> str:
    """The name a copy gets in localllm's store: the reference without the prefix."""
    return model.name


def copy_into_store(
    model: ForeignModel, *, name: str | None = None, progress: Progress | None = None
) -> Any:
    """Copy a foreign model's files (and projector) into localllm's store, hashing while
    copying; a sha256 the other store names must match. The source is only read."""
    from localllm import store

    if model.broken:
        raise InvalidModelError(f"{model.ref} is broken: {model.broken}", hint=model.remove_hint())
    name = (name or default_store_name(model)).strip()
    if not name:
        raise UsageError("the model name is empty")
    if store.get(name) is not None:
        raise UsageError(
            f"a model named '{name}' is already installed", hint="pick another with --name"
        )
    from localllm import refs

    # Ollama blobs are named by digest: give the copy a file name people can read.
    if model.store == OLLAMA:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-.") or "model"
        dest_names = [f"{stem}-{model.quant}.gguf" if model.quant else f"{stem}.gguf"]
    else:
        dest_names = [p.name for p in model.files]
    manifest = store.Manifest(
        name=name,
        files=list(dest_names),
        source="import",
        quant=model.quant or refs.parse_quant(model.primary.name),
    )
    sources = list(zip(model.files, dest_names, strict=True))
    if model.projector is not None:
        pname = model.projector.name
        if model.store == OLLAMA:
            pname = f"mmproj-{dest_names[0]}"
        sources.append((model.projector, pname))
        manifest.files.append(pname)
        manifest.mmproj = pname
    folder = manifest.folder
    if folder.exists() and store.load_manifest(folder) is None:
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of an interrupted copy
    elif folder.exists():
        raise UsageError(f"{folder} is taken", hint="pick another name with --name")
    total = sum(_size(p) for p, _ in sources)
    done = 0
    try:
        for src, dest_name in sources:
            digest, done = _copy_hashing(src, folder / dest_name, progress, done, total)
            expected = model.sha256.get(src.name)
            if expected and digest != expected:
                raise InvalidModelError(
                    f"{src} does not match its sha256 ({digest[:12]}… ≠ {expected[:12]}…)",
                    hint=f"the {model.label} copy is damaged; {model.remove_hint()}",
                )
            manifest.sha256[dest_name] = digest
            manifest.sizes[dest_name] = _size(folder / dest_name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    info = store.read_gguf_info(folder / dest_names[0])
    manifest.architecture = info.get("architecture")
    manifest.parameters = info.get("parameters")
    manifest.context_length = info.get("context_length")
    manifest.quant = manifest.quant or info.get("quant")
    manifest.size = total
    store.save_manifest(manifest)
    return manifest


def _copy_hashing(
    src: Path, dest: Path, progress: Progress | None, done: int, total: int
) -> tuple[str, int]:
    import hashlib

    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest(), done


# -- header facts for `list` (cached by file size and mtime) ------------------------------


def describe(models: Iterable[ForeignModel]) -> dict[str, dict[str, Any]]:
    """Architecture, parameters, context length and quant of each usable model, keyed by
    reference. Headers are read once per file version and remembered in localllm's cache
    folder, so listing a large store stays quick after the first time."""
    from localllm import paths, store

    cache_file = paths.cache_dir() / "foreign-info.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    changed = False
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        if m.broken or not m.files:
            continue
        key = str(m.primary)
        try:
            st = m.primary.stat()
        except OSError:
            continue
        sig = [st.st_size, st.st_mtime_ns]
        entry = cache.get(key)
        if isinstance(entry, dict) and entry.get("sig") == sig:
            info = entry.get("info") or {}
        else:
            raw = store.read_gguf_info(m.primary)
            info = {
                k: raw.get(k) for k in ("architecture", "parameters", "context_length", "quant")
            }
            if m.store == OLLAMA:
                _read_ollama_config(m)  # Ollama's own quant label, as `ollama list` shows it
                info["quant"] = m.quant or info["quant"]
            cache[key] = {"sig": sig, "info": info}
            changed = True
        out[m.ref] = info
    if changed:
        with contextlib.suppress(OSError):
            text = json.dumps(cache, sort_keys=True)
            store.write_atomic(cache_file, text.encode(), durable=False)
    return out

"""The local model store: one folder per model under :func:`localllm.paths.models_dir`, each
with a ``manifest.json`` written atomically, and local model references resolved to files.

A model is installed when its manifest exists and every file it names is present. Files enter
a model's folder only complete and verified (see :mod:`localllm.hub`), and the manifest is
written last, so an interrupted pull or import never shows up as a model.

Models may also live elsewhere: GGUF files found in the Hugging Face cache are registered with
``source="hf-cache"`` and a ``location`` (their snapshot folder), so they are used in place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from localllm import paths
from localllm.durable import fsync_dir, write_atomic  # noqa: F401  (re-exported for older importers)
from localllm.errors import InvalidModelError, ModelNotFoundError, UsageError

MANIFEST = "manifest.json"
UNLISTED = ".unlisted.json"

Progress = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)


@dataclass
class Manifest:
    """What the store knows about one model."""

    name: str
    files: list[str]
    sha256: dict[str, str] = field(default_factory=dict)
    size: int = 0
    repo: str | None = None
    revision: str | None = None  # the commit the files came from
    quant: str | None = None
    architecture: str | None = None
    source: str = "local"  # "hub", "pip", "import", "hf-cache", "local"
    added: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    parameters: int | None = None
    context_length: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    location: str | None = None  # where the files live when not in the model's own folder
    mmproj: str | None = None  # a projector file (in ``files``) for multimodal models

    @property
    def folder(self) -> Path:
        return paths.models_dir() / folder_name(self.name)

    @property
    def files_dir(self) -> Path:
        return Path(self.location) if self.location else self.folder

    @property
    def primary(self) -> Path:
        """The file llama.cpp loads (the first part of a split model)."""
        return self.files_dir / self.files[0]

    def paths(self) -> list[Path]:
        return [self.files_dir / f for f in self.files]

    @property
    def in_hf_cache(self) -> bool:
        return self.source == "hf-cache"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder_name(name: str) -> str:
    """A model name as a folder name: ``owner/repo:Q4_K_M`` -> ``owner--repo--Q4_K_M``."""
    slug = name.replace("/", "--").replace(":", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", slug).strip(".")
    return slug or "_"


def save_manifest(manifest: Manifest) -> None:
    text = json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"
    write_atomic(manifest.folder / MANIFEST, text.encode())


_FIELDS = {f.name for f in fields(Manifest)}


def load_manifest(folder: Path) -> Manifest | None:
    """The manifest in ``folder``, or None when missing or unreadable. Keys this version does
    not know are ignored, so a newer localllm's manifests still load."""
    try:
        data: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return None
        manifest = Manifest(**{k: v for k, v in data.items() if k in _FIELDS})
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(manifest.files, list) or not all(isinstance(f, str) for f in manifest.files):
        return None
    return manifest


def all_manifests() -> list[Manifest]:
    root = paths.models_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = load_manifest(folder)
        if manifest is not None:
            found.append(manifest)
    return found


def _complete(manifest: Manifest) -> bool:
    return bool(manifest.files) and all(p.is_file() for p in manifest.paths())


def installed() -> list[Manifest]:
    """Every model in the store whose files are all present, sorted by name."""
    return sorted((m for m in all_manifests() if _complete(m)), key=lambda m: m.name.lower())


def get(name: str) -> Manifest | None:
    """The installed model called ``name`` (case-insensitive)."""
    wanted = name.lower()
    return next((m for m in installed() if m.name.lower() == wanted), None)


def find(ref: Any) -> list[Manifest]:
    """Installed models matching a parsed :class:`localllm.refs.ModelRef`."""
    models = installed()
    if ref.kind == "alias":
        return [m for m in models if m.name.lower() == ref.alias]
    if ref.kind == "name":
        return [m for m in models if m.name.lower() == ref.raw.strip().lower()]
    if ref.kind != "hub":
        return []
    repo = ref.repo.lower()
    found = [m for m in models if (m.repo or "").lower() == repo]
    if ref.filename:
        wanted = ref.filename.lower()
        base = wanted.rsplit("/", 1)[-1]
        found = [m for m in found if any(f.lower() in (wanted, base) for f in m.files)]
    elif ref.quant:
        found = [m for m in found if (m.quant or "").upper() == ref.quant]
    if ref.revision:
        found = [m for m in found if (m.revision or "").startswith(ref.revision)] or found
    return found


def _not_a_file(ref: str, candidate: Path) -> None:
    """Raise a precise error when ``ref`` names something on disk that is not a file."""
    if candidate.is_dir():
        ggufs = sorted(p.name for p in candidate.glob("*.gguf") if p.is_file())
        hint = (
            "name a .gguf file in it: " + ", ".join(ggufs[:5])
            if ggufs
            else "it holds no .gguf file; name a .gguf file"
        )
        raise ModelNotFoundError(f"{ref} is a directory, not a model file", hint=hint)
    if candidate.exists():
        raise ModelNotFoundError(f"{ref} is not a regular file", hint="name a .gguf file")


def resolve_model(ref: str) -> Path:
    """A local model reference (file path, store name, alias, ``owner/repo[:quant]``) -> the
    file to load. Never touches the network: a Hub reference that is not installed is an
    error saying which ``localllm pull`` gets it."""
    from localllm import refs

    candidate = refs.expand_path(ref)
    if candidate.is_file():
        return candidate
    manifest = get(ref)
    if manifest is not None:
        return manifest.primary
    names = [m.name for m in installed()]
    installed_hint = "installed: " + ", ".join(names) if names else None
    try:
        parsed = refs.parse_ref(ref)
    except UsageError:
        parsed = None
    if parsed is not None and parsed.kind == "foreign":
        from localllm import foreign  # another tool's store, used in place

        return foreign.lookup(parsed.store or "", parsed.name or "").primary
    if parsed is None or parsed.kind == "path":
        _not_a_file(ref, candidate)
        if candidate.suffix.lower() == ".gguf" or os.sep in ref or "/" in ref:
            raise ModelNotFoundError(f"no such model file: {ref}")
        raise ModelNotFoundError(f"no model named '{ref}' is installed", hint=installed_hint)
    matches = find(parsed)
    if len(matches) == 1:
        return matches[0].primary
    if len(matches) > 1:
        raise ModelNotFoundError(
            f"'{ref}' matches {len(matches)} installed models",
            hint="name one: " + ", ".join(m.name for m in matches),
        )
    if parsed.kind == "hub":
        cached = hf_cache_lookup(parsed)
        if cached is not None:
            return cached
    _not_a_file(ref, candidate)  # a folder that also reads as a reference: say what it is
    if parsed.kind in ("hub", "alias"):
        raise ModelNotFoundError(
            f"{parsed.display()} is not installed",
            hint=f"run `localllm pull {parsed.display()}`",
        )
    hint = _foreign_hint(ref) or installed_hint or "run `localllm pull REF` to get one"
    raise ModelNotFoundError(f"no model named '{ref}' is installed", hint=hint)


def _foreign_hint(name: str) -> str | None:
    """ "use ollama:llama3.2:3b" when another tool's store has the model a bare name means."""
    from localllm import foreign

    try:
        found = foreign.suggest(name)
    except Exception:  # a hint must never turn a clear error into a traceback
        return None
    return f"{found.label} has it: use {found.ref}" if found else None


# -- the Hugging Face cache (read in place, without huggingface_hub) ----------------------


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_repo_folder(repo: str) -> Path:
    return hf_cache_dir() / ("models--" + repo.replace("/", "--"))


def hf_cache_lookup(ref: Any) -> Path | None:
    """A GGUF for a Hub reference found directly in the HF cache's snapshots, or None."""
    from localllm import refs

    snapshots = hf_repo_folder(ref.repo) / "snapshots"
    if not snapshots.is_dir():
        return None
    try:
        commits = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    for snap in commits:
        if ref.revision and not snap.name.startswith(ref.revision):
            continue
        files = [
            refs.RepoFile(p.relative_to(snap).as_posix(), 0)
            for p in snap.rglob("*.gguf")
            if p.is_file()
        ]
        entries = [e for e in refs.group_ggufs(files) if e.complete]
        try:
            if ref.filename or ref.quant:
                entry = refs.select_entry(entries, ref.repo, quant=ref.quant, filename=ref.filename)
            else:
                models = [e for e in entries if not e.mmproj]
                if len(models) != 1:
                    continue
                entry = models[0]
        except ModelNotFoundError:
            continue
        return snap / entry.name
    return None


def _unlisted() -> set[str]:
    try:
        data = json.loads((paths.models_dir() / UNLISTED).read_text(encoding="utf-8"))
        return {str(x) for x in data} if isinstance(data, list) else set()
    except (OSError, ValueError):
        return set()


def _hf_key(manifest: Manifest) -> str:
    return f"{manifest.repo}@{manifest.revision}/{manifest.files[0] if manifest.files else ''}"


def _set_unlisted(keys: set[str]) -> None:
    text = json.dumps(sorted(keys), indent=1) + "\n"
    write_atomic(paths.models_dir() / UNLISTED, text.encode())


def sync_hf_cache(found: Iterable[Manifest]) -> list[Manifest]:
    """Register models found in the HF cache (``source="hf-cache"``, files used in place) and
    drop registrations whose files are gone. Models unlisted with ``rm`` stay unlisted.
    Returns the newly registered ones."""
    existing = all_manifests()
    unlisted = _unlisted()
    for m in existing:
        if m.in_hf_cache and not _complete(m):
            shutil.rmtree(m.folder, ignore_errors=True)
    taken = {m.name.lower() for m in existing}
    known = {_hf_key(m) for m in existing if m.in_hf_cache}
    store_files = {(m.repo, tuple(m.files)) for m in existing if not m.in_hf_cache}
    added = []
    for m in found:
        key = _hf_key(m)
        if key in unlisted or key in known or (m.repo, tuple(m.files)) in store_files:
            continue
        name = m.name
        n = 2
        while name.lower() in taken:
            name = f"{m.name}-{n}"
            n += 1
        m.name = name
        save_manifest(m)
        taken.add(name.lower())
        added.append(m)
    return added


# -- adding, removing, verifying ----------------------------------------------------------


def sha256_file(
    path: Path, progress: Progress | None = None, *, offset: int = 0, total: int | None = None
) -> str:
    """The sha256 of a file, reporting ``(offset + bytes read, total)`` as it reads (``total``
    defaults to ``offset`` + the file's size, for progress over several files)."""
    h = hashlib.sha256()
    done = offset
    total = total if total is not None else path.stat().st_size + offset
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            done += n
            if progress:
                progress(done, total)
    return h.hexdigest()


def place_file(src: Path, dest: Path) -> None:
    """Move a finished file into place atomically (copy then rename across file systems)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    src.unlink(missing_ok=True)


def fill_info(manifest: Manifest, *, save: bool = False) -> Manifest:
    """Fill architecture, parameters, context length and quant from the GGUF header when the
    manifest lacks them (best effort: an unreadable file leaves them empty)."""
    if (
        manifest.parameters is not None
        and manifest.architecture
        and manifest.context_length is not None
    ):
        return manifest
    info = read_gguf_info(manifest.primary)
    if not info:
        return manifest
    manifest.architecture = manifest.architecture or info.get("architecture")
    if manifest.parameters is None:
        manifest.parameters = info.get("parameters")
    if manifest.context_length is None:
        manifest.context_length = info.get("context_length")
    manifest.quant = manifest.quant or info.get("quant")
    if save:
        with contextlib.suppress(OSError):
            save_manifest(manifest)
    return manifest


def read_gguf_info(path: Path) -> dict[str, Any]:
    """Architecture, parameters, context length, quant and split parts of a local GGUF, from
    its header (``localllm.modelfile`` when available); {} when unreadable."""
    try:
        from localllm import modelfile
    except ImportError:  # pragma: no cover - modelfile ships with localllm
        modelfile = None  # type: ignore[assignment]
    if modelfile is not None and hasattr(modelfile, "read_info"):
        try:
            info = modelfile.read_info(path)
        except (InvalidModelError, OSError, ValueError):
            return {}
        return {
            "architecture": info.architecture,
            "parameters": info.parameters or None,
            "context_length": info.context_length,
            "quant": info.quantization if info.quantization != "unknown" else None,
            "parts": [Path(p) for p in info.split] or [Path(path)],
        }
    from localllm import fit

    try:
        with Path(path).open("rb") as f:
            head = fit.parse_header_prefix(f.read(8 << 20))
    except (OSError, ValueError):
        return {}
    shape = head.shape()
    return {
        "architecture": head.metadata.get("general.architecture"),
        "parameters": None,
        "context_length": shape.context_length if shape else None,
        "quant": None,
        "parts": [Path(path)],
    }


def validate_file(path: Path) -> None:
    """Raise :class:`InvalidModelError` unless ``path`` is a GGUF file fit for llama.cpp."""
    try:
        from localllm import modelfile
    except ImportError:  # pragma: no cover
        modelfile = None  # type: ignore[assignment]
    if modelfile is not None and hasattr(modelfile, "validate_gguf"):
        modelfile.validate_gguf(path)
        return
    try:
        with Path(path).open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise InvalidModelError(f"{path} is not a GGUF file")


def add_model(manifest: Manifest, staged: dict[str, Path]) -> Manifest:
    """Move verified files (``{name in manifest.files: staged path}``) into the model's folder
    and write its manifest last."""
    folder = manifest.folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in staged.items():
        dest = folder / name
        if src.resolve() != dest.resolve():
            place_file(src, dest)
    save_manifest(manifest)
    return manifest


def remove(manifest: Manifest, *, purge: bool = False) -> list[Path]:
    """Remove a model from the store and return the files deleted. A model that lives in the
    HF cache is only unlisted unless ``purge``; imported links remove the link, not the
    original."""
    deleted: list[Path] = []
    if manifest.in_hf_cache:
        if purge:
            for p in manifest.paths():
                target = p.resolve() if p.is_symlink() else None
                for q in (p, target):
                    if q is not None and (q.is_file() or q.is_symlink()):
                        q.unlink(missing_ok=True)
                        deleted.append(q)
        else:
            keys = _unlisted()
            keys.add(_hf_key(manifest))
            _set_unlisted(keys)
        shutil.rmtree(manifest.folder, ignore_errors=True)
        return deleted
    (manifest.folder / MANIFEST).unlink(missing_ok=True)  # unlisted first: never half-listed
    if manifest.location is None:
        deleted = [p for p in manifest.paths() if p.exists() or p.is_symlink()]
        shutil.rmtree(manifest.folder, ignore_errors=True)
    else:
        shutil.rmtree(manifest.folder, ignore_errors=True)
    return deleted


def lookup(ref: str) -> Manifest:
    """The one installed model a reference names (name, alias, ``owner/repo[:quant]``)."""
    from localllm import refs

    manifest = get(ref)
    if manifest is not None:
        return manifest
    try:
        parsed = refs.parse_ref(ref)
    except UsageError:
        parsed = None
    if parsed is not None and parsed.kind == "foreign":
        from localllm import foreign  # another tool's store: a manifest over files in place

        return foreign.lookup(parsed.store or "", parsed.name or "").manifest()
    matches = find(parsed) if parsed is not None else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ModelNotFoundError(
            f"'{ref}' matches {len(matches)} installed models",
            hint="name one: " + ", ".join(m.name for m in matches),
        )
    names = [m.name for m in installed()]
    hint = "installed: " + ", ".join(names) if names else "nothing is installed"
    raise ModelNotFoundError(f"no installed model '{ref}'", hint=hint)


def import_model(
    path: Path,
    *,
    name: str | None = None,
    copy: bool = False,
    progress: Progress | None = None,
    mmproj: Path | None = None,
) -> Manifest:
    """Validate a local GGUF (every part of a split one) and add it to the store: a hard link
    when possible (same file system), else a symlink, or a copy with ``copy=True``.
    ``mmproj``: the model's vision projector, stored beside it and recorded."""
    from localllm import refs

    path = refs.expand_path(str(path)).absolute()
    if path.is_dir():
        raise ModelNotFoundError(
            f"{path} is a directory, not a model file", hint="name the .gguf file inside it"
        )
    if not path.is_file():
        raise ModelNotFoundError(f"no such file: {path}")
    validate_file(path)
    info = read_gguf_info(path)
    if info.get("architecture") == "clip":
        raise UsageError(
            f"{path.name} is a vision projector, not a model",
            hint="import the model and give this file with --mmproj",
        )
    parts = [Path(p) for p in info.get("parts") or [path]]
    if mmproj is not None:
        check_projector(mmproj)
        parts.append(mmproj)
    stem = refs.split_base(path.name)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    name = (name or stem).strip()
    if not name:
        raise UsageError("the model name is empty")
    if get(name) is not None:
        raise UsageError(
            f"a model named '{name}' is already installed", hint="pick another with --name"
        )
    manifest = Manifest(
        name=name,
        files=[p.name for p in parts],
        source="import",
        quant=refs.parse_quant(path.name) or info.get("quant"),
        architecture=info.get("architecture"),
        parameters=info.get("parameters"),
        context_length=info.get("context_length"),
        mmproj=mmproj.name if mmproj is not None else None,
    )
    folder = manifest.folder
    if folder.exists() and load_manifest(folder) is None:
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of an interrupted import
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in parts)
    done = 0
    try:
        for part in parts:
            size = part.stat().st_size
            dest = folder / part.name
            manifest.sha256[part.name] = sha256_file(part, progress, offset=done, total=total)
            manifest.sizes[part.name] = size
            done += size
            _link_or_copy(part, dest, copy=copy)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest.size = total
    save_manifest(manifest)
    return manifest


def check_projector(path: Path) -> None:
    """A vision projector: a valid GGUF of the ``clip`` architecture."""
    if not path.is_file():
        raise ModelNotFoundError(f"no such projector file: {path}")
    from localllm import modelfile

    gf = modelfile.parse_gguf(path)
    if gf.get_str("general.architecture") != "clip":
        raise UsageError(
            f"{path.name} is not a vision projector (architecture "
            f"{gf.get_str('general.architecture')!r})",
            hint="--mmproj takes the model's mmproj-*.gguf file",
        )


def projector_of(model: Path) -> Path | None:
    """The projector recorded for the installed model whose file is ``model``."""
    try:
        target = model.resolve()
        for manifest in all_manifests():
            if manifest.mmproj and manifest.primary.resolve() == target:
                return manifest.files_dir / manifest.mmproj
    except OSError:
        return None
    from localllm import foreign  # Ollama's projector layer, llama.cpp's manifest mmprojFile

    return foreign.projector_for(target)


def _link_or_copy(src: Path, dest: Path, *, copy: bool) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    if not copy:
        try:
            os.link(src, tmp)
            os.replace(tmp, dest)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
        try:
            os.symlink(src, tmp)
            os.replace(tmp, dest)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    try:
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class FileCheck:
    """One file's verification: "ok", "mismatch", "missing" or "unchecked" (no hash known)."""

    model: str
    file: str
    status: str
    expected: str | None = None
    actual: str | None = None


def verify(manifest: Manifest, progress: Progress | None = None) -> list[FileCheck]:
    """Re-hash a model's files and compare them with its manifest."""
    checks = []
    for name, path in zip(manifest.files, manifest.paths(), strict=True):
        expected = manifest.sha256.get(name)
        if not path.is_file():
            checks.append(FileCheck(manifest.name, name, "missing", expected))
            continue
        actual = sha256_file(path, progress)
        if expected is None:
            checks.append(FileCheck(manifest.name, name, "unchecked", None, actual))
        else:
            status = "ok" if actual == expected else "mismatch"
            checks.append(FileCheck(manifest.name, name, status, expected, actual))
    return checks

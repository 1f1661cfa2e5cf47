"""Model references and GGUF file names: pure parsing, no network, no store.

A reference is one of:

* a catalog alias: ``smollm2-135m``;
* ``owner/repo`` (a quant is picked automatically), ``owner/repo:Q4_K_M`` (case-insensitive),
  ``owner/repo@revision[:quant]``, ``owner/repo/file.gguf`` (also ``owner/repo/dir/file.gguf``);
* ``hf.co/owner/repo[:quant]``, ``huggingface.co/...`` and ``https://huggingface.co/...`` URLs
  (``/blob/REV/FILE``, ``/resolve/REV/FILE`` and ``/tree/REV`` forms too);
* a local path (an existing file, or anything starting with ``/``, ``./``, ``../`` or ``~``);
* a bare name (an installed model, resolved by the store);
* another tool's model, used in place: ``ollama:llama3.2:3b``, ``lmstudio:publisher/repo:QUANT``,
  ``llamacpp:owner/repo:QUANT`` (see :mod:`localllm.foreign`).

File names give the quant (``...-Q4_K_M.gguf``, ``.../Q4_K_M/...-00001-of-00003.gguf``), split
parts are grouped into one entry, and :func:`auto_pick` chooses the quant to download.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from localllm.errors import ModelNotFoundError, ResourceError, UsageError

RefKind = Literal["alias", "hub", "path", "name", "foreign"]

# Another tool's store: ``ollama:llama3.2:3b``, ``lmstudio:pub/repo:Q4_K_M``, ``llamacpp:o/r:Q8_0``
# (the prefix -> the store's name in localllm.foreign).
FOREIGN_PREFIXES = {
    "ollama": "ollama",
    "lmstudio": "lmstudio",
    "lm-studio": "lmstudio",
    "llamacpp": "llama.cpp",
    "llama.cpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
}

HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
DEFAULT_QUANT = "Q4_K_M"

# A Hub repo id: owner/name, letters, digits, '-', '_', '.', at most 96 characters each.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"(?:UD-)?I?Q[1-8](?:_(?:K|NL|XXS|XS|S|M|L|XL|[0-9]))*"
    r"|MXFP4(?:_MOE)?|TQ[12]_0|BF16|F16|FP16|F32|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)

# Approximate bits per weight: the order of quality (higher is better) and the size ratio.
QUANT_BITS: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.67,
    "Q5_1": 6.0,
    "Q5_K_S": 5.52,
    "Q5_0": 5.5,
    "Q4_K_L": 5.3,
    "Q4_K_XL": 5.2,
    "Q4_K_M": 4.83,
    "Q4_1": 5.0,
    "MXFP4": 4.25,
    "Q4_K_S": 4.57,
    "IQ4_NL": 4.5,
    "Q4_0": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_XL": 4.3,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "IQ3_M": 3.66,
    "Q3_K_S": 3.5,
    "IQ3_S": 3.44,
    "IQ3_XS": 3.3,
    "Q2_K_L": 3.4,
    "Q2_K": 3.35,
    "IQ3_XXS": 3.06,
    "IQ2_M": 2.7,
    "IQ2_S": 2.5,
    "IQ2_XS": 2.31,
    "IQ2_XXS": 2.06,
    "TQ2_0": 2.06,
    "IQ1_M": 1.75,
    "TQ1_0": 1.69,
    "IQ1_S": 1.56,
}
FULL_PRECISION = frozenset({"F32", "F16", "BF16"})
_SYNONYMS = {"FP16": "F16", "FP32": "F32", "MXFP4_MOE": "MXFP4"}


def normalize_quant(quant: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``; ``fp16`` -> ``F16``."""
    q = quant.strip().upper()
    return _SYNONYMS.get(q, q)


def quant_bits(quant: str | None) -> float | None:
    """Approximate bits per weight of ``quant`` (``UD-`` variants as their base), or None."""
    if not quant:
        return None
    q = normalize_quant(quant)
    return QUANT_BITS.get(q.removeprefix("UD-"))


def split_info(filename: str) -> tuple[int, int] | None:
    """``(index, count)`` of a split part (``x-00002-of-00003.gguf`` -> ``(2, 3)``), else None."""
    m = _SPLIT_RE.search(filename)
    if not m:
        return None
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        return None
    return index, count


def split_base(filename: str) -> str:
    """The name shared by every part of a split model (the name itself otherwise)."""
    return _SPLIT_RE.sub("", filename) if split_info(filename) else filename


def parse_quant(filename: str) -> str | None:
    """The quant named in a GGUF file name or its folder (``Q4_K_M``, ``IQ2_XXS``, ``F16``)."""
    posix = PurePosixPath(filename)
    stem = split_base(posix.name)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    for text in (stem, *reversed(posix.parent.parts)):
        found = _QUANT_RE.findall(text)
        if found:
            return normalize_quant(found[-1])
    return None


def is_mmproj(filename: str) -> bool:
    """A multimodal projector (``mmproj-*.gguf``), not a model on its own."""
    return "mmproj" in PurePosixPath(filename).name.lower()


def is_gguf(filename: str) -> bool:
    return filename.lower().endswith(".gguf")


# -- references --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference."""

    raw: str
    kind: RefKind
    repo: str | None = None
    quant: str | None = None
    filename: str | None = None
    revision: str | None = None
    path: Path | None = None
    alias: str | None = None
    store: str | None = None  # for kind "foreign": "ollama", "lmstudio" or "llama.cpp"
    name: str | None = None  # for kind "foreign": the model's name in that store

    @property
    def is_remote(self) -> bool:
        return self.kind in ("hub", "alias")

    def display(self) -> str:
        """The canonical form: ``owner/repo:Q4_K_M``, ``owner/repo/file.gguf``, alias, path."""
        if self.kind == "hub":
            rev = f"@{self.revision}" if self.revision else ""
            if self.filename:
                return f"{self.repo}{rev}/{self.filename}"
            return f"{self.repo}{rev}:{self.quant}" if self.quant else f"{self.repo}{rev}"
        if self.kind == "alias":
            return self.alias or self.raw
        if self.kind == "path":
            return str(self.path)
        if self.kind == "foreign":
            prefix = "llamacpp" if self.store == "llama.cpp" else self.store
            return f"{prefix}:{self.name}"
        return self.raw


def expand_path(text: str) -> Path:
    """``Path(text).expanduser()``, leaving ``~user`` alone when there is no such user."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)


def is_repo_id(text: str) -> bool:
    return bool(_REPO_RE.match(text)) and ".." not in text and "--" not in text


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", text))
        or "\\" in text
    )


def foreign_ref(text: str) -> tuple[str, str] | None:
    """``ollama:llama3.2:3b`` -> ``("ollama", "llama3.2:3b")``; None for other text."""
    head, sep, rest = text.strip().partition(":")
    store = FOREIGN_PREFIXES.get(head.lower()) if sep else None
    return (store, rest.strip()) if store else None


def _split_quant(rest: str) -> tuple[str, str | None]:
    if ":" in rest:
        head, quant = rest.rsplit(":", 1)
        if not quant.strip():
            raise UsageError(f"empty quant in '{rest}'", hint="e.g. owner/repo:Q4_K_M")
        return head, normalize_quant(quant)
    return rest, None


def _hub_ref(raw: str, body: str) -> ModelRef:
    """``owner/repo[@rev][:quant]`` or ``owner/repo[@rev]/path/file.gguf``."""
    body = body.strip("/")
    parts = body.split("/")
    if len(parts) < 2:
        raise UsageError(f"'{raw}' is not a model reference", hint=_REF_HINT)
    owner, name_rev = parts[0], parts[1]
    rest = parts[2:]
    quant = None
    if not rest:
        name_rev, quant = _split_quant(name_rev)
    revision = None
    if "@" in name_rev:
        name_rev, revision = name_rev.split("@", 1)
        if not revision or not _REVISION_RE.match(revision):
            raise UsageError(f"bad revision in '{raw}'", hint=_REF_HINT)
    repo = f"{owner}/{name_rev}"
    if not is_repo_id(repo):
        raise UsageError(f"'{repo}' is not a valid Hub repository name", hint=_REF_HINT)
    filename = "/".join(rest) if rest else None
    if filename is not None:
        if not is_gguf(filename):
            raise UsageError(f"'{filename}' is not a .gguf file", hint=_REF_HINT)
        if any(p in ("", ".", "..") for p in rest):
            raise UsageError(f"bad file path in '{raw}'")
    return ModelRef(raw, "hub", repo=repo, quant=quant, filename=filename, revision=revision)


def _url_ref(raw: str, text: str) -> ModelRef:
    parsed = urlsplit(text if "://" in text else "https://" + text)
    path = unquote(parsed.path).strip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] in ("models", "api"):
        parts = parts[1:] if parts[0] == "models" else parts
    if len(parts) < 2:
        raise UsageError(f"'{raw}' does not name a Hub repository", hint=_REF_HINT)
    repo_parts = parts[:2]
    rest = parts[2:]
    if rest and rest[0] in ("blob", "resolve", "tree") and len(rest) >= 2:
        revision = rest[1]
        file_parts = rest[2:]
        body = "/".join(repo_parts) + f"@{revision}"
        if file_parts and is_gguf(file_parts[-1]):
            body += "/" + "/".join(file_parts)
        ref = _hub_ref(raw, body)
        return ref if revision != "main" else _replace_revision(ref, None)
    return _hub_ref(raw, "/".join(parts))


def _replace_revision(ref: ModelRef, revision: str | None) -> ModelRef:
    return ModelRef(
        ref.raw, ref.kind, ref.repo, ref.quant, ref.filename, revision, ref.path, ref.alias
    )


_REF_HINT = "use a catalog alias, owner/repo, owner/repo:QUANT, owner/repo/file.gguf or a path"


def parse_ref(text: str, *, aliases: Iterable[str] | None = None) -> ModelRef:
    """Parse a model reference (see the module docstring). ``aliases`` defaults to the
    catalog's. Raises :class:`UsageError` for text that cannot be a reference."""
    raw = text
    text = text.strip()
    if not text:
        raise UsageError("empty model reference", hint=_REF_HINT)
    if aliases is None:
        from localllm import catalog

        aliases = [e.alias for e in catalog.CATALOG]
    alias_set = {a.lower() for a in aliases}
    if text.lower() in alias_set:
        return ModelRef(raw, "alias", alias=text.lower())
    foreign = foreign_ref(text)
    if foreign is not None:
        store, name = foreign
        if not name:
            raise UsageError(f"no model name after '{text}'", hint="e.g. ollama:llama3.2:3b")
        return ModelRef(raw, "foreign", store=store, name=name)
    lowered = text.lower()
    if lowered.startswith("hf://"):
        return _hub_ref(raw, text[5:])
    hosts = set(HUB_HOSTS)
    mirror = urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname
    if mirror:
        hosts.add(mirror.lower())  # URLs of the mirror HF_ENDPOINT points at
    if "://" in text or any(lowered.startswith(h + "/") for h in hosts):
        if "://" in text:
            host = (urlsplit(text).hostname or "").lower()
            if host not in hosts and not lowered.startswith("file://"):
                raise UsageError(f"'{raw}' is not a Hugging Face URL", hint=_REF_HINT)
            if lowered.startswith("file://"):
                return ModelRef(raw, "path", path=Path(unquote(urlsplit(text).path)))
        return _url_ref(raw, text)
    candidate = expand_path(text)
    if _looks_like_path(text) or candidate.is_file():
        return ModelRef(raw, "path", path=candidate)
    if "/" not in text:
        if is_gguf(text):
            return ModelRef(raw, "path", path=candidate)
        return ModelRef(raw, "name")
    if text.count("/") == 1 and is_gguf(text):
        return ModelRef(raw, "path", path=candidate)  # dir/file.gguf that does not exist
    return _hub_ref(raw, text)


# -- repository listings -----------------------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    """One file of a Hub repository."""

    path: str
    size: int
    sha256: str | None = None  # the LFS oid; None for files kept in git


@dataclass
class GGUFEntry:
    """One downloadable model in a repository: a single GGUF or every part of a split one."""

    name: str  # the first part's path (what llama.cpp loads)
    files: list[RepoFile]
    quant: str | None
    mmproj: bool = False
    missing_parts: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def complete(self) -> bool:
        return not self.missing_parts

    @property
    def split(self) -> bool:
        return len(self.files) > 1 or bool(self.missing_parts)

    @property
    def label(self) -> str:
        """What a person calls it: the quant, else the file name."""
        return self.quant or PurePosixPath(self.name).name


def group_ggufs(files: Iterable[RepoFile]) -> list[GGUFEntry]:
    """The repo's GGUF files as entries: split parts grouped (ordered, gaps noted), models
    before projectors, each group sorted by size."""
    groups: dict[str, dict[int, RepoFile]] = {}
    counts: dict[str, int] = {}
    singles: list[RepoFile] = []
    for f in files:
        if not is_gguf(f.path):
            continue
        info = split_info(f.path)
        if info is None:
            singles.append(f)
            continue
        key = f"{split_base(f.path)}|{info[1]}"
        groups.setdefault(key, {})[info[0]] = f
        counts[key] = info[1]
    entries = [GGUFEntry(f.path, [f], parse_quant(f.path), is_mmproj(f.path)) for f in singles]
    for key, parts in groups.items():
        count = counts[key]
        ordered = [parts[i] for i in sorted(parts)]
        missing = [i for i in range(1, count + 1) if i not in parts]
        first = ordered[0].path
        name = parts[1].path if 1 in parts else first
        entries.append(
            GGUFEntry(name, ordered, parse_quant(first), is_mmproj(first), missing_parts=missing)
        )
    entries.sort(key=lambda e: (e.mmproj, e.size, e.name))
    return entries


def _candidates_text(entries: Sequence[GGUFEntry]) -> str:
    labels = []
    for e in entries:
        label = e.label
        if sum(1 for o in entries if o.label == label) > 1:
            label = e.name
        labels.append(label)
    return ", ".join(dict.fromkeys(labels)) or "none"


def select_entry(
    entries: Sequence[GGUFEntry], repo: str, *, quant: str | None, filename: str | None
) -> GGUFEntry:
    """The entry named by ``filename`` (any part of a split model selects the whole model) or
    by ``quant`` (case-insensitive; ``UD-`` variants match their base when unambiguous).
    Raises :class:`ModelNotFoundError` naming the candidates."""
    models = [e for e in entries if not e.mmproj]
    if filename is not None:
        wanted = filename.lower()
        for e in entries:
            paths = [f.path.lower() for f in e.files]
            if wanted in paths or wanted == e.name.lower():
                return e
        base = [e for e in entries if PurePosixPath(e.name).name.lower() == wanted]
        if len(base) == 1:
            return base[0]
        raise ModelNotFoundError(
            f"{repo} has no file '{filename}'",
            hint="files: " + ", ".join(e.name for e in entries) if entries else None,
        )
    if quant is None:
        raise ValueError("select_entry needs a quant or a filename")
    q = normalize_quant(quant)
    matches = [e for e in models if e.quant == q]
    if not matches:
        matches = [e for e in models if e.quant and e.quant.removeprefix("UD-") == q]
    if not matches:
        raise ModelNotFoundError(
            f"{repo} has no {q} file", hint="available: " + _candidates_text(models)
        )
    if len(matches) > 1:
        names = ", ".join(f"{repo}/{e.name}" for e in matches)
        raise ModelNotFoundError(
            f"{repo}:{q} is ambiguous: {len(matches)} files match",
            hint=f"name one: {names}",
        )
    return matches[0]


Verdict = Literal["fits", "tight", "won't fit"]


@dataclass(frozen=True)
class Pick:
    entry: GGUFEntry
    reason: str


def auto_pick(entries: Sequence[GGUFEntry], verdicts: Mapping[str, str]) -> Pick:
    """Choose what to download when no quant was named.

    ``verdicts`` maps each entry's ``name`` to "fits", "tight" or "won't fit". Q4_K_M wins when
    it fits comfortably (the usual balance of size and quality); otherwise the highest-quality
    quantized file that fits comfortably; full precision only when nothing quantized fits; a
    tight fit only when nothing fits comfortably. Raises :class:`ResourceError` when nothing
    fits and :class:`ModelNotFoundError` when there is nothing to pick from.
    """
    models = [e for e in entries if not e.mmproj and e.complete]
    if not models:
        raise ModelNotFoundError("the repository has no complete GGUF model file")

    def quality(e: GGUFEntry) -> tuple[float, int]:
        bits = quant_bits(e.quant)
        return (bits if bits is not None else 0.0, e.size)

    comfortable = [e for e in models if verdicts.get(e.name) == "fits"]
    tight = [e for e in models if verdicts.get(e.name) == "tight"]
    preferred = [e for e in comfortable if e.quant in (DEFAULT_QUANT, "UD-" + DEFAULT_QUANT)]
    if preferred:
        e = min(preferred, key=lambda x: (x.quant != DEFAULT_QUANT, x.size))
        return Pick(e, f"{e.label}: the usual balance of quality and size, and it fits in memory")
    quantized = [e for e in comfortable if e.quant not in FULL_PRECISION]
    if quantized:
        e = max(quantized, key=quality)
        why = "the highest-quality quant that fits comfortably in memory"
        if any(m.quant == DEFAULT_QUANT for m in models):
            why += f" ({DEFAULT_QUANT} would be too large)"
        elif e.quant is None:
            why = "the repository names no quant; the largest file that fits comfortably"
        return Pick(e, f"{e.label}: {why}")
    if comfortable:
        e = min(comfortable, key=lambda x: x.size)
        return Pick(e, f"{e.label}: the repository has no quantized file that fits")
    if tight:
        e = max(tight, key=quality)
        return Pick(e, f"{e.label}: nothing fits comfortably; this one fits, but tightly")
    smallest = min(models, key=lambda x: x.size)
    raise ResourceError(
        f"no file in the repository fits in this machine's memory "
        f"(smallest: {smallest.label}, {format_bytes(smallest.size)})",
        hint="use a smaller --ctx, or name a quant to download it anyway",
    )


def format_bytes(n: float) -> str:
    """1.2 GB, 340 MB, 12 KB (decimal units, as the Hub shows them)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"

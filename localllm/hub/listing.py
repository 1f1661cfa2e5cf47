"""What a repo holds and whether it fits: the Hub's model API (commit, files, sizes, LFS
sha256; the request ``HfApi.model_info(files_metadata=True)`` makes) and its search (the
request of ``HfApi.list_models``), each one GET through huggingface_hub's session with our
retry policy (see :mod:`.client` for why not ``HfApi`` itself), plus our own header read (an
HTTP Range request of the first bytes of one GGUF) to size the KV cache before anything is
downloaded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm import fit, refs
from localllm.errors import UsageError
from localllm.hub import client
from localllm.hub.client import NoGGUFError

# Bytes read to size a model's KV cache before downloading it: the architecture keys come
# before the vocabulary, so the first read almost always suffices; more only when it does not.
HEADER_PREFIXES = (256 << 10, 2 << 20, 16 << 20)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RepoInfo:
    repo: str
    commit: str | None
    files: list[refs.RepoFile]
    gated: bool | str = False
    revision: str | None = None

    @property
    def ggufs(self) -> list[refs.GGUFEntry]:
        return refs.group_ggufs(self.files)


def repo_info(repo: str, revision: str | None = None) -> RepoInfo:
    """The repo's commit and files with sizes and LFS sha256 (``HfApi.model_info`` with
    ``files_metadata=True``: one request, which the library does not retry itself, so
    :func:`client.call` applies our policy: one attempt when the Hub is unreachable)."""
    client.check_online(f"list {repo}")
    if not refs.is_repo_id(repo):
        raise UsageError(f"'{repo}' is not a valid Hub repository name")
    info = client.call(
        lambda: client.api().model_info(
            repo, revision=revision, files_metadata=True, timeout=client.timeout()
        ),
        repo,
    )
    files = []
    for s in info.siblings or []:
        lfs = s.lfs
        sha = lfs.sha256 if lfs is not None else None
        size = lfs.size if lfs is not None else s.size
        files.append(
            refs.RepoFile(
                s.rfilename,
                int(size) if isinstance(size, int) else 0,
                sha if isinstance(sha, str) and _SHA256.fullmatch(sha) else None,
            )
        )
    commit = info.sha if isinstance(info.sha, str) else None
    return RepoInfo(repo, commit, files, info.gated or False, revision)


@dataclass
class FitRow:
    entry: refs.GGUFEntry
    estimate: fit.MemoryEstimate  # the model's weights and, when one comes with it, its projector's
    verdict: str
    gpu_verdict: str | None = None
    projector: refs.GGUFEntry | None = None  # the vision projector `pull` fetches with it


PROJECTOR_PREFERENCE = ("F16", "BF16", "F32", "Q8_0")


def pick_projector(
    entries: list[refs.GGUFEntry], choice: str | None, model: refs.GGUFEntry
) -> refs.GGUFEntry | None:
    """The projector to fetch with ``model``: ``choice`` is None (F16, else the closest to
    it), ``none``, a quant (``Q8_0``) or a file name of the repo."""
    projectors = [e for e in entries if e.mmproj and e.complete]
    if choice is not None and choice.lower() == "none":
        return None
    if choice is not None:
        for e in projectors:
            if e.name == choice or Path(e.name).name == choice:
                return e
        wanted = [e for e in projectors if (e.quant or "").upper() == choice.upper()]
        if not wanted:
            have = ", ".join(Path(e.name).name for e in projectors) or "none"
            raise UsageError(
                f"no projector '{choice}' in this repository (projectors: {have})",
                hint="pass --mmproj QUANT, a file name, or none",
            )
        return wanted[0]
    if not projectors:
        return None
    # Prefer a projector beside the model (repos with one folder per quant), then by type.
    folder = str(Path(model.name).parent)
    near = [e for e in projectors if str(Path(e.name).parent) == folder] or projectors
    for quant in PROJECTOR_PREFERENCE:
        for e in near:
            if (e.quant or "").upper() == quant:
                return e
    return near[0]


@dataclass
class Listing:
    """Every GGUF of a repo with its memory estimate at ``n_ctx``."""

    info: RepoInfo
    rows: list[FitRow]
    projectors: list[refs.GGUFEntry]
    n_ctx: int
    budget: fit.MemoryBudget
    method: str  # "header" (from a header read over HTTP) or "size" (size heuristic)
    shape: fit.ModelShape | None = None

    @property
    def verdicts(self) -> dict[str, str]:
        return {r.entry.name: r.verdict for r in self.rows}

    def row(self, entry: refs.GGUFEntry) -> FitRow | None:
        return next((r for r in self.rows if r.entry.name == entry.name), None)


def _read_prefix(url: str, size: int) -> bytes:
    from huggingface_hub.utils import get_session

    with get_session().stream(
        "GET",
        url,
        headers=client.headers({"Range": f"bytes=0-{size - 1}", "Accept-Encoding": "identity"}),
        timeout=client.timeout(),
        follow_redirects=True,
    ) as resp:
        if resp.status_code not in (200, 206):
            raise OSError(f"the Hub answered {resp.status_code}")
        data = bytearray()
        for chunk in resp.iter_raw():
            data += chunk
            if len(data) >= size:
                break
        return bytes(data[:size])


def fetch_header(repo: str, filename: str, revision: str = "main") -> fit.HeaderPrefix | None:
    """The metadata at the start of a remote GGUF (Range requests of growing size, usually
    one), or None when it cannot be read."""
    import httpx2

    client.check_online(f"read {filename}")
    client.sync_library()
    head = None
    url = client.resolve_url(repo, filename, revision)
    for size in HEADER_PREFIXES:
        try:
            data = _read_prefix(url, size)
        except (httpx2.HTTPError, OSError):
            return head
        try:
            head = fit.parse_header_prefix(data)
        except ValueError:
            return None
        if head.complete or head.shape() is not None or len(data) < size:
            return head
    return head


def list_repo(
    repo: str,
    *,
    revision: str | None = None,
    n_ctx: int = 4096,
    read_header: bool = True,
    budget: fit.MemoryBudget | None = None,
    mmproj: str | None = None,
) -> Listing:
    """List ``repo``'s GGUFs with fit marks; raises :class:`NoGGUFError` when it has none.

    A vision model's mark counts the projector ``pull`` would fetch with it (``mmproj`` as
    ``pull --mmproj`` takes it: None for the default pick, ``none`` for none): it is loaded
    beside the model, so its weights need memory too."""
    info = repo_info(repo, revision)
    entries = info.ggufs
    models = [e for e in entries if not e.mmproj]
    if not models:
        raise NoGGUFError(
            f"{repo} has no GGUF files",
            hint="localllm runs GGUF models: look for a repo with GGUF in its name",
        )
    budget = budget or fit.available_memory()
    shape = None
    if read_header:
        probe = min((e for e in models if e.complete), key=lambda e: e.size, default=models[0])
        head = fetch_header(repo, probe.name, info.commit or revision or "main")
        shape = head.shape() if head else None
    rows = []
    for e in models:
        if shape is not None:
            est = fit.estimate_for_shape(e.size, shape, n_ctx)
        else:
            est = fit.estimate_from_size(e.size, n_ctx, refs.quant_bits(e.quant))
        projector = pick_projector(entries, mmproj, e)
        if projector is not None:  # its weights load beside the model's (no KV cache of its own)
            est = fit.add_weights(est, projector.size)
        gpu = fit.fit_verdict(est, budget.vram) if budget.vram is not None else None
        rows.append(FitRow(e, est, fit.fit_verdict(est, budget.ram), gpu, projector))
    projectors = [e for e in entries if e.mmproj]
    return Listing(info, rows, projectors, n_ctx, budget, "header" if shape else "size", shape)


def search(query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Repos matching ``query`` that carry GGUF files, most downloaded first (``GET
    /api/models``, what ``HfApi.list_models`` asks, following the ``Link: rel="next"`` pages
    until ``limit``), as plain dicts: ``id``, ``downloads``, ``likes``, ``tags``."""
    client.check_online("search the Hub")
    params: dict[str, Any] | None = {
        "search": query,
        "filter": "gguf",
        "sort": "downloads",
        "limit": limit,
    }
    url: str | None = f"{client.endpoint()}/api/models"
    found: list[dict[str, Any]] = []
    while url is not None and len(found) < limit:

        def page(page_url: str = url, page_params: dict[str, Any] | None = params) -> Any:
            return client.get_json(page_url, page_params)

        items, url = client.call(page, query, what="searching the Hub")
        params = None  # the next-page link carries the query
        if not items:
            break
        for m in items if isinstance(items, list) else []:
            name = (m.get("id") or m.get("modelId")) if isinstance(m, dict) else None
            if not isinstance(name, str):
                continue
            found.append(
                {
                    "id": name,
                    "downloads": m.get("downloads"),
                    "likes": m.get("likes"),
                    **({"tags": m["tags"]} if m.get("tags") is not None else {}),
                }
            )
    return found[:limit]

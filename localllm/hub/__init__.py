"""The Hugging Face Hub: listing, searching and downloading models (the only package that does
network I/O for models, and the only one that imports huggingface_hub).

* :mod:`.client`: the environment read at call time (``HF_ENDPOINT``, ``HF_TOKEN``,
  ``HF_HUB_OFFLINE``), huggingface_hub's HTTP session for it, one translation of the
  library's errors into ours, our retries with backoff (none when the Hub is unreachable);
* :mod:`.listing`: a repo's files and search (the requests of ``HfApi.model_info`` and
  ``list_models``, made through the library's session without importing ``HfApi``), the
  header read over HTTP that sizes the KV cache, fit marks;
* :mod:`.download`: one file, resumable across processes, sha256-checked (our own writer);
* :mod:`.pull`: a reference resolved to files and brought into the store;
* :mod:`.hfcache`: GGUF models already in the Hugging Face cache.

The names below are the public API the rest of localllm uses.
"""

from __future__ import annotations

from localllm.hub.client import (
    Cancelled,
    EntryNotFoundError,
    GatedRepoError,
    NoGGUFError,
    RepoNotFoundError,
    endpoint,
    is_offline,
    repo_url,
    resolve_url,
    token,
)
from localllm.hub.download import (
    FileMeta,
    Partial,
    Progress,
    Say,
    check_disk_space,
    clean_stale_partials,
    download_file,
    download_key,
    file_meta,
    free_space,
    partial_bytes,
)
from localllm.hub.hfcache import scan_hf_cache
from localllm.hub.listing import (
    HEADER_PREFIXES,
    FitRow,
    Listing,
    RepoInfo,
    fetch_header,
    list_repo,
    repo_info,
    search,
)
from localllm.hub.pull import PullPlan, model_name, plan_pull, pull

__all__ = [
    "HEADER_PREFIXES",
    "Cancelled",
    "EntryNotFoundError",
    "FileMeta",
    "FitRow",
    "GatedRepoError",
    "Listing",
    "NoGGUFError",
    "Partial",
    "Progress",
    "PullPlan",
    "RepoInfo",
    "RepoNotFoundError",
    "Say",
    "check_disk_space",
    "clean_stale_partials",
    "download_file",
    "download_key",
    "endpoint",
    "fetch_header",
    "file_meta",
    "free_space",
    "is_offline",
    "list_repo",
    "model_name",
    "partial_bytes",
    "plan_pull",
    "pull",
    "repo_info",
    "repo_url",
    "resolve_url",
    "scan_hf_cache",
    "search",
    "token",
]

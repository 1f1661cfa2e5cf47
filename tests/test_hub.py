"""Listing and downloading against the loopback Hub (tests/fakehub.py): real HTTP, real files,
real subprocesses killed mid-download."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakehub import FakeHub, Hold
from ggufgen import write_split_gguf, write_tiny_gguf

from localllm import fit, hub, paths, refs, store
from localllm.errors import (
    ChecksumError,
    InvalidModelError,
    ModelNotFoundError,
    NetworkError,
    OfflineError,
    ResourceError,
)
from localllm.hub import download

MiB = 1 << 20
ROOMY = fit.MemoryBudget(ram=64 << 30)


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests whose fake Hub holds a transfer until the test has done something: a client
    on a loaded machine must not give up on the held connection meanwhile."""
    monkeypatch.setenv("LOCALLLM_HUB_TIMEOUT", "300")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GGUFs of distinct sizes standing in for the quants of one model, and a few-MB one."""
    d = tmp_path_factory.mktemp("hubfiles")
    return {
        "small": write_tiny_gguf(d / "small.gguf", n_embd=32, n_head=4, n_ff=64),
        "mid": write_tiny_gguf(d / "mid.gguf", n_embd=64, seed=1),
        "large": write_tiny_gguf(d / "large.gguf", n_embd=128, n_head=4, n_ff=256, seed=2),
        "big": write_tiny_gguf(d / "big.gguf", n_embd=256, n_head=4, n_ff=1024, seed=3),
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quant_repo(fake_hub: FakeHub, files: dict[str, Path], repo: str = "acme/Tiny-GGUF") -> str:
    fake_hub.add_repo(
        repo,
        {
            "Tiny-Q2_K.gguf": files["small"],
            "Tiny-Q4_K_M.gguf": files["mid"],
            "Tiny-Q8_0.gguf": files["large"],
            "mmproj-Tiny-F16.gguf": files["small"],
            "README.md": b"# tiny\n",
        },
    )
    return repo


def test_list_repo_marks_fit(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    mid_need = files["mid"].stat().st_size
    listing = hub.list_repo(repo, n_ctx=2048, budget=ROOMY)
    assert listing.info.commit == fake_hub.repos[repo].commit
    assert [r.entry.quant for r in listing.rows] == ["Q2_K", "Q4_K_M", "Q8_0"]
    assert [p.name for p in listing.projectors] == ["mmproj-Tiny-F16.gguf"]
    assert listing.method == "header"
    assert listing.shape is not None and listing.shape.n_layer == 2
    assert {r.verdict for r in listing.rows} == {"fits"}
    row = listing.rows[1]
    # the projector pull fetches with the model loads beside it: its bytes count as weights
    assert row.projector is not None and row.projector.name == "mmproj-Tiny-F16.gguf"
    assert row.estimate.weights == mid_need + files["small"].stat().st_size
    # The shape comes from one header, the smallest file's (32 wide): K and V, f16.
    assert row.estimate.kv_cache == 2 * 2048 * 2 * 32 * 2
    # Against a small budget the marks differ per size.
    need = [r.estimate.total for r in listing.rows]
    budget = fit.MemoryBudget(ram=int(need[1] / 0.8) + 1)
    listing = hub.list_repo(repo, n_ctx=2048, budget=budget)
    assert [r.verdict for r in listing.rows] == ["fits", "fits", "tight"]
    # Only one header was read per listing, and nothing was downloaded.
    assert fake_hub.sent("Tiny-Q4_K_M.gguf") == 0 and fake_hub.sent("Tiny-Q8_0.gguf") == 0


def test_fit_marks_count_the_vision_projector_pull_fetches(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    """A model that fits alone but only tightly with its projector is marked so (pull would
    fetch both, run would load both), unless --mmproj none leaves the projector out; the
    auto-pick follows the marks."""
    fake_hub.add_repo(
        "acme/Vision-GGUF",
        {
            "Vision-Q2_K.gguf": files["small"],
            "Vision-Q4_K_M.gguf": files["mid"],
            "mmproj-Vision-F16.gguf": files["big"],
        },
    )
    alone = hub.list_repo("acme/Vision-GGUF", n_ctx=512, budget=ROOMY, mmproj="none")
    assert all(r.projector is None for r in alone.rows)
    need = alone.rows[1].estimate.total  # Q4_K_M without its projector
    budget = fit.MemoryBudget(ram=int(need / 0.8) + 1)
    without = hub.list_repo("acme/Vision-GGUF", n_ctx=512, budget=budget, mmproj="none")
    assert [r.verdict for r in without.rows] == ["fits", "fits"]
    listing = hub.list_repo("acme/Vision-GGUF", n_ctx=512, budget=budget)
    projector = files["big"].stat().st_size
    for r, bare in zip(listing.rows, without.rows, strict=True):
        assert r.projector is not None and r.projector.name == "mmproj-Vision-F16.gguf"
        assert r.estimate.weights == bare.estimate.weights + projector
        assert r.estimate.kv_cache == bare.estimate.kv_cache
    assert listing.rows[1].verdict == "tight"
    plan = hub.plan_pull("acme/Vision-GGUF", n_ctx=512, budget=budget)
    assert plan.projector is not None and plan.reason is not None
    assert "tightly" in plan.reason  # nothing fits comfortably once the projector counts
    plan = hub.plan_pull("acme/Vision-GGUF", n_ctx=512, budget=budget, mmproj="none")
    assert plan.projector is None and plan.entry.name == "Vision-Q4_K_M.gguf"
    assert plan.reason is not None and "tightly" not in plan.reason


def test_list_repo_falls_back_to_size_heuristic(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    fake_hub.add_repo("o/r", {"m-Q4_K_M.gguf": b"this is no gguf header" * 10})
    listing = hub.list_repo("o/r", budget=ROOMY)
    assert listing.method == "size" and listing.rows[0].estimate.method == "size"


def test_repo_without_gguf(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("o/safetensors", {"model.safetensors": b"x" * 100})
    with pytest.raises(hub.NoGGUFError) as exc:
        hub.list_repo("o/safetensors")
    assert exc.value.exit_code == 3


def test_missing_repo_file_and_revision(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    with pytest.raises(hub.RepoNotFoundError):
        hub.list_repo("nobody/nothing")
    with pytest.raises(hub.RepoNotFoundError):
        hub.plan_pull(f"{repo}@nope:Q4_K_M")
    with pytest.raises(ModelNotFoundError) as exc:
        hub.plan_pull(f"{repo}:IQ1_S")
    assert "Q4_K_M" in (exc.value.hint or "")
    with pytest.raises(hub.EntryNotFoundError):
        hub.download_file(repo, "nope.gguf", paths.data_dir() / "x.gguf")


def test_pull_by_quant(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    plan = hub.plan_pull(f"{repo}:q8_0", budget=ROOMY, mmproj="none")  # the model alone
    assert plan.reason is None and plan.name == f"{repo}:Q8_0"
    events: list[tuple[int, int | None]] = []
    m = hub.pull(plan, progress=lambda d, t: events.append((d, t)))
    size = files["large"].stat().st_size
    assert m.files == ["Tiny-Q8_0.gguf"] and m.size == size
    assert m.sha256 == {"Tiny-Q8_0.gguf": sha(files["large"])}
    assert m.revision == fake_hub.repos[repo].commit and m.source == "hub"
    assert m.architecture == "llama" and m.context_length == 4096 and m.parameters
    assert m.primary.read_bytes() == files["large"].read_bytes()
    assert events[-1] == (size, size)
    assert fake_hub.sent("Tiny-Q8_0.gguf") == size
    assert store.resolve_model(f"{repo}:Q8_0") == m.primary
    # The partial, its sidecar and the lock leave nothing half-done behind.
    assert not list(paths.downloads_dir().glob("*.part"))
    sidecar = hub.Partial.of(repo, "Tiny-Q8_0.gguf").read_sidecar()
    assert sidecar is not None and sidecar["complete"]["dest"] == str(m.primary)
    # A second pull finds it installed and sends nothing.
    fake_hub.reset_counters()
    again = hub.pull(hub.plan_pull(f"{repo}:Q8_0", budget=ROOMY, mmproj="none"))
    assert again.name == m.name and fake_hub.sent("Tiny-Q8_0.gguf") == 0


def test_pull_auto_pick(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    plan = hub.plan_pull(repo, budget=ROOMY)
    assert plan.entry.quant == "Q4_K_M" and plan.reason and "fits" in plan.reason
    listing = hub.list_repo(repo, budget=ROOMY)
    small_need = listing.rows[0].estimate.total
    tight = fit.MemoryBudget(ram=int(small_need / 0.8) + 1)
    plan = hub.plan_pull(repo, budget=tight)
    assert plan.entry.quant == "Q2_K" and "Q4_K_M would be too large" in (plan.reason or "")
    with pytest.raises(ResourceError):
        hub.plan_pull(repo, budget=fit.MemoryBudget(ram=1000))
    hub.pull(plan)
    assert store.get(f"{repo}:Q2_K") is not None


def test_split_model_is_fetched_together_and_loads_from_part_one(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    parts = write_split_gguf(tmp_path / "src", "Tiny-Q8_0", n_parts=3)
    fake_hub.add_repo("o/split", {f"Q8_0/{p.name}": p for p in parts})
    listing = hub.list_repo("o/split", budget=ROOMY)
    assert len(listing.rows) == 1 and len(listing.rows[0].entry.files) == 3
    m = hub.pull(hub.plan_pull("o/split/Q8_0/Tiny-Q8_0-00002-of-00003.gguf", budget=ROOMY))
    assert m.files == [p.name for p in parts]
    assert m.primary.name == "Tiny-Q8_0-00001-of-00003.gguf"
    assert all(p.is_file() for p in m.paths())
    from localllm import modelfile

    info = modelfile.read_info(m.primary)
    assert len(info.split) == 3 and info.architecture == "llama"
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(m.primary), n_ctx=64, verbose=False)
    try:
        assert llm.n_vocab() > 256
    finally:
        llm.close()


def test_cut_transfer_resumes_with_range(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    fake_hub.add_repo("o/r", {"m-Q4_K_M.gguf": files["big"]})
    size = files["big"].stat().st_size
    fake_hub.cut_after["m-Q4_K_M.gguf"] = size // 3
    fake_hub.cut_times["m-Q4_K_M.gguf"] = 2
    said: list[str] = []
    dest = paths.data_dir() / "out.gguf"
    hub.download_file("o/r", "m-Q4_K_M.gguf", dest, say=said.append)
    assert dest.read_bytes() == files["big"].read_bytes()
    assert fake_hub.sent("m-Q4_K_M.gguf") == size  # nothing sent twice
    ranges = [p for m, p in fake_hub.requests if p.startswith("/cdn/")]
    assert len(ranges) == 3
    assert any("retrying" in s for s in said)


def test_a_progress_callback_can_cancel_and_the_next_try_resumes(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["big"]})
    size = files["big"].stat().st_size
    # The server stops a little past half way until released: it cannot have sent the rest
    # of the file into socket buffers before the cancel.
    hold = fake_hub.hold("m.gguf", size // 2 + 256 * 1024)
    dest = paths.data_dir() / "m.gguf"

    def stop_half_way(done: int, total: int | None) -> None:
        if done >= size // 2:
            raise hub.Cancelled

    with pytest.raises(hub.Cancelled):
        hub.download_file("o/r", "m.gguf", dest, progress=stop_half_way)
    hold.release()
    kept = hub.partial_bytes("o/r", "m.gguf")
    assert size // 2 <= kept < size and not dest.exists()
    hub.download_file("o/r", "m.gguf", dest)
    assert dest.read_bytes() == files["big"].read_bytes()
    assert fake_hub.sent("m.gguf") - size <= MiB
    assert not [t for t in threading.enumerate() if t.name == "localllm-download"]


def test_server_ignoring_range_still_gives_the_right_file(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["mid"]})
    fake_hub.ignore_range = True
    fake_hub.cut_after["m.gguf"] = 1000
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest)
    assert dest.read_bytes() == files["mid"].read_bytes()


def test_corrupt_bytes_are_downloaded_again_then_refused(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["mid"]})
    size = files["mid"].stat().st_size
    fake_hub.corrupt["m.gguf"] = 1
    said: list[str] = []
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest, say=said.append)
    assert dest.read_bytes() == files["mid"].read_bytes()
    assert any("checksum mismatch" in s and "again" in s for s in said)
    assert fake_hub.sent("m.gguf") == 2 * size
    dest.unlink()
    hub.Partial.of("o/r", "m.gguf").sidecar.unlink()  # forget that it was finished
    fake_hub.corrupt["m.gguf"] = 2
    with pytest.raises(ChecksumError) as exc:
        hub.download_file("o/r", "m.gguf", dest)
    assert exc.value.exit_code == 4
    assert not dest.exists()
    assert not list(paths.downloads_dir().glob("*.part"))


def test_a_catalog_checksum_overrides_the_hub(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["mid"]})
    with pytest.raises(ChecksumError) as exc:
        hub.download_file("o/r", "m.gguf", paths.data_dir() / "m.gguf", sha256="0" * 64)
    assert "not the expected file" in exc.value.message
    assert fake_hub.sent("m.gguf") == 0  # refused before downloading anything


def test_files_kept_in_git_are_checked_by_git_sha1(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    fake_hub.add_repo("o/git", {"m-Q4_0.gguf": files["small"]}, lfs=False)
    m = hub.pull(hub.plan_pull("o/git:Q4_0", budget=ROOMY))
    assert m.primary.read_bytes() == files["small"].read_bytes()
    assert m.sha256 == {"m-Q4_0.gguf": sha(files["small"])}  # so `verify` can check it
    fake_hub.add_repo("o/git2", {"m-Q4_0.gguf": files["small"]}, lfs=False)
    fake_hub.corrupt["m-Q4_0.gguf"] = 2
    with pytest.raises(ChecksumError):
        hub.download_file("o/git2", "m-Q4_0.gguf", paths.data_dir() / "x.gguf")


def test_transient_errors_are_retried_then_reported(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["mid"]})
    fake_hub.fail["cdn:m.gguf"] = [500, 503, 429]
    fake_hub.fail["api:o/r"] = [502]
    listing = hub.list_repo("o/r", budget=ROOMY, read_header=False)
    assert listing.rows
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest)
    assert dest.read_bytes() == files["mid"].read_bytes()
    fake_hub.fail["cdn:m.gguf"] = [500] * 20
    with pytest.raises(NetworkError) as exc:
        hub.download_file("o/r", "m.gguf", paths.data_dir() / "other.gguf")
    assert "500" in exc.value.message


def test_a_stalled_transfer_times_out_and_resumes(
    fake_hub: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALLLM_HUB_TIMEOUT", "0.5")
    fake_hub.add_repo("o/r", {"m.gguf": files["big"]})
    size = files["big"].stat().st_size
    stall = fake_hub.hold("m.gguf", size // 3, once=True)  # hangs until the end of the test
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest)
    assert dest.read_bytes() == files["big"].read_bytes()
    # The download gave up on the stalled connection (still stalled) and resumed at the offset
    # it had reached.
    assert stall.reached.is_set() and not stall.released.is_set()
    assert fake_hub.sent("m.gguf") == size
    assert len([p for m, p in fake_hub.requests if m == "GET" and p.startswith("/cdn/")]) == 2


def test_offline_makes_no_connection(
    fake_hub: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = quant_repo(fake_hub, files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as exc:
        hub.plan_pull(f"{repo}:Q4_K_M")
    assert "HF_HUB_OFFLINE" in exc.value.message and exc.value.exit_code == 4
    for call in (
        lambda: hub.list_repo(repo),
        lambda: hub.download_file(repo, "Tiny-Q4_K_M.gguf", paths.data_dir() / "x.gguf"),
        lambda: hub.search("tiny"),
        lambda: hub.fetch_header(repo, "Tiny-Q4_K_M.gguf"),
    ):
        with pytest.raises(OfflineError):
            call()
    assert fake_hub.connections == 0


def test_gated_repo(
    fake_hub: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo(
        "meta/Gated-GGUF", {"m-Q4_K_M.gguf": files["mid"]}, gated=True, tokens={"hf_good"}
    )
    with pytest.raises(hub.GatedRepoError) as exc:
        hub.pull(hub.plan_pull("meta/Gated-GGUF:Q4_K_M", budget=ROOMY))
    assert "gated" in exc.value.message and "HF_TOKEN" in (exc.value.hint or "")
    assert "licence" in (exc.value.hint or "") and exc.value.exit_code == 4
    with pytest.raises(hub.GatedRepoError) as exc:  # the Hub's own 401 says the same
        hub.download_file("meta/Gated-GGUF", "m-Q4_K_M.gguf", paths.data_dir() / "x.gguf")
    assert "401" in exc.value.message and "HF_TOKEN" in (exc.value.hint or "")
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    with pytest.raises(hub.GatedRepoError) as exc:
        hub.pull(hub.plan_pull("meta/Gated-GGUF:Q4_K_M", budget=ROOMY))
    assert "refused" in exc.value.message
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    fake_hub.reset_counters()
    m = hub.pull(hub.plan_pull("meta/Gated-GGUF:Q4_K_M", budget=ROOMY))
    assert m.primary.read_bytes() == files["mid"].read_bytes()
    # The token goes to the Hub, never to the CDN a redirect leads to.
    assert all(auth == "Bearer hf_good" for p, auth in fake_hub.auth if not p.startswith("/cdn/"))
    assert all(auth is None for p, auth in fake_hub.auth if p.startswith("/cdn/"))


def test_private_repo_without_token_reads_as_missing(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("me/private", {"m.gguf": b"GGUF"}, private=True, tokens={"t"})
    with pytest.raises(hub.RepoNotFoundError) as exc:
        hub.list_repo("me/private")
    assert "HF_TOKEN" in (exc.value.hint or "")


def test_network_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("LOCALLLM_RETRY_BACKOFF", "0.01")
    with pytest.raises(NetworkError) as exc:
        hub.list_repo("o/r")
    assert "could not reach the Hub" in exc.value.message and exc.value.exit_code == 4


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every request huggingface_hub's session starts (``METHOD path``), counted by a request
    hook on each client the library's documented client factory makes, also a client made
    again after a connect error (the hook runs before the connection is tried). Telemetry
    off: its once-a-day request of the library's own is not one of our attempts."""
    from huggingface_hub.utils import _http, set_client_factory

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

    seen: list[str] = []

    def factory() -> Any:
        session = _http.default_client_factory()
        session.event_hooks["request"].append(
            lambda request: seen.append(f"{request.method} {request.url.path}")
        )
        return session

    set_client_factory(factory)
    try:
        yield seen
    finally:
        set_client_factory(_http.default_client_factory)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_an_unreachable_hub_is_reported_after_one_attempt(
    monkeypatch: pytest.MonkeyPatch, attempts: list[str]
) -> None:
    """No network (connection refused here, a DNS failure on a laptop): search, a repo's
    files and a file's metadata each try once and say so, instead of five retries (which the
    library's own backoff made ~26 s for a search)."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LOCALLLM_RETRY_BACKOFF", "0.01")
    for call, path in (
        (lambda: hub.search("tiny"), "GET /api/models"),
        (lambda: hub.list_repo("o/r"), "GET /api/models/o/r"),
        (lambda: hub.file_meta("o/r", "m.gguf"), "HEAD /o/r/resolve/main/m.gguf"),
        (lambda: hub.plan_pull("o/r:Q4_K_M"), "GET /api/models/o/r"),
    ):
        attempts.clear()
        with pytest.raises(NetworkError) as exc:
            call()
        assert "could not reach the Hub" in exc.value.message and exc.value.exit_code == 4
        assert attempts == [path]


def test_a_busy_hub_is_retried_under_our_policy(
    fake_hub: FakeHub, files: dict[str, Path], attempts: list[str]
) -> None:
    """503/429 are retried, MAX_FAILURES attempts in all (LOCALLLM_RETRY_BACKOFF apart), for
    search as for a repo's files and a file's metadata; the library adds no retries of its
    own."""
    from localllm.hub import client

    quant_repo(fake_hub, files)
    fake_hub.fail["api:search"] = [503, 429]
    assert [d["id"] for d in hub.search("tiny")] == ["acme/Tiny-GGUF"]
    assert attempts == ["GET /api/models"] * 3
    for key, call, path in (
        ("api:search", lambda: hub.search("tiny"), "GET /api/models"),
        (
            "api:acme/Tiny-GGUF",
            lambda: hub.list_repo("acme/Tiny-GGUF"),
            "GET /api/models/acme/Tiny-GGUF",
        ),
        (
            "Tiny-Q4_K_M.gguf",
            lambda: hub.file_meta("acme/Tiny-GGUF", "Tiny-Q4_K_M.gguf"),
            "HEAD /acme/Tiny-GGUF/resolve/main/Tiny-Q4_K_M.gguf",
        ),
    ):
        fake_hub.fail[key] = [503] * (client.MAX_FAILURES + 3)
        attempts.clear()
        with pytest.raises(NetworkError) as exc:
            call()
        assert "503" in exc.value.message and exc.value.exit_code == 4
        assert attempts == [path] * client.MAX_FAILURES
        assert len(fake_hub.fail[key]) == 3  # the server saw exactly those attempts
        fake_hub.fail[key] = []


def test_search_follows_pages_up_to_the_limit(fake_hub: FakeHub, attempts: list[str]) -> None:
    for i in range(5):
        fake_hub.add_repo(f"o/Tiny{i}-GGUF", {"m.gguf": b"GGUF"}).downloads = i
    fake_hub.page_size = 2
    assert [d["id"] for d in hub.search("tiny", limit=3)] == [
        "o/Tiny4-GGUF",
        "o/Tiny3-GGUF",
        "o/Tiny2-GGUF",
    ]
    assert len(attempts) == 2  # the third page is never asked for
    attempts.clear()
    assert len(hub.search("tiny")) == 5 and len(attempts) == 3


def test_cli_with_no_network_says_one_line(tmp_path: Path) -> None:
    """`search`, `pull` and `show` of a Hub ref with the Hub unreachable: one error line, exit
    4, no traceback, no retry notes."""
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "LOCALLLM_RETRY_BACKOFF": "0.01",
    }
    env.pop("HF_HUB_OFFLINE", None)
    for args in (["search", "tiny"], ["pull", "o/r:Q4_K_M"], ["pull", "o/r", "--list"]):
        proc = subprocess.run(
            [sys.executable, "-m", "localllm", *args],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert proc.returncode == 4, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[0].startswith("error: could not reach the Hub"), (args, lines)
        assert len([ln for ln in lines if ln.startswith("error:")]) == 1
        assert "Traceback" not in proc.stderr and "retrying" not in proc.stderr.lower()


def test_list_reads_the_hf_cache_without_the_library(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    """`localllm list` shows a GGUF from the Hugging Face cache without importing
    huggingface_hub (a command that never touches the network stays light), and opens no
    connection."""
    digest = sha(files["small"])
    cache = store.hf_repo_folder("o/Cached-GGUF")
    (cache / "blobs").mkdir(parents=True)
    (cache / "blobs" / digest).write_bytes(files["small"].read_bytes())
    snap = cache / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "Cached-Q4_K_M.gguf").symlink_to(f"../../blobs/{digest}")
    fake_hub.reset_counters()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "localllm", "list", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "o/Cached-GGUF" in proc.stdout
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if "|" in ln]
    assert "localllm" in imported  # the format this test reads
    assert not [m for m in imported if m.split(".")[0] in {"huggingface_hub", "httpx2"}]
    assert fake_hub.connections == 0


def test_changed_etag_restarts_from_zero(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["big"]})
    partial = hub.Partial.of("o/r", "m.gguf")
    meta = hub.file_meta("o/r", "m.gguf")
    partial.part.parent.mkdir(parents=True, exist_ok=True)
    partial.part.write_bytes(b"stale bytes of an older version")
    partial.write_sidecar({"etag": "0" * 64, "size": meta.size, "done": 31})
    said: list[str] = []
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest, say=said.append)
    assert dest.read_bytes() == files["big"].read_bytes()
    assert any("changed on the Hub" in s for s in said)


def test_a_complete_partial_is_not_downloaded_again(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["mid"]})
    partial = hub.Partial.of("o/r", "m.gguf")
    meta = hub.file_meta("o/r", "m.gguf")
    partial.part.parent.mkdir(parents=True, exist_ok=True)
    partial.part.write_bytes(files["mid"].read_bytes())
    partial.write_sidecar({"etag": meta.etag, "size": meta.size, "done": meta.size})
    dest = paths.data_dir() / "m.gguf"
    hub.download_file("o/r", "m.gguf", dest)
    assert dest.read_bytes() == files["mid"].read_bytes()
    assert fake_hub.sent("m.gguf") == 0


def test_disk_space_is_checked_first(
    fake_hub: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a tiny tmpfs when this runs as root (mount works), else with the free-space probe
    reporting a nearly full disk."""
    fake_hub.add_repo("o/r", {"m-Q4_K_M.gguf": files["big"]})
    size = files["big"].stat().st_size
    small = tmp_path / "small"
    small.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                capture_output=True,
            ).returncode
            == 0
        )
    if not mounted:
        monkeypatch.setattr(download, "free_space", lambda path: 1 << 20)
    try:
        monkeypatch.setenv("LOCALLLM_HOME", str(small / "home"))
        plan = hub.plan_pull("o/r:Q4_K_M", budget=ROOMY)
        fake_hub.reset_counters()
        with pytest.raises(ResourceError) as exc:
            hub.pull(plan)
        message = exc.value.message
        assert "not enough disk space" in message and exc.value.exit_code == 5
        assert f"needs {refs.format_bytes(size)}" in message and "free in" in message
        assert fake_hub.sent("m-Q4_K_M.gguf") == 0
        assert store.installed() == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(small)], check=False)


def _mount_tmpfs(path: Path, size: str) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_disk_filling_up_mid_download_keeps_a_resumable_partial(
    fake_hub: FakeHub,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    patient: None,
) -> None:
    """Something else fills the disk while the download runs: a clear ResourceError, the
    partial kept; once space is freed the same pull resumes."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "12m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        monkeypatch.setenv("LOCALLLM_HOME", str(disk / "home"))
        fake_hub.add_repo("o/r", {"m-Q4_K_M.gguf": files["big"]})
        size = files["big"].stat().st_size
        plan = hub.plan_pull("o/r:Q4_K_M", budget=ROOMY)
        hold = fake_hub.hold("m-Q4_K_M.gguf", 2 * MiB)
        filler = disk / "filler"

        def fill() -> None:
            # The download stands still at 2 MiB until the disk is full.
            hold.wait()
            part = hub.Partial.of("o/r", "m-Q4_K_M.gguf").part
            wait_for(lambda: part.exists() and part.stat().st_size >= 2 * MiB)
            with filler.open("wb") as f, contextlib.suppress(OSError):
                f.write(b"\0" * (12 * MiB))
            hold.release()

        t = threading.Thread(target=fill)
        t.start()
        with pytest.raises(ResourceError) as exc:
            hub.pull(plan)
        t.join()
        assert "disk filled up" in exc.value.message and "again to resume" in (exc.value.hint or "")
        kept = hub.partial_bytes("o/r", "m-Q4_K_M.gguf")
        assert 2 * MiB <= kept < size
        assert store.installed() == []
        filler.unlink()
        m = hub.pull(plan)
        assert m.primary.read_bytes() == files["big"].read_bytes()
        # Only what was missing was asked for. (Counting bytes sent would race: the first
        # connection's server thread may still be pushing into its socket after the client
        # gave up on the full disk.)
        gets = [(a, b) for name, a, b in fake_hub.transfers if name == "m-Q4_K_M.gguf"]
        assert gets[-2:] == [(0, size), (kept, size)], gets
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_environment_is_read_at_every_call(
    fake_hub: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and the token path once, at import;
    localllm obeys the environment of the moment of each call."""
    from huggingface_hub import constants

    quant_repo(fake_hub, files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        hub.list_repo("acme/Tiny-GGUF")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # As if the library had been imported while offline: its request hook would refuse all.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.list_repo("acme/Tiny-GGUF", budget=ROOMY).rows
    # Another endpoint (a mirror) from one call to the next.
    with FakeHub() as mirror:
        mirror.add_repo("mirror/Only-GGUF", {"m-Q4_0.gguf": files["small"]})
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        assert [r.entry.quant for r in hub.list_repo("mirror/Only-GGUF", budget=ROOMY).rows] == [
            "Q4_0"
        ]
        assert mirror.requests and hub.endpoint() == mirror.url
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    # A token saved by `hf auth login` at a path set after the import opens a gated repo.
    fake_hub.add_repo("meta/Gated-GGUF", {"m-Q4_K_M.gguf": files["mid"]}, gated=True, tokens={"t1"})
    saved = tmp_path / "token"
    saved.write_text("t1\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(saved))
    m = hub.pull(hub.plan_pull("meta/Gated-GGUF:Q4_K_M", budget=ROOMY))
    assert m.primary.read_bytes() == files["mid"].read_bytes()
    # Every request carries the library's user agent with ours in it.
    assert fake_hub.agents and all("localllm/0.1" in (a or "") for _, a in fake_hub.agents)


def test_library_errors_become_ours() -> None:
    """One translation of huggingface_hub's errors, with our exit codes."""
    import httpx2
    from huggingface_hub import errors as hf

    from localllm.hub import client

    def http(cls: type[Exception], status: int) -> Exception:
        request = httpx2.Request("GET", "https://huggingface.co/api/models/o/r")
        response = httpx2.Response(status, request=request)
        return cls(f"{status}", response=response)  # type: ignore[call-arg]

    cases = [
        (hf.OfflineModeIsEnabled("offline"), OfflineError, 4),
        (http(hf.GatedRepoError, 401), hub.GatedRepoError, 4),  # before RepositoryNotFound
        (http(hf.RepositoryNotFoundError, 404), hub.RepoNotFoundError, 3),
        (http(hf.RevisionNotFoundError, 404), hub.RepoNotFoundError, 3),
        (http(hf.RemoteEntryNotFoundError, 404), hub.EntryNotFoundError, 3),
        (http(hf.HfHubHTTPError, 403), hub.GatedRepoError, 4),
        (http(hf.HfHubHTTPError, 418), NetworkError, 4),
        (httpx2.ConnectError("refused"), client.Unreachable, None),  # not retried
        (httpx2.ConnectTimeout("timed out"), client.Unreachable, None),
        (httpx2.ReadError("reset"), client.Transient, None),
        (http(hf.HfHubHTTPError, 503), client.Transient, None),
    ]
    for exc, kind, code in cases:
        mapped = client.translate(exc, "o/r", "m.gguf")
        assert type(mapped) is kind, (exc, mapped)
        if code is not None:
            assert mapped.exit_code == code  # type: ignore[attr-defined]
        else:
            assert isinstance(mapped.__cause__, NetworkError)  # what is said when retries end


def _stale_partial(repo: str, filename: str, size: int, age_days: float) -> hub.Partial:
    partial = hub.Partial.of(repo, filename)
    partial.part.parent.mkdir(parents=True, exist_ok=True)
    partial.part.write_bytes(b"x" * size)
    partial.write_sidecar({"repo": repo, "filename": filename, "etag": "e", "size": 2 * size})
    then = time.time() - age_days * 86400
    os.utime(partial.part, (then, then))
    return partial


def test_stale_partials_are_cleaned_when_a_pull_starts(
    fake_hub: FakeHub, files: dict[str, Path]
) -> None:
    repo = quant_repo(fake_hub, files)
    old = _stale_partial("gone/Repo", "old.gguf", 3000, age_days=8)
    older = _stale_partial("gone/Repo", "older.gguf", 1000, age_days=30)
    recent = _stale_partial("some/Repo", "recent.gguf", 500, age_days=6)
    busy = _stale_partial("some/Repo", "busy.gguf", 700, age_days=9)
    said: list[str] = []
    with download.file_lock(busy.lock):  # another localllm is resuming this one right now
        hub.pull(hub.plan_pull(f"{repo}:Q2_K", budget=ROOMY), say=said.append)
    assert not old.part.exists() and not old.sidecar.exists()
    assert not older.part.exists() and not older.sidecar.exists()
    assert recent.part.exists() and recent.sidecar.exists()
    assert busy.part.exists() and busy.sidecar.exists()
    note = [s for s in said if "stale" in s]
    assert len(note) == 1 and "2 stale partial downloads" in note[0]
    assert refs.format_bytes(4000) in note[0] and "week" in note[0]
    # Once nobody holds it, the next pull removes the busy one; after that, nothing to say.
    said.clear()
    hub.pull(hub.plan_pull(f"{repo}:Q2_K", budget=ROOMY), say=said.append)
    assert [s for s in said if "stale" in s] == [
        f"removed 1 stale partial download untouched for over a week ({refs.format_bytes(700)}) "
        f"from {paths.downloads_dir()}"
    ]
    assert not busy.part.exists() and recent.part.exists()
    said.clear()
    hub.pull(hub.plan_pull(f"{repo}:Q2_K", budget=ROOMY), say=said.append)
    assert not [s for s in said if "stale" in s]


def test_stale_partials_note_goes_to_stderr(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    stale = _stale_partial("gone/Repo", "old.gguf", 1234, age_days=10)
    proc = localllm_proc("pull", f"{repo}:Q2_K")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "removed 1 stale partial download " in err and "removed" not in out
    assert not stale.part.exists()


# -- several processes ---------------------------------------------------------------------


def localllm_proc(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "localllm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ},
        **kw,  # type: ignore[arg-type]
    )


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll ``condition`` until it holds (the work it waits for cannot finish meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.01)


def wait_for_hold(hold: Hold, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until the server holds ``proc``'s transfer; fail at once if ``proc`` ended."""
    deadline = time.monotonic() + timeout
    while not hold.reached.wait(0.05):
        if proc.poll() is not None:
            raise AssertionError(f"pull ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no transfer reached byte {hold.offset}")


def wait_for_partial(
    repo: str, filename: str, at_least: int, proc: subprocess.Popen[str], timeout: float = 60
) -> int:
    part = hub.Partial.of(repo, filename).part
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = part.stat().st_size if part.exists() else 0
        if done >= at_least:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"pull ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("the download did not progress")


def big_repo(fake_hub: FakeHub, files: dict[str, Path]) -> tuple[str, str, int]:
    fake_hub.add_repo("o/big", {"Big-Q4_K_M.gguf": files["big"], "Big-Q2_K.gguf": files["small"]})
    return "o/big", "Big-Q4_K_M.gguf", files["big"].stat().st_size


def test_sigkill_mid_download_then_resume_resends_little(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    repo, name, size = big_repo(fake_hub, files)
    assert size > 4 * MiB
    hold = fake_hub.hold(name, size // 2)  # the download cannot finish before the kill
    proc = localllm_proc("pull", f"{repo}:Q4_K_M")
    try:
        wait_for_hold(hold, proc)
        at_kill = wait_for_partial(repo, name, size // 2, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hold.release()
    assert at_kill == size // 2
    # Nothing half-done is visible: no model, no file in the store folder.
    assert store.installed() == [] and store.all_manifests() == []
    sidecar = json.loads(hub.Partial.of(repo, name).sidecar.read_text())
    assert sidecar["size"] == size and sidecar["etag"]
    proc = localllm_proc("pull", f"{repo}:Q4_K_M")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resuming" in err
    m = store.get(f"{repo}:Q4_K_M")
    assert m is not None and m.primary.read_bytes() == files["big"].read_bytes()
    resent = fake_hub.sent(name) - size
    assert 0 <= resent <= MiB, resent


def test_killed_at_ten_random_points_always_completes_and_verifies(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    """Three kills at random moments of start-up, seven at random byte offsets of the
    download (each run resumes the last one's partial); then a last run completes."""
    repo, name, size = big_repo(fake_hub, files)
    rng = random.Random(7)
    points: list[tuple[str, float]] = [("time", rng.uniform(0.0, 0.6)) for _ in range(3)]
    points += [("bytes", f) for f in sorted(rng.uniform(0.05, 0.9) for _ in range(7))]
    part = hub.Partial.of(repo, name).part
    seen = []
    for how, value in points:
        have = part.stat().st_size if part.exists() else 0
        # The server holds the transfer at the kill point (for the timed kills, early on), so
        # no run can finish before its kill, however slow the machine.
        offset = max(int(value * size), have + 1) if how == "bytes" else have + size // 50
        hold = fake_hub.hold(name, offset)
        proc = localllm_proc("pull", f"{repo}:Q4_K_M")
        try:
            if how == "time":
                time.sleep(value)  # a random moment of start-up or download
            else:
                wait_for_hold(hold, proc)
                wait_for_partial(repo, name, offset, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            hold.release()
        # Never a half-written file in the store, never a model that does not verify.
        for m in store.all_manifests():
            assert [c.status for c in store.verify(m)] == ["ok"]
        assert not part.exists() or part.stat().st_size <= size
        seen.append(part.stat().st_size if part.exists() else 0)
    assert len({s for s in seen if 0 < s < size}) >= 5, seen  # really killed mid-download
    proc = localllm_proc("pull", f"{repo}:Q4_K_M")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    m = store.get(f"{repo}:Q4_K_M")
    assert m is not None and [c.status for c in store.verify(m)] == ["ok"]
    assert fake_hub.sent(name) - size <= 10 * MiB


def test_two_concurrent_pulls_download_once(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    repo, name, size = big_repo(fake_hub, files)
    hold = fake_hub.hold(name, size // 2)  # the first stands still until the second waits
    first = localllm_proc("pull", f"{repo}:Q4_K_M")
    try:
        wait_for_hold(hold, first)
        second = localllm_proc("pull", f"{repo}:Q4_K_M")
        assert second.stderr is not None
        said = []
        while not said or "waiting" not in said[-1]:
            line = second.stderr.readline()
            assert line, f"the second pull never waited: {said}"
            said.append(line)
    finally:
        hold.release()
    _, err1 = first.communicate(timeout=120)
    _, err2 = second.communicate(timeout=120)
    err2 = "".join(said) + err2
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "waiting" in err2
    assert fake_hub.sent(name) == size
    m = store.get(f"{repo}:Q4_K_M")
    assert m is not None and [c.status for c in store.verify(m)] == ["ok"]


def test_two_threads_share_one_download(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    fake_hub.add_repo("o/r", {"m.gguf": files["big"]})
    hold = fake_hub.hold("m.gguf", files["big"].stat().st_size // 2)
    dest = paths.data_dir() / "m.gguf"
    errors: list[BaseException] = []
    waiting = threading.Event()

    def worker() -> None:
        try:
            hub.download_file("o/r", "m.gguf", dest, say=lambda s: waiting.set())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        hold.wait()  # one thread downloads, and stands still half way...
        assert waiting.wait(60)  # ...until the other waits for its lock
    finally:
        hold.release()
    for t in threads:
        t.join(60)
    assert not errors
    assert dest.read_bytes() == files["big"].read_bytes()
    assert fake_hub.sent("m.gguf") == files["big"].stat().st_size


def test_ctrl_c_leaves_a_resumable_partial(
    fake_hub: FakeHub, files: dict[str, Path], patient: None
) -> None:
    repo, name, size = big_repo(fake_hub, files)
    # The server holds the stream at 2 MiB until the pull has exited: the download cannot
    # finish before SIGINT lands, however loaded the machine.
    hold = fake_hub.hold(name, 2 * MiB)
    proc = localllm_proc("pull", f"{repo}:Q4_K_M")
    try:
        wait_for_hold(hold, proc)
        wait_for_partial(repo, name, 2 * MiB, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        hold.release()
    assert proc.returncode == 130, err
    assert f"run `localllm pull {repo}:Q4_K_M` again to resume" in err
    assert "Traceback" not in err
    assert hub.Partial.of(repo, name).part.stat().st_size >= 2 * MiB
    proc = localllm_proc("pull", f"{repo}:Q4_K_M")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert fake_hub.sent(name) - size <= MiB


# -- other paths into the store -------------------------------------------------------------


def test_pull_reuses_the_hf_cache(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    repo = quant_repo(fake_hub, files)
    commit = fake_hub.repos[repo].commit
    f = fake_hub.file(repo, "Tiny-Q4_K_M.gguf")
    cache = store.hf_repo_folder(repo)
    blob = cache / "blobs" / f.sha256
    blob.parent.mkdir(parents=True)
    blob.write_bytes(files["mid"].read_bytes())
    snap = cache / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "Tiny-Q4_K_M.gguf").symlink_to(f"../../blobs/{f.sha256}")
    m = hub.pull(hub.plan_pull(f"{repo}:Q4_K_M", budget=ROOMY, mmproj="none"))
    assert m.source == "hf-cache" and m.primary == snap / "Tiny-Q4_K_M.gguf"
    assert fake_hub.sent("Tiny-Q4_K_M.gguf") == 0


def test_a_downloaded_file_that_is_no_gguf_never_enters_the_store(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("o/junk", {"junk-Q4_K_M.gguf": b"GGUF" + b"\xff" * 5000})
    with pytest.raises(InvalidModelError):
        hub.pull(hub.plan_pull("o/junk:Q4_K_M", budget=ROOMY))
    assert store.installed() == []


def test_search(fake_hub: FakeHub, files: dict[str, Path]) -> None:
    quant_repo(fake_hub, files)
    assert [d["id"] for d in hub.search("tiny")] == ["acme/Tiny-GGUF"]
    assert hub.search("nothing-like-this") == []


@pytest.mark.slow
def test_starter_comes_from_the_hub(fake_hub: FakeHub, starter_model: Path) -> None:
    from localllm import catalog
    from localllm.starter import ensure_starter

    entry = catalog.starter()
    fake_hub.add_repo(entry.repo, {entry.filename: starter_model})
    said: list[str] = []
    path = ensure_starter(said.append)
    m = store.get(entry.alias)
    assert m is not None and m.source == "hub" and path == m.primary
    assert sha(path) == entry.sha256
    assert fake_hub.sent(entry.filename) == entry.size
    assert any("Hugging Face Hub" in s for s in said)
    # `localllm pull smollm2-135m` names the same model: already there, nothing sent.
    plan = hub.plan_pull(entry.alias, budget=ROOMY)
    assert plan.name == entry.alias and plan.expected == {entry.filename: entry.sha256}
    assert hub.pull(plan).primary == path
    # Only the listing's one header read (the architecture keys lie in the first 256 KiB).
    assert fake_hub.sent(entry.filename) == entry.size + hub.HEADER_PREFIXES[0]
    assert plan.listing is not None and plan.listing.method == "header"
    assert plan.listing.shape is not None and plan.listing.shape.n_layer == 30


# -- telemetry: off unless the user turns it on ------------------------------------------

TELEMETRY_PROBE = """
import sys
from localllm.cli import main
try:
    main(["search", sys.argv[1], "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
# what huggingface_hub calls to report usage: a request to {endpoint}/api/telemetry/...
from huggingface_hub.utils import _telemetry, send_telemetry
send_telemetry("localllm-probe", library_name="localllm", library_version="0")
_telemetry._TELEMETRY_QUEUE.join()
print("done")
"""


def _telemetry_requests(
    fake_hub: FakeHub, tmp_path: Path, files: dict[str, Path], **env: str
) -> list[str]:
    repo = quant_repo(fake_hub, files)
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
    }
    # a fresh HF_HOME: no agent-harness registry cached from an earlier day
    clean.update(HF_HOME=str(tmp_path / "hf-home"), **env)
    proc = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, repo],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
    )
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), proc.stderr
    with fake_hub.lock:
        seen = [path for _, path in fake_hub.requests]
    assert any(p.startswith(f"/api/models/{repo}") for p in seen), seen  # it did reach the Hub
    return [p for p in seen if p.startswith(("/api/telemetry", "/api/agent-harnesses"))]


def test_no_telemetry_reaches_the_hub_by_default(
    fake_hub: FakeHub, tmp_path: Path, files: dict[str, Path]
) -> None:
    """huggingface_hub reports usage unless HF_HUB_DISABLE_TELEMETRY is set; localllm (an
    offline, private tool) turns that off when the user did not choose."""
    assert _telemetry_requests(fake_hub, tmp_path, files) == []


def test_telemetry_is_the_users_choice(
    fake_hub: FakeHub, tmp_path: Path, files: dict[str, Path]
) -> None:
    """HF_HUB_DISABLE_TELEMETRY=0 set by the user turns it on (and shows the probe above sees
    the library's requests when they are made)."""
    sent = _telemetry_requests(fake_hub, tmp_path, files, HF_HUB_DISABLE_TELEMETRY="0")
    assert "/api/agent-harnesses" in sent
    assert any(p.startswith("/api/telemetry/localllm-probe") for p in sent), sent

"""The local store: manifests, references, import, remove, verify, the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from ggufgen import write_split_gguf, write_tiny_gguf

from localllm import hub, paths, store
from localllm.errors import InvalidModelError, ModelNotFoundError, UsageError


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_model(name: str, src: Path, **kw: object) -> store.Manifest:
    m = store.Manifest(name=name, files=[src.name], sha256={src.name: sha(src)}, **kw)  # type: ignore[arg-type]
    return store.add_model(m, {src.name: _copy(src, m.folder)})


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".staged-{src.name}"
    staged.write_bytes(src.read_bytes())
    return staged


def test_manifest_round_trip_and_unknown_keys(tiny_model: Path) -> None:
    m = add_model("o/r:Q4_K_M", tiny_model, repo="o/r", quant="Q4_K_M")
    assert m.folder.name == "o--r--Q4_K_M"
    data = json.loads((m.folder / store.MANIFEST).read_text())
    data["from_the_future"] = 1
    (m.folder / store.MANIFEST).write_text(json.dumps(data))
    loaded = store.load_manifest(m.folder)
    assert loaded is not None and loaded.name == "o/r:Q4_K_M" and loaded.repo == "o/r"
    (m.folder / store.MANIFEST).write_text("{broken")
    assert store.load_manifest(m.folder) is None


def test_write_atomic_never_leaves_half_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.json"
    store.write_atomic(target, b"old")

    class Boom(Exception):
        pass

    def failing_fsync(fd: int) -> None:
        raise Boom

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        store.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_incomplete_models_are_not_installed(tiny_model: Path) -> None:
    m = add_model("m", tiny_model)
    assert [x.name for x in store.installed()] == ["m"]
    m.primary.unlink()
    assert store.installed() == []
    assert [x.name for x in store.all_manifests()] == ["m"]
    # A folder with files but no manifest (an interrupted pull) is not a model either.
    folder = paths.models_dir() / "half"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(tiny_model.read_bytes())
    assert store.installed() == []


def test_resolve_model_by_path_name_and_ref(tiny_model: Path) -> None:
    add_model("o/r:Q4_K_M", tiny_model, repo="o/r", quant="Q4_K_M")
    assert store.resolve_model(str(tiny_model)) == tiny_model
    want = store.get("o/r:Q4_K_M")
    assert want is not None
    for ref in ("o/r:Q4_K_M", "O/R:q4_k_m", "o/r", "hf.co/o/r:Q4_K_M", f"o/r/{tiny_model.name}"):
        assert store.resolve_model(ref) == want.primary, ref


def test_resolve_model_says_how_to_pull() -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        store.resolve_model("owner/repo:Q4_K_M")
    assert "not installed" in exc.value.message
    assert exc.value.hint == "run `localllm pull owner/repo:Q4_K_M`"
    with pytest.raises(ModelNotFoundError) as exc:
        store.resolve_model("smollm2-135m")
    assert "localllm pull smollm2-135m" in (exc.value.hint or "")
    with pytest.raises(ModelNotFoundError) as exc:
        store.resolve_model("/no/such/file.gguf")
    assert "no such model file" in exc.value.message


def test_resolve_model_ambiguous(tiny_model: Path, tiny_base_model: Path) -> None:
    add_model("o/r:Q4_K_M", tiny_model, repo="o/r", quant="Q4_K_M")
    add_model("o/r:Q8_0", tiny_base_model, repo="o/r", quant="Q8_0")
    with pytest.raises(ModelNotFoundError) as exc:
        store.resolve_model("o/r")
    assert "o/r:Q4_K_M" in (exc.value.hint or "") and "o/r:Q8_0" in (exc.value.hint or "")
    assert store.resolve_model("o/r:Q8_0").name == tiny_base_model.name


def test_import_links_validates_and_refuses_duplicates(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "My-Model-Q4_K_M.gguf")
    m = store.import_model(src)
    assert m.name == "My-Model-Q4_K_M" and m.quant == "Q4_K_M" and m.source == "import"
    assert m.architecture == "llama" and m.parameters and m.context_length == 4096
    assert os.path.samefile(m.primary, src)  # hard link: no copy
    assert m.sha256[src.name] == sha(src)
    with pytest.raises(UsageError):
        store.import_model(src)
    copied = store.import_model(src, name="copy", copy=True)
    assert not os.path.samefile(copied.primary, src)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidModelError):
        store.import_model(bad)
    assert store.get("bad") is None and not (paths.models_dir() / "bad").exists()
    # Removing an import removes the link, never the original.
    store.remove(m)
    assert src.is_file() and store.get(m.name) is None


def test_import_split_model_takes_every_part(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path / "src", "split-Q8_0", n_parts=3)
    m = store.import_model(parts[0])
    assert m.name == "split-Q8_0"
    assert m.files == [p.name for p in parts]
    assert all(p.is_file() for p in m.paths())
    assert store.verify(m)[0].status == "ok"


def test_verify_finds_corruption(tiny_model: Path) -> None:
    m = add_model("m", tiny_model)
    assert [c.status for c in store.verify(m)] == ["ok"]
    data = bytearray(m.primary.read_bytes())
    data[-1] ^= 0xFF
    m.primary.write_bytes(bytes(data))
    assert [c.status for c in store.verify(m)] == ["mismatch"]
    m.primary.unlink()
    assert [c.status for c in store.verify(m)] == ["missing"]


def make_hf_cache(root: Path, repo: str, files: dict[str, Path], commit: str = "c" * 40) -> Path:
    """The layout huggingface_hub writes: blobs named by sha256, snapshots of symlinks."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    for rel, src in files.items():
        digest = sha(src)
        blob = folder / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(src.read_bytes())
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_hf_cache_models_are_listed_used_in_place_and_unlisted(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = make_hf_cache(cache, "o/r", {"m-Q4_K_M.gguf": tiny_model, "README.md": tiny_model})
    # Before any scan a Hub reference is still found in the cache, read in place.
    assert store.resolve_model("o/r:Q4_K_M") == snap / "m-Q4_K_M.gguf"
    found = hub.scan_hf_cache()
    assert [m.name for m in found] == ["o/r:Q4_K_M"]
    store.sync_hf_cache(found)
    m = store.get("o/r:Q4_K_M")
    assert m is not None and m.source == "hf-cache" and m.primary == snap / "m-Q4_K_M.gguf"
    assert m.sha256["m-Q4_K_M.gguf"] == sha(tiny_model)
    assert store.verify(m)[0].status == "ok"
    # rm only unlists; a later scan does not bring it back; the files stay.
    store.remove(m)
    store.sync_hf_cache(hub.scan_hf_cache())
    assert store.get("o/r:Q4_K_M") is None
    assert (snap / "m-Q4_K_M.gguf").is_file()


def test_hf_cache_purge_deletes_the_files(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = make_hf_cache(cache, "o/r", {"m-Q4_K_M.gguf": tiny_model})
    store.sync_hf_cache(hub.scan_hf_cache())
    m = store.get("o/r:Q4_K_M")
    assert m is not None
    blob = (snap / "m-Q4_K_M.gguf").resolve()
    deleted = store.remove(m, purge=True)
    assert blob in deleted and not blob.exists() and not (snap / "m-Q4_K_M.gguf").exists()


def test_scan_without_a_cache_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "absent"))
    assert hub.scan_hf_cache() == []

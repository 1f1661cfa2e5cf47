"""Time a scan of other tools' model stores: N fake models in each of Ollama's store, LM
Studio's folder and llama.cpp's cache (a GGUF magic and a few bytes each: the scan must never
read weights), under a temporary HOME.

    python scripts/bench_foreign_scan.py            # 200 models per store, best of 7
    python scripts/bench_foreign_scan.py --models 1000 --repeat 3

The issue's budget: <= 50 ms for 200 models. The figure is the best of the runs (warm caches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAKE_GGUF = b"GGUF" + b"\0" * 60
QUANTS = ("Q4_K_M", "Q8_0", "Q5_K_M", "IQ4_XS")


def build(home: Path, n: int) -> None:
    """n models per store, in each tool's on-disk layout."""
    import hashlib

    ollama = home / ".ollama" / "models"
    (ollama / "blobs").mkdir(parents=True)
    for i in range(n):
        data = FAKE_GGUF + str(i).encode()
        digest = hashlib.sha256(data).hexdigest()
        (ollama / "blobs" / f"sha256-{digest}").write_bytes(data)
        config = json.dumps({"file_type": "Q4_K_M", "model_type": "3B"}).encode()
        cdigest = hashlib.sha256(config + str(i).encode()).hexdigest()
        (ollama / "blobs" / f"sha256-{cdigest}").write_bytes(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{cdigest}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.ollama.image.model",
                    "digest": f"sha256:{digest}",
                    "size": len(data),
                }
            ],
        }
        tag = ollama / "manifests" / "registry.ollama.ai" / "library" / f"model{i // 4}"
        tag.mkdir(parents=True, exist_ok=True)
        (tag / f"tag{i % 4}").write_text(json.dumps(manifest))
    lms = home / ".lmstudio" / "models"
    for i in range(n):
        folder = lms / f"publisher{i // 20}" / f"Repo{i // 4}-GGUF"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"Repo{i // 4}-{QUANTS[i % 4]}.gguf").write_bytes(FAKE_GGUF)
    cache = home / ".cache" / "llama.cpp"
    cache.mkdir(parents=True)
    for i in range(n):
        name = f"owner_Repo{i}-GGUF_Repo{i}-Q4_K_M.gguf"
        (cache / name).write_bytes(FAKE_GGUF)
        (cache / (name + ".etag")).write_text('"etag"')
        m = {"ggufFile": {"rfilename": f"Repo{i}-Q4_K_M.gguf", "lfs": {"sha256": "0" * 64}}}
        (cache / f"manifest=owner=Repo{i}-GGUF=Q4_K_M.json").write_text(json.dumps(m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200, help="models per store")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build(home, args.models)
        os.environ["HOME"] = str(home)
        for var in ("OLLAMA_MODELS", "LLAMA_CACHE", "XDG_CACHE_HOME", "LOCALLLM_FOREIGN_STORES"):
            os.environ.pop(var, None)
        from localllm import foreign

        per_store: dict[str, list[float]] = {s: [] for s in foreign.STORES}
        counts: dict[str, int] = {}
        for _ in range(args.repeat):
            for s in foreign.STORES:
                t0 = time.perf_counter()
                result = foreign.scan_store(s)
                per_store[s].append(time.perf_counter() - t0)
                counts[s] = len(result.usable())
        total = 0.0
        for s, times in per_store.items():
            best = min(times) * 1000
            total += best
            print(
                f"{foreign.LABELS[s]:10} {counts[s]:5} models  {best:7.1f} ms "
                f"(best of {args.repeat})"
            )
        print(f"{'all':10} {sum(counts.values()):5} models  {total:7.1f} ms")
        worst = max(min(t) for t in per_store.values()) * 1000
        budget = 50.0 * args.models / 200
        verdict = "within" if worst <= budget else "OVER"
        print(
            f"slowest store: {worst:.1f} ms for {args.models} models: "
            f"{verdict} the {budget:.0f} ms budget"
        )


if __name__ == "__main__":
    main()

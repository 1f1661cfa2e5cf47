#!/usr/bin/env python3
"""Embedding throughput: ``localllm.embeddings.Embedder`` against llama-cpp-python's
``Llama.embed`` on the same 2,000 sentences, interleaved in one run.

    PYTHONPATH=$PWD python scripts/bench_embed.py                 # all-MiniLM-L6-v2 F16
    PYTHONPATH=$PWD python scripts/bench_embed.py -m model.gguf --rounds 5 --threads 2
    PYTHONPATH=$PWD python scripts/bench_embed.py --native PATH/TO/llama-embedding

Without ``-m`` the model is all-MiniLM-L6-v2, converted from the package index by the test
fixture's converter (``tests/minilm.py``, cached in ``~/.cache/localllm-testdata``). Both
sides load the same file with the same threads, context (the model's) and batch size; each
round times ours and theirs back to back, alternating which goes first, and the ratio is taken
per round so that load on the machine hits both alike. ``--native`` also times the
``llama-embedding`` binary built from the vendored llama.cpp sources (a whole process: its
one-sentence run is subtracted to leave the embedding time), with our batch size. To build it
against the static libraries ``scripts/build_llama_bench.sh`` leaves (S: the vendored sources,
B: the build folder)::

    g++ -std=c++17 -O2 -I$S/include -I$S/common -I$S/ggml/include -I$S/vendor \
        $S/examples/embedding/embedding.cpp -o llama-embedding $B/common/libllama-common.a \
        $B/common/libllama-common-base.a $B/src/libllama.a $B/ggml/src/libggml.a \
        $B/ggml/src/libggml-cpu.a $B/ggml/src/libggml-base.a \
        $B/vendor/cpp-httplib/libcpp-httplib.a -fopenmp -lpthread -ldl

Prints texts/s and the ratios; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

SUBJECTS = [
    "A man",
    "The old woman",
    "A group of children",
    "My neighbour's dog",
    "The new intern",
    "A street musician",
    "The committee",
    "Two scientists",
    "A tired nurse",
    "The quiet student",
]
VERBS = [
    "is eating",
    "quickly repaired",
    "wrote a long letter about",
    "was arguing loudly over",
    "carefully photographed",
    "forgot everything about",
    "will be presenting",
    "has been studying",
]
OBJECTS = [
    "a piece of bread.",
    "the broken bicycle near the station.",
    "the results of the experiment on protein folding.",
    "a horse in the field behind the farmhouse.",
    "the budget for next year's city festival.",
    "an old guitar with only five strings.",
    "the weather forecast for the mountains this weekend.",
    "a recipe for lemon cake, twice.",
    "the history of the Roman empire and its roads.",
    "nothing at all.",
    "the strange noise coming from the basement every night at three.",
]


def sentences(n: int = 2000) -> list[str]:
    """``n`` distinct English sentences of varied length (about 8 to 25 tokens)."""
    out = []
    i = 0
    while len(out) < n:
        s = SUBJECTS[i % len(SUBJECTS)]
        v = VERBS[(i // len(SUBJECTS)) % len(VERBS)]
        o = OBJECTS[(i // (len(SUBJECTS) * len(VERBS))) % len(OBJECTS)]
        suffix = f" ({i})" if i >= len(SUBJECTS) * len(VERBS) * len(OBJECTS) else ""
        out.append(f"{s} {v} {o}{suffix}")
        i += 1
    return out


def default_model() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import minilm

    return minilm.minilm_gguf("f16")


def time_ours(embedder: object, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = embedder.embed(texts, normalize=True).vectors  # type: ignore[attr-defined]
    return time.perf_counter() - start, vectors


def time_theirs(llm: object, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = llm.embed(texts, normalize=True)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    return elapsed, np.asarray(vectors, dtype=np.float32)


def time_native(
    binary: Path, model: Path, texts: list[str], threads: int, n_ctx: int, batch: int
) -> float:
    """Seconds ``llama-embedding`` spends on ``texts``, less its time for one text."""

    def once(lines: list[str]) -> float:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(lines) + "\n")
            name = f.name
        try:
            start = time.perf_counter()
            command = [str(binary), "-m", str(model), "-f", name, "-t", str(threads)]
            command += ["-c", str(n_ctx), "-b", str(batch), "-ub", str(batch)]
            command += ["--embd-normalize", "2", "--embd-output-format", "array", "--no-warmup"]
            subprocess.run(
                command,
                check=True,
                capture_output=True,
            )
            return time.perf_counter() - start
        finally:
            os.unlink(name)

    return max(once(texts) - once(texts[:1]), 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", type=Path, help="GGUF embedding model (default: MiniLM)")
    ap.add_argument("-n", "--texts", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=None, help="default: the free cores (as localllm picks)"
    )
    ap.add_argument(
        "--their-batch",
        type=int,
        default=None,
        help="Llama.embed's n_batch (default: the context, as llama-cpp-python sizes it)",
    )
    ap.add_argument("--batch-tokens", type=int, default=None, help="our tokens per call")
    ap.add_argument("--native", type=Path, help="path to a llama-embedding binary")
    ap.add_argument(
        "--their-flash-attn",
        action="store_true",
        help="load Llama.embed's model with flash_attn=True (llama-cpp-python's default: off)",
    )
    ap.add_argument(
        "--native-batch", type=int, default=None, help="llama-embedding's -b/-ub (default: ours)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from llama_cpp import Llama

    from localllm.embeddings import Embedder
    from localllm.hardware import default_threads

    model = args.model or default_model()
    threads = args.threads or default_threads()
    texts = sentences(args.texts)
    ours = Embedder(model, threads=threads, batch_tokens=args.batch_tokens)
    n_ctx = ours.n_ctx
    their_batch = args.their_batch or n_ctx
    theirs = Llama(
        model_path=str(model),
        embedding=True,
        n_ctx=n_ctx,
        n_batch=their_batch,
        n_ubatch=their_batch,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        flash_attn=args.their_flash_attn,
        verbose=False,
    )
    # Warm both (first-call allocations, page cache).
    ours.embed(texts[:64])
    theirs.embed(texts[:64])

    our_s: list[float] = []
    their_s: list[float] = []
    ratios: list[float] = []
    native_s: list[float] = []
    agree = 1.0
    for r in range(args.rounds):
        if r % 2 == 0:
            a, va = time_ours(ours, texts)
            b, vb = time_theirs(theirs, texts)
        else:
            b, vb = time_theirs(theirs, texts)
            a, va = time_ours(ours, texts)
        our_s.append(a)
        their_s.append(b)
        ratios.append(b / a)  # ours ÷ theirs in texts/s
        agree = min(agree, float(np.min(np.sum(va * vb, axis=1))))
        if args.native:
            native_s.append(
                time_native(
                    args.native,
                    model,
                    texts,
                    threads,
                    n_ctx,
                    args.native_batch or ours.batch_tokens,
                )
            )
        print(
            f"round {r + 1}: ours {len(texts) / a:,.0f} texts/s · Llama.embed "
            f"{len(texts) / b:,.0f} texts/s · ratio {b / a:.2f}"
            + (f" · native {len(texts) / native_s[-1]:,.0f} texts/s" if native_s else ""),
            file=sys.stderr,
        )
    ours.close()
    theirs.close()

    n = len(texts)
    result = {
        "model": str(model),
        "texts": n,
        "threads": threads,
        "n_ctx": n_ctx,
        "batch_tokens": ours.batch_tokens,
        "their_n_batch": their_batch,
        "their_flash_attn": args.their_flash_attn,
        "rounds": args.rounds,
        "ours_texts_per_s": round(n / statistics.median(our_s), 1),
        "llama_embed_texts_per_s": round(n / statistics.median(their_s), 1),
        "ratio_vs_llama_embed": round(statistics.median(ratios), 3),
        "min_cosine_ours_vs_llama_embed": round(agree, 6),
    }
    if native_s:
        result["native_texts_per_s"] = round(n / statistics.median(native_s), 1)
        result["ratio_vs_native"] = round(
            statistics.median(s / o for s, o in zip(native_s, our_s, strict=True)), 3
        )
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

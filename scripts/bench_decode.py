#!/usr/bin/env python
"""Decode speed of localllm's token loop against llama-cpp-python's own streaming chat
completion, on the same model, prompt, threads and sampling, interleaved in one run.

    python scripts/bench_decode.py [--model PATH] [--rounds 5] [--tokens 128] [--threads N]

Without --model it uses the starter model (fetched like the test suite does). Prints the
median tokens/s of each and the ratio (goal: localllm / library >= 1.0), then the start-up time
of `localllm --help` (goal: < 0.2 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."


def bench_localllm(engine, settings, prompt: str) -> tuple[float, int]:
    from localllm.engine import Stats

    stats = None
    for event in engine.generate(prompt, settings):
        if isinstance(event, Stats):
            stats = event
    assert stats is not None
    return stats.tokens_per_s, stats.generated_tokens


def bench_library(llm, messages, n: int) -> tuple[float, int]:
    first = last = None
    count = 0
    for chunk in llm.create_chat_completion(
        messages=messages,
        stream=True,
        max_tokens=n,
        temperature=0.0,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=1.0,
        seed=1,
    ):
        delta = chunk["choices"][0]["delta"]
        if delta.get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
    if count < 2 or first is None or last is None or last <= first:
        return 0.0, count
    return (count - 1) / (last - first), count


def help_time(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "localllm", "--help"], capture_output=True, check=True
        )
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from llama_cpp import Llama

    from localllm.engine import Engine, LoadOptions
    from localllm.hardware import physical_cores
    from localllm.profiles import Profile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    model = args.model or starter_path()

    engine = Engine(model, LoadOptions(n_ctx=2048, n_threads=args.threads, n_gpu_layers=0))
    llm = Llama(
        str(model),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        verbose=False,
    )
    messages = [{"role": "user", "content": PROMPT}]
    prompt = engine.render(messages)
    # Same sampling as the library call; stop only at max tokens or end of turn.
    settings = Profile(temperature=0.0, max_tokens=args.tokens, repeat_penalty=1.0, seed=1)

    ours, theirs = [], []
    for i in range(args.rounds):
        # Interleave and alternate order so drift affects both sides alike.
        order = ("ours", "lib") if i % 2 == 0 else ("lib", "ours")
        for side in order:
            engine.reset()  # no KV reuse across rounds: both pay the prompt each time
            llm.reset()
            if side == "ours":
                tps, n = bench_localllm(engine, settings, prompt)
                ours.append(tps)
            else:
                tps, n = bench_library(llm, messages, args.tokens)
                theirs.append(tps)
            print(f"round {i + 1} {side:>4}: {tps:7.1f} tok/s ({n} tokens)", flush=True)

    m_ours, m_lib = statistics.median(ours), statistics.median(theirs)
    print(f"\nmodel: {model.name}, threads: {args.threads}, tokens: {args.tokens}")
    print(f"localllm engine loop     : {m_ours:7.1f} tok/s (median of {len(ours)})")
    print(f"create_chat_completion   : {m_lib:7.1f} tok/s (median of {len(theirs)})")
    print(f"ratio localllm / library : {m_ours / m_lib:5.2f}x  (goal >= 1.0)")
    print(f"`localllm --help`        : {help_time():5.3f} s (best of 5; goal < 0.2 s)")


if __name__ == "__main__":
    main()

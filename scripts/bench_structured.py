"""Decode speed with a JSON schema ÷ without, on one model, interleaved.

    python scripts/bench_structured.py [MODEL.gguf] [--rounds 5] [--tokens 96] [--threads N]

Loads the model once and alternates a constrained and an unconstrained generation of the same
prompt (same seed, same sampling), so load on a shared machine hits both alike. Reports the
median decode tokens/s of each (tokens after the first over the time after the first, as
``run --stats``) and their ratio. Without MODEL it uses the starter model (fetched on first use).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 6,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "city": {"type": "string"},
                },
                "required": ["name", "age", "city"],
            },
        }
    },
    "required": ["people"],
}
PROMPT = "List six people with their name, age and city."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="a .gguf file (default: the starter model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tokens",
        type=int,
        default=32,
        help="tokens per generation (both runs reach it: the free answer is longer)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from localllm.engine import Engine, Stats, plan_load
    from localllm.profiles import Profile
    from localllm.session import ChatSession, schema_grammar

    if args.model:
        path = Path(args.model)
    else:
        from localllm.starter import ensure_starter

        path = ensure_starter(lambda m: print(m, file=sys.stderr))
    profile = Profile(temperature=0.7, seed=7, max_tokens=args.tokens, threads=args.threads)
    options = plan_load(profile, path=path, need_tokens=1024)
    grammar = schema_grammar(SCHEMA)
    engine = Engine(path, options)
    try:
        prompt = ChatSession(engine, profile).render(PROMPT)
        speeds: dict[str, list[float]] = {"schema": [], "free": []}
        counts: dict[str, list[int]] = {"schema": [], "free": []}
        for _ in range(args.rounds):
            for kind in ("free", "schema"):
                stats = None
                for event in engine.generate(
                    prompt, profile, grammar=grammar if kind == "schema" else None
                ):
                    if isinstance(event, Stats):
                        stats = event
                assert stats is not None
                speeds[kind].append(stats.tokens_per_s)
                counts[kind].append(stats.generated_tokens)
    finally:
        engine.close()
    free = statistics.median(speeds["free"])
    constrained = statistics.median(speeds["schema"])
    print(f"model: {path.name} · {options.n_threads} threads · {args.rounds} rounds interleaved")
    for kind in ("free", "schema"):
        runs = ", ".join(f"{s:.1f}" for s in speeds[kind])
        print(
            f"{kind:>6}: median {statistics.median(speeds[kind]):6.1f} tok/s  "
            f"(runs: {runs}; tokens: {statistics.median(counts[kind]):.0f} median)"
        )
    pairs = [c / f for c, f in zip(speeds["schema"], speeds["free"], strict=True) if f]
    print(f" ratio: {constrained / free:.2f} (schema ÷ free, of the medians)")
    print(f"        {statistics.median(pairs):.2f} (median of the per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

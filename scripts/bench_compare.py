#!/usr/bin/env python
"""localllm against llama-cpp-python's high-level streaming and native llama-bench, in one run,
interleaved round by round, on the same model, threads, batch sizes and flash-attention setting.

    python scripts/bench_compare.py [--model PATH] [--requant TYPE] [--rounds 9] [--threads N]
                                    [-p 512] [-n 128] [--llama-bench PATH | --build] [--flash-attn]

Without --model it uses the starter model (fetched and cached like the test suite does). Native
llama-bench comes from --llama-bench, else from the cache that scripts/build_llama_bench.sh
fills (--build runs that script first). Each round runs every contender once, in a fresh
process, with ``--reps`` repetitions inside (the order alternates from round to round); the
report gives the median over rounds and the ratios against native as the median of per-round
ratios, which cancels drifts in machine speed (goals: decode >= 0.97x native tg and tg@d512,
prompt processing >= 0.97x pp512), with the middle half of the per-round ratios beside it and
how far native tg itself ranged: on a shared 2-core machine one round can be 10% off, so a
verdict needs the default 9 rounds or more.

The "loop" contender (skip with --no-loop) splits the engine's token loop three ways in one
process: random tokens with no sampling (what llama-bench's tg measures), the greedy sampler,
and the default profile's sampling chain, and reports the time between two decodes of each:
the loop's own cost per token, and what sampling adds to it. That cost as a share of a token is
measured within the same tokens, so it holds whatever the machine's speed does meanwhile.

The "grounded" contender (skip with --no-grounded) has the engine rewrite a code file with one
change, greedy, with n-gram speculation and without, and reports decode tokens/s of both
against native tg (goal with speculation: >= 1.5x native tg128) and whether the two outputs
are identical. How much a verify batch costs depends on the weights' kernels: ``--requant F16``
benchmarks the same model converted to F16 by llama.cpp's llama-quantize (built like
llama-bench), whose batches cost far less per token than the starter's Q4_1. It also
answers the same long prompt with a poem, where drafts fail, with ``speculative: auto`` and
off (goal: auto >= 0.95x off).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LOCALLLM_BENCH_CACHE", Path.home() / ".cache" / "localllm-bench"))
STORY = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def find_llama_bench(explicit: str | None, build: bool) -> Path | None:
    if explicit:
        return Path(explicit)
    if build:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build_llama_bench.sh")],
            check=True,
            capture_output=True,
            text=True,
        )
        return Path(out.stdout.strip().splitlines()[-1])
    found = sorted(CACHE.glob("build-*/bin/llama-bench"))
    return found[-1] if found else None


def requantized(model: Path, qtype: str) -> Path:
    """``model`` converted to ``qtype`` (F16, Q8_0, ...) by llama.cpp's own llama-quantize,
    built into the bench cache from the same sources as llama-bench; kept in the cache."""
    out = CACHE / f"{model.stem.split('.')[0]}.{qtype}.gguf"
    if out.exists():
        return out
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama_bench.sh")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LLAMA_TARGET": "llama-quantize"},
    )
    quantize = built.stdout.strip().splitlines()[-1]
    tmp = out.with_name(f".{out.name}.tmp")
    subprocess.run([quantize, "--allow-requantize", str(model), str(tmp), qtype], check=True,
                   capture_output=True)  # fmt: skip
    tmp.replace(out)
    return out


# -- the contenders (each in its own process) ---------------------------------------------


def run_localllm(model: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "localllm", "bench", str(model), "-p", str(a.p), "-n", str(a.n),
           "-r", str(a.reps), "-t", str(a.threads), "-b", str(a.batch), "-ub", str(a.ubatch),
           "--gpu-layers", "0", "--json"]  # fmt: skip
    cmd.append("--flash-attn" if a.flash_attn else "--no-flash-attn")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    data = json.loads(out.stdout)
    res = {}
    for r in data["results"]:
        t = r["test"]
        key = ("pp" if t.startswith("pp") else "tg@d" if "@ d" in t else "tg" if t.startswith(
            "tg") else "ttft_ms" if t.startswith("ttft") else "e2e")  # fmt: skip
        res[key] = r["mean"]
    return res


def run_native(binary: Path, model: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [str(binary), "-m", str(model), "-t", str(a.threads), "-p", str(a.p), "-n", str(a.n),
           "-d", f"0,{a.p}", "-r", str(a.reps), "-b", str(a.batch), "-ub", str(a.ubatch),
           "-ngl", "0", "-fa", "1" if a.flash_attn else "0", "-o", "json"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res: dict[str, float] = {}
    for r in json.loads(out.stdout):
        depth = r.get("n_depth", 0)
        if r["n_prompt"] and not r["n_gen"] and depth == 0:
            res["pp"] = r["avg_ts"]
        elif r["n_gen"] and not r["n_prompt"]:
            res["tg" if depth == 0 else "tg@d"] = r["avg_ts"]
    return res


def run_highlevel(model: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-highlevel", "--model",
           str(model), "--threads", str(a.threads), "-p", str(a.p), "-n", str(a.n),
           "--reps", str(a.reps), "--batch", str(a.batch), "--ubatch", str(a.ubatch)]  # fmt: skip
    if a.flash_attn:
        cmd.append("--flash-attn")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


GROUNDED_CODE = '''def area(width, height):
    """Return the area of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("width and height must be positive")
    return width * height


def perimeter(width, height):
    """Return the perimeter of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("width and height must be positive")
    return 2 * (width + height)


def diagonal(width, height):
    """Return the length of the diagonal of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("width and height must be positive")
    return (width * width + height * height) ** 0.5


def is_square(width, height):
    """Return True when the rectangle is a square."""
    return width == height


def describe(width, height):
    print(f"A {width} by {height} rectangle has area {area(width, height)}")
    print(f"and perimeter {perimeter(width, height)}.")
    print(f"Its diagonal is {diagonal(width, height):.2f} long.")
    if is_square(width, height):
        print("It is a square.")
'''


def run_grounded(model: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-grounded", "--model",
           str(model), "--threads", str(a.threads), "-n", str(a.n)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def grounded_worker(a: argparse.Namespace) -> None:
    """A grounded task through Engine.generate: rewrite ~400 tokens of code renaming one
    function, greedy, speculation off and on (fresh cache each, off-on-on-off), decode
    tokens/s of each.
    Then a task where drafts fail: the same long prompt (so ``speculative: auto`` drafts)
    answered with a poem, auto against off: its acceptance and speed checks should turn
    drafting off."""
    from localllm.engine import Engine, LoadOptions, Stats, TextEvent
    from localllm.profiles import Profile

    code = GROUNDED_CODE
    engine = Engine(a.model, LoadOptions(n_ctx=2048, n_threads=a.threads, n_gpu_layers=0))
    out: dict[str, float] = {}

    def compare(content: str, modes: tuple[str, str], keys: tuple[str, str], n: int) -> bool:
        """Answer ``content`` under both speculative modes, in the order A B B A so that a
        machine speeding up or slowing down during the pair favours neither (each figure is
        the mean of its two runs); True when every text matches."""
        prompt = engine.render([{"role": "user", "content": content}])
        texts, speeds = [], {key: [] for key in keys}
        for mode, key in zip((*modes, *modes[::-1]), (*keys, *keys[::-1]), strict=True):
            engine.reset()
            settings = Profile(temperature=0.0, max_tokens=n, speculative=mode)
            parts, stats = [], None
            for event in engine.generate(prompt, settings):
                if isinstance(event, TextEvent):
                    parts.append(event.text)
                elif isinstance(event, Stats):
                    stats = event
            assert stats is not None
            texts.append("".join(parts))
            speeds[key].append(stats.tokens_per_s)
            if mode != "off":
                out[key + "_accept"] = stats.accepted_tokens / max(1, stats.drafted_tokens)
        out.update({key: sum(v) / len(v) for key, v in speeds.items()})
        return len(set(texts)) == 1

    rewrite = ("Rewrite this code, renaming `area` to `rectangle_area`. Output only the "
               "code.\n\n" + code)  # fmt: skip
    out["same"] = float(compare(rewrite, ("off", "ngram"), ("plain", "spec"), max(a.n, 256)))
    out["accept"] = out.pop("spec_accept")
    poem = code + "\n\nForget the code above. Write a short poem about the sea."
    same = compare(poem, ("off", "auto"), ("free_off", "free_auto"), max(a.n, 128))
    out["free_same"] = float(same)
    out["free_accept"] = out.pop("free_auto_accept")
    print(json.dumps(out))


def run_loop(model: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-loop", "--model",
           str(model), "--threads", str(a.threads), "-n", str(a.n), "--reps", str(a.reps),
           "--batch", str(a.batch), "--ubatch", str(a.ubatch)]  # fmt: skip
    if a.flash_attn:
        cmd.append("--flash-attn")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loop_worker(a: argparse.Namespace) -> None:
    """The engine's token loop split three ways, tg{n} from an empty context like llama-bench,
    interleaved in one process: ``decode`` feeds random tokens and samples nothing (what
    llama-bench's tg measures), ``greedy`` samples with the greedy sampler (the least a
    generation loop does), ``default`` with the default profile's chain (top-k 40, top-p 0.95,
    min-p 0.05, temperature 0.7, seeded draw: what ``localllm bench`` and ``run`` measure).
    Also the loop's own cost per token: the median time between two decodes in each mode."""
    from localllm.engine import Engine, LoadOptions
    from localllm.profiles import Profile
    from localllm.sampling import Sampler

    n_ctx = max(256, a.n + 8)
    engine = Engine(a.model, LoadOptions(n_ctx=n_ctx, n_threads=a.threads, n_gpu_layers=0,
                                         n_batch=min(a.batch, n_ctx),
                                         n_ubatch=min(a.ubatch, a.batch, n_ctx),
                                         flash_attn=a.flash_attn))  # fmt: skip
    lib, llm = engine.lib, engine.native
    n_vocab = engine.n_vocab
    rng = random.Random(3)
    bos = lib.llama_vocab_bos(llm.vocab)
    first = bos if bos >= 0 else 0
    profiles = {"decode": None, "greedy": Profile(temperature=0.0), "default": Profile()}
    clock = time.perf_counter

    def once(profile: Profile | None) -> tuple[float, float]:
        engine.reset()
        sampler = Sampler(engine, profile, 1, None, lazy=False) if profile else None
        token, gaps = first, []
        start = clock()
        ended = start
        for _ in range(a.n):
            began = clock()
            gaps.append(began - ended)
            llm.one[0] = token
            if lib.llama_decode(llm.ctx, llm.one_batch) != 0:
                raise SystemExit("llama_decode failed")
            ended = clock()
            token = sampler.sample() if sampler else rng.randrange(n_vocab)
        total = clock() - start
        if sampler:
            sampler.close()
        return a.n / total, statistics.median(gaps[1:]) * 1e6

    for profile in profiles.values():
        once(profile)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in profiles}
    gaps: dict[str, list[float]] = {k: [] for k in profiles}
    items = list(profiles.items())
    for i in range(a.reps):
        for name, profile in items if i % 2 == 0 else items[::-1]:
            rate, gap = once(profile)
            rates[name].append(rate)
            gaps[name].append(gap)
    out = {f"tg_{k}": statistics.fmean(v) for k, v in rates.items()}
    out.update({f"gap_{k}_us": statistics.median(v) for k, v in gaps.items()})
    print(json.dumps(out))


def highlevel_worker(a: argparse.Namespace) -> None:
    """llama-cpp-python's own streaming: create_completion(stream=True). pp from the time to
    the first chunk of a prompt of p random tokens; tg from the chunks of a story after that."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(a.model), n_ctx=a.p + a.n + 256, n_threads=a.threads,
                n_threads_batch=a.threads, n_batch=min(a.batch, a.p + a.n + 256),
                n_ubatch=a.ubatch, n_gpu_layers=0, flash_attn=a.flash_attn,
                verbose=False)  # fmt: skip
    rng = random.Random(7)
    n_vocab = llm.n_vocab()
    pp, tg = [], []
    for i in range(a.reps + 1):
        llm.reset()
        tokens = [rng.randrange(n_vocab) for _ in range(a.p)]
        t0 = time.perf_counter()
        for _ in llm.create_completion(tokens, max_tokens=1, stream=True, temperature=0.7):
            break
        t1 = time.perf_counter()
        llm.reset()
        first = last = None
        count = 0
        for chunk in llm.create_completion(STORY, max_tokens=a.n, stream=True, temperature=0.7,
                                           top_k=40, top_p=0.95, min_p=0.05, seed=i):  # fmt: skip
            if chunk["choices"][0]["text"] is not None:
                last = time.perf_counter()
                first = first or last
                count += 1
        if i == 0:
            continue  # warm-up
        pp.append(a.p / (t1 - t0))
        if count > 1 and first is not None and last is not None and last > first:
            tg.append((count - 1) / (last - first))
    print(json.dumps({"pp": statistics.fmean(pp), "tg": statistics.fmean(tg) if tg else 0.0}))


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--requant", metavar="TYPE",
                        help="benchmark the model converted to TYPE (F16, Q8_0, ...) with "
                        "llama.cpp's llama-quantize")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=2, help="repetitions inside each run")
    parser.add_argument("--threads", type=int)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--flash-attn", action="store_true")
    parser.add_argument("--llama-bench")
    parser.add_argument("--build", action="store_true", help="build native llama-bench first")
    parser.add_argument("--no-highlevel", action="store_true")
    parser.add_argument("--worker-highlevel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-grounded", action="store_true")
    parser.add_argument("--worker-grounded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-loop", action="store_true", help="skip the token-loop split")
    parser.add_argument("--worker-loop", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.threads is None:
        from localllm.hardware import physical_cores

        a.threads = physical_cores()
    if a.worker_highlevel:
        highlevel_worker(a)
        return
    if a.worker_grounded:
        grounded_worker(a)
        return
    if a.worker_loop:
        loop_worker(a)
        return
    model = a.model or starter_path()
    if a.requant:
        model = requantized(model, a.requant)
    native = find_llama_bench(a.llama_bench, a.build)
    if native is None or not native.exists():
        print("native llama-bench not found: run scripts/build_llama_bench.sh (or --build)",
              file=sys.stderr)  # fmt: skip
        native = None
    runs: dict[str, list[dict[str, float]]] = {
        "localllm": [], "native": [], "loop": [], "highlevel": [], "grounded": []
    }  # fmt: skip
    contenders: list[tuple[str, Any]] = [("localllm", lambda: run_localllm(model, a))]
    if native is not None:
        contenders.append(("native", lambda: run_native(native, model, a)))
    if not a.no_loop:
        contenders.append(("loop", lambda: run_loop(model, a)))
    if not a.no_highlevel:
        contenders.append(("highlevel", lambda: run_highlevel(model, a)))
    if not a.no_grounded:
        contenders.append(("grounded", lambda: run_grounded(model, a)))
    print(f"model {model.name} · threads {a.threads} · pp{a.p} / tg{a.n} · batch {a.batch}/"
          f"{a.ubatch} · flash attention {'on' if a.flash_attn else 'off'} · {a.rounds} rounds "
          f"x {a.reps} reps, interleaved", flush=True)  # fmt: skip
    for i in range(a.rounds):
        order = contenders if i % 2 == 0 else contenders[::-1]
        for name, fn in order:
            res = fn()
            runs[name].append(res)
            print(
                f"  round {i + 1} {name:9s} "
                + " ".join(f"{k}={v:.1f}" for k, v in sorted(res.items())),
                flush=True,
            )

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if key in r]
        return statistics.median(values) if values else None

    print("\nmedian over rounds (t/s; ttft in ms)")
    keys = ["pp", "tg", "tg@d", "ttft_ms", "e2e"]
    print(f"  {'':10s}" + "".join(f"{k:>10s}" for k in keys))
    for name in runs:
        if name == "loop" and runs[name]:
            cells = " · ".join(f"{k[3:]} {med(name, k):.1f}" for k in ("tg_decode", "tg_greedy",
                               "tg_default"))  # fmt: skip
            print(f"  {name:10s}  tg{a.n}: {cells}")
        elif runs[name]:
            cells = "".join(f"{med(name, k):10.1f}" if med(name, k) is not None else f"{'-':>10s}"
                            for k in keys)  # fmt: skip
            print(f"  {name:10s}{cells}")
    print("\nratios")

    def per_round(x: str, y: str, kx: str, ky: str) -> list[float]:
        """x/y of each round, measured side by side: drifts in machine speed cancel."""
        return [
            rx[kx] / ry[ky]
            for rx, ry in zip(runs[x], runs[y], strict=False)
            if kx in rx and ky in ry and ry[ky] > 0
        ]

    def paired(x: str, y: str, kx: str, ky: str) -> float | None:
        values = per_round(x, y, kx, ky)
        return statistics.median(values) if values else None

    def spread(x: str, y: str, kx: str, ky: str) -> str:
        """The middle half of the per-round ratios: how far one round is from telling."""
        values = per_round(x, y, kx, ky)
        if len(values) < 4:
            return ""
        q1, _, q3 = statistics.quantiles(values, n=4)
        return f" [{q1:.2f}-{q3:.2f}]"

    def ratio(label: str, x: str, y: str, kx: str, ky: str, goal: float | None) -> None:
        mx, my, pr = med(x, kx), med(y, ky), paired(x, y, kx, ky)
        if mx is None or my is None or not my or pr is None:
            return
        mark = "" if goal is None else ("  ok" if pr >= goal else f"  below {goal}x")
        iqr = spread(x, y, kx, ky)
        print(f"  {label:50s} {pr:5.3f}x (of medians {mx / my:5.3f}x){iqr}{mark}")

    print("  (median of the per-round ratios; each round runs the contenders back to back;")
    print("   [the middle half of the per-round ratios] where there are 4 rounds or more)")
    native_tg = [r["tg"] for r in runs["native"] if "tg" in r]
    if len(native_tg) > 1:
        lo, hi = min(native_tg), max(native_tg)
        print(f"  native tg{a.n} itself ranged {lo:.1f}-{hi:.1f} t/s over the rounds "
              f"({(hi - lo) / statistics.median(native_tg):.0%} of its median)")  # fmt: skip
    ratio(f"localllm pp{a.p} / native pp{a.p}", "localllm", "native", "pp", "pp", 0.97)
    ratio(f"localllm bench tg{a.n} (samples as run does) / native tg{a.n}", "localllm", "native",
          "tg", "tg", 0.97)  # fmt: skip
    ratio(f"localllm engine decode @ d{a.p} / native tg{a.n} @ d{a.p}", "localllm", "native",
          "tg@d", "tg@d", 0.97)  # fmt: skip
    print("  the token loop alone (tg from an empty context; llama-bench samples nothing):")
    ratio(f"  loop, random tokens, no sampling / native tg{a.n}", "loop", "native", "tg_decode",
          "tg", None)  # fmt: skip
    ratio(f"  loop, greedy sampler / native tg{a.n}", "loop", "native", "tg_greedy", "tg", 0.97)
    ratio(f"  loop, default profile's sampling / native tg{a.n}", "loop", "native", "tg_default",
          "tg", None)  # fmt: skip
    if runs["loop"]:
        gap = {k: statistics.median(r[f"gap_{k}_us"] for r in runs["loop"])
               for k in ("decode", "greedy", "default")}  # fmt: skip
        print(
            f"    time between two decodes (median): no sampling {gap['decode']:.0f} us, "
            f"greedy {gap['greedy']:.0f} us, default chain {gap['default']:.0f} us"
        )
        # Measured within the same tokens, so free of the machine's drift: what the loop and
        # the sampler add to each token on top of llama_decode, as a ratio to a loop that adds
        # nothing (llama-bench's, with the same library).
        token_us = 1e6 / statistics.median(r["tg_default"] for r in runs["loop"])
        share = gap["default"] / token_us
        print(
            f"    the loop's own share of a token with the default chain: {share:.1%} "
            f"(drift-free: {1 - share:.3f}x of a loop that adds nothing to llama_decode)"
        )
    ratio("llama-cpp-python streaming tg / native tg", "highlevel", "native", "tg", "tg", None)
    ratio("localllm tg / llama-cpp-python streaming tg", "localllm", "highlevel", "tg", "tg",
          None)  # fmt: skip
    ratio(f"localllm pp{a.p} / llama-cpp-python pp", "localllm", "highlevel", "pp", "pp", None)
    ratio(f"grounded rewrite, n-gram speculation / native tg{a.n}", "grounded", "native", "spec",
          "tg", 1.5)  # fmt: skip
    ratio(f"grounded rewrite, no speculation / native tg{a.n}", "grounded", "native", "plain",
          "tg", None)  # fmt: skip
    ratio("grounded rewrite, speculation on / off", "grounded", "grounded", "spec", "plain", None)
    if runs["grounded"]:
        same = all(r.get("same") == 1.0 for r in runs["grounded"])
        accept = statistics.median(r.get("accept", 0.0) for r in runs["grounded"])
        print(f"  grounded outputs identical with and without speculation: {same}; "
              f"draft acceptance {accept:.0%}")  # fmt: skip
    ratio("drafts fail (poem after the code), auto / off", "grounded", "grounded", "free_auto",
          "free_off", 0.95)  # fmt: skip
    if runs["grounded"] and "free_same" in runs["grounded"][0]:
        same = all(r.get("free_same") == 1.0 for r in runs["grounded"])
        accept = statistics.median(r.get("free_accept", 0.0) for r in runs["grounded"])
        print(f"  poem outputs identical with auto and off: {same}; draft acceptance {accept:.0%}")


if __name__ == "__main__":
    main()

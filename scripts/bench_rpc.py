#!/usr/bin/env python
"""Speed through two loopback RPC workers ÷ the same model local, and load time with and
without the workers' cache (``-c``).

    python scripts/bench_rpc.py [--model GGUF] [--rounds 3] [-p 128] [-n 32] [--threads 1]

Needs the RPC build (``scripts/build_rpc_server.sh``; found in ``$LOCALLLM_RPC_CACHE``, default
``~/.cache/localllm-rpc``). Both sides use those same libraries (``LLAMA_CPP_LIB_PATH``), so
only the split differs. Each round runs ``localllm bench`` local, then through two workers on
127.0.0.1 with every layer offloaded to them (``--gpu-layers 99``), interleaved so machine load
hits both alike; the ratios are split ÷ local per round, and their median is printed.

Load time: ``run -n 1 --stats -v`` reports llama.cpp's "load weights + context" phase; it is
taken twice against plain workers and twice against workers started with ``--cache`` (the
second load against a cache sends only hashes for tensors over 10 MiB: a model whose tensors
are all smaller gains nothing, and the script says so).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(env: dict[str, str], threads: int, cache: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "localllm", "worker", "--port", str(port), "-t", str(threads)]
    if cache:
        args.append("--cache")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready: listening" in line:
            break
    else:
        raise SystemExit(f"worker on port {port} did not start")
    return proc, f"127.0.0.1:{port}"


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        # SIGTERM, not SIGINT: a script started in the background (cmd &, nohup) hands its
        # children SIGINT ignored
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)


def bench(model: Path, env: dict[str, str], args: argparse.Namespace, rpc: str | None) -> dict:
    cmd = [sys.executable, "-m", "localllm", "bench", str(model), "-p", str(args.p), "-n"]
    cmd += [str(args.n), "-r", "1", "--no-e2e", "--json", "-t", str(args.threads)]
    cmd += ["--rpc", rpc, "--gpu-layers", "99"] if rpc else ["--gpu-layers", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr)
    out = json.loads(done.stdout)
    rates = {r["test"]: r["mean"] for r in out["results"]}
    return {"pp": rates[f"pp{args.p}"], "tg": rates[f"tg{args.n}"], "split": out.get("split")}


def load_ms(model: Path, env: dict[str, str], rpc: str) -> float:
    cmd = [sys.executable, "-m", "localllm", "run", "-m", str(model), "hi", "-n", "1"]
    cmd += ["--stats", "-v", "--rpc", rpc, "--gpu-layers", "99", "--ctx", "512"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    m = re.search(r"load weights \+ context (\d+) ms", done.stderr)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="client and each worker")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from localllm import rpcbuild

    os.environ.setdefault("LOCALLLM_RPC_CACHE", str(Path.home() / ".cache" / "localllm-rpc"))
    build = rpcbuild.find_build()
    if build is None:
        raise SystemExit("no RPC build: run scripts/build_rpc_server.sh first")
    model = args.model or starter_path()
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(build.lib_dir), "PYTHONPATH": str(ROOT)}
    print(f"build: {build.label}\nmodel: {model.name}, pp{args.p} tg{args.n}, "
          f"{args.threads} thread(s) client and each worker; {os.cpu_count()} CPUs")  # fmt: skip

    workers = [start_worker(env, args.threads, False) for _ in range(2)]
    endpoints = ",".join(e for _, e in workers)
    pp, tg = [], []
    try:
        for i in range(args.rounds):
            local = bench(model, env, args, None)
            split = bench(model, env, args, endpoints)
            pp.append(split["pp"] / local["pp"])
            tg.append(split["tg"] / local["tg"])
            print(f"round {i + 1}: local pp {local['pp']:.1f} tg {local['tg']:.1f} t/s · "
                  f"2 workers pp {split['pp']:.1f} tg {split['tg']:.1f} t/s · "
                  f"ratio pp {pp[-1]:.2f} tg {tg[-1]:.2f}")  # fmt: skip
        print(f"  {split['split']}")
        print(f"median ratio (2 loopback workers ÷ local): prompt {statistics.median(pp):.2f}, "
              f"decode {statistics.median(tg):.2f}")  # fmt: skip
        plain = [load_ms(model, env, endpoints) for _ in range(2)]
    finally:
        stop([p for p, _ in workers])

    with tempfile.TemporaryDirectory() as cache_home:
        cenv = {**env, "LOCALLLM_HOME": cache_home}  # an empty worker cache to start from
        workers = [start_worker(cenv, args.threads, True) for _ in range(2)]
        endpoints = ",".join(e for _, e in workers)
        try:
            cached = [load_ms(model, env, endpoints) for _ in range(2)]
        finally:
            stop([p for p, _ in workers])
        big = sum(1 for f in Path(cache_home).rglob("*") if f.is_file())
    print(f"load (weights + context): plain workers {plain[0]:.0f} / {plain[1]:.0f} ms · "
          f"--cache workers {cached[0]:.0f} (cold) / {cached[1]:.0f} ms (warm)")  # fmt: skip
    if big == 0:
        print("  the worker cache stayed empty: no tensor of this model exceeds llama.cpp's 10 "
              "MiB hash threshold, so -c cannot help it")  # fmt: skip


if __name__ == "__main__":
    main()

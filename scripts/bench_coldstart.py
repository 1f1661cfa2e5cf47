#!/usr/bin/env python
"""Cold start: `localllm run -n 1 "Hello"` on the starter model, against `python -c pass` and
`localllm --help`, interleaved round by round, each in a fresh process.

    python scripts/bench_coldstart.py [--model PATH] [--rounds 7] [--no-bytecode]

Reports the median wall time and CPU time (user + system, of the child) of each; CPU time is
the steadier figure on a shared machine, where wall time includes waiting for a core. Goals:
run ≤ 0.5 s wall, --help ≤ 0.2 s wall.

Python modules are imported from bytecode caches, as an installed package has them (pip
compiles them at install time): the caches go to a folder under the bench cache
(PYTHONPYCACHEPREFIX), never into the repository, and PYTHONDONTWRITEBYTECODE is dropped for
the children. With --no-bytecode every module is compiled from source on every start, which
is what a checkout run with PYTHONDONTWRITEBYTECODE=1 pays (about 0.2 s more here).

A second `run` line has the prefix cache off (LOCALLLM_PREFIX_CACHE=off): it evaluates the
chat template's opening instead of reading its saved KV state.

Last, one run with `--stats -v` prints where the load's time went (the engine's phases).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import starter_path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LOCALLLM_BENCH_CACHE", Path.home() / ".cache" / "localllm-bench"))


def timed(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) of the child, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-bytecode", action="store_true", help="compile from source")
    parser.add_argument("--threads", type=int, help="passed to run as -t")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. main's worktree) whose run is "
        "interleaved with this one's, for an A/B in the same conditions",
    )
    a = parser.parse_args()
    model = a.model or starter_path()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    if a.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    py = sys.executable
    run = [py, "-m", "localllm", "run", "-n", "1", "-m", str(model)]
    if a.threads:
        run += ["-t", str(a.threads)]
    contenders = {
        "python -c pass": [py, "-c", "pass"],
        "localllm --help": [py, "-m", "localllm", "--help"],
        'run -n 1 "Hello"': [*run, "Hello"],
    }
    envs = {name: env for name in contenders}
    # the same run evaluating its whole prompt: no saved template prefix (see PrefixStore)
    contenders["run, prefix cache off"] = [*run, "Hello"]
    envs["run, prefix cache off"] = {**env, "LOCALLLM_PREFIX_CACHE": "off"}
    cwds = {name: ROOT for name in contenders}
    if a.baseline is not None:
        # `python -m` puts the working directory first on sys.path: the baseline's runs start
        # in its folder, or they would import this checkout whatever PYTHONPATH says
        base = a.baseline.resolve()
        for name, cmd in list(contenders.items())[1:]:
            contenders[f"baseline {name}"] = cmd
            envs[f"baseline {name}"] = {**envs[name], "PYTHONPATH": str(base)}
            cwds[f"baseline {name}"] = base
    for name, cmd in contenders.items():  # warm the page cache and the bytecode caches
        timed(cmd, envs[name], cwds[name])
    walls: dict[str, list[float]] = {k: [] for k in contenders}
    cpus: dict[str, list[float]] = {k: [] for k in contenders}
    items = list(contenders.items())
    for i in range(a.rounds):
        for name, cmd in items if i % 2 == 0 else items[::-1]:
            wall, cpu, _ = timed(cmd, envs[name], cwds[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    mode = "compiled from source" if a.no_bytecode else "bytecode cached"
    print(f"model {model.name} · {a.rounds} rounds, interleaved · modules {mode}")
    print(f"  {'':29s} {'wall (median)':>14s} {'min':>8s} {'cpu (median)':>14s}  goal")
    goals = {"localllm --help": 0.2, 'run -n 1 "Hello"': 0.5}
    goals.update({f"baseline {k}": v for k, v in goals.items()})
    for name in contenders:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        goal = goals.get(name)
        mark = "" if goal is None else (f"≤ {goal} s " + ("ok" if w <= goal else "missed"))
        print(f"  {name:29s} {w:13.3f}s {min(walls[name]):7.3f}s {c:13.3f}s  {mark}")
    base = statistics.median(walls["python -c pass"])
    over = statistics.median(walls['run -n 1 "Hello"']) - base
    print(f"  run over the bare interpreter's start: {over:.3f} s")
    _, _, err = timed([*run, "--stats", "-v", "Hello"], env)
    for line in err.splitlines():
        if line.startswith(("load: read header", "prompt ", "CPU ")):
            print("  " + line)


if __name__ == "__main__":
    main()

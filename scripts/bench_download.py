"""Benchmark `localllm pull` against curl on the loopback Hub (tests/fakehub.py).

Two figures, as issue #3 asks:

1. throughput: `localllm pull` of one GGUF vs `curl -L` of the same resolve URL, in the same
   run, interleaved, median of --runs (goal: pull >= 0.8x curl). Three views: on the wire
   (the server's first to last byte of the file, the same clock for both clients); the
   transfer phase (curl's whole run vs pull's own "downloaded ... in Ns" line, which also
   covers the sha256, GGUF validation and the fsynced manifest); end to end (pull's process
   start-up and Hub listing included);
2. resume: a pull of a --kill-size-mb file, throttled to 16 MiB/s so the kill lands near 50%,
   SIGKILLed at 50% and run again; bytes the server sent twice (goal <= 1 MiB). The fake Hub
   holds the stream a little past 50% until the kill, so the pull never finishes first.

    python scripts/bench_download.py [--size-mb 1024] [--runs 5] [--dir /dev/shm] [--json]

The test file is a generated GGUF (random weights) cached in ~/.cache/localllm-bench, or any
GGUF given with --model. Both clients write into --dir (default: a temp dir), so they pay for
the same file system.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
REPO = "bench/Bench-GGUF"
FILE = "Bench-Q8_0.gguf"
KILL_REPO = "bench/Kill-GGUF"
KILL_FILE = "Kill-Q8_0.gguf"


def make_model(size_mb: int) -> Path:
    """A valid GGUF of about ``size_mb`` MiB (64 MiB per 1024-wide layer)."""
    from ggufgen import write_tiny_gguf

    cache = Path.home() / ".cache" / "localllm-bench"
    layers = max(1, round(size_mb / 64))
    path = cache / f"bench-{layers}x1024.gguf"
    if not path.is_file():
        tmp = write_tiny_gguf(
            cache / f".{path.name}.tmp",
            n_layer=layers,
            n_embd=1024,
            n_head=16,
            n_head_kv=16,
            n_ff=4096,
            name="bench",
            seed=layers,
        )
        tmp.replace(path)
    return path


def make_probe(folder: Path) -> Path:
    from ggufgen import write_tiny_gguf

    return write_tiny_gguf(folder / "probe.gguf", n_layer=2, n_embd=1024, n_head=16, n_ff=64)


def wire_seconds(hub: object) -> float:
    """Server side: first to last byte of the latest transfer of the file."""
    start, end = hub.last_transfer[FILE]  # type: ignore[attr-defined]
    return float(end - start)


def run_curl(url: str, out: Path, hub: object) -> tuple[float, float]:
    """(wire seconds, end-to-end seconds) of one curl."""
    start = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - start
    out.unlink()
    return wire_seconds(hub), elapsed


def pull_env(home: Path, endpoint: str) -> dict[str, str]:
    env = {**os.environ, "LOCALLLM_HOME": str(home), "HF_ENDPOINT": endpoint}
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_HUB_CACHE"] = str(home / "no-hf-cache")
    return env


_DOWNLOADED = re.compile(r"downloaded ([\d.]+) (\w+) in ([\d.]+)s")


def run_pull(endpoint: str, home: Path) -> tuple[float, float]:
    """(transfer-phase seconds, end-to-end seconds) of one fresh pull."""
    shutil.rmtree(home, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "pull", f"{REPO}:Q8_0"],
        capture_output=True,
        text=True,
        env=pull_env(home, endpoint),
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pull failed: {proc.stderr}")
    m = _DOWNLOADED.search(proc.stderr)
    if not m:
        raise SystemExit(f"no transfer time in pull's output: {proc.stderr}")
    shutil.rmtree(home, ignore_errors=True)
    return float(m.group(3)), wall


def kill_at_half(hub: object, endpoint: str, home: Path, size: int) -> dict[str, int]:
    """SIGKILL a throttled pull at 50%, run it again unthrottled, count bytes sent twice.
    Besides the throttle (so the kill lands near 50% with little in flight, as on a real
    network), the server holds the stream at 50% + 4 MiB until the kill: the pull cannot
    finish first, however loaded the machine."""
    from localllm import hub as hubmod

    shutil.rmtree(home, ignore_errors=True)
    env = pull_env(home, endpoint)
    os.environ["LOCALLLM_HOME"] = str(home)
    part = hubmod.Partial.of(KILL_REPO, KILL_FILE).part
    # Throttled so the kill lands near 50%; at full loopback speed on a busy machine the
    # kernel's socket buffers alone hold megabytes in flight, whoever the client is.
    hub.throttle[KILL_FILE] = 16 * MiB  # type: ignore[attr-defined]
    hub.reset_counters()  # type: ignore[attr-defined]
    hold = hub.hold(KILL_FILE, min(size, size // 2 + 4 * MiB))  # type: ignore[attr-defined]
    cmd = [sys.executable, "-m", "localllm", "pull", f"{KILL_REPO}:Q8_0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        while not (part.exists() and part.stat().st_size >= size // 2):
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise SystemExit(f"pull ended before 50%: {err}")
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hold.release()
    on_disk = part.stat().st_size
    sent_before = hub.sent(KILL_FILE)  # type: ignore[attr-defined]
    del hub.throttle[KILL_FILE]  # type: ignore[attr-defined]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"resumed pull failed: {result.stderr}")
    total_sent = hub.sent(KILL_FILE)  # type: ignore[attr-defined]
    shutil.rmtree(home, ignore_errors=True)
    return {
        "size": size,
        "partial_at_kill": on_disk,
        "sent_before_kill": sent_before,
        "sent_total": total_sent,
        "resent": total_sent - size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--kill-size-mb", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", type=Path, help="a GGUF to serve instead of a generated one")
    ap.add_argument("--dir", type=Path, help="where both clients write (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is not installed")

    from fakehub import FakeHub

    model = args.model or make_model(args.size_mb)
    size = model.stat().st_size
    kill_model = make_model(args.kill_size_mb)
    work = Path(tempfile.mkdtemp(prefix="bench-dl-", dir=args.dir))
    hub = FakeHub().start()
    try:
        # A small second quant, like real repos have: the listing reads its header (one Range
        # request), so the counts below are the big file's download alone.
        probe = make_probe(work)
        hub.add_repo(REPO, {FILE: model, "Bench-Q2_K.gguf": probe})
        hub.add_repo(KILL_REPO, {KILL_FILE: kill_model, "Kill-Q2_K.gguf": probe})
        url = f"{hub.url}/{REPO}/resolve/main/{FILE}"
        curl_wire: list[float] = []
        curl_s: list[float] = []
        pull_wire: list[float] = []
        pull_s: list[float] = []
        wall_s: list[float] = []
        run_curl(url, work / "warm.gguf", hub)  # page cache warm for both
        for i in range(args.runs):
            wire, elapsed = run_curl(url, work / "curl.gguf", hub)
            curl_wire.append(wire)
            curl_s.append(elapsed)
            transfer, wall = run_pull(hub.url, work / f"home-{i}")
            pull_wire.append(wire_seconds(hub))
            pull_s.append(transfer)
            wall_s.append(wall)
        kill = kill_at_half(hub, hub.url, work / "home-kill", kill_model.stat().st_size)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)

    def mbps(seconds: float) -> float:
        return size / MiB / seconds

    med = statistics.median
    cw, pw = med(curl_wire), med(pull_wire)
    c, p, w = med(curl_s), med(pull_s), med(wall_s)
    report = {
        "file_bytes": size,
        "runs": args.runs,
        "wire": {
            "curl_MiB_s": round(mbps(cw), 1),
            "pull_MiB_s": round(mbps(pw), 1),
            "ratio": round(cw / pw, 3),
            "best_ratio": round(min(curl_wire) / min(pull_wire), 3),
        },
        "transfer_phase": {
            "curl_MiB_s": round(mbps(c), 1),
            "pull_MiB_s": round(mbps(p), 1),
            "ratio": round(c / p, 3),
            "best_ratio": round(min(curl_s) / min(pull_s), 3),
        },
        "end_to_end": {
            "curl_MiB_s": round(mbps(c), 1),
            "pull_MiB_s": round(mbps(w), 1),
            "ratio": round(c / w, 3),
        },
        "seconds": {
            "curl_wire": [round(x, 3) for x in curl_wire],
            "pull_wire": [round(x, 3) for x in pull_wire],
            "curl": [round(x, 3) for x in curl_s],
            "pull_transfer_phase": [round(x, 3) for x in pull_s],
            "pull_end_to_end": [round(x, 3) for x in wall_s],
        },
        "kill_at_50": kill,
        "goals": {
            "wire_ratio_ge_0_8": cw / pw >= 0.8,
            "transfer_phase_ratio_ge_0_8": c / p >= 0.8,
            "resent_le_1MiB": kill["resent"] <= MiB,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"file: {size / MiB:.0f} MiB, {args.runs} runs each, interleaved, medians")
    for label, key, note in (
        ("on the wire", "wire", "server-side first to last byte"),
        ("transfer phase", "transfer_phase", "curl's run vs pull's download+verify+store"),
        ("end to end", "end_to_end", "pull's start-up and Hub listing included"),
    ):
        r = report[key]
        print(
            f"{label:15} curl {r['curl_MiB_s']:7.1f} MiB/s  pull {r['pull_MiB_s']:7.1f} MiB/s"
            f"  ratio {r['ratio']:.2f}x  ({note})"
        )
    print(
        f"kill at 50% of {kill['size'] / MiB:.0f} MiB: "
        f"partial {kill['partial_at_kill'] / MiB:.1f} MiB, "
        f"re-sent {kill['resent'] / 1024:.0f} KiB (goal <= 1024 KiB)"
    )


if __name__ == "__main__":
    main()

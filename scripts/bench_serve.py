"""Benchmark ``localllm serve`` against ``localllm run`` on the same model, threads and prompt.

Rounds are interleaved (run, server, run, server, ...) so a busy machine slows both alike.
Reported:

* decode tokens/s through the server ÷ ``localllm run`` (target ≥ 0.95);
* the TTFT the server adds: a streaming client's time to its first content chunk minus the
  engine's own TTFT for that request (target ≤ 15 ms);
* the total wall time of 8 concurrent clients (each a short answer);
* with ``--llama-cpp-server``: the same single-stream and concurrent figures for
  llama-cpp-python's own server (``python -m llama_cpp.server``), started from a scratch venv
  that sees this interpreter's llama_cpp (``--system-site-packages``) plus its server extras;
* with ``--native [PATH]``: the same for llama.cpp's own ``llama-server`` (built from the
  llama.cpp vendored in the installed llama-cpp-python by ``scripts/build_llama_server.sh``,
  cached outside the repository, unless PATH is given): streamed decode tokens/s (each
  server's own figure: our ``localllm.stats``, its ``timings``; and client-side) and the
  client's TTFT, ours ÷ theirs, same model, threads, context, greedy sampling, one slot.

Usage: ``python scripts/bench_serve.py [-m MODEL] [-t THREADS] [-n TOKENS] [--rounds N]
[--native [PATH]]``. Run it on an idle machine: other load slows whichever side it lands on.
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
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def run_cli(model: str, threads: int, tokens: int, prompt: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "localllm", "run", "-m", model, "-t", str(threads), "--json",
         "--temperature", "0", "-n", str(tokens), "--ctx", "2048", prompt],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    stats = json.loads(out.stdout)["stats"]
    return {"tok_s": stats["tokens_per_s"], "ttft_ms": stats["ttft_s"] * 1000}


def stream_chat(url: str, tokens: int, prompt: str, extra: dict[str, Any] | None = None) -> dict:
    """One streaming request; client-side TTFT and decode rate."""
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": 0,
        "max_tokens": tokens,
        **(extra or {}),
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    first = last = None
    chunks = 0
    engine: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if payload.get("localllm"):
                engine = payload["localllm"].get("stats")
            if payload.get("timings"):  # llama-server's own figures
                timings = payload["timings"]
            for choice in payload.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    if first is None or last is None:  # no answer (llama_cpp.server interrupts streams)
        return {"chunks": 0}
    out = {"ttft_ms": (first - start) * 1000, "chunks": chunks}
    if engine:
        out["tok_s"] = engine["tokens_per_s"]
        out["engine_ttft_ms"] = engine["ttft_s"] * 1000
        out["client_tok_s"] = (engine["generated_tokens"] - 1) / max(last - first, 1e-9)
        out["tokens"] = engine["generated_tokens"]
    elif timings:
        out["tok_s"] = timings["predicted_per_second"]
        out["engine_ttft_ms"] = timings["prompt_ms"]
        out["client_tok_s"] = (timings["predicted_n"] - 1) / max(last - first, 1e-9)
        out["tokens"] = timings["predicted_n"]
    else:
        out["tok_s"] = (chunks - 1) / max(last - first, 1e-9)
    return out


def whole_chat(url: str, tokens: int, prompt: str) -> dict[str, Any]:
    """One non-streaming request: the engine's decode rate with no per-token traffic."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": tokens,
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        stats = json.loads(resp.read())["localllm"]["stats"]
    return {"tok_s": stats["tokens_per_s"]}


def concurrent(url: str, clients: int, tokens: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda i: stream_chat(url, tokens, f"{i}: {PROMPT}"), range(clients)))
    answered = sum(1 for r in rows if r["chunks"])
    if answered < clients:
        print(f"  {url}: only {answered} of {clients} concurrent clients got an answer")
    return time.perf_counter() - start


def start_ours(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "serve", "-m", model, "-t", str(threads), "--port",
         "0", "--ctx", "2048", "--queue", "16"],
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"at (http://\S+) ", line)
        if match:
            url = match.group(1)
            break
    else:
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    wait_ready(url + "/health")
    return proc, url


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def start_llama_cpp_server(model: str, threads: int, port: int) -> subprocess.Popen:
    venv = Path(tempfile.gettempdir()) / "localllm-bench-llama-cpp-server"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "fastapi", "sse-starlette",
             "starlette-context", "pydantic-settings"],
            check=True,
        )  # fmt: skip
    return subprocess.Popen(
        [str(py), "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads),
         "--n_ctx", "2048", "--port", str(port), "--host", "127.0.0.1",
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def native_binary(given: str) -> str:
    """``--native PATH``, or the binary scripts/build_llama_server.sh builds (or has cached)."""
    if given:
        return given
    script = Path(__file__).resolve().parent / "build_llama_server.sh"
    print("building (or finding) native llama-server…", file=sys.stderr)
    out = subprocess.run(
        ["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def start_native(binary: str, model: str, threads: int, port: int) -> subprocess.Popen:
    """llama.cpp's llama-server with the settings ``localllm serve`` gets: the same context,
    threads for decode and prompt, one slot (our worker runs one request at a time), and flash
    attention off, as ``flash_attn: auto`` loads on the CPU (llama-server's own auto turns it
    on: faster near the start of a context here, slower past ~1,500 tokens)."""
    return subprocess.Popen(
        [binary, "-m", model, "-t", str(threads), "-tb", str(threads), "-c", "2048",
         "--port", str(port), "--host", "127.0.0.1", "-np", "1", "--no-warmup", "-fa", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def versus(name: str, clients: int, ours: list[float], theirs: list[float]) -> str:
    """The concurrent-clients line for another server: medians and the per-round ratio."""
    per_round = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return (
        f"{name} {clients} concurrent clients: {statistics.median(theirs):.2f} s wall, median "
        f"(ours {statistics.median(ours):.2f} s; ours ÷ theirs per round, median: "
        f"{per_round:.3f})"
    )


def summary(name: str, rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", help="model path or name (default: the starter)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-n", "--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--llama-cpp-server", action="store_true")
    parser.add_argument(
        "--native",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also llama.cpp's own llama-server (built from the vendored sources if no PATH)",
    )
    args = parser.parse_args()
    model = args.model
    if model is None:
        from localllm.starter import ensure_starter

        model = str(ensure_starter(lambda m: print(m, file=sys.stderr)))

    native_bin = native_binary(args.native) if args.native is not None else None
    proc, url = start_ours(model, args.threads)
    theirs, turl = None, ""
    native, nurl = None, ""
    native_rows: list[dict[str, Any]] = []
    native_walls: list[float] = []
    cli_rows, srv_rows, whole_rows, their_rows = [], [], [], []
    walls: list[float] = []
    their_walls: list[float] = []
    try:
        if args.llama_cpp_server:
            port = free_port()
            theirs = start_llama_cpp_server(model, args.threads, port)
            turl = f"http://127.0.0.1:{port}"
            wait_ready(turl + "/v1/models")
            stream_chat(turl, 4, "warm up")
        if native_bin is not None:
            nport = free_port()
            native = start_native(native_bin, model, args.threads, nport)
            nurl = f"http://127.0.0.1:{nport}"
            wait_ready(nurl + "/health")
            stream_chat(nurl, 4, "warm up")
        stream_chat(url, 4, "warm up")
        for i in range(args.rounds):
            prompt = f"({i}) {PROMPT}"  # a new first token: no KV reuse between rounds
            cli_rows.append(run_cli(model, args.threads, args.tokens, prompt))
            srv_rows.append(stream_chat(url, args.tokens, prompt))
            whole_rows.append(whole_chat(url, args.tokens, "x" + prompt))
            if theirs is not None:
                their_rows.append(stream_chat(turl, args.tokens, prompt))
            if native is not None:
                native_rows.append(stream_chat(nurl, args.tokens, prompt, {"seed": 0}))
        # Each server's turn alternates between first and last, so drift in the machine's
        # load does not favour one; the first round also fills each server's prompt cache.
        turns = [(url, walls)]
        if theirs is not None:
            turns.append((turl, their_walls))
        if native is not None:
            turns.append((nurl, native_walls))
        for i in range(max(3, args.rounds)):
            for where, into in turns if i % 2 == 0 else turns[::-1]:
                into.append(concurrent(where, args.clients, 16))
    finally:
        if native is not None:
            native.terminate()
            native.wait(timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if theirs is not None:
            theirs.terminate()
            theirs.wait(timeout=60)

    cli_tok = summary("run", cli_rows, "tok_s")
    srv_tok = summary("serve", srv_rows, "tok_s")
    whole_tok = summary("serve", whole_rows, "tok_s")
    cli_ttft = summary("run", cli_rows, "ttft_ms")
    srv_ttft = summary("serve", srv_rows, "ttft_ms")
    client_tok = summary("serve", srv_rows, "client_tok_s")
    added = statistics.median(r["ttft_ms"] - r["engine_ttft_ms"] for r in srv_rows)
    print(
        f"model {Path(model).name} · {args.threads} threads · {args.tokens} tokens · "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(f"localllm run     decode {cli_tok:6.1f} tok/s · TTFT {cli_ttft:.0f} ms")
    print(
        f"localllm serve   decode {srv_tok:6.1f} tok/s · TTFT {srv_ttft:.0f} ms "
        f"(client-side decode {client_tok:.1f} tok/s; not streamed {whole_tok:.1f} tok/s)"
    )
    print(
        f"serve ÷ run decode: {srv_tok / cli_tok:.3f} streamed, {whole_tok / cli_tok:.3f} not "
        f"streamed · TTFT added by the server: {added:.1f} ms"
    )
    print(
        f"{args.clients} concurrent clients × 16 tokens: {statistics.median(walls):.2f} s wall "
        f"(median of {len(walls)}; best {min(walls):.2f} s)"
    )
    chunks = statistics.median(r["chunks"] / r["tokens"] for r in srv_rows if r.get("tokens"))
    print(f"serve streamed {chunks:.2f} content chunks per token (1.00: one chunk per token)")
    if native is not None:
        ntok = summary("", native_rows, "tok_s")
        nclient = summary("", native_rows, "client_tok_s")
        nttft = summary("", native_rows, "ttft_ms")
        print(
            f"llama-server     decode {ntok:6.1f} tok/s · TTFT {nttft:.0f} ms "
            f"(client-side decode {nclient:.1f} tok/s)"
        )
        print(
            f"serve ÷ llama-server: decode {srv_tok / ntok:.3f} (client-side "
            f"{client_tok / nclient:.3f}) · TTFT {srv_ttft - nttft:+.1f} ms"
        )
        print(versus("llama-server", args.clients, walls, native_walls))
    if theirs is not None:
        ttok = summary("", their_rows, "tok_s")
        tttft = summary("", their_rows, "ttft_ms")
        print(
            f"llama_cpp.server decode {ttok:6.1f} tok/s (client-side) · TTFT {tttft:.0f} ms · "
            f"ours ÷ theirs (client-side) {client_tok / ttok:.3f}"
        )
        print(versus("llama_cpp.server", args.clients, walls, their_walls))


if __name__ == "__main__":
    main()

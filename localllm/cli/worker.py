"""``localllm worker``: lend this machine's memory and compute to another host's model.

Runs llama.cpp's RPC worker built from the exact llama.cpp of the installed llama-cpp-python
(``--build`` makes it once). The worker has no authentication: it listens on loopback unless
told otherwise, and another address needs ``--i-understand-this-is-unauthenticated``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from localllm.cli._app import app, err

UNAUTH_FLAG = "--i-understand-this-is-unauthenticated"


@app.command()
def worker(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50052,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads (default: llama.cpp's).")
    ] = None,
    mem: Annotated[
        int | None,
        typer.Option(
            "--mem",
            help="Offer at most this many MiB per device (clients split layers by it).",
            metavar="MB",
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache", "-c", help="Keep received weights on disk: later loads send only hashes."
        ),
    ] = False,
    build: Annotated[
        bool,
        typer.Option("--build", help="Build the worker and RPC libraries (once), then exit."),
    ] = False,
    unauthenticated: Annotated[
        bool,
        typer.Option(
            UNAUTH_FLAG,
            help="Allow a non-loopback --host: anyone who can reach the port can use the worker.",
        ),
    ] = False,
) -> None:
    """Run a llama.cpp RPC worker that other hosts' `--rpc HOST:PORT` split models onto."""
    from localllm import paths, rpcbuild
    from localllm.errors import UsageError
    from localllm.rpcworker import is_loopback, run_worker

    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    if mem is not None and mem < 1:
        raise UsageError(f"--mem must be at least 1 MiB, not {mem}")
    if build:
        done = rpcbuild.build(say=lambda m: err(m, style="dim"), log=sys.stderr)
        print(f"worker:    {done.worker}")
        print(f"libraries: {done.lib_dir}")
        print(f"build:     {done.label}")
        return
    if not is_loopback(host) and not unauthenticated:
        raise UsageError(
            f"--host {host} would let anyone who reaches this port run code on this machine's "
            "memory: the RPC worker has no authentication",
            hint=f"on a trusted LAN only, add {UNAUTH_FLAG}",
        )
    found = rpcbuild.find_build()
    if found is None:
        raise UsageError(
            "no RPC worker is built for llama-cpp-python " + rpcbuild.installed_version(),
            hint="build it once: `localllm worker --build` (needs cmake and a C++ compiler)",
        )
    if not is_loopback(host):
        bar = "!" * 72
        err(bar, style="bold red")
        err(
            f"WARNING: the worker listens on {host}:{port} WITHOUT AUTHENTICATION.\n"
            "Anyone who can reach this port can allocate memory and run computations here.\n"
            "Use it on a trusted LAN only; never expose it to the internet.",
            style="bold red",
        )
        err(bar, style="bold red")
    print(f"localllm worker: {found.label}", flush=True)
    print(f"binary: {found.worker}", flush=True)
    code = run_worker(
        found.worker,
        host=host,
        port=port,
        threads=threads,
        mem_mb=mem,
        cache=cache,
        cache_dir=paths.cache_dir() / "llama.cpp",
        say=lambda m: print(m, flush=True),
    )
    if code:
        from localllm.errors import InferenceError

        why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise InferenceError(f"the worker stopped ({why})", hint="its own messages are above")

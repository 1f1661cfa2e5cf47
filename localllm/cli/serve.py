"""``localllm serve``: an OpenAI- and Ollama-compatible HTTP server (starlette and uvicorn are
imported inside the command)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from localllm.cli._app import app, complete_model, complete_profile, err
from localllm.cli.run import GPU_LAYERS_HELP, RPC_HELP


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Default model: a .gguf path or an installed model.",
            autocompletion=complete_model,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p", help="The server's profile.", autocompletion=complete_profile
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require this key (Authorization: Bearer KEY); default $LOCALLLM_API_KEY.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="Allow browser pages from ORIGIN (repeatable).", metavar="ORIGIN"
        ),
    ] = None,
    queue: Annotated[
        int, typer.Option("--queue", help="Requests that may wait per model before 503.")
    ] = 16,
    max_loaded: Annotated[
        int, typer.Option("--max-loaded", help="Models kept loaded at once (LRU unloads).")
    ] = 1,
    cache_ram: Annotated[
        int,
        typer.Option(
            "--cache-ram",
            help="MiB of memory per model for earlier prompts' KV states (0: off).",
            metavar="MIB",
        ),
    ] = 1024,
    stream_interval: Annotated[
        int,
        typer.Option(
            "--stream-interval",
            help="Milliseconds a streamed token may wait to share a chunk with the next "
            "(0: a chunk per token).",
            metavar="MS",
        ),
    ] = 20,
    alias: Annotated[
        list[str] | None,
        typer.Option(
            "--alias",
            help="Answer requests for NAME with MODEL (repeatable).",
            metavar="NAME=MODEL",
        ),
    ] = None,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Context length in tokens.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help=GPU_LAYERS_HELP)] = None,
    rpc: Annotated[
        str | None, typer.Option("--rpc", help=RPC_HELP, metavar="HOST:PORT,...")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Load models even if they look too big for memory.")
    ] = False,
    verbose: Annotated[
        bool | None, typer.Option("--verbose", "-v", help="Show llama.cpp's logs.")
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Fetch http(s) image URLs sent in requests."),
    ] = False,
) -> None:
    """Serve models over HTTP to OpenAI and Ollama clients (editors, agents, scripts)."""
    from localllm import profiles
    from localllm.cli.run import parse_gpu_layers, prepare_rpc
    from localllm.errors import UsageError
    from localllm.loading import resolve_model_path

    if queue < 1:
        raise UsageError(f"--queue must be at least 1, not {queue}")
    if max_loaded < 1:
        raise UsageError(f"--max-loaded must be at least 1, not {max_loaded}")
    if cache_ram < 0:
        raise UsageError(f"--cache-ram must be 0 or more MiB, not {cache_ram}")
    if not 0 <= stream_interval <= 1000:
        raise UsageError(f"--stream-interval must be between 0 and 1000 ms, not {stream_interval}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    aliases: dict[str, str] = {}
    for item in alias or []:
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise UsageError(f"--alias takes NAME=MODEL, not '{item}'")
        aliases[name.strip()] = target.strip()
    settings = profiles.resolve(
        profile,
        {
            "context_length": ctx,
            "threads": threads,
            "gpu_layers": parse_gpu_layers(gpu_layers),
            "rpc": rpc,
            "verbose": verbose,
        },
    )
    prepare_rpc(settings)
    key = api_key if api_key is not None else os.environ.get("LOCALLLM_API_KEY") or None
    path = resolve_model_path(model or settings.model, lambda m: err(m, style="dim"))

    from localllm.server.app import ServerState, bind, is_encoder, is_loopback, serve, stderr_log
    from localllm.server.models import ModelPool, entry_for_path

    default = entry_for_path(path)
    pool = ModelPool(
        default,
        settings,
        max_loaded=max_loaded,
        queue_size=queue,
        cache_ram=cache_ram * 1024 * 1024,
        aliases=aliases,
        log=stderr_log,
        force=force,
    )
    for name, target in aliases.items():
        try:
            pool.lookup(target)
        except Exception as exc:  # reported as a usage error
            raise UsageError(f"--alias {name}={target}: {exc}") from None
    try:
        sock = bind(host, port)
    except OSError as exc:
        import errno

        if exc.errno == errno.EADDRINUSE:
            hint = "pick another --port (0 picks a free one)"
        elif exc.errno == errno.EACCES:
            hint = "ports below 1024 need privileges: pick another --port"
        else:  # an unknown name or an address this machine does not have
            hint = "give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=hint
        ) from None
    loopback = is_loopback(host)
    if not loopback and not key:
        err(
            f"warning: listening on {host}: anyone on the network can use the model; "
            "set --api-key (or LOCALLLM_API_KEY) to require a key",
            style="yellow",
        )
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    # A wildcard address is where to listen, not where to connect (Windows refuses 0.0.0.0):
    # clients on this machine are pointed at loopback.
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host)
    client = f"http://{wildcard}:{bound}" if wildcard else url
    # An encoder (BERT and its kin) as the default: serve its embeddings, as llama-server
    # --embeddings and Ollama do; chat and completions on it answer a 400 that says so.
    encoder = is_encoder(path)
    what = " (an embedding model: embeddings only)" if encoder else ""
    err(
        f"localllm serving {default.name}{what} at {url} · point clients at it: "
        f"OPENAI_BASE_URL={client}/v1 (Ollama clients: OLLAMA_HOST={client}) · Ctrl-C stops"
    )
    if not encoder:
        pool.worker(default)  # start loading the default model now; /health says 503 until done
    state = ServerState(
        pool=pool,
        profile=settings,
        log=stderr_log,
        allow_remote=allow_remote,
        embeddings_only=encoder,
        stream_interval=stream_interval / 1000,
    )
    code = serve(state, sock, api_key=key, cors_origins=list(cors_origin or []), loopback=loopback)
    if code:
        raise typer.Exit(code)

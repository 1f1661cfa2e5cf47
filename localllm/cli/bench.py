"""``localllm bench MODEL``: prompt processing and generation speed, like llama-bench, plus time
to first token and end-to-end tokens/s through localllm's own engine loop.

The table (or ``--json``) goes to stdout; progress to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from localllm.cli._app import app, complete_model, err

GPU_LAYERS_HELP = "Layers to offload to the GPU: a number, 0 for none, or auto."


@app.command()
def bench(
    model: Annotated[
        str,
        typer.Argument(
            help="A .gguf path or the name of an installed model.", autocompletion=complete_model
        ),
    ],
    n_prompt: Annotated[
        int, typer.Option("--n-prompt", "-p", help="Prompt tokens for the pp test (0: skip).")
    ] = 512,
    n_gen: Annotated[
        int, typer.Option("--n-gen", "-n", help="Tokens to generate in the tg test (0: skip).")
    ] = 128,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="Runs of each test.")] = 3,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads (default: physical cores).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Logical batch size.")] = 2048,
    ubatch: Annotated[int, typer.Option("--ubatch", "-ub", help="Physical batch size.")] = 512,
    gpu_layers: Annotated[str, typer.Option("--gpu-layers", help=GPU_LAYERS_HELP)] = "auto",
    rpc: Annotated[
        str | None,
        typer.Option(
            "--rpc",
            help="Split the model across llama.cpp RPC workers: HOST:PORT[,HOST:PORT...].",
            metavar="HOST:PORT,...",
        ),
    ] = None,
    flash_attn: Annotated[
        bool | None,
        typer.Option(
            "--flash-attn/--no-flash-attn",
            help="Flash attention (default: the profile's setting).",
            show_default=False,
        ),
    ] = None,
    kv_cache_type: Annotated[
        str | None, typer.Option("--kv-cache-type", help="KV cache type: f16, q8_0 or q4_0.")
    ] = None,
    no_e2e: Annotated[
        bool, typer.Option("--no-e2e", help="Skip the end-to-end run through the engine.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure prompt processing (pp) and generation (tg) speed, mean ± sd over repetitions."""
    from localllm import store
    from localllm.bench import BenchConfig, format_table, run_bench
    from localllm.cli.run import parse_gpu_layers, prepare_rpc
    from localllm.profiles import validate_overrides

    layers = parse_gpu_layers(gpu_layers)
    workers = validate_overrides({"rpc": rpc}).get("rpc", ())
    config = BenchConfig(
        n_prompt=n_prompt,
        n_gen=n_gen,
        repetitions=repetitions,
        threads=threads,
        n_batch=batch,
        n_ubatch=ubatch,
        gpu_layers=layers if layers is not None else "auto",
        flash_attn=flash_attn,
        kv_cache_type=kv_cache_type,
        e2e=not no_e2e,
        rpc=workers,
    )
    prepare_rpc(config)
    config.validate()  # bad numbers fail before the model is looked up or loaded
    path = store.resolve_model(model)
    interactive = sys.stderr.isatty()

    def progress(message: str) -> None:
        if interactive:
            err(message, style="dim")

    result = run_bench(path, config, progress=progress)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print(format_table(result))
    if result.split:
        err(result.split)
    err(
        f"{result.offload} · flash attention "
        f"{'auto' if result.flash_attn is None else 'on' if result.flash_attn else 'off'} · "
        f"KV cache {result.kv_cache_type} · batch {result.n_batch}/{result.n_ubatch} · "
        f"a context per test, up to {result.n_ctx} tokens"
    )
    err(
        "tg and e2e sample every token with the default profile's settings through the same "
        "decode calls and sampler chain as `run` (llama-bench's tg does not sample): these "
        "are the speeds `run` gets"
    )

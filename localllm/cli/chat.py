"""``localllm chat``: the terminal chat app (Textual is imported inside the command)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from localllm.cli._app import app, complete_mode, complete_model, complete_profile, err
from localllm.cli.run import RPC_HELP


@app.command()
def chat(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A .gguf path or an installed model.",
            autocompletion=complete_model,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="Profile name.", autocompletion=complete_profile),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="reasoning or instant.", autocompletion=complete_mode)
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue a saved conversation (its id).")
    ] = None,
    rpc: Annotated[
        str | None, typer.Option("--rpc", help=RPC_HELP, metavar="HOST:PORT,...")
    ] = None,
    expand_reasoning: Annotated[
        bool,
        typer.Option(
            "--expand-reasoning", help="Keep reasoning blocks open after the answer starts."
        ),
    ] = False,
) -> None:
    """Chat with a model in a full-screen terminal app (F1 inside lists the keys)."""
    from localllm import profiles
    from localllm.cli.run import prepare_rpc
    from localllm.errors import UsageError

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "localllm chat needs an interactive terminal",
            hint='use `localllm run "PROMPT"` in scripts and pipes',
        )
    settings = profiles.resolve(profile, {"mode": mode, "system_prompt": system, "rpc": rpc})
    prepare_rpc(settings)
    if resume:  # a mistyped id is said here, before the screen opens
        from localllm import conversations

        if not conversations.path_of(resume).is_file():
            raise UsageError(
                f"no saved conversation '{resume}'",
                hint="start `localllm chat` and press Ctrl+L to list the saved ones",
            )
    path = None
    if model or settings.model or not resume:
        from localllm.loading import model_to_generate

        # an embedding model cannot chat: refused here, before the screen opens
        path = model_to_generate(model or settings.model, lambda m: err(m, style="dim"))

    from localllm.tui.app import run_chat

    code = run_chat(path, settings, resume=resume, expand_reasoning=expand_reasoning)
    if code:
        raise typer.Exit(code)

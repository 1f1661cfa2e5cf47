"""The Typer application object and the small helpers every command module shares.

Command modules register themselves on ``app`` (or a sub-app) at import; they import the heavy
parts of the core (llama_cpp, textual, the Hub client) inside the command functions only, so
``localllm --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

app = typer.Typer(
    name="localllm",
    help="Run quantized large language models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def err(message: str, style: str | None = None) -> None:
    """Write one line to stderr (progress, warnings, stats)."""
    if style and sys.stderr.isatty():
        from rich.console import Console

        Console(stderr=True, highlight=False).print(message, style=style, markup=False)
    else:
        print(message, file=sys.stderr, flush=True)


def die(message: str, code: int = 2, hint: str | None = None) -> NoReturn:
    """Stop the command with a one-line error and an exit code."""
    from localllm.errors import UsageError

    exc = UsageError(message, hint)
    exc.exit_code = code
    raise exc

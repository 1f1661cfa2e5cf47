"""The ``localllm`` command line: parse, call the core, render; errors become exit codes.

Exit codes (documented in the README):
0 success, 1 unexpected internal error, 2 usage or profile error, 3 model not found or invalid,
4 network or download failure, 5 not enough disk or memory, 6 inference failure,
130 interrupted (Ctrl-C), 141 the reader of stdout went away (``| head``: 128 + SIGPIPE, as
``cat`` and other Unix tools end; quietly).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from localllm.cli import _app
from localllm.cli import commands as _commands  # noqa: F401  (registers the commands)
from localllm.cli._app import OutputClosed, app
from localllm.errors import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, LocalLLMError, ResourceError

__all__ = ["app", "format_error", "main"]


def format_error(exc: LocalLLMError) -> str:
    """One line: what went wrong and what to do next."""
    text = f"error: {exc.message}"
    if exc.hint:
        text += f" ({exc.hint})"
    return text


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps every failure to an exit code."""
    import typer

    command = typer_command(sys.argv[1:] if argv is None else argv)
    _app.PROCESS_ENDS_AFTER = True  # a real run: the process ends when the command returns
    try:
        # Non-standalone: Typer returns the code of a typer.Exit (Ctrl-C becomes 130) and
        # raises usage errors for us to print as one line.
        code = command.main(args=argv, prog_name="localllm", standalone_mode=False)
        sys.stdout.flush()  # what is still buffered must meet a closed pipe here, not at exit
    except (OutputClosed, BrokenPipeError):
        # `localllm run ... | head -c5`: the reader has what it wanted. Python's advice: point
        # stdout at the null device so the interpreter's last flush cannot fail again, and
        # leave without a word, as `cat big | head` does.
        _drop_stdout()
        sys.exit(EXIT_PIPE_CLOSED)
    except LocalLLMError as exc:
        print(format_error(exc), file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        # A full disk under `> out.json` is the user's situation, not a bug: one line, exit 5.
        if exc.errno not in _DISK_FULL:
            raise
        _drop_stdout()
        print(
            f"error: cannot write the output: {exc.strerror} (free some disk space, or send the "
            "output somewhere else)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(ResourceError.exit_code)
    except Exception as exc:
        # Click's (and Typer's vendored click's) usage errors carry exit_code and
        # format_message; anything else is a bug and keeps its traceback.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `localllm` or `localllm profile` alone: the help itself is the answer, not an
            # "error: Usage: ..." wrapped around it (exit 2: no command was given).
            print(exc.format_message(), file=sys.stderr)
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "localllm"
        print(f"error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _drop_stdout() -> None:
    """Point stdout at the null device so the interpreter's final flush of what is still
    buffered does not fail a second time at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def typer_command(args: list[str] | None = None) -> Any:
    """The click group of the app. Given the command line ``args``, only the command they
    name is built: Typer turns every command's signature into click parameters (type hints
    evaluated, options made), 30-45 ms for all of them here against 8-10 ms for ``run``
    alone, paid on every start. Help, a mistyped command and shell completion still get the
    whole group."""
    import os

    import typer.main

    name = args[0] if args else ""
    completing = any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)
    commands, groups = app.registered_commands, app.registered_groups
    chosen = [c for c in commands if _command_name(c) == name]
    chosen_groups = [g for g in groups if g.name == name]
    if completing or not (chosen or chosen_groups):
        return typer.main.get_command(app)
    app.registered_commands, app.registered_groups = chosen, chosen_groups
    try:
        return typer.main.get_command(app)
    finally:
        app.registered_commands, app.registered_groups = commands, groups


def _command_name(info: Any) -> str:
    """The name Typer gives a registered command."""
    import typer.main

    return str(info.name or typer.main.get_command_name(info.callback.__name__))

"""The Typer application object and the small helpers every command module shares.

Command modules register themselves on ``app`` (or a sub-app) at import; they import the heavy
parts of the core (llama_cpp, textual, the Hub client) inside the command functions only, so
``localllm --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup


class OutputClosed(Exception):
    """Whoever read our stdout went away (``localllm list | head -1``). Raised in place of the
    ``BrokenPipeError`` so that click's own handling (exit 1, after swallowing it) never sees
    it: :func:`localllm.cli.main` ends the command quietly with ``EXIT_PIPE_CLOSED``."""


class _PlainHelpGroup(TyperGroup):
    """Plain (click-style) help. Typer's rich help imports rich.markdown, markdown-it, pygments
    and rich.traceback, which made ``localllm --help`` take twice as long as everything else
    together. Command summaries wrap instead of being cut at the terminal width.

    A closed stdout, wherever it is noticed (help text, a table, a streamed answer), leaves
    as :class:`OutputClosed`: parsing (``--help``, ``--version``) happens in ``make_context``,
    the command itself (and a subcommand's ``--help``) in ``invoke``."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError as exc:
            raise OutputClosed() from exc

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise OutputClosed() from exc

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _install_plain_coercion() -> None:
    """Coerce plain ``str``/``int``/``float``/``bool``/``list[str]`` parameters without pydantic.

    Typer >= 0.26 converts every parameter of the command being run through a pydantic
    ``TypeAdapter``: importing pydantic and building ~30 adapters cost ``localllm run`` about
    0.15 s of CPU per invocation, before any work. Plain types get a direct conversion with
    the same error messages; anything else (paths, choices, ranges, custom parsers) keeps
    Typer's own conversion, built only when the user gives that option a value. A Typer whose
    internals differ is left alone.
    """
    try:
        from dataclasses import dataclass

        from typer import core
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
    except ImportError:  # pragma: no cover - another Typer: keep its behaviour
        return
    original = getattr(core._TyperParameter, "get_runtime_param", None)
    if (
        original is None
        or getattr(original, "_localllm", False)
        or not hasattr(core, "build_runtime_param")
    ):  # pragma: no cover
        return
    messages = {
        int: "Input should be a valid integer, unable to parse string as an integer",
        float: "Input should be a valid number, unable to parse string as a number",
        bool: "Input should be a valid boolean, unable to interpret input",
    }
    booleans = {
        **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
        **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False),
    }

    @dataclass(frozen=True)
    class PlainParam(RuntimeParam):  # type: ignore[misc]
        kind: Any = str

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.kind is list:
                return [v if isinstance(v, str) else str(v) for v in value]
            if isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool)):
                return value
            if self.kind is str:
                return str(value)
            if self.kind is bool:
                if str(value).strip().lower() in booleans:
                    return booleans[str(value).strip().lower()]
                raise BadParameter(messages[bool], ctx=ctx, param=param)
            try:
                return self.kind(value)
            except (TypeError, ValueError):
                raise BadParameter(messages[self.kind], ctx=ctx, param=param) from None

    @dataclass(frozen=True)
    class DeferredParam(RuntimeParam):  # type: ignore[misc]
        """Typer's own conversion, built only when a value is actually given."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            real = core.build_runtime_param(param.type_descriptor)
            param._runtime_param = real
            return real._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            d = self.type_descriptor
            info = d.parameter_info
            plain = (
                getattr(info, "parser", None) is None
                and getattr(info, "min", None) is None
                and getattr(info, "max", None) is None
                and d.file_annotation is None
            )
            kind = {str: str, int: int, float: float, bool: bool, list[str]: list}.get(d.annotation)
            if plain and kind is not None and not d.is_path and not d.is_choice:
                self._runtime_param = PlainParam(info, d.annotation, kind)
            else:
                self._runtime_param = DeferredParam(info, d.annotation)
        return self._runtime_param

    get_runtime_param._localllm = True  # type: ignore[attr-defined]
    core._TyperParameter.get_runtime_param = get_runtime_param


_install_plain_coercion()


def _install_plain_metavars() -> None:
    """Help that names values as click and most CLIs do (``--model TEXT``, ``--ctx INTEGER``,
    ``show [OPTIONS] MODEL``, ``run [OPTIONS] [PROMPT]``) instead of Typer 0.29's Python types
    (``--model <str>``, ``{model}``), which read as code to someone who is not a Python
    programmer. Choices, ranges and explicit metavars keep Typer's rendering. A Typer whose
    internals differ is left alone."""
    try:
        from typer import core
    except ImportError:  # pragma: no cover
        return
    param = getattr(core, "_TyperParameter", None)
    argument = getattr(core, "TyperArgument", None)
    original = getattr(param, "display_type", None)
    if (
        original is None
        or argument is None
        or getattr(original, "_localllm", False)
        or not hasattr(argument, "_usage_display_name")
    ):  # pragma: no cover
        return
    plain = {"<str>": "TEXT", "<int>": "INTEGER", "<float>": "FLOAT", "<bool>": "BOOLEAN"}
    plain.update({"<list[str]>": "TEXT", "<list[int]>": "INTEGER", "<list[float]>": "FLOAT"})

    def display_type(self: Any, ctx: Any) -> str:
        shown = original(self, ctx)
        if shown in plain:
            return plain[shown]
        if getattr(self.type_descriptor, "is_path", False):
            return "PATH"
        return shown

    def usage_name(self: Any) -> str:
        name = self.display_name_raw
        name = name if self.metavar is not None else name.upper()
        if not self.required:
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    display_type._localllm = True  # type: ignore[attr-defined]
    param.display_type = display_type
    argument._usage_display_name = usage_name


_install_plain_metavars()

# Set by ``localllm.cli.main`` (the console script), never by tests that invoke the app
# in-process: the process ends as soon as the command returns, so a one-shot command may
# leave memory for the operating system to take back instead of freeing it piece by piece.
PROCESS_ENDS_AFTER = False

app = typer.Typer(
    name="localllm",
    cls=_PlainHelpGroup,
    help="Run quantized large language models on your own machine.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_text() -> str:
    """``localllm --version``: our version, then llama-cpp-python's and the backends its
    build carries (the ``libggml-*`` libraries it installed), read from the package metadata
    and a directory listing: llama_cpp itself is never imported, so this stays as fast as
    ``--help``."""
    from localllm import __version__

    lines = [f"localllm {__version__}"]
    try:
        from importlib import metadata

        dist = metadata.distribution("llama-cpp-python")
    except Exception:
        lines.append("llama-cpp-python not installed")
        return "\n".join(lines)
    line = f"llama-cpp-python {dist.version}"
    backends = _backends(dist)
    if backends:
        line += f" (backends: {', '.join(backends)})"
    lines.append(line)
    return "\n".join(lines)


# libggml-<name>.so / .dylib / ggml-<name>.dll: the backends of a llama.cpp build
_BACKEND_NAMES = {
    "cpu": "CPU",
    "cuda": "CUDA",
    "metal": "Metal",
    "vulkan": "Vulkan",
    "hip": "ROCm",
    "sycl": "SYCL",
    "blas": "BLAS",
    "opencl": "OpenCL",
    "musa": "MUSA",
    "cann": "CANN",
    "rpc": "RPC",
}


def _backends(dist: Any) -> list[str]:
    import re

    try:
        folder = dist.locate_file("llama_cpp/lib")
        names = [p.name for p in folder.iterdir()]
    except Exception:
        return []
    found = set()
    for name in names:
        m = re.match(r"^(?:lib)?ggml-([a-z]+)[.-]", name)
        if m and m.group(1) in _BACKEND_NAMES:
            found.add(m.group(1))
    return [_BACKEND_NAMES[k] for k in _BACKEND_NAMES if k in found]


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        sys.stdout.flush()
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Show the version of localllm and of llama-cpp-python, and exit.",
            is_eager=True,
            callback=_show_version,
        ),
    ] = False,
) -> None:
    """Run quantized large language models on your own machine."""


# -- shell completion ---------------------------------------------------------------------
# Completers run on every Tab press, in a fresh process: they read the store's manifests and
# the profile folders only (no llama_cpp, no network) and never raise.

MODES = (("reasoning", "think step by step first"), ("instant", "answer at once"))


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or ("/" in text and text.lower().endswith(".gguf"))


def _complete_paths(incomplete: str) -> list[tuple[str, str]]:
    """Folders and .gguf files below what was typed so far."""
    import os
    from pathlib import Path

    expanded = os.path.expanduser(incomplete)
    folder, _, prefix = expanded.rpartition("/")
    base = Path(folder or ("/" if expanded.startswith("/") else "."))
    shown = incomplete[: len(incomplete) - len(prefix)]
    out = []
    try:
        for entry in sorted(base.iterdir()):
            if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix):
                continue
            if entry.is_dir():
                out.append((shown + entry.name + "/", "folder"))
            elif entry.name.lower().endswith(".gguf"):
                out.append((shown + entry.name, "GGUF file"))
    except OSError:
        return []
    return out[:200]


def complete_model(incomplete: str) -> list[tuple[str, str]]:
    """Installed model names (and catalog aliases) starting with ``incomplete``; .gguf paths
    when it looks like a path."""
    if _looks_like_path(incomplete):
        return _complete_paths(incomplete)
    try:
        from localllm import catalog, store

        items = {m.name: m.source or "installed" for m in store.installed()}
        for entry in catalog.CATALOG:
            items.setdefault(entry.alias, "catalog alias")
        if incomplete:  # other tools' models: ollama:NAME, lmstudio:..., llamacpp:...
            from localllm import foreign

            for scan in foreign.scan():
                items.update({m.ref: scan.label for m in scan.usable()})
    except Exception:
        return []
    wanted = incomplete.lower()
    ordered = sorted(items.items(), key=lambda item: item[0].lower())
    return [(name, help) for name, help in ordered if name.lower().startswith(wanted)]


def complete_profile(incomplete: str) -> list[tuple[str, str]]:
    """Profile names (built-in and yours) starting with ``incomplete``."""
    try:
        from localllm.profiles import available_profiles

        sources = available_profiles()
    except Exception:
        return []
    return [
        (p.name, p.description or ("built-in" if p.builtin else "user"))
        for p in sources
        if p.name.startswith(incomplete)
    ]


def complete_mode(incomplete: str) -> list[tuple[str, str]]:
    """``--mode`` values."""
    return [(name, help) for name, help in MODES if name.startswith(incomplete)]


def complete_reasoning_format(incomplete: str) -> list[str]:
    """``--reasoning-format`` values."""
    from localllm.reasoning import ADAPTERS

    return [name for name in ("auto", *ADAPTERS) if name.startswith(incomplete)]


def output_width() -> int | None:
    """The width tables on stdout may use: ``None`` on a terminal (rich asks it); when piped,
    ``$COLUMNS`` if set, else no limit, so a long path or name stays on one line."""
    if sys.stdout.isatty():
        return None
    import os

    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    return columns if columns > 0 else 1_000_000


def print_json(value: Any) -> None:
    """One JSON document on stdout, as every ``--json`` prints it: indented, UTF-8 as is (a
    string holding undecodable bytes, such as a path, falls back to ASCII escapes)."""
    import json

    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_table(table: Any, *, markup: bool = True) -> None:
    """A rich table on stdout: styled on a terminal; piped, plain lines that neither wrap
    (unless ``$COLUMNS`` says so) nor carry the padding rich adds to fill a column."""
    from rich.console import Console

    width = output_width()
    if width is None:
        Console(highlight=False, markup=markup).print(table)
        return
    import io

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        highlight=False,
        markup=markup,
        color_system=None,
        force_terminal=False,
        soft_wrap=False,
    )
    console.print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


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

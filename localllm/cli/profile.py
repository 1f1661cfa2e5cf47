"""``localllm profile ...``: list, show, create, edit and validate profiles.

Errors from the core (:class:`~localllm.errors.ProfileError`) propagate to ``main()``, which
prints them and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from localllm.cli._app import app, complete_profile, err

profile_app = typer.Typer(
    name="profile",
    help="List, show, create, edit and validate generation profiles.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(profile_app, name="profile")


def _source_label(builtin: bool, shadows_builtin: bool) -> str:
    if builtin:
        return "built-in"
    return "user, shadows built-in" if shadows_builtin else "user"


@profile_app.command("list")
def list_profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """Show every profile: built-ins and yours (yours shadow a built-in of the same name)."""

    from rich.console import Console
    from rich.table import Table

    from localllm.cli._app import output_width, print_json, print_table
    from localllm.errors import ProfileError
    from localllm.profiles import available_profiles, load_profile

    rows: list[tuple[str, str, str, str, str]] = []
    records: list[dict[str, Any]] = []
    for source in available_profiles():
        record: dict[str, Any] = {
            "name": source.name,
            "builtin": source.builtin,
            "shadows_builtin": source.shadows_builtin,
            "path": str(source.path),
        }
        try:
            profile = load_profile(source.name)
            mode, temperature, description = (
                profile.mode,
                f"{profile.temperature:g}",
                profile.description,
            )
            record.update(
                mode=profile.mode,
                temperature=profile.temperature,
                description=profile.description,
                error=None,
            )
        except ProfileError as exc:
            problem, where = exc.message, str(source.path) + ":"
            if problem.startswith(where):  # the path is in the row already, keep the line
                problem = "line " + problem[len(where) :]
            mode, temperature, description = "?", "?", f"invalid: {problem}"
            record.update(mode=None, temperature=None, description=None, error=exc.message)
        label = _source_label(source.builtin, source.shadows_builtin)
        rows.append((source.name, label, mode, temperature, description))
        records.append(record)
    if as_json:
        print_json(records)
        return

    # A terminal's width is respected; piped output keeps whole descriptions (for grep).
    width = output_width() or Console().width
    headers = ("name", "source", "mode", "temperature", "description")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers[:-1])]
    # The description is the only column that gives way on a narrow terminal.
    room = max(12, width - sum(widths) - 2 * len(widths))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header, col_width in zip(headers[:-1], widths, strict=True):
        table.add_column(header, no_wrap=True, min_width=col_width)
    table.add_column(headers[-1], no_wrap=True, overflow="ellipsis", max_width=room)
    for row in rows:
        table.add_row(*row, style="red" if row[2] == "?" else None)
    print_table(table, markup=False)


@profile_app.command("show")
def show(
    name: str = typer.Argument(
        "default", help="Profile name or path to a YAML file.", autocompletion=complete_profile
    ),
) -> None:
    """Print a profile as YAML with its `extends` chain resolved."""
    from localllm.profiles import load_profile, profile_to_yaml

    typer.echo(profile_to_yaml(load_profile(name)), nl=False)


@profile_app.command("new")
def new(
    name: str = typer.Argument(..., help="Name of the new user profile."),
    source: str = typer.Option(
        "default", "--from", help="Profile to copy.", autocompletion=complete_profile
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing profile."),
) -> None:
    """Create a user profile by copying another one."""
    from localllm.errors import ProfileError
    from localllm.profiles import builtin_path, check_name, load_profile, save_user_profile
    from localllm.profiles import user_profile_path as user_path

    check_name(name)
    target = user_path(name)
    if target.exists() and not force:
        raise ProfileError(
            f"a user profile named '{name}' already exists: {target}",
            hint=f"use --force to overwrite it, or `localllm profile edit {name}`",
        )
    profile = load_profile(source)
    header = f"{name}: created from '{source}' by `localllm profile new`."
    path = save_user_profile(profile, name, header=header)
    if builtin_path(name) is not None:
        err(f"note: '{name}' now shadows the built-in profile of the same name")
    typer.echo(str(path))


def _editor_chosen() -> bool:
    """Whether the user named an editor ($VISUAL or $EDITOR)."""
    import os

    return any(os.environ.get(v, "").strip() for v in ("VISUAL", "EDITOR"))


def _editor_command() -> list[str]:
    import os
    import shlex
    import shutil

    from localllm.errors import ProfileError

    for variable in ("VISUAL", "EDITOR"):
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                command = shlex.split(value, posix=os.name != "nt")
            except ValueError as exc:
                raise ProfileError(f"${variable} cannot be parsed: {exc}") from None
            if command:
                return command
    for fallback in ("nano", "vi"):
        found = shutil.which(fallback)
        if found:
            return [found]
    raise ProfileError("no text editor found", hint="set $EDITOR, e.g. `export EDITOR=nano`")


@profile_app.command("edit")
def edit(
    name: str = typer.Argument(..., help="Profile to edit.", autocompletion=complete_profile),
) -> None:
    """Edit a user profile in $VISUAL / $EDITOR; it is saved only if it still validates.

    Editing a built-in creates a user profile of the same name that shadows it.
    """
    import subprocess
    import tempfile

    from localllm.durable import write_atomic
    from localllm.errors import ProfileError
    from localllm.profiles import (
        builtin_text,
        check_name,
        load_profile,
        profile_to_yaml,
        user_profile_path,
        validate_file_as,
    )

    check_name(name)
    target = user_profile_path(name)
    if target.is_file():
        original = target.read_bytes().decode("utf-8", errors="replace")
        from_builtin = False
    else:
        text = builtin_text(name)
        if text is None:  # not a built-in either: load_profile raises "no profile named ..."
            text = profile_to_yaml(load_profile(name))
        original = (
            f"# {name}: your copy of the built-in profile; it shadows the built-in once saved.\n"
            + text
        )
        from_builtin = True

    if not _editor_chosen() and not (sys.stdin.isatty() and sys.stdout.isatty()):
        # the fallbacks (nano, vi) need a terminal: without one they garble the output
        raise ProfileError(
            "no $VISUAL or $EDITOR is set, and the fallback editor needs a terminal",
            hint="run it in a terminal, or set $EDITOR (e.g. EDITOR='code --wait'), or edit "
            f"the file `localllm profile path {name}` prints",
        )
    editor = _editor_command()
    workdir = Path(tempfile.mkdtemp(prefix="localllm-edit-"))
    draft = workdir / target.name
    draft.write_text(original, encoding="utf-8")
    command = [*editor, str(draft)]
    try:
        status = subprocess.run(command, check=False).returncode
    except OSError as exc:
        _cleanup(workdir)
        raise ProfileError(
            f"cannot start the editor {command[0]!r}: {exc.strerror or exc}",
            hint="set $EDITOR to an installed editor",
        ) from None
    if status != 0:
        raise ProfileError(
            f"the editor exited with status {status}; {target.name} was not changed",
            hint=f"your draft is kept in {draft}",
        )
    edited = draft.read_bytes()
    if edited.decode("utf-8", errors="replace") == original:
        _cleanup(workdir)
        err(f"no changes; {target} was not changed" if not from_builtin else "no changes")
        return
    try:
        validate_file_as(draft, name)
    except ProfileError as exc:
        raise ProfileError(
            f"{exc.message}; {target.name} was not changed",
            hint=f"your draft is kept in {draft}",
        ) from None
    write_atomic(target, edited)
    _cleanup(workdir)
    if from_builtin:
        err(f"note: '{name}' now shadows the built-in profile of the same name")
    typer.echo(f"saved {target}")


def _cleanup(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _looks_like_path(ref: str) -> bool:
    return Path(ref).is_file() or ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref


@profile_app.command("validate")
def validate(
    refs: list[str] | None = typer.Argument(
        None,
        help="Profile names or YAML files; every user profile when none is given.",
        metavar="[PATH_OR_NAME]...",
    ),
) -> None:
    """Check profiles: prints `ok NAME` for each valid one; exits 2 if any is invalid."""
    from localllm.cli import format_error
    from localllm.errors import ProfileError
    from localllm.paths import profiles_dir
    from localllm.profiles import load_profile, load_profile_file

    targets: list[tuple[str, str | Path]]
    if refs:
        targets = [(ref, Path(ref) if _looks_like_path(ref) else ref) for ref in refs]
    else:
        folder = profiles_dir()
        files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        targets = [(f.stem, f) for f in files if f.is_file()]
        if not targets:
            err(f"no user profiles in {folder}")
            return
    failed = 0
    for label, target in targets:
        try:
            if isinstance(target, Path):
                load_profile_file(target)
            else:
                load_profile(target)
        except ProfileError as exc:
            failed += 1
            err(format_error(exc))
        else:
            typer.echo(f"ok {label}")
    if failed:
        # Through main() like every core error: printed on stderr, exit code 2.
        raise ProfileError(
            f"{failed} of {len(targets)} profiles are invalid",
            hint="fix the lines named above, then run `localllm profile validate` again",
        )


@profile_app.command("path")
def path(
    name: str | None = typer.Argument(
        None, help="A profile: print the file it is read from.", autocompletion=complete_profile
    ),
) -> None:
    """Print the user profiles folder, or the file a profile is read from."""
    from localllm.paths import profiles_dir
    from localllm.profiles import profile_path

    typer.echo(str(profile_path(name) if name else profiles_dir()))

"""The slash commands: one registry that the dispatcher and the help screen both read.

Each command names the :class:`~localllm.tui.app.ChatApp` method that runs it
(``command_<name>``, called with the text after the command, stripped).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # without the slash
    usage: str  # the arguments, as shown in the help ("" when it takes none)
    help: str
    aliases: tuple[str, ...] = ()

    @property
    def handler(self) -> str:
        return f"command_{self.name}"

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def help_key(self) -> str:
        """``/new, /clear`` or ``/model [NAME]``: how the help screen lists it."""
        names = ", ".join(f"/{n}" for n in self.spellings)
        return f"{names} {self.usage}".rstrip()


COMMANDS: tuple[Command, ...] = (
    Command("model", "[NAME]", "load a model (no name: the picker)"),
    Command("pull", "REF", "download a model from the Hub, then load it"),
    Command("profile", "[NAME]", "switch profile (no name: the picker)"),
    Command("sampling", "", "edit the sampling values", aliases=("edit",)),
    Command("mode", "[reasoning|instant]", "set the mode (no argument: toggle)"),
    Command("system", "[TEXT|-]", "set the system prompt (no text: the editor; -: clear it)"),
    Command(
        "image",
        "[PATH|clear]",
        "attach an image to the next message (no path: the file picker, Ctrl+A)",
        aliases=("attach",),
    ),
    Command("new", "", "start a new chat", aliases=("clear",)),
    Command("chats", "", "saved conversations", aliases=("conversations", "history")),
    Command("rename", "TITLE", "rename this conversation"),
    Command("export", "[PATH]", "write this conversation as Markdown"),
    Command("help", "", "this help", aliases=("?",)),
    Command("quit", "", "quit", aliases=("exit", "q")),
)

_BY_SPELLING = {spelling: c for c in COMMANDS for spelling in c.spellings}


def parse(line: str) -> tuple[Command | None, str, str]:
    """Split ``/word rest``: the command (None when unknown), the word as typed, the rest."""
    word, _, arg = line.strip().partition(" ")
    word = word.lower()
    return _BY_SPELLING.get(word.removeprefix("/")), word, arg.strip()


def is_command(text: str) -> bool:
    """Whether a submitted prompt is a command (``//`` escapes a leading slash)."""
    stripped = text.strip()
    return stripped.startswith("/") and not stripped.startswith("//")

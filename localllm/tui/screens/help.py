"""The help screen: every key and slash command."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from localllm.tui.commands import COMMANDS

KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "send the prompt"),
    ("Shift+Enter, Ctrl+J, Alt+Enter", "new line in the prompt"),
    ("Up / Down", "earlier prompts (on the first / last line of the prompt)"),
    ("Esc, Ctrl+C", "stop the answer in progress (what was written is kept)"),
    ("Ctrl+O", "model picker (load an installed model, or pull one)"),
    ("Ctrl+P", "profile picker"),
    ("Ctrl+S", "edit the sampling values (checked as in a profile file)"),
    ("Ctrl+T", "toggle reasoning / instant mode"),
    ("Ctrl+G", "edit the system prompt"),
    ("Ctrl+N", "new chat"),
    ("Ctrl+L", "saved conversations (resume, rename, delete, export)"),
    ("Ctrl+A", "attach an image to the next message (file picker; vision models)"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
)

CONVERSATION_KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "resume (with its model and profile when available)"),
    ("R", "rename"),
    ("D", "delete"),
    ("E", "export as Markdown to the current folder"),
)


def _table(title: str, rows: tuple[tuple[str, str], ...]) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        show_header=False,
        padding=(0, 2, 0, 0),
        expand=True,
    )
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(ratio=1)
    for key, what in rows:
        table.add_row(key, what)
    return table


def help_renderable() -> Group:
    """Every key and command, as tables."""
    return Group(
        _table("Keys", KEYS),
        Text(""),
        _table("Slash commands", tuple((c.help_key(), c.help) for c in COMMANDS)),
        Text(""),
        _table("In the conversation list", CONVERSATION_KEYS),
        Text(""),
        Text(
            "Conversations are saved as they happen; Ctrl+L lists them. "
            "Start a prompt with // to send a leading /.",
            style="dim",
        ),
    )


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide", id="help"):
            yield Label("localllm chat · help", classes="dialog-title")
            yield Static(help_renderable(), id="help-text")
            yield Static("Esc or F1: close", classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)

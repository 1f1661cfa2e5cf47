"""Saved conversations: resume, rename, delete, export."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from localllm import conversations
from localllm.errors import LocalLLMError
from localllm.tui.screens.dialogs import Confirm, TextPrompt


class ConversationList(ModalScreen[str | None]):
    """Dismisses with the id of the conversation to resume, or ``None``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("r", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("e", "export", "Export"),
    ]

    def __init__(self, current: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.current = current
        self.summaries: list[conversations.Summary] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Conversations", classes="dialog-title")
            yield OptionList(id="conversations")
            yield Static(
                "Enter: resume · R: rename · D: delete · E: export Markdown · Esc: close",
                classes="dialog-hint",
            )

    def on_mount(self) -> None:
        self.refresh_list()
        self.query_one(OptionList).focus()

    def refresh_list(self) -> None:
        """Re-read the folder, keeping the highlight on the same conversation."""
        keep = self.selected()
        self.summaries = conversations.list_conversations()
        options = self.query_one(OptionList)
        options.clear_options()
        if not self.summaries:
            options.add_option(
                Option(Text("no saved conversations yet", style="italic"), id="-", disabled=True)
            )
            return
        for summary in self.summaries:
            when = datetime.fromtimestamp(summary.updated).strftime("%Y-%m-%d %H:%M")
            text = Text()
            text.append("● " if summary.id == self.current else "  ", style="green")
            text.append(summary.title, style="bold")
            text.append(f"\n  {when} · {summary.messages} messages", style="dim")
            if summary.model:
                text.append(f" · {summary.model}", style="dim")
            options.add_option(Option(text, id=summary.id))
        ids = [s.id for s in self.summaries]
        options.highlighted = ids.index(keep.id) if keep is not None and keep.id in ids else 0

    def selected(self) -> conversations.Summary | None:
        index = self.query_one(OptionList).highlighted
        if index is None or not self.summaries or index >= len(self.summaries):
            return None
        return self.summaries[index]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id not in (None, "-"):
            self.dismiss(event.option.id)

    def action_rename(self) -> None:
        summary = self.selected()
        if summary is None:
            return

        def done(title: str | None) -> None:
            if not title:
                return
            try:
                conversations.load(summary.id).rename(title)
            except LocalLLMError as exc:
                self.notify(exc.message, title="Rename failed", severity="error")
                return
            self.app.post_message(ConversationList.Renamed(summary.id, title))
            self.refresh_list()

        self.app.push_screen(TextPrompt("Rename conversation", summary.title), done)

    def action_delete(self) -> None:
        summary = self.selected()
        if summary is None:
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                conversations.delete(summary.id)
            except LocalLLMError as exc:
                self.notify(exc.message, title="Delete failed", severity="error")
                return
            self.app.post_message(ConversationList.Deleted(summary.id))
            self.notify(f"deleted “{summary.title}”")
            self.refresh_list()

        self.app.push_screen(Confirm(f"Delete “{summary.title}”?", yes="Delete"), done)

    def action_export(self) -> None:
        summary = self.selected()
        if summary is None:
            return
        try:
            path = conversations.export_markdown(conversations.load(summary.id))
        except LocalLLMError as exc:
            self.notify(exc.message, title="Export failed", severity="error")
            return
        self.notify(f"wrote {path}", title="Exported")

    def action_close(self) -> None:
        self.dismiss(None)

    # Messages for the app: the conversation it shows may have been renamed or deleted.

    class Renamed(Message):
        def __init__(self, conversation_id: str, title: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id
            self.title = title

    class Deleted(Message):
        def __init__(self, conversation_id: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id

"""The system prompt editor."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static, TextArea


class SystemPromptEditor(ModalScreen[str | None]):
    """Edit the system prompt; Ctrl+S saves (empty: no system prompt), Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]
    AUTO_FOCUS = "TextArea"

    def __init__(self, text: str) -> None:
        super().__init__(classes="dialog-screen")
        self._text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("System prompt", classes="dialog-title")
            yield TextArea(self._text, id="system-text", soft_wrap=True, tab_behavior="focus")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")
            yield Static(
                "Ctrl+S: save · Esc: cancel · empty: no system prompt · changing it re-reads the"
                " whole conversation once",
                classes="dialog-hint",
            )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text.strip())

    def action_close(self) -> None:
        self.dismiss(None)

"""The main screen: the transcript, the prompt, download progress and the status bar."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static

from localllm.tui.widgets.download import DownloadBar
from localllm.tui.widgets.messages import ChatLog
from localllm.tui.widgets.prompt import PromptInput
from localllm.tui.widgets.status import StatusBar


class ChatScreen(Screen[None]):
    """Layout only: the app owns the state and reacts to what the widgets post."""

    def __init__(self, *, timings: bool = True) -> None:
        super().__init__()
        self._timings = timings

    def compose(self) -> ComposeResult:
        yield ChatLog(id="log")
        yield DownloadBar(id="download")
        yield Static("", id="attachments")
        yield PromptInput(
            id="prompt",
            placeholder="Ask something · Enter sends · Shift+Enter or Ctrl+J: new line · /help",
        )
        yield StatusBar(id="status", timings=self._timings)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()

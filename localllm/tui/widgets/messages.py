"""The chat transcript: user messages, streamed assistant answers, and the log that holds them.

An :class:`AssistantMessage` is fed from the engine worker thread by posting it
:class:`AssistantMessage.Delta` messages (``post_message`` is thread-safe); it streams them into
Markdown widgets with Textual's ``MarkdownStream``, which appends to the last block instead of
re-rendering the whole answer. :class:`AssistantMessage.Finished` closes the streams and notes
how the answer ended.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets.markdown import MarkdownStream


class UserMessage(Static):
    """A message the person sent (shown as plain text, never as markup)."""

    def __init__(self, text: str) -> None:
        from rich.text import Text

        super().__init__(Text(text), classes="message user")
        self.text = text


class AssistantMessage(Vertical):
    """One answer: an optional reasoning block above the streamed Markdown answer."""

    class Delta(Message):
        """New text for this answer (posted by the engine worker)."""

        def __init__(
            self, answer: str = "", reasoning: str = "", reasoning_tokens: int = 0
        ) -> None:
            super().__init__()
            self.answer = answer
            self.reasoning = reasoning
            self.reasoning_tokens = reasoning_tokens

    class Finished(Message):
        """The answer is complete (or stopped, or failed): close the streams, add a note."""

        def __init__(
            self,
            message: AssistantMessage,
            *,
            answer: str = "",
            reasoning: str = "",
            stats: Any = None,
            error: Exception | None = None,
            history: list[dict[str, Any]] | None = None,
            reasoning_tokens: int | None = None,
        ) -> None:
            super().__init__()
            self.message = message
            self.history = history
            self.reasoning_tokens = reasoning_tokens
            self.answer = answer
            self.reasoning = reasoning
            self.stats = stats
            self.error = error

        @property
        def stopped(self) -> bool:
            return getattr(self.stats, "stop_reason", None) == "cancelled"

    def __init__(
        self,
        answer: str = "",
        reasoning: str = "",
        *,
        note: str = "",
        show_reasoning: bool = True,
        expand_reasoning: bool = False,
        streaming: bool = False,
        archived: bool = False,
    ) -> None:
        super().__init__(classes="message assistant")
        self._initial_answer = answer
        self._initial_reasoning = reasoning
        self._note = note
        self.show_reasoning = show_reasoning
        self.expand_reasoning = expand_reasoning
        self.streaming = streaming
        self.archived = archived and not streaming
        self.answer = answer
        self.reasoning = reasoning
        self.reasoning_tokens = 0
        self._answer_stream: MarkdownStream | None = None
        self._reasoning_stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        if self.streaming or self._initial_reasoning:
            collapsed = not (self.streaming or self.expand_reasoning)
            with Collapsible(title="Reasoning", collapsed=collapsed, classes="reasoning"):
                if self.archived:
                    yield Static(_plain(self._initial_reasoning), classes="reasoning-text")
                else:
                    yield Markdown(self._initial_reasoning, classes="reasoning-text")
        if self.archived:
            yield Static(_rich_markdown(self._initial_answer), classes="answer archived")
        else:
            yield Markdown(self._initial_answer, classes="answer")
        yield Static(self._note, classes="note")

    def on_mount(self) -> None:
        for block in self.query(".reasoning"):
            block.display = bool(self._initial_reasoning) and self.show_reasoning
        self.query_one(".note").display = bool(self._note)
        if self.streaming:
            self.add_class("-streaming")

    async def archive(self) -> None:
        """Swap the live Markdown widgets (dozens of blocks each) for one pre-rendered widget.

        Textual lays out every widget of the transcript again whenever the streaming answer
        grows, so older answers are archived to keep that cost flat as a chat gets long.
        """
        if self.streaming or self.archived or not self.is_attached:
            return
        self.archived = True
        with self.app.batch_update():
            for old in self.query(".reasoning-text"):
                await old.remove()
                await self.query_one(".reasoning Contents").mount(
                    Static(_plain(self.reasoning), classes="reasoning-text")
                )
            answer = self.query_one(".answer")
            await self.mount(
                Static(_rich_markdown(self.answer), classes="answer archived"), before=answer
            )
            await answer.remove()

    # -- streaming ---------------------------------------------------------------------------

    def _reasoning_title(self) -> str:
        if self.streaming and not self.answer:
            return f"Reasoning… {self.reasoning_tokens} tokens"
        if not self.reasoning_tokens:
            return "Reasoning"
        return f"Reasoning · {self.reasoning_tokens} tokens"

    async def on_assistant_message_delta(self, event: AssistantMessage.Delta) -> None:
        event.stop()
        if event.reasoning:
            self.reasoning += event.reasoning
            self.reasoning_tokens += event.reasoning_tokens
            block = self.query_one(".reasoning", Collapsible)
            if self.show_reasoning:
                block.display = True
                block.title = self._reasoning_title()
                if self._reasoning_stream is None:
                    self._reasoning_stream = Markdown.get_stream(
                        self.query_one(".reasoning-text", Markdown)
                    )
                await self._reasoning_stream.write(event.reasoning)
        if event.answer:
            first = not self.answer
            self.answer += event.answer
            if first and self.reasoning:
                block = self.query_one(".reasoning", Collapsible)
                block.title = self._reasoning_title()
                if not self.expand_reasoning:
                    block.collapsed = True
            if self._answer_stream is None:
                self._answer_stream = Markdown.get_stream(self.query_one(".answer", Markdown))
            await self._answer_stream.write(event.answer)

    async def on_assistant_message_finished(self, event: AssistantMessage.Finished) -> None:
        event.stop()
        for stream in (self._reasoning_stream, self._answer_stream):
            if stream is not None:
                await stream.stop()
        self._reasoning_stream = self._answer_stream = None
        self.streaming = False
        self.remove_class("-streaming")
        if event.reasoning_tokens is not None:
            self.reasoning_tokens = event.reasoning_tokens
        if self.reasoning:
            for block in self.query(".reasoning").results(Collapsible):
                block.title = self._reasoning_title()
        note = ""
        if event.error is not None:
            note = f"error: {event.error}"
            self.add_class("-error")
        elif event.stopped:
            note = "stopped"
            self.add_class("-stopped")
        elif getattr(event.stats, "stop_reason", None) in ("length", "context"):
            note = "cut off: " + (
                "max tokens reached" if event.stats.stop_reason == "length" else "context full"
            )
        elif not self.answer and not self.reasoning:
            note = "(no answer)"
        self.set_note(note)

    def set_note(self, note: str) -> None:
        from rich.text import Text

        self._note = note
        widget = self.query_one(".note", Static)
        widget.update(Text(note))
        widget.display = bool(note)


def _rich_markdown(text: str) -> Any:
    from rich.markdown import Markdown as RichMarkdown

    return RichMarkdown(text, code_theme="monokai", hyperlinks=False)


def _plain(text: str) -> Any:
    from rich.text import Text

    return Text(text)


class ChatLog(VerticalScroll):
    """The scrolling transcript; it stays anchored to the bottom while an answer streams."""

    def on_mount(self) -> None:
        self.anchor()

    def clear(self) -> None:
        self.remove_children()

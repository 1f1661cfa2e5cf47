"""The chat transcript: user messages, streamed assistant answers, and the log that holds them.

An :class:`AssistantMessage` is fed from the engine worker thread by posting it
:class:`AssistantMessage.Delta` messages (``post_message`` is thread-safe). While it streams, the
answer is one widget redrawn with rich's Markdown rendering of the text so far (cheap: one widget
to lay out); :class:`AssistantMessage.Finished` swaps in a Markdown widget and notes how the
answer ended.

Line breaks: a model writes a poem or an address one line per line, with single newlines, which
Markdown would join into one paragraph (soft breaks). As chat apps do, answers are parsed so that
a single newline inside a paragraph is a line break; code blocks, lists and tables are parsed as
before.
"""

from __future__ import annotations

import re
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static

from localllm.streaming import TurnResult, settled


class UserMessage(Static):
    """A message the person sent (shown as plain text, never as markup), with a line per
    attached image (its file name and size) above the text."""

    def __init__(self, text: str, attachments: list[str] | None = None) -> None:
        from rich.text import Text

        shown = Text()
        for label in attachments or ():
            shown.append(f"[image] {label}\n", style="dim")
        shown.append(text)
        super().__init__(shown, classes="message user")
        self.text = text
        self.attachments = list(attachments or ())


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

        def __init__(self, result: TurnResult) -> None:
            super().__init__()
            self.result = result

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
        code: str | None = None,
    ) -> None:
        super().__init__(classes="message assistant")
        self.code = code  # the answer is shown as a fenced block of this language ("json")
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
        self._settled = 0  # how much of the streamed answer is drawn for good

    def compose(self) -> ComposeResult:
        if self.streaming or self._initial_reasoning:
            collapsed = not (self.streaming or self.expand_reasoning)
            with Collapsible(title="Reasoning", collapsed=collapsed, classes="reasoning"):
                if self.streaming:
                    yield Static("", classes="reasoning-text live")
                elif self.archived:
                    yield Static(_plain(self._initial_reasoning), classes="reasoning-text")
                else:
                    yield _markdown(self._initial_reasoning, "reasoning-text")
        if self.streaming:
            yield Static("", classes="answer live")
        elif self.archived:
            yield Static(_rich_markdown(self.shown()), classes="answer archived")
        else:
            yield _markdown(self.shown(), "answer")
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
                Static(_rich_markdown(self.shown()), classes="answer archived"), before=answer
            )
            await answer.remove()

    def shown(self) -> str:
        """The answer's Markdown: as written, or fenced as a ``code`` block."""
        if self.code is None or not self.answer:
            return self.answer
        return fenced(self.answer, self.code)

    # -- streaming ---------------------------------------------------------------------------

    def _reasoning_title(self) -> str:
        if self.streaming and not self.answer:
            return f"Reasoning… {self.reasoning_tokens} tokens"
        if not self.reasoning_tokens:
            return "Reasoning"
        return f"Reasoning · {self.reasoning_tokens} tokens"

    async def on_assistant_message_delta(self, event: AssistantMessage.Delta) -> None:
        """New text: redraw the live copy (one widget holding rich's rendering of the whole
        Markdown so far). Textual's Markdown widget, fed a stream, mounts and lays out a widget
        per block at every update: with a small model on two cores that cost a fifth of the
        decode speed, where redrawing one widget costs next to nothing."""
        event.stop()
        if event.reasoning:
            self.reasoning += event.reasoning
            self.reasoning_tokens += event.reasoning_tokens
            block = self.query_one(".reasoning", Collapsible)
            if self.show_reasoning:
                block.display = True
                block.title = self._reasoning_title()
                live = self.query_one(".reasoning-text", Static)
                live.update(_rich_markdown(self.reasoning))
        if event.answer:
            first = not self.answer
            self.answer += event.answer
            if first and self.reasoning:
                block = self.query_one(".reasoning", Collapsible)
                block.title = self._reasoning_title()
                if not self.expand_reasoning:
                    block.collapsed = True
            await self._redraw_answer()

    async def _redraw_answer(self) -> None:
        """Redraw what is not settled yet; a settled head (blocks that more text cannot
        change) is drawn once, so a long answer does not cost more per update than a short
        one."""
        live = self.query_one(".answer.live", Static)
        if self.code is not None:  # one code block: nothing settles before it closes
            live.update(_rich_markdown(self.shown()))
            return
        cut = settled(self.answer, self._settled)
        if cut > self._settled:
            head = Static(_rich_markdown(self.answer[self._settled : cut]), classes="head live")
            await self.mount(head, before=live)
            self._settled = cut
        live.update(_rich_markdown(self.answer[self._settled :]))

    async def on_assistant_message_finished(self, event: AssistantMessage.Finished) -> None:
        event.stop()
        if self.streaming:
            # The finished answer becomes a Markdown widget like any other shown answer.
            with self.app.batch_update():
                reasoning = self.query(".reasoning-text.live")
                for live in reasoning:
                    final = _markdown(self.reasoning, "reasoning-text")
                    await live.parent.mount(final, before=live)  # type: ignore[union-attr]
                await reasoning.remove()
                await self.mount(_markdown(self.shown(), "answer"), before=self.query_one(".note"))
                await self.query(".live").remove()
        self.streaming = False
        self.remove_class("-streaming")
        result = event.result
        if result.reasoning_tokens is not None:
            self.reasoning_tokens = result.reasoning_tokens
        if self.reasoning:
            for block in self.query(".reasoning").results(Collapsible):
                block.title = self._reasoning_title()
        note = ""
        stop_reason = getattr(result.stats, "stop_reason", None)
        if result.error is not None:
            note = f"error: {result.error}"
            self.add_class("-error")
        elif result.stopped:
            note = "stopped"
            self.add_class("-stopped")
        elif stop_reason in ("length", "context"):
            note = "cut off: " + (
                "max tokens reached" if stop_reason == "length" else "context full"
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


def fenced(text: str, language: str) -> str:
    """``text`` as a fenced Markdown code block, the fence longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.strip()}\n{fence}"


def _hard_breaks(state: Any) -> None:
    """A markdown-it core rule: every soft break (a single newline in a paragraph) becomes a
    line break. Code blocks and tables hold no soft breaks, so they are left as they are."""
    for token in state.tokens:
        if token.type == "inline" and token.children:
            for child in token.children:
                if child.type == "softbreak":
                    child.type, child.tag = "hardbreak", "br"


def _with_hard_breaks(parser: Any) -> Any:
    parser.core.ruler.push("hard_breaks", _hard_breaks)
    return parser


def chat_parser() -> Any:
    """The Markdown parser for answers: GitHub-like, with a single newline as a line break."""
    global _PARSER
    if _PARSER is None:
        from markdown_it import MarkdownIt

        _PARSER = _with_hard_breaks(MarkdownIt("gfm-like"))
    return _PARSER


_PARSER: Any = None


def _markdown(text: str, classes: str) -> Markdown:
    return Markdown(text, classes=classes, parser_factory=chat_parser)


def _rich_markdown(text: str) -> Any:
    """Rich's Markdown of ``text`` (a streaming or an archived answer), with the same line
    breaks as the Markdown widget."""
    global _RICH_PARSER
    from rich.markdown import Markdown as RichMarkdown

    if _RICH_PARSER is None:
        from markdown_it import MarkdownIt

        parser = MarkdownIt().enable("strikethrough").enable("table")  # as rich's own
        _RICH_PARSER = _with_hard_breaks(parser)
    rendered = RichMarkdown("", code_theme="monokai", hyperlinks=False)
    rendered.markup = text
    rendered.parsed = _RICH_PARSER.parse(text)
    return rendered


_RICH_PARSER: Any = None


def _plain(text: str) -> Any:
    from rich.text import Text

    return Text(text)


class ChatLog(VerticalScroll):
    """The scrolling transcript; it stays anchored to the bottom while an answer streams."""

    def on_mount(self) -> None:
        self.anchor()

    def clear(self) -> None:
        self.remove_children()

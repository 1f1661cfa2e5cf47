"""One chat turn streamed for a screen: session events coalesced into screen-sized deltas.

A front end that draws an answer as it is generated should not redraw per token: each redraw
costs CPU that a small machine's llama.cpp threads would rather have. :class:`Coalescer` batches
the session's events into :class:`Delta` s at most every ``interval`` seconds, and
:func:`stream_turn` runs one whole turn of a :class:`~localllm.session.ChatSession` through it,
returning a :class:`TurnResult` (the finished answer, its stats, the new history or the error).

No terminal, no Textual: the TUI's worker is a thin loop over this, and tests drive it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from localllm.errors import InferenceError, LocalLLMError
from localllm.textin import clean_text

DEFAULT_INTERVAL = 0.3  # seconds between deltas: ~3 redraws a second


@dataclass(frozen=True)
class Delta:
    """Text produced since the previous delta."""

    answer: str = ""
    reasoning: str = ""
    reasoning_tokens: int = 0

    def __bool__(self) -> bool:
        return bool(self.answer or self.reasoning)


@dataclass
class TurnResult:
    """How a turn ended: what to show, what to save, what the model saw."""

    answer: str = ""
    reasoning: str = ""
    stats: Any = None  # localllm.engine.Stats, or None when generation failed
    error: LocalLLMError | None = None
    history: list[dict[str, Any]] | None = None  # the session's messages after the turn
    reasoning_tokens: int | None = None
    mode: str | None = None  # the mode the turn actually ran in

    @property
    def stopped(self) -> bool:
        return getattr(self.stats, "stop_reason", None) == "cancelled"


@dataclass
class Coalescer:
    """Collects answer and reasoning text; hands out a :class:`Delta` when one is due.

    ``clock`` is injectable so tests can step time by hand.
    """

    interval: float = DEFAULT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    answer: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    _answer: list[str] = field(default_factory=list, repr=False)
    _reasoning: list[str] = field(default_factory=list, repr=False)
    _tokens: int = field(default=0, repr=False)
    _last: float | None = field(default=None, repr=False)

    def add(self, *, answer: str = "", reasoning: str = "", reasoning_tokens: int = 0) -> None:
        if answer:
            self.answer.append(answer)
            self._answer.append(answer)
        if reasoning:
            self.reasoning.append(reasoning)
            self._reasoning.append(reasoning)
            self._tokens += reasoning_tokens

    def due(self) -> Delta | None:
        """The pending text, if the interval since the last delta has passed.

        The first text goes out at once, so the first words show without delay.
        """
        if not (self._answer or self._reasoning):
            return None
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        return self.flush()

    def flush(self) -> Delta | None:
        """Whatever is pending, now (at the end of a turn)."""
        if not (self._answer or self._reasoning):
            return None
        delta = Delta("".join(self._answer), "".join(self._reasoning), self._tokens)
        self._answer.clear()
        self._reasoning.clear()
        self._tokens = 0
        return delta


def settled(text: str, start: int = 0, *, min_chars: int = 1500) -> int:
    """Where the Markdown in ``text[start:]`` can be cut so that what comes before will not
    change as more text streams in: after the last blank line outside a fenced code block, once
    at least ``min_chars`` precede it; else ``start``. A screen can then render the settled part
    once and redraw only the rest."""
    fence = ""
    cut = start
    offset = 0
    for line in text.splitlines(keepends=True):
        end = offset + len(line)
        marker = line.lstrip(" ")[:3]
        if len(line) - len(line.lstrip(" ")) <= 3 and marker in ("```", "~~~"):
            if not fence:
                fence = marker
            elif marker == fence:
                fence = ""
        elif not fence and not line.strip() and end - start >= min_chars and end < len(text):
            cut = end
        offset = end
    return cut


def stream_turn(
    session: Any,
    text: str,
    *,
    emit: Callable[[Delta], None],
    cancel: Callable[[], bool] | None = None,
    interval: float = DEFAULT_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    images: Sequence[Any] = (),
    constraint: Any = None,
) -> TurnResult:
    """Run one turn of ``session`` (a :class:`~localllm.session.ChatSession`), passing
    coalesced text to ``emit`` as it comes; never raises for a failed generation (the error is
    in the result, with what was produced before it). ``images`` go with the message;
    ``constraint`` (:class:`localllm.structured.Constraint`) shapes the answer."""
    from localllm.session import AnswerText, ReasoningText

    batch = Coalescer(interval, clock)
    result = TurnResult()
    try:
        extra: dict[str, Any] = {"images": list(images)} if images else {}
        if constraint is not None:
            extra["constraint"] = constraint
        for event in session.send(clean_text(text)[0], cancel=cancel, **extra):
            if isinstance(event, AnswerText):
                batch.add(answer=event.text)
            elif isinstance(event, ReasoningText):
                batch.add(reasoning=event.text, reasoning_tokens=int(getattr(event, "tokens", 1)))
            else:
                result.stats = event
                continue
            delta = batch.due()
            if delta is not None:
                emit(delta)
        result.history = [dict(m) for m in session.messages]
    except Exception as exc:
        result.error = (
            exc if isinstance(exc, LocalLLMError) else InferenceError(f"generation failed: {exc}")
        )
    delta = batch.flush()
    if delta is not None:
        emit(delta)
    result.answer = "".join(batch.answer)
    result.reasoning = "".join(batch.reasoning)
    last = getattr(session, "last_turn", None)
    if result.error is None and last is not None:
        # The session's own record of the turn: reasoning split out, tokens counted.
        result.answer = last.answer
        result.reasoning = last.reasoning
        result.reasoning_tokens = getattr(last, "reasoning_tokens", None)
        result.mode = getattr(last, "mode", None)
    return result

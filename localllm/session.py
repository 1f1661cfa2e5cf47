"""A conversation with a loaded model: the one place that turns messages into a prompt,
streams the engine's output as reasoning and answer events, and keeps the history.

Both front ends use it: ``localllm run`` for a single turn, the TUI for many. The history is
re-rendered in full each turn; because earlier turns render to the same text, the engine's KV
cache covers them and only the new message is evaluated.

Modes (see :mod:`localllm.reasoning`): each request picks an adapter from the model's chat
template (or the profile's ``reasoning_format``), renders the prompt for the profile's ``mode``,
splits the generated text into :class:`ReasoningText` and :class:`AnswerText`, and closes the
reasoning through :class:`~localllm.engine.Steering` when it reaches its budget. Earlier turns'
reasoning is kept in :attr:`ChatSession.messages` (under ``reasoning``, for transcripts) but never
sent back to the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from localllm import reasoning
from localllm.engine import Engine, Stats, Steering, TextEvent
from localllm.profiles import Profile


@dataclass(frozen=True)
class AnswerText:
    """Part of the answer."""

    text: str


@dataclass(frozen=True)
class ReasoningText:
    """Part of the model's reasoning (its thinking before the answer)."""

    text: str


@dataclass
class Turn:
    """The outcome of one request.

    ``reasoning_leaked``: instant mode, yet the model reasoned (kept out of the answer).
    ``reasoning_truncated``: generation ended inside the reasoning, so the answer is empty.
    ``budget_exhausted``: the reasoning reached its budget and was closed for the model.
    """

    answer: str = ""
    reasoning: str = ""
    stats: Stats | None = None
    answer_tokens: int = 0
    reasoning_tokens: int = 0
    reasoning_leaked: bool = False
    reasoning_truncated: bool = False
    budget_exhausted: bool = False
    reasoning_s: float = 0.0
    answer_s: float = 0.0
    mode: str = "instant"
    adapter: str = "none"

    @property
    def stopped(self) -> bool:
        return self.stats is not None and self.stats.stop_reason == "cancelled"

    def parts_dict(self) -> dict[str, Any]:
        """Per-part figures for ``--json`` and transcripts."""
        return {
            "mode": self.mode,
            "adapter": self.adapter,
            "reasoning_tokens": self.reasoning_tokens,
            "answer_tokens": self.answer_tokens,
            "reasoning_s": round(self.reasoning_s, 4),
            "answer_s": round(self.answer_s, 4),
            "reasoning_leaked": self.reasoning_leaked,
            "reasoning_truncated": self.reasoning_truncated,
            "budget_exhausted": self.budget_exhausted,
        }


SessionEvent = AnswerText | ReasoningText | Stats


@dataclass
class ChatSession:
    """History plus settings; ``send`` runs one turn."""

    engine: Engine
    profile: Profile
    messages: list[dict[str, Any]] = field(default_factory=list)
    last_turn: Turn | None = None
    projector: Any = None  # a vision.Projector when the model reads images

    # -- what the model sees ------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The template in use: the profile's replacement, else the model's own."""
        return self.profile.chat_template or self.engine.info.chat_template

    @property
    def is_chat(self) -> bool:
        return self.chat_template is not None

    @property
    def adapter(self) -> str:
        """The reasoning adapter for this model and profile (see :mod:`localllm.reasoning`)."""
        if not self.is_chat:
            fmt = self.profile.reasoning_format
            return fmt if fmt and fmt != "auto" else "none"
        return _choose_adapter(self.chat_template, self.profile.reasoning_format)

    @property
    def mode(self) -> reasoning.Mode:
        """The mode actually used (a reasoning budget of 0 means instant)."""
        return reasoning.effective_mode(self.profile.mode, self.profile.reasoning_budget)

    def request_messages(self, user_text: str | None = None) -> list[dict[str, Any]]:
        """What the template sees: the system prompt, the history (without reasoning), and
        the new user message (plus the adapter's system instruction, if any)."""
        return self.plan(user_text).messages

    def plan(self, user_text: str | None = None) -> reasoning.PromptPlan:
        """Messages, template variables and generation flags for the next request."""
        out: list[dict[str, Any]] = []
        if self.profile.system_prompt:
            out.append({"role": "system", "content": self.profile.system_prompt})
        out.extend({"role": m["role"], "content": m["content"]} for m in self.messages)
        if user_text is not None:
            out.append({"role": "user", "content": user_text})
        effort = getattr(self.profile, "reasoning_effort", None)
        return reasoning.plan_prompt(self.adapter, self.mode, out, effort=effort)

    def _render_plan(self, plan: reasoning.PromptPlan) -> str:
        text = self.engine.render(
            plan.messages, variables=plan.variables or None, chat_template=self.chat_template
        )
        if not self.is_chat:
            return text
        return text + reasoning.prefill(plan.adapter, plan.mode, text)

    def render(self, user_text: str | None = None) -> str:
        """The exact prompt text for the next request (pre-filled text included)."""
        return self._render_plan(self.plan(user_text))

    # -- one turn ------------------------------------------------------------------------

    def send(
        self,
        user_text: str,
        *,
        cancel: Callable[[], bool] | None = None,
        grammar: str | None = None,
        images: Sequence[Any] = (),
    ) -> Iterator[SessionEvent]:
        """Stream one turn as reasoning and answer events, then one :class:`Stats`.

        The exchange joins the history when the stream ends (a stopped answer is kept with
        what was produced). ``grammar`` (GBNF) constrains generation; for tests.
        ``images`` (:class:`localllm.images.Image`) go before the text of the message.
        """
        content = self._with_images(user_text, images)
        plan = self.plan(content)

        def record(turn: Turn) -> None:
            user: dict[str, Any] = {"role": "user", "content": content}
            if images:
                user["images"] = list(images)
            self.messages.append(user)
            entry: dict[str, Any] = {"role": "assistant", "content": turn.answer}
            if turn.reasoning:
                entry["reasoning"] = turn.reasoning
            self.messages.append(entry)

        history = [i for m in self.messages for i in m.get("images", ())]
        yield from self._turn(
            plan, self._render_plan(plan), cancel, grammar, record, [*history, *images]
        )

    def _with_images(self, text: str, images: Sequence[Any]) -> str:
        """The message text with one image marker per image, before the text."""
        if not images:
            return text
        if self.projector is None:
            from localllm.errors import UsageError

            raise UsageError(
                f"{self.engine.info.name} is a text-only model: it cannot read images",
                hint="use a vision model (one published with an mmproj projector), "
                "or give its projector with --mmproj FILE",
            )
        return "".join(f"{self.projector.marker}\n" for _ in images) + text

    def respond(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        cancel: Callable[[], bool] | None = None,
        grammar: str | None = None,
    ) -> Iterator[SessionEvent]:
        """One turn from a whole conversation (an HTTP request's ``messages``), the same
        events as :meth:`send`; the session's own history is left alone.

        Each message needs ``role`` and ``content`` (text); the profile's system prompt is
        put first unless the messages bring their own.
        """
        out: list[dict[str, Any]] = []
        has_system = any(m.get("role") == "system" for m in messages)
        if self.profile.system_prompt and not has_system:
            out.append({"role": "system", "content": self.profile.system_prompt})
        images: list[Any] = []
        for m in messages:
            pictures = list(m.get("images") or ())
            images.extend(pictures)
            content = self._with_images(m["content"], pictures)
            out.append({"role": m["role"], "content": content})
        effort = getattr(self.profile, "reasoning_effort", None)
        plan = reasoning.plan_prompt(self.adapter, self.mode, out, effort=effort)
        yield from self._turn(plan, self._render_plan(plan), cancel, grammar, None, images)

    def complete(
        self,
        prompt: str,
        *,
        cancel: Callable[[], bool] | None = None,
        grammar: str | None = None,
    ) -> Iterator[SessionEvent]:
        """Continue ``prompt`` as plain text (no chat template, no reasoning split): the
        same events as :meth:`send`, the history left alone."""
        plan = reasoning.PromptPlan("none", "instant", [{"role": "user", "content": prompt}])
        yield from self._turn(plan, prompt, cancel, grammar, None)

    def _turn(
        self,
        plan: reasoning.PromptPlan,
        prompt: str,
        cancel: Callable[[], bool] | None,
        grammar: str | None,
        record: Callable[[Turn], None] | None,
        images: Sequence[Any] = (),
    ) -> Iterator[SessionEvent]:
        profile = self.profile
        budget = reasoning.budget_for(plan.mode, profile.reasoning_budget, profile.max_tokens)
        bridge = getattr(profile, "reasoning_bridge", None)
        stream = reasoning.ReasoningStream(
            reasoning.make_splitter(plan.adapter, prompt, plan.mode),
            budget=budget if plan.splits else None,
            close=reasoning.close_text(
                plan.adapter, reasoning.DEFAULT_BRIDGE if bridge is None else bridge, prompt
            ),
            answer_limit=profile.max_tokens,
        )
        settings = profile.replace(
            max_tokens=reasoning.engine_limit(plan.adapter, budget, profile.max_tokens)
        )
        steering = Steering()
        user_stopped = False

        def stop() -> bool:  # the engine asks between tokens, once per generated token
            nonlocal user_stopped
            stream.tick()
            if cancel is not None and cancel():
                user_stopped = True
                return True
            return stream.answer_full

        turn = Turn(mode=plan.mode, adapter=plan.adapter)
        stats: Stats | None = None
        request: str | list[int] = prompt
        if self.projector is not None and not images:
            from localllm import vision

            vision.forget_images(self.engine)
        if images and getattr(settings, "speculative", "off") != "off":
            settings = settings.replace(speculative="off")  # drafts cannot see images
        if images:  # the projector evaluates the prompt with its images; the engine goes on
            tokens = self.projector.prefill(
                prompt, images, cancel=lambda: cancel is not None and cancel()
            )
            if tokens is None:
                self._finish(turn, stream, record)
                yield Stats(0, 0, 0, 0.0, 0.0, "cancelled")
                return
            request = tokens
        try:
            for event in self.engine.generate(
                request,
                settings,
                cancel=stop,
                grammar=grammar,
                steering=steering,
                special=plan.special,
            ):
                if isinstance(event, TextEvent):
                    tokens = 0 if event.injected else event.tokens
                    yield from _events(stream.feed(event.text, tokens))
                    extra = stream.injection()
                    if extra:
                        steering.inject(extra)
                else:
                    stats = event
            yield from _events(stream.finish())
        except GeneratorExit:  # the consumer stopped reading: keep what was produced
            self._finish(turn, stream, record)
            raise
        if stats is not None and stats.stop_reason == "cancelled" and not user_stopped:
            stats = replace(stats, stop_reason="length")  # the answer reached max_tokens
        if stats is not None and images:  # the prefill is part of the prompt's time
            pre = self.projector.stats
            stats = replace(stats, cached_tokens=pre.cached, ttft_s=stats.ttft_s + pre.prefill_s)
        turn.stats = stats
        self._finish(turn, stream, record)
        if stats is not None:
            yield stats

    def _finish(
        self,
        turn: Turn,
        stream: reasoning.ReasoningStream,
        record: Callable[[Turn], None] | None,
    ) -> None:
        stream.finish()
        splitter = stream.splitter
        turn.answer = stream.answer
        turn.reasoning = stream.reasoning
        turn.answer_tokens = stream.answer_tokens
        turn.reasoning_tokens = stream.reasoning_tokens
        turn.reasoning_s = stream.reasoning_s
        turn.answer_s = stream.answer_s
        turn.budget_exhausted = stream.injected
        turn.reasoning_truncated = splitter.unterminated and not turn.answer
        turn.reasoning_leaked = turn.mode == "instant" and (
            splitter.saw_reasoning or bool(turn.reasoning)
        )
        if record is not None:
            record(turn)
        self.last_turn = turn

    def reset(self) -> None:
        self.messages.clear()
        self.last_turn = None


@functools.lru_cache(maxsize=32)
def _choose_adapter(template: str | None, reasoning_format: str | None) -> str:
    """:func:`reasoning.choose_adapter`, remembered: detecting the adapter renders the
    template a few times (milliseconds), and every request of a server asks again."""
    return reasoning.choose_adapter(template, reasoning_format)


def _events(parts: list[reasoning.Part]) -> Iterator[AnswerText | ReasoningText]:
    for part in parts:
        if part.kind == "reasoning":
            yield ReasoningText(part.text)
        else:
            yield AnswerText(part.text)

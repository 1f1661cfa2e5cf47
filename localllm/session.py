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

from localllm import reasoning, structured
from localllm import tools as tool_calls
from localllm.engine import Engine, Stats, Steering, TextEvent
from localllm.profiles import Profile
from localllm.promptcache import common_prefix


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
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: str | None = None  # "tool_calls" when the answer ended in calls

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

    def _shared_prefix(self, plan: reasoning.PromptPlan, prompt: str) -> str | None:
        """The start of ``prompt`` that no user's words shape: the template's opening and the
        system prompt, up to the first user message. It is what ``prompt`` and two renders
        with different stand-ins for that message (``A``, ``B``) have in common, so it stops
        before the message's first character. The engine may keep its KV state on disk
        (:class:`~localllm.promptcache.PrefixStore`). None when the engine already holds
        tokens (only a fresh context starts from a stored prefix) or nothing is shared."""
        messages = plan.messages
        first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first is None or not self.is_chat or self.engine.n_kv:
            return None
        shared = len(prompt)
        for stand_in in ("A", "B"):
            probe = [*messages[:first], {**messages[first], "content": stand_in}]
            try:
                other = self.engine.render(
                    probe, variables=plan.variables or None, chat_template=self.chat_template
                )
            except Exception:  # a template that refuses the stand-in costs only the store
                return None
            shared = min(shared, common_prefix(prompt, other))
        return prompt[:shared] or None

    # -- one turn ------------------------------------------------------------------------

    def send(
        self,
        user_text: str,
        *,
        cancel: Callable[[], bool] | None = None,
        grammar: str | None = None,
        constraint: structured.Constraint | None = None,
        images: Sequence[Any] = (),
    ) -> Iterator[SessionEvent]:
        """Stream one turn as reasoning and answer events, then one :class:`Stats`.

        The exchange joins the history when the stream ends (a stopped answer is kept with
        what was produced). ``grammar`` (GBNF) constrains all of the generation; for tests.
        ``constraint`` (:mod:`localllm.structured`) constrains the answer only: in reasoning
        mode the model thinks freely first and the grammar applies after the reasoning closes.
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
        prompt = self._render_plan(plan)
        yield from self._turn(
            plan,
            prompt,
            cancel,
            grammar,
            record,
            [*history, *images],
            constraint=constraint,
            shared=self._shared_prefix(plan, prompt),
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
        constraint: structured.Constraint | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: tool_calls.ToolChoice | None = None,
    ) -> Iterator[SessionEvent]:
        """One turn from a whole conversation (an HTTP request's ``messages``), the same
        events as :meth:`send`; the session's own history is left alone.

        Each message needs ``role`` and ``content`` (text); assistant ``tool_calls`` and
        ``tool`` results pass through to the template. The profile's system prompt is put
        first unless the messages bring their own. ``tools`` (checked by
        :func:`localllm.tools.check_tools`) are rendered by the model's template; the answer's
        calls come as :class:`~localllm.tools.ToolCallDelta` events and in
        :attr:`Turn.tool_calls`, never in its text. ``tool_choice`` required or named forces a
        call through a grammar built from the function's parameters.
        """
        out: list[dict[str, Any]] = []
        has_system = any(m.get("role") == "system" for m in messages)
        if self.profile.system_prompt and not has_system:
            out.append({"role": "system", "content": self.profile.system_prompt})
        images: list[Any] = []
        for m in tool_calls.template_messages(messages):
            pictures = list(m.pop("images", None) or ())
            images.extend(pictures)
            m["content"] = self._with_images(m["content"], pictures)
            out.append(m)
        effort = getattr(self.profile, "reasoning_effort", None)
        plan = reasoning.plan_prompt(self.adapter, self.mode, out, effort=effort)
        choice = tool_choice or tool_calls.parse_tool_choice(None, tools)
        parser: tool_calls.ToolCallParser | None = None
        prompt: str | None = None
        if tools:
            fmt = tool_calls.require_format(self.chat_template)
            plan.variables["tools"] = list(tools)
            if choice.mode != "none":
                parser = tool_calls.ToolCallParser(fmt)
            if choice.forced:
                constraint = structured.grammar_constraint(
                    tool_calls.tool_call_grammar(fmt, tools, schema_grammar, name=choice.name),
                    "the tool call grammar",
                )
                if fmt == "harmony":  # the call is a new message: no pre-filled channel
                    prompt = self.engine.render(
                        plan.messages, variables=plan.variables, chat_template=self.chat_template
                    )
                    plan = replace(plan, mode="instant")
        if prompt is None:
            prompt = self._render_plan(plan)
        if parser is not None:
            parser.prime(prompt)
        yield from self._turn(
            plan,
            prompt,
            cancel,
            grammar,
            None,
            images,
            constraint=constraint,
            parser=parser,
            shared=self._shared_prefix(plan, prompt),
        )

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
        *,
        constraint: structured.Constraint | None = None,
        parser: tool_calls.ToolCallParser | None = None,
        shared: str | None = None,
    ) -> Iterator[SessionEvent]:
        profile = self.profile
        lazy: dict[str, Any] = {}
        if constraint is not None:
            hook = structured.reasoning_hook(plan.adapter, plan.mode, prompt)
            prompt += hook.prefill
            grammar = constraint.grammar
            if hook.lazy_after is not None:
                grammar = structured.answer_grammar(grammar, plan.adapter)
                lazy["grammar_lazy_after"] = hook.lazy_after
                _check_lazy_grammar(self.engine)
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
                shared_prefix=shared if isinstance(request, str) else None,
                **lazy,
            ):
                if isinstance(event, TextEvent):
                    tokens = 0 if event.injected else event.tokens
                    parts = stream.feed(event.text, tokens)
                    if parser is None:
                        yield from _events(parts)
                    else:
                        yield from _tool_events(parser, parts, event.text)
                    extra = stream.injection()
                    if extra:
                        steering.inject(extra)
                else:
                    stats = event
            if parser is None:
                yield from _events(stream.finish())
            else:
                yield from _tool_events(parser, stream.finish(), "")
                yield from _tool_events(parser, [], None)
        except GeneratorExit:  # the consumer stopped reading: keep what was produced
            self._finish(turn, stream, record, parser)
            raise
        if stats is not None and stats.stop_reason == "cancelled" and not user_stopped:
            stats = replace(stats, stop_reason="length")  # the answer reached max_tokens
        if stats is not None and images:  # the prefill is part of the prompt's time
            pre = self.projector.stats
            stats = replace(stats, cached_tokens=pre.cached, ttft_s=stats.ttft_s + pre.prefill_s)
        turn.stats = stats
        self._finish(turn, stream, record, parser)
        if stats is not None:
            yield stats

    def _finish(
        self,
        turn: Turn,
        stream: reasoning.ReasoningStream,
        record: Callable[[Turn], None] | None,
        parser: tool_calls.ToolCallParser | None = None,
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
        if parser is not None:
            parser.finish()
            turn.answer = parser.content
            turn.tool_calls = parser.tool_calls
            if turn.tool_calls and turn.stats is not None and turn.stats.stop_reason == "stop":
                turn.finish_reason = "tool_calls"
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


def _tool_events(
    parser: tool_calls.ToolCallParser, parts: list[reasoning.Part], raw: str | None
) -> Iterator[Any]:
    """Reasoning as usual; the answer through the tool-call parser (harmony: the raw text,
    whose headers say who a message is for). ``raw`` None: the end of the answer."""
    for part in parts:
        if part.kind == "reasoning":
            yield ReasoningText(part.text)
    if parser.fmt == "harmony":
        events = parser.feed(raw) if raw else parser.finish() if raw is None else []
    else:
        text = "".join(p.text for p in parts if p.kind == "answer")
        events = parser.feed(text) if text else parser.finish() if raw is None else []
    for e in events:
        if isinstance(e, tool_calls.ContentDelta):
            yield AnswerText(e.text)
        elif isinstance(e, tool_calls.ToolCallDelta):
            yield e


def _events(parts: list[reasoning.Part]) -> Iterator[AnswerText | ReasoningText]:
    for part in parts:
        if part.kind == "reasoning":
            yield ReasoningText(part.text)
        else:
            yield AnswerText(part.text)


# -- structured output: the one step that needs llama-cpp-python ------------------------------


def _check_lazy_grammar(engine: Engine) -> None:
    """A clear error, not a TypeError, from an engine that cannot wait for the reasoning to
    close before applying a grammar."""
    import inspect

    if "grammar_lazy_after" not in inspect.signature(engine.generate).parameters:
        from localllm.errors import UsageError

        raise UsageError(
            "this build cannot constrain only the answer after reasoning",
            hint="use --mode instant with a schema or grammar",
        )


def schema_grammar(schema: Any) -> str:
    """GBNF for a JSON schema, by llama-cpp-python's converter (pure Python, but shipped inside
    ``llama_cpp``, so it is called from this engine-layer module). Check the schema with
    :func:`localllm.structured.check_schema` first; a pattern the converter cannot translate
    is a :class:`~localllm.errors.UsageError`."""
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from localllm.errors import UsageError

    try:
        gbnf = json_schema_to_gbnf(json.dumps(structured.normalize_schema(schema)))
    except (ValueError, AssertionError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise UsageError(
            f"the JSON schema cannot become a grammar: {exc}", hint=structured.SCHEMA_HINT
        ) from None
    gbnf = structured.fix_converted(gbnf)
    try:
        structured.check_gbnf(gbnf, "the grammar converted from the JSON schema")
    except structured.GrammarSyntaxError as exc:
        raise UsageError(
            f"the JSON schema cannot become a grammar ({exc.message}); a 'pattern' is the "
            "usual cause",
            hint=structured.SCHEMA_HINT,
        ) from None
    return gbnf


def make_constraint(
    *,
    json_schema: Any = None,
    json_format: bool = False,
    grammar: str | None = None,
    source: str = "",
) -> structured.Constraint | None:
    """The answer's constraint from a schema, ``--format json`` or raw GBNF (at most one)."""
    from localllm.errors import UsageError

    given = [x for x in (json_schema is not None, json_format, grammar is not None) if x]
    if len(given) > 1:
        raise UsageError(
            "use only one of a JSON schema, --format json and a grammar",
            hint="a schema already makes the answer JSON",
        )
    if json_schema is not None:
        structured.check_schema(json_schema, source or "the JSON schema")
        return structured.Constraint(
            "json_schema",
            schema_grammar(json_schema),
            schema=json_schema if isinstance(json_schema, dict) else {},
            source=source,
        )
    if json_format:
        return structured.json_object_constraint()
    if grammar is not None:
        return structured.grammar_constraint(grammar, source or "the grammar")
    return None

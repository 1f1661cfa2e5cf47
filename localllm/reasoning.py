"""Reasoning and instant modes: one model, driven either way per request.

Three parts, all pure (no llama_cpp here; jinja2 only to inspect and render templates):

**Adapters.** How a chat template lets us switch thinking on and off, chosen from the template
(:func:`detect_adapter`) or forced by a profile's ``reasoning_format`` (:func:`choose_adapter`):

* ``enable_thinking`` (Qwen3, SmolLM3) and ``thinking`` (Granite, DeepSeek V3.1): the template
  variable of that name is rendered ``True`` or ``False``;
* ``prefill`` (DeepSeek-R1 distills, QwQ: the template opens ``<think>`` itself): instant mode
  appends a closed, empty think block after the generation prompt; reasoning mode makes sure a
  think block is open;
* ``harmony`` (gpt-oss): ``reasoning_effort`` is ``medium`` for reasoning and ``low`` for instant,
  and instant mode also pre-fills an empty analysis message so the model starts in the final
  channel; the analysis channel is the reasoning, the final channel the answer;
* ``instruction`` (chat templates with no thinking mechanism): reasoning mode adds a short system
  instruction to think inside ``<think>…</think>``; instant mode leaves the prompt alone;
* ``none`` (base models, or forced): the prompt is left alone and all text is answer.

**Splitters.** :class:`ThinkSplitter` and :class:`HarmonySplitter` turn generated text, in
chunks of any size, into reasoning and answer parts. A thinking model in reasoning mode may
close a block it never opened (its template pre-filled the opening tag): that orphan closing
tag still ends the reasoning. Granite 3.2 thinks in plain text ("Here is my thought process:"
... "Here is my response:"), recognised from its rendered system prompt.
Markers may arrive whole (one token) or byte by byte; partial markers are held back until they
resolve. The result never depends on how the text was chunked.

**Budget and accounting** (:class:`ReasoningStream`). The answer gets ``max_tokens`` of its own.
Reasoning gets a budget: the profile's ``reasoning_budget`` in reasoning mode, else
``max_tokens`` (which also bounds reasoning leaked in instant mode). The engine is asked for
``max_tokens + budget`` (plus a little slack for closing tags) and the session stops it once the
answer has ``max_tokens`` tokens. When the reasoning reaches its budget, the closing marker is
injected (after an optional bridge sentence, :data:`DEFAULT_BRIDGE`) and the model answers.
A ``reasoning_budget`` of 0 makes reasoning mode behave exactly as instant mode.

Token counts per part: a generated token counts as reasoning when the splitter was in a think
block before or after reading it (so the opening and closing tags count as reasoning); tokens
that do not yet decide anything (a possible opening tag, a harmony header) are attributed once
the splitter decides. Injected text costs no generated tokens.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

Mode = Literal["instant", "reasoning"]
PartKind = Literal["reasoning", "answer"]

#: What :func:`detect_adapter` can answer: the template's own mechanism.
MECHANISMS: tuple[str, ...] = ("enable_thinking", "thinking", "prefill", "harmony", "none")
#: Every adapter (``reasoning_format`` may force any of these, or ``auto``).
ADAPTERS: tuple[str, ...] = (
    "enable_thinking",
    "thinking",
    "prefill",
    "harmony",
    "instruction",
    "none",
)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
#: Appended after the generation prompt in instant mode on always-thinking templates.
EMPTY_THINK = "<think>\n\n</think>\n\n"
#: Granite wraps its answer in these when thinking; they are dropped from the answer.
RESPONSE_TAGS = ("<response>", "</response>")
#: Granite 3.2 thinks in plain text: its template asks for these two headings instead of tags.
PLAIN_THOUGHT_OPEN = "Here is my thought process:"
PLAIN_THOUGHT_CLOSE = "Here is my response:"
#: Adapters whose models are trained to think first in reasoning mode.
THINKING_ADAPTERS = ("enable_thinking", "thinking", "prefill")
#: Said inside the think block when the budget runs out, just before it is closed.
DEFAULT_BRIDGE = "Time is up; answering now."
#: The system instruction that asks a model with no thinking mechanism to reason first.
REASONING_INSTRUCTION = (
    "Before answering, think the problem through step by step inside <think> and </think> "
    "tags. After </think>, give only the final answer."
)
#: Extra engine tokens beyond answer + budget, for closing tags the model writes itself.
TOKEN_SLACK = 16

H_START = "<|start|>"
H_CHANNEL = "<|channel|>"
H_MESSAGE = "<|message|>"
H_END = "<|end|>"
H_RETURN = "<|return|>"
H_CALL = "<|call|>"
H_CONSTRAIN = "<|constrain|>"
HARMONY_MARKERS: tuple[str, ...] = (
    H_START,
    H_CHANNEL,
    H_MESSAGE,
    H_END,
    H_RETURN,
    H_CALL,
    H_CONSTRAIN,
)
#: Instant mode on harmony: an empty analysis message, then the final channel opened.
HARMONY_SKIP_ANALYSIS = (
    f"{H_CHANNEL}analysis{H_MESSAGE}{H_END}{H_START}assistant{H_CHANNEL}final{H_MESSAGE}"
)
HARMONY_TO_FINAL = f"{H_END}{H_START}assistant{H_CHANNEL}final{H_MESSAGE}"

ADAPTER_TEXT: dict[str, str] = {
    "enable_thinking": "enable_thinking (template variable switched per request)",
    "thinking": "thinking (template variable switched per request)",
    "prefill": "prefill (always thinks; instant mode pre-fills an empty think block)",
    "harmony": "harmony (reasoning_effort; analysis channel = reasoning, final = answer)",
    "instruction": "instruction (no thinking mechanism; reasoning mode asks for <think> tags)",
    "none": "none (prompt left as is; all text is answer)",
}


# --------------------------------------------------------------------------------------------
# Adapters


def _template_variables(template: str) -> set[str] | None:
    """Undeclared variables of ``template``; ``None`` when it does not parse."""
    try:
        from jinja2 import Environment, meta
        from jinja2.exceptions import TemplateError as JinjaError

        env = Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"])
        return set(meta.find_undeclared_variables(env.parse(template)))
    except (JinjaError, RecursionError, MemoryError):
        return None


_GEN_PROMPT_BLOCK = re.compile(
    r"add_generation_prompt(?P<body>.*?)\{%[-+]?\s*(?:endif|else|elif)\b", re.DOTALL
)
_SAMPLE = (
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "V"},
)


def ends_in_open_think(text: str) -> bool:
    """Whether ``text`` (a rendered prompt) ends inside an opened, unclosed think block."""
    tail = text.rstrip()
    return tail.endswith(THINK_OPEN)


def _generation_prompt(template: str) -> str | None:
    """What the template appends for ``add_generation_prompt`` (rendered on a sample
    conversation); ``None`` if it cannot be rendered."""
    from localllm import templates
    from localllm.errors import TemplateError

    for messages in (_SAMPLE, _SAMPLE[1:]):
        try:
            with_prompt = templates.render(template, messages, add_generation_prompt=True)
            without = templates.render(template, messages, add_generation_prompt=False)
        except TemplateError:
            continue
        if with_prompt.startswith(without):
            return with_prompt[len(without) :]
        return with_prompt[-200:]
    return None


def detect_adapter(template: str | None) -> str:
    """The thinking mechanism of a chat template: one of :data:`MECHANISMS`.

    ``none`` means no template or no mechanism (:func:`choose_adapter` turns a chat template
    without one into the ``instruction`` adapter).
    """
    if not template:
        return "none"
    variables = _template_variables(template)
    if variables is None:  # unparsable: fall back to the words it contains
        variables = set(re.findall(r"[A-Za-z_]\w*", template))
    if H_CHANNEL in template or "reasoning_effort" in variables:
        return "harmony"
    if "enable_thinking" in variables:
        return "enable_thinking"
    if "thinking" in variables:
        return "thinking"
    suffix = _generation_prompt(template) if THINK_OPEN in template else None
    if suffix is not None:
        if ends_in_open_think(suffix):
            return "prefill"
    elif THINK_OPEN in template:
        for match in _GEN_PROMPT_BLOCK.finditer(template):
            if THINK_OPEN in match["body"]:
                return "prefill"
    return "none"


def choose_adapter(template: str | None, reasoning_format: str | None = None) -> str:
    """The adapter to use: ``reasoning_format`` when it names one, else detected.

    A chat template with no mechanism gets ``instruction``; no template gets ``none``.
    """
    if reasoning_format and reasoning_format != "auto":
        if reasoning_format not in ADAPTERS:
            from localllm.errors import UsageError

            raise UsageError(
                f"unknown reasoning format '{reasoning_format}'",
                hint="one of auto, " + ", ".join(ADAPTERS),
            )
        return reasoning_format
    mechanism = detect_adapter(template)
    if mechanism == "none":
        return "instruction" if template else "none"
    return mechanism


def describe_adapter(adapter: str) -> str:
    """One line for people (``localllm show``)."""
    return ADAPTER_TEXT.get(adapter, adapter)


def effective_mode(mode: str, budget: int | None) -> Mode:
    """The mode actually used: a reasoning budget of 0 means instant."""
    if mode == "reasoning" and budget != 0:
        return "reasoning"
    return "instant"


@dataclass(frozen=True)
class PromptPlan:
    """How to render one request: messages, template variables and how to generate."""

    adapter: str
    mode: Mode
    messages: list[dict[str, Any]]
    variables: dict[str, Any] = field(default_factory=dict)
    special: bool = False  # render control tokens as text while generating (harmony)

    @property
    def splits(self) -> bool:
        """Whether generated text is split into reasoning and answer at all."""
        return self.adapter != "none"


def _with_instruction(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        content = str(out[0].get("content") or "")
        out[0]["content"] = (
            f"{content}\n\n{REASONING_INSTRUCTION}" if content else REASONING_INSTRUCTION
        )
    else:
        out.insert(0, {"role": "system", "content": REASONING_INSTRUCTION})
    return out


def plan_prompt(
    adapter: str,
    mode: Mode,
    messages: Sequence[Mapping[str, Any]],
    *,
    effort: str | None = None,
) -> PromptPlan:
    """Messages and template variables for ``mode`` under ``adapter``.

    ``effort`` overrides harmony's ``reasoning_effort`` in reasoning mode (default medium).
    """
    reasoning = mode == "reasoning"
    msgs = [dict(m) for m in messages]
    if adapter == "enable_thinking":
        return PromptPlan(adapter, mode, msgs, {"enable_thinking": reasoning})
    if adapter == "thinking":
        return PromptPlan(adapter, mode, msgs, {"thinking": reasoning})
    if adapter == "harmony":
        level = (effort or "medium") if reasoning else "low"
        return PromptPlan(adapter, mode, msgs, {"reasoning_effort": level}, special=True)
    if adapter == "instruction" and reasoning:
        return PromptPlan(adapter, mode, _with_instruction(msgs))
    return PromptPlan(adapter, mode, msgs)


def prefill(adapter: str, mode: Mode, rendered: str) -> str:
    """Text to append after the rendered prompt (often nothing).

    * ``prefill`` instant: a closed, empty think block (completing one the template opened);
    * ``prefill`` reasoning: an opening tag, unless the template already opened one;
    * ``harmony`` instant: an empty analysis message and the final channel's header.
    """
    if adapter == "prefill":
        opened = ends_in_open_think(rendered)
        if mode == "instant":
            return "\n\n</think>\n\n" if opened else EMPTY_THINK
        return "" if opened else "<think>\n"
    if (
        adapter == "harmony"
        and mode == "instant"
        and rendered.rstrip().endswith(f"{H_START}assistant")
    ):
        return HARMONY_SKIP_ANALYSIS
    return ""


def close_text(adapter: str, bridge: str | None = DEFAULT_BRIDGE, prompt: str = "") -> str:
    """What the budget injects to end the reasoning: the bridge, then the closing marker
    (Granite 3.2's response heading when ``prompt`` asked for plain-text thoughts)."""
    if adapter == "harmony":
        lead = f" {bridge}" if bridge else ""
        return f"{lead}{HARMONY_TO_FINAL}"
    lead = f"\n\n{bridge}" if bridge else ""
    close = PLAIN_THOUGHT_CLOSE if plain_thoughts(adapter, prompt) else THINK_CLOSE
    return f"{lead}\n{close}\n\n"


# --------------------------------------------------------------------------------------------
# Splitters


class Part(NamedTuple):
    """A piece of reasoning or answer text."""

    kind: PartKind
    text: str


class Splitter(Protocol):
    """Turns chunks of generated text into reasoning and answer parts."""

    @property
    def kind(self) -> PartKind | None:
        """Where the next text goes; ``None`` while undecided (a marker may be starting)."""

    @property
    def holding_marker(self) -> bool:
        """Whether a partial marker is held back."""

    @property
    def saw_reasoning(self) -> bool:
        """Whether the generated text entered a reasoning block (not counting the prompt)."""

    @property
    def unterminated(self) -> bool:
        """After :meth:`flush`: the text ended inside a reasoning block."""

    def feed(self, text: str) -> list[Part]: ...

    def flush(self) -> list[Part]: ...


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


def _emit(out: list[Part], kind: PartKind, text: str) -> None:
    if not text:
        return
    if out and out[-1].kind == kind:
        out[-1] = Part(kind, out[-1].text + text)
    else:
        out.append(Part(kind, text))


class PassThrough:
    """All text is answer (the ``none`` adapter)."""

    kind: PartKind | None = "answer"
    holding_marker = False
    saw_reasoning = False
    unterminated = False

    def feed(self, text: str) -> list[Part]:
        return [Part("answer", text)] if text else []

    def flush(self) -> list[Part]:
        return []


_START, _REASON_START, _REASON, _ANSWER_START, _ANSWER, _EXPECT = range(6)


class ThinkSplitter:
    """``<think>reasoning</think>answer``, streamed.

    * The opening tag counts only at the start of the answer (after whitespace); later it is
      plain answer text.
    * ``start_in_reasoning``: the prompt already opened the block.
    * Whitespace at the start and end of the reasoning, and right after the closing tag, is
      dropped; a block never closed is all reasoning (:attr:`unterminated`).
    * ``answer_tags`` (Granite's ``<response>``, ``</response>``): an opening one at the start
      of the answer and every closing one are dropped from the answer.
    * ``expect_reasoning``: the model is expected to think first but the prompt did not open
      the block. Text that does not start with the opening tag is held back (undecided) until
      an orphan closing tag turns it into reasoning (templates that pre-fill the opening tag
      where we cannot see it), or until the end, when it is all answer. Held text is never
      shown as the wrong kind, so the split does not depend on chunking.
    """

    def __init__(
        self,
        *,
        start_in_reasoning: bool = False,
        open_tag: str = THINK_OPEN,
        close_tag: str = THINK_CLOSE,
        answer_tags: tuple[str, str] | None = None,
        expect_reasoning: bool = False,
    ) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.answer_tags = answer_tags
        if start_in_reasoning:
            self._state = _REASON_START
        else:
            self._state = _EXPECT if expect_reasoning else _START
        self._buf = ""
        self._saw = False
        self._unterminated = False

    @property
    def kind(self) -> PartKind | None:
        if self._state in (_START, _EXPECT):
            return None
        return "reasoning" if self._state in (_REASON_START, _REASON) else "answer"

    @property
    def holding_marker(self) -> bool:
        if self._state in (_START, _EXPECT):
            return bool(self._buf)
        if self._state == _REASON:
            return _partial_suffix(self._buf, (self.close_tag,)) > 0
        return False

    @property
    def saw_reasoning(self) -> bool:
        return self._saw

    @property
    def unterminated(self) -> bool:
        return self._unterminated

    def feed(self, text: str) -> list[Part]:
        self._buf += text
        out: list[Part] = []
        while self._step(out, final=False):
            pass
        return out

    def flush(self) -> list[Part]:
        out: list[Part] = []
        while self._step(out, final=True):
            pass
        if self._state in (_REASON_START, _REASON):
            self._unterminated = True
        return out

    def _step(self, out: list[Part], *, final: bool) -> bool:
        """Advance once; ``False`` when nothing more can be decided now."""
        state, buf = self._state, self._buf
        if state == _EXPECT:
            return self._step_expect(out, final=final)
        if state in (_START, _REASON_START, _ANSWER_START):
            stripped = buf.lstrip()
            if not stripped:
                self._buf = ""
                return False
            self._buf = buf = stripped
            if state == _REASON_START:
                self._state = _REASON
                return True
            if self.answer_tags and state in (_START, _ANSWER_START):
                first = self.answer_tags[0]
                if buf.startswith(first):
                    self._buf = buf[len(first) :]
                    self._state = _ANSWER_START
                    return True
                if first.startswith(buf) and not final:
                    return False  # maybe the answer's opening tag, still arriving
            if state == _ANSWER_START:
                self._state = _ANSWER
                return True
            if buf.startswith(self.open_tag):
                self._buf = buf[len(self.open_tag) :]
                self._state = _REASON_START
                self._saw = True
                return True
            if self.open_tag.startswith(buf) and not final:
                return False  # maybe the opening tag, still arriving
            self._state = _ANSWER
            return True
        if state == _REASON:
            self._saw = self._saw or bool(buf)
            cut = buf.find(self.close_tag)
            if cut >= 0:
                _emit(out, "reasoning", buf[:cut].rstrip())
                self._buf = buf[cut + len(self.close_tag) :]
                self._state = _ANSWER_START
                return True
            if final:
                _emit(out, "reasoning", buf.rstrip())
                self._buf = ""
                return False
            hold = _partial_suffix(buf, (self.close_tag,))
            body = buf[: len(buf) - hold]
            safe = body.rstrip()
            _emit(out, "reasoning", safe)
            self._buf = buf[len(safe) :]
            return False
        # _ANSWER
        if self.answer_tags:
            last = self.answer_tags[1]
            buf = buf.replace(last, "")
            hold = 0 if final else _partial_suffix(buf, (last,))
            _emit(out, "answer", buf[: len(buf) - hold])
            self._buf = buf[len(buf) - hold :]
            return False
        _emit(out, "answer", buf)
        self._buf = ""
        return False

    def _step_expect(self, out: list[Part], *, final: bool) -> bool:
        """Undecided, expecting reasoning: an opening tag, an orphan closing tag, or the end."""
        stripped = self._buf.lstrip()
        if not stripped:
            self._buf = ""
            return False
        self._buf = stripped
        if stripped.startswith(self.open_tag):
            self._state = _START  # the usual path from here
            return True
        if self.open_tag.startswith(stripped) and not final:
            return False  # maybe the opening tag, still arriving
        cut = stripped.find(self.close_tag)
        if cut >= 0:
            self._saw = True
            _emit(out, "reasoning", stripped[:cut].rstrip())
            self._buf = stripped[cut + len(self.close_tag) :]
            self._state = _ANSWER_START
            return True
        if final:
            self._state = _START
            return True
        return False


_CHANNEL_RE = re.compile(re.escape(H_CHANNEL) + r"\s*([A-Za-z_][\w.-]*)")
_H_TERMINATORS = (H_END, H_RETURN, H_CALL)
_H_BREAKS = (H_END, H_RETURN, H_CALL, H_START, H_CHANNEL)


class HarmonySplitter:
    """OpenAI harmony messages, streamed (text generated with control tokens rendered).

    ``<|channel|>analysis<|message|>…<|end|>`` is reasoning; ``<|channel|>final<|message|>…``
    and any other channel is answer. Headers (``<|start|>assistant<|channel|>…``) are never
    shown. :meth:`prime` with the end of the prompt sets where generation starts.
    """

    def __init__(self) -> None:
        self._header = True
        self._kind: PartKind = "answer"
        self._buf = ""
        self._fresh = True  # at the start of a message's content
        self._saw = False
        self._emitted = False
        self._unterminated = False

    def prime(self, prompt: str) -> None:
        """Read the last message of the prompt (from its last ``<|start|>``), discarding it."""
        at = prompt.rfind(H_START)
        if at >= 0:
            self.feed(prompt[at:])
        self._saw = False
        self._emitted = False

    @property
    def kind(self) -> PartKind | None:
        return None if self._header else self._kind

    @property
    def holding_marker(self) -> bool:
        return self._header or _partial_suffix(self._buf, HARMONY_MARKERS) > 0

    @property
    def saw_reasoning(self) -> bool:
        return self._saw

    @property
    def unterminated(self) -> bool:
        return self._unterminated

    def feed(self, text: str) -> list[Part]:
        self._buf += text
        out: list[Part] = []
        while self._step(out, final=False):
            pass
        self._emitted = self._emitted or bool(out)
        return out

    def flush(self) -> list[Part]:
        out: list[Part] = []
        while self._step(out, final=True):
            pass
        if self._header and not self._emitted:
            # No harmony structure at all: show whatever came, without the markers.
            text = self._buf
            for marker in HARMONY_MARKERS:
                text = text.replace(marker, "")
            text = re.sub(r"^\s*assistant", "", text).strip()
            _emit(out, "answer", text)
        elif not self._header and self._kind == "reasoning":
            self._unterminated = True
        self._buf = ""
        self._emitted = self._emitted or bool(out)
        return out

    def _step(self, out: list[Part], *, final: bool) -> bool:
        buf = self._buf
        if self._header:
            at = buf.find(H_MESSAGE)
            if at < 0:
                return False
            match = _CHANNEL_RE.search(buf[:at])
            channel = match.group(1) if match else "final"
            self._kind = "reasoning" if channel == "analysis" else "answer"
            self._saw = self._saw or self._kind == "reasoning"
            self._header = False
            self._fresh = True
            self._buf = buf[at + len(H_MESSAGE) :]
            return True
        if self._fresh:
            stripped = buf.lstrip()
            if not stripped:
                self._buf = ""
                return False
            self._buf = buf = stripped
            self._fresh = False
        hits = [(i, m) for m in _H_BREAKS if (i := buf.find(m)) >= 0]
        if hits:
            at, marker = min(hits)
            _emit(out, self._kind, buf[:at])
            self._header = True
            self._buf = buf[at + len(marker) :] if marker in _H_TERMINATORS else buf[at:]
            return True
        hold = 0 if final else _partial_suffix(buf, HARMONY_MARKERS)
        _emit(out, self._kind, buf[: len(buf) - hold])
        self._buf = buf[len(buf) - hold :]
        return False


def plain_thoughts(adapter: str, prompt: str) -> bool:
    """Whether the model was asked to think in Granite 3.2's plain-text headings."""
    return adapter == "thinking" and PLAIN_THOUGHT_OPEN in prompt


def make_splitter(adapter: str, prompt: str, mode: Mode | None = None) -> Splitter:
    """The splitter for ``adapter``, starting where ``prompt`` (prefill included) leaves off.

    ``mode="reasoning"`` on a thinking model also accepts reasoning whose opening tag is
    missing (an orphan closing tag ends it).
    """
    if adapter == "none":
        return PassThrough()
    if adapter == "harmony":
        splitter = HarmonySplitter()
        splitter.prime(prompt)
        return splitter
    expect = mode == "reasoning" and adapter in THINKING_ADAPTERS
    if plain_thoughts(adapter, prompt):
        return ThinkSplitter(
            open_tag=PLAIN_THOUGHT_OPEN, close_tag=PLAIN_THOUGHT_CLOSE, expect_reasoning=expect
        )
    tags = RESPONSE_TAGS if adapter == "thinking" else None
    return ThinkSplitter(
        start_in_reasoning=ends_in_open_think(prompt), answer_tags=tags, expect_reasoning=expect
    )


def split_text(
    text: str, *, adapter: str = "prefill", prompt: str = "", mode: Mode | None = "reasoning"
) -> tuple[str, str]:
    """(reasoning, answer) of a whole text: the streaming splitter fed in one piece.

    By default an orphan closing tag still ends the reasoning (``mode="reasoning"``)."""
    splitter = make_splitter(adapter, prompt, mode)
    parts = splitter.feed(text) + splitter.flush()
    reasoning = "".join(p.text for p in parts if p.kind == "reasoning")
    answer = "".join(p.text for p in parts if p.kind == "answer")
    return reasoning, answer


# --------------------------------------------------------------------------------------------
# The budget and the accounting


class ReasoningStream:
    """Runs a splitter over a generation's text events: counts tokens and time per part and
    decides when to close the reasoning.

    ``budget``: reasoning tokens allowed before the closing text is injected (``None``: never).
    ``answer_limit``: answer tokens after which :attr:`answer_full` turns true (the session
    then stops the engine).
    """

    def __init__(
        self,
        splitter: Splitter,
        *,
        budget: int | None,
        close: str,
        answer_limit: int | None = None,
        clock: Any = time.perf_counter,
    ) -> None:
        self.splitter = splitter
        self.budget = budget
        self.close = close
        self.answer_limit = answer_limit
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.injected = False
        self.generated = 0  # tokens generated so far, from :meth:`tick`
        self._pending = 0
        self._clock = clock
        self._start: float | None = None
        self._reason_end: float | None = None
        self._end: float | None = None
        self.reasoning_parts: list[str] = []
        self.answer_parts: list[str] = []

    def feed(self, text: str, tokens: int = 1) -> list[Part]:
        """Split one text event of ``tokens`` generated tokens."""
        now = self._clock()
        if self._start is None:
            self._start = now
        before = self.splitter.kind
        parts = self.splitter.feed(text)
        after = self.splitter.kind
        self._count(before, after, tokens, now)
        self._keep(parts, now)
        return parts

    def _count(
        self, before: PartKind | None, after: PartKind | None, tokens: int, now: float
    ) -> None:
        if "reasoning" in (before, after):
            self.reasoning_tokens += tokens
            self._reason_end = now
        elif after is None:
            self._pending += tokens
            return
        else:
            self.answer_tokens += tokens
        if after is not None and self._pending:
            if after == "reasoning":
                self.reasoning_tokens += self._pending
            else:
                self.answer_tokens += self._pending
            self._pending = 0

    def _keep(self, parts: list[Part], now: float) -> None:
        for part in parts:
            if part.kind == "reasoning":
                self.reasoning_parts.append(part.text)
                self._reason_end = now
            else:
                self.answer_parts.append(part.text)

    def injection(self) -> str | None:
        """The text to inject now, once: when the reasoning has used its budget."""
        if (
            self.injected
            or self.budget is None
            or self.splitter.kind != "reasoning"
            or self.reasoning_tokens < self.budget
            or self.splitter.holding_marker
        ):
            return None
        self.injected = True
        return self.close

    def tick(self) -> None:
        """One more token was generated (called between tokens, from the engine's ``cancel``
        check): counts tokens whose text is still held back, a character's first bytes."""
        self.generated += 1

    @property
    def answer_full(self) -> bool:
        """The answer has its ``answer_limit`` tokens, counting held-back ones."""
        if self.answer_limit is None:
            return False
        held = max(0, self.generated - self._counted())
        answer = self.answer_tokens + (held if self.splitter.kind == "answer" else 0)
        return answer >= self.answer_limit

    def _counted(self) -> int:
        return self.reasoning_tokens + self.answer_tokens + self._pending

    def finish(self) -> list[Part]:
        """Flush the splitter at the end of generation (once; later calls return nothing)."""
        if self._end is not None:
            return []
        now = self._clock()
        if self._start is None:
            self._start = now
        parts = self.splitter.flush()
        self.answer_tokens += self._pending
        self._pending = 0
        self._keep(parts, now)
        self._end = now
        return parts

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    @property
    def reasoning_s(self) -> float:
        """From the first generated text to the end of the reasoning."""
        if self._start is None or self._reason_end is None:
            return 0.0
        return max(0.0, self._reason_end - self._start)

    @property
    def answer_s(self) -> float:
        """From the end of the reasoning (or the first text) to the end of generation."""
        if self._start is None or self._end is None or not self.answer_tokens:
            return 0.0
        return max(0.0, self._end - (self._reason_end or self._start))


def budget_for(mode: Mode, reasoning_budget: int | None, max_tokens: int) -> int:
    """Reasoning tokens allowed: the budget in reasoning mode, else ``max_tokens``."""
    if mode == "reasoning" and reasoning_budget is not None:
        return reasoning_budget
    return max_tokens


def engine_limit(adapter: str, budget: int, max_tokens: int) -> int:
    """Tokens to ask of the engine: the answer's ``max_tokens`` plus the reasoning budget."""
    if adapter == "none":
        return max_tokens
    return max_tokens + budget + TOKEN_SLACK

"""Tool calling, pure: tools rendered through the model's own chat template, the model's call
syntax parsed back into calls (whole or streamed), and grammars that force a call.

Four call syntaxes, chosen from the chat template (:func:`detect_format`):

* ``hermes`` (Qwen2.5/3, Hermes, SmolLM3...): ``<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>``, any number of them, with content around them;
* ``llama3`` (Llama 3.1/3.2/3.3): the whole answer is ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several calls separated by ``;``);
* ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (and the newer
  ``[TOOL_CALLS]name[ARGS]{...}``);
* ``harmony`` (gpt-oss): a message addressed ``to=functions.NAME``, its arguments after
  ``<|message|>`` up to ``<|call|>``; parsed from the raw text (control tokens rendered).

:class:`ToolCallParser` is fed generated text in chunks of any size and yields
:class:`ContentDelta` and :class:`ToolCallDelta` events, like OpenAI's ``delta.content`` and
``delta.tool_calls``: a call's first delta carries its index, id and name, later ones argument
fragments. Text that might be the start of call syntax is held back until it is decided, so call
text never reaches the content.

:func:`tool_call_grammar` forces a call (``tool_choice: required`` or a named function) through
a GBNF grammar built from each function's parameter schema; the JSON-schema converter is passed
in (it lives in the engine layer, see :func:`localllm.session.schema_grammar`).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from localllm.errors import UsageError

ToolFormat = Literal["hermes", "llama3", "mistral", "harmony"]
FORMATS: tuple[str, ...] = ("hermes", "llama3", "mistral", "harmony")

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
PYTHON_TAG = "<|python_tag|>"
H_START, H_CHANNEL, H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
H_END, H_RETURN, H_CALL, H_CONSTRAIN = "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"


# --------------------------------------------------------------------------------------------
# Tools and templates


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; ``arguments`` is JSON text, as OpenAI's ``function.arguments``."""

    name: str
    arguments: str
    id: str = ""

    def parsed_arguments(self) -> Any:
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except json.JSONDecodeError:
            return None

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def check_tools(tools: Any, param: str = "tools") -> list[dict[str, Any]]:
    """OpenAI-style ``tools`` checked and normalized to
    ``[{"type": "function", "function": {"name", "description", "parameters"}}]``."""
    if not isinstance(tools, list):
        raise UsageError(f"{param} must be a list of function definitions")
    out = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise UsageError(f'{param}[{i}]: only {{"type": "function", ...}} tools are supported')
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise UsageError(f"{param}[{i}].function.name is missing")
        name = fn["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise UsageError(
                f"{param}[{i}].function.name {name!r} must be 1-64 letters, digits, _ . or -"
            )
        if name in seen:
            raise UsageError(f"{param}[{i}]: function {name!r} is defined twice")
        seen.add(name)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise UsageError(f"{param}[{i}].function.parameters must be a JSON schema object")
        entry = {
            "name": name,
            "description": str(fn.get("description") or ""),
            "parameters": params,
        }
        out.append({"type": "function", "function": entry})
    return out


def supports_tools(template: str | None) -> bool:
    """Whether a chat template reads a ``tools`` variable at all."""
    if not template:
        return False
    from localllm import templates

    return "tools" in templates.template_variables(template) or "custom_tools" in template


def detect_format(template: str | None) -> ToolFormat | None:
    """The call syntax a chat template teaches its model; ``None`` when it has no tool support."""
    if not supports_tools(template):
        return None
    assert template is not None
    if "to=functions" in template or "'functions'" in template or H_CHANNEL in template:
        return "harmony"
    if MISTRAL_CALLS in template:
        return "mistral"
    if HERMES_OPEN in template:
        return "hermes"
    if "<|start_header_id|>" in template or PYTHON_TAG in template or "ipython" in template:
        return "llama3"
    return "hermes"  # a tools-aware template with no known syntax: the most common one


def require_format(template: str | None) -> ToolFormat:
    """:func:`detect_format`, or a :class:`UsageError` saying the model cannot take tools."""
    fmt = detect_format(template)
    if fmt is None:
        raise UsageError(
            "this model's chat template has no tool support (it never reads `tools`)",
            hint="use a model trained for tool calls (Qwen2.5, Llama 3.1, Mistral, gpt-oss), "
            "or pass a template that renders tools",
        )
    return fmt


def make_call_id(fmt: str | None = None) -> str:
    """A call id: ``call_`` and 24 characters; 9 alphanumerics for Mistral (its template
    refuses any other)."""
    alphabet = string.ascii_letters + string.digits
    if fmt == "mistral":
        return "".join(secrets.choice(alphabet) for _ in range(9))
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


def template_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: an assistant's ``tool_calls`` with their
    arguments decoded (templates apply ``tojson`` to them), ``content`` never ``None``."""
    out = []
    for message in messages:
        m = dict(message)
        if m.get("content") is None:
            m["content"] = ""
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                call = dict(call)
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    with contextlib.suppress(json.JSONDecodeError):
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                call["function"] = fn
                call.setdefault("type", "function")
                fixed.append(call)
            m["tool_calls"] = fixed
        out.append(m)
    return out


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    variables: Mapping[str, Any] | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt for ``messages`` with ``tools`` rendered by the template itself."""
    from localllm import templates

    extra = dict(variables or {})
    if tools:
        require_format(template)
        extra["tools"] = list(tools)
    return templates.render(
        template,
        template_messages(messages),
        bos_token=bos_token,
        eos_token=eos_token,
        variables=extra,
    )


# --------------------------------------------------------------------------------------------
# Streaming parser


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of call ``index``: the first delta has ``id`` and ``name``; ``arguments`` is a
    fragment of the arguments' JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ReasoningDelta:
    """Harmony analysis text met while parsing raw harmony output."""

    text: str


ToolEvent = ContentDelta | ToolCallDelta | ReasoningDelta

_HEAD_RE = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*', re.DOTALL
)


class _JsonEnd:
    """Finds where one JSON value ends in a stream of characters."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.kind = ""  # "{", "[", '"' or "scalar"
        self.done = False

    def feed(self, c: str) -> bool:
        """Consume ``c``; True if it belongs to the value (False: the value ended before it)."""
        if self.done:
            return False
        if not self.started:
            if c.isspace():
                return True
            self.started = True
            if c in "{[":
                self.kind, self.depth = c, 1
            elif c == '"':
                self.kind, self.in_string = '"', True
            else:
                self.kind = "scalar"
            return True
        if self.kind == "scalar":
            if c in ",}]" or c.isspace():
                self.done = True
                return False
            return True
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                if self.kind == '"':
                    self.done = True
            return True
        if c == '"':
            self.in_string = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.done = True
        return True


class _CallObject:
    """One ``{"name": ..., "arguments": ...}`` object, streamed: the name as soon as it is
    known, then the arguments' text as it arrives. Other key orders are decoded when the
    object is complete."""

    def __init__(self) -> None:
        self.buf = ""
        self.outer = _JsonEnd()
        self.args: _JsonEnd | None = None
        self.name: str | None = None
        self.arguments = ""
        self.done = False

    def feed(self, text: str) -> tuple[str | None, str, str]:
        """(name if just learned, argument fragment, text left over after the object)."""
        new_name: str | None = None
        frag: list[str] = []
        for i, c in enumerate(text):
            if not self.outer.feed(c):
                self.done = True
                return new_name, "".join(frag), text[i:]
            self.buf += c
            if self.args is not None:
                leading = not self.args.started and c.isspace()
                if self.args.feed(c) and not leading:
                    frag.append(c)
            elif self.name is None:
                m = _HEAD_RE.match(self.buf)
                if m:
                    self.name = new_name = json.loads(f'"{m.group(1)}"')
                    self.args = _JsonEnd()
            if self.outer.done:
                self.done = True
                if self.name is None:  # another key order: decode the whole object
                    new_name, whole = self._decode()
                    frag = [whole]
                return new_name, "".join(frag), text[i + 1 :]
        return new_name, "".join(frag), ""

    def _decode(self) -> tuple[str | None, str]:
        try:
            obj = json.loads(self.buf)
        except json.JSONDecodeError:
            return None, ""
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None, ""
        self.name = obj["name"]
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            return self.name, args
        return self.name, json.dumps(args, ensure_ascii=False)


def _partial(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class ToolCallParser:
    """Turns generated text into content and tool-call deltas, for one answer.

    ``fmt`` is the template's syntax (:func:`detect_format`). For ``harmony`` feed the raw text
    (control tokens rendered); for the others the answer text (after any reasoning).
    """

    def __init__(self, fmt: ToolFormat, *, id_factory: Callable[[], str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool call format {fmt!r}")
        self.fmt = fmt
        self._ids = id_factory or (lambda: make_call_id(fmt))
        self._buf = ""
        self._state = "start"  # start | content | call | between | done | harmony states
        self._obj: _CallObject | None = None
        self.calls: list[_Call] = []
        self.content_parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self._h_recipient: str | None = None
        self._h_channel = ""

    # -- public ---------------------------------------------------------------------------

    def prime(self, prompt: str) -> None:
        """Harmony: read the prompt's last message header (from its last ``<|start|>``), so
        generation that continues inside a pre-filled channel is parsed as that channel."""
        if self.fmt != "harmony":
            return
        at = prompt.rfind(H_START)
        if at < 0:
            return
        self._buf = prompt[at + len(H_START) :]
        self._state = "header"
        while self._step_harmony([], final=False):
            pass
        self.calls.clear()
        self.content_parts.clear()
        self.reasoning_parts.clear()

    def feed(self, text: str) -> list[ToolEvent]:
        self._buf += text
        out: list[ToolEvent] = []
        while self._step(out, final=False):
            pass
        return self._merge(out)

    def finish(self) -> list[ToolEvent]:
        out: list[ToolEvent] = []
        while self._step(out, final=True):
            pass
        if self._buf and self._state in ("start", "content"):
            self._content(out, self._buf)
        self._buf = ""
        return self._merge(out)

    @property
    def content(self) -> str:
        return "".join(self.content_parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c.name, "".join(c.arguments), c.id) for c in self.calls]

    # -- helpers ----------------------------------------------------------------------------

    def _merge(self, events: list[ToolEvent]) -> list[ToolEvent]:
        merged: list[ToolEvent] = []
        for e in events:
            last = merged[-1] if merged else None
            if isinstance(e, ContentDelta) and isinstance(last, ContentDelta):
                merged[-1] = ContentDelta(last.text + e.text)
            elif (
                isinstance(e, ToolCallDelta)
                and isinstance(last, ToolCallDelta)
                and e.index == last.index
                and e.name is None
            ):
                merged[-1] = ToolCallDelta(
                    last.index, last.id, last.name, last.arguments + e.arguments
                )
            elif isinstance(e, ToolCallDelta) and not e.arguments and e.name is None:
                continue
            else:
                merged.append(e)
        return merged

    def _content(self, out: list[ToolEvent], text: str) -> None:
        if text:
            self.content_parts.append(text)
            out.append(ContentDelta(text))

    def _start_call(self, out: list[ToolEvent], name: str) -> None:
        call = _Call(self._ids(), name)
        self.calls.append(call)
        out.append(ToolCallDelta(len(self.calls) - 1, call.id, name, ""))

    def _args(self, out: list[ToolEvent], frag: str) -> None:
        if frag and self.calls:
            self.calls[-1].arguments.append(frag)
            out.append(ToolCallDelta(len(self.calls) - 1, arguments=frag))

    def _feed_object(self, out: list[ToolEvent], text: str) -> str:
        """Feed the current call object; returns text after it (when it ended)."""
        if self._obj is None:
            self._obj = _CallObject()
        obj = self._obj
        before = obj.name
        name, frag, rest = obj.feed(text)
        if name is not None and before is None:
            self._start_call(out, name)
        self._args(out, frag)
        if obj.done:
            self._obj = None
        return rest

    # -- the state machine ------------------------------------------------------------------

    def _step(self, out: list[ToolEvent], *, final: bool) -> bool:
        if self.fmt == "harmony":
            return self._step_harmony(out, final=final)
        buf = self._buf
        if self._state == "start":
            if self.fmt == "llama3":
                stripped = buf.lstrip()
                if not stripped:
                    return False
                if stripped.startswith(PYTHON_TAG):
                    self._buf = stripped[len(PYTHON_TAG) :]
                    self._state = "call"
                    return True
                if re.match(r'\{\s*"name"', stripped):
                    self._buf = stripped
                    self._state = "call"
                    return True
                if not final and re.fullmatch(r'\{\s*("(n(a(m(e)?)?)?)?)?', stripped):
                    return False  # maybe the start of a call, still arriving
            self._state = "content"
            return True
        if self._state == "content":
            marker = {"hermes": HERMES_OPEN, "mistral": MISTRAL_CALLS, "llama3": PYTHON_TAG}[
                self.fmt
            ]
            at = buf.find(marker)
            if at >= 0:
                self._content(out, buf[:at])
                self._buf = buf[at + len(marker) :]
                self._state = "call"
                return True
            hold = 0 if final else _partial(buf, (marker,))
            self._content(out, buf[: len(buf) - hold])
            self._buf = buf[len(buf) - hold :]
            return False
        if self._state == "call":
            return self._step_call(out, final=final)
        if self._state == "hermes_tail":
            at = buf.find(HERMES_CLOSE)
            if at >= 0:
                self._buf = buf[at + len(HERMES_CLOSE) :]
                self._state = "content"
                return True
            self._buf = buf[len(buf) - _partial(buf, (HERMES_CLOSE,)) :]
            return False
        if self._state == "done":
            self._buf = ""
        return False

    def _step_call(self, out: list[ToolEvent], *, final: bool) -> bool:
        buf = self._buf
        if self._obj is None:
            stripped = buf.lstrip(" \t\r\n[,;")
            if self.fmt == "hermes" and stripped.startswith(HERMES_CLOSE):
                self._buf = stripped[len(HERMES_CLOSE) :]
                self._state = "content"
                return True
            if self.fmt == "mistral" and stripped.startswith("]"):
                self._buf = stripped[1:]
                return True
            if not stripped:
                self._buf = ""
                return False
            if stripped[0] != "{":
                if self.fmt == "mistral":
                    return self._step_mistral_named(out, stripped, final=final)
                if self.fmt == "llama3" and stripped.startswith(PYTHON_TAG):
                    self._buf = stripped[len(PYTHON_TAG) :]
                    return True
                if self.fmt == "hermes":  # not JSON inside <tool_call>: skip to its end
                    self._state = "hermes_tail"
                    self._buf = stripped
                    return True
                self._state = "done"  # trailing text after llama3 calls is dropped
                self._buf = ""
                return False
            buf = stripped
        self._buf = ""
        rest = self._feed_object(out, buf)
        if self._obj is None:
            self._buf = rest
            if self.fmt == "hermes":
                self._state = "hermes_tail"
            return bool(rest) or final
        return False

    def _step_mistral_named(self, out: list[ToolEvent], text: str, *, final: bool) -> bool:
        """``name[ARGS]{...}`` (Mistral's newer syntax)."""
        at = text.find(MISTRAL_ARGS)
        if at < 0:
            self._buf = text
            if final:
                self._buf = ""
            return False
        name = text[:at].strip()
        self._start_call(out, name)
        self._obj = _CallObject()
        self._obj.name = name
        self._obj.args = _JsonEnd()
        self._obj.outer = self._obj.args  # the object is the arguments themselves
        self._buf = ""
        rest = text[at + len(MISTRAL_ARGS) :]
        _, frag, rest = self._obj.feed(rest)
        self._args(out, frag)
        if self._obj.done:
            self._obj = None
            rest = rest.lstrip()
            if rest.startswith(MISTRAL_CALLS):
                rest = rest[len(MISTRAL_CALLS) :]
        self._buf = rest
        return bool(rest)

    # -- harmony ------------------------------------------------------------------------------

    def _step_harmony(self, out: list[ToolEvent], *, final: bool) -> bool:
        buf = self._buf
        if self._state in ("start", "header"):
            at = buf.find(H_MESSAGE)
            if at < 0:
                if final:
                    self._buf = ""
                return False
            header = buf[:at]
            m = re.search(r"to=functions\.([A-Za-z0-9_.\-]+)", header)
            ch = re.search(re.escape(H_CHANNEL) + r"\s*([A-Za-z_]+)", header)
            self._h_recipient = m.group(1) if m else None
            self._h_channel = ch.group(1) if ch else "final"
            self._buf = buf[at + len(H_MESSAGE) :]
            self._state = "h_body"
            if self._h_recipient:
                self._start_call(out, self._h_recipient)
            return True
        if self._state == "h_body":
            ends = (H_CALL, H_END, H_RETURN, H_START)
            hits = [(i, m) for m in ends if (i := buf.find(m)) >= 0]
            if hits:
                at, marker = min(hits)
                self._h_emit(out, buf[:at])
                self._buf = buf[at + len(marker) :] if marker != H_START else buf[at:]
                if marker == H_START:
                    self._buf = buf[at + len(H_START) :]
                self._state = "header"
                return True
            hold = 0 if final else _partial(buf, ends)
            self._h_emit(out, buf[: len(buf) - hold])
            self._buf = buf[len(buf) - hold :]
            return False
        return False

    def _h_emit(self, out: list[ToolEvent], text: str) -> None:
        if not text:
            return
        if self._h_recipient:
            self._args(out, text)
        elif self._h_channel == "analysis":
            self.reasoning_parts.append(text)
            out.append(ReasoningDelta(text))
        else:
            self._content(out, text)


@dataclass(frozen=True)
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall]
    reasoning: str = ""


def parse(
    text: str, fmt: ToolFormat, *, id_factory: Callable[[], str] | None = None
) -> ParsedOutput:
    """Content and calls of a whole answer (the streaming parser fed in one piece)."""
    parser = ToolCallParser(fmt, id_factory=id_factory)
    parser.feed(text)
    parser.finish()
    return ParsedOutput(parser.content, parser.tool_calls, "".join(parser.reasoning_parts))


# --------------------------------------------------------------------------------------------
# Forcing a call


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def prefix_rules(grammar: str, prefix: str) -> str:
    """``grammar`` with every rule renamed ``prefix`` + name (to combine several)."""
    from localllm.structured import check_gbnf

    parsed = check_gbnf(grammar, "a converted parameter schema")
    out, last = [], 0
    for start, end, name in parsed.names:
        out.append(parsed.text[last:start] + prefix + name)
        last = end
    out.append(parsed.text[last:])
    return "".join(out)


def call_syntax(fmt: ToolFormat, name: str) -> tuple[str, str]:
    """The text before and after a call's arguments, as the model family writes it."""
    if fmt == "hermes":
        return f'<tool_call>\n{{"name": "{name}", "arguments": ', "}\n</tool_call>"
    if fmt == "llama3":
        return f'{{"name": "{name}", "parameters": ', "}"
    if fmt == "mistral":
        return f'[TOOL_CALLS][{{"name": "{name}", "arguments": ', "}]"
    return f" to=functions.{name}{H_CHANNEL}commentary json{H_MESSAGE}", H_CALL


def tool_call_grammar(
    fmt: ToolFormat,
    tools: Sequence[Mapping[str, Any]],
    schema_to_gbnf: Callable[[Mapping[str, Any]], str],
    *,
    name: str | None = None,
) -> str:
    """GBNF that forces one call to ``name`` (or to any of ``tools``) in the family's syntax,
    its arguments valid against the function's parameter schema (``tool_choice`` required or
    named). ``tools`` as :func:`check_tools` returns them."""
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    if not chosen:
        raise UsageError(
            f"tool_choice names the function {name!r}, which is not among the tools",
            hint="tools: " + ", ".join(t["function"]["name"] for t in tools),
        )
    alts, bodies = [], []
    for i, fn in enumerate(chosen):
        prefix = f"t{i}-"
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        body = prefix_rules(schema_to_gbnf(params), prefix)
        before, after = call_syntax(fmt, fn["name"])
        alts.append(f"{_literal(before)} {prefix}root {_literal(after)}")
        bodies.append(body.rstrip("\n"))
    return "root ::= " + " | ".join(alts) + "\n" + "\n".join(bodies) + "\n"


# --------------------------------------------------------------------------------------------
# A request's tools


@dataclass(frozen=True)
class ToolChoice:
    """``tool_choice``: ``auto`` (the model decides), ``none`` (no calls are parsed),
    ``required`` (some call, forced), or a named function (that call, forced)."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")


def parse_tool_choice(value: Any, tools: Sequence[Mapping[str, Any]] | None) -> ToolChoice:
    """OpenAI's ``tool_choice`` (a string or ``{"type": "function", "function": {"name"}}``)."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise UsageError(
                f"tool_choice must be auto, none, required or a function, not {value!r}"
            )
        if value == "required" and not tools:
            raise UsageError("tool_choice is required but no tools were given")
        return ToolChoice(value)  # type: ignore[arg-type]
    fn = value.get("function") if isinstance(value, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise UsageError('tool_choice must be {"type": "function", "function": {"name": ...}}')
    names = [t["function"]["name"] for t in tools or ()]
    if name not in names:
        raise UsageError(
            f"tool_choice names the function {name!r}, which is not among the tools",
            hint="tools: " + (", ".join(names) or "none given"),
        )
    return ToolChoice("named", name)

"""The OpenAI wire format: requests to profile overrides and messages, session events to
``chat.completion`` / ``text_completion`` objects and SSE chunks.

Only translation lives here. Sampling, reasoning splitting, stops and budgets are the
session's; a field is either mapped onto a :class:`~localllm.profiles.Profile` field or
refused with a 400 naming it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from localllm.server.errors import HTTPError, bad_request, unsupported

# Request fields mapped one to one onto profile fields.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repeat_penalty",
    "reasoning_budget",
)
EFFORTS = {"none": None, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


@dataclass
class Request:
    """A parsed request, ready for the model pool and a session."""

    model: str | None
    profile: str | None
    overrides: dict[str, Any]
    messages: list[dict[str, str]] | None = None  # chat
    prompt: str | None = None  # completions
    stream: bool = False
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    constraint: Any = None  # localllm.structured.Constraint (response_format)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # localllm.tools.ToolChoice


# -- requests ---------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string", key)
    return value


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false", key)
    return value


def is_random_seed(value: Any) -> bool:
    """``seed: -1`` means "random" to OpenAI clients, llama.cpp and Ollama."""
    return _is_int(value) and value == -1


def common_overrides(body: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling, limits and reasoning fields shared by both endpoints."""
    overrides: dict[str, Any] = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    if is_random_seed(overrides.get("seed")):
        overrides["seed"] = None  # random, even when the server's profile fixes a seed
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        overrides["max_tokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        overrides["stop"] = [stop] if isinstance(stop, str) else stop
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise bad_request(
                f"'reasoning_effort' must be one of {', '.join(EFFORTS)}", "reasoning_effort"
            )
        overrides["mode"] = "instant" if effort == "none" else "reasoning"
        if EFFORTS[effort]:
            overrides["reasoning_effort"] = EFFORTS[effort]
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, Mapping):
            raise bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        thinking = kwargs.get("enable_thinking")
        if thinking is not None:
            if not isinstance(thinking, bool):
                raise bad_request(
                    "'chat_template_kwargs.enable_thinking' must be true or false",
                    "chat_template_kwargs",
                )
            overrides["mode"] = "reasoning" if thinking else "instant"
    think = body.get("think")
    if think is not None:
        if isinstance(think, str) and think in ("low", "medium", "high"):
            overrides["mode"] = "reasoning"
            overrides["reasoning_effort"] = think
        elif isinstance(think, bool):
            overrides["mode"] = "reasoning" if think else "instant"
        else:
            raise bad_request("'think' must be true, false, low, medium or high", "think")
    return overrides


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "one choice per request (n = 1)")
    if body.get("logprobs") not in (None, False, 0):
        raise unsupported("logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise unsupported("top_logprobs")
    if body.get("functions"):
        raise unsupported("functions", "use 'tools'")
    if body.get("function_call") not in (None, "none", "auto"):
        raise unsupported("function_call", "use 'tool_choice'")
    if body.get("logit_bias"):
        raise unsupported("logit_bias")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported("modalities", "text only")


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad_request("'stream_options.include_usage' must be true or false", "stream_options")
    return include and stream


def content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts."""
    text, urls = content_parts(content, where)
    if urls:
        raise unsupported("messages", f"image content is not accepted in {where}")
    return text


def content_parts(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and its images' URLs (``image_url`` parts, in order)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        texts = []
        urls: list[str] = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, Mapping):
                raise bad_request(f"'{where}.content[{j}]' must be an object", "messages")
            kind = part.get("type")
            if kind in ("text", "input_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"'{where}.content[{j}].text' must be a string", "messages")
                texts.append(text)
            elif kind in ("image_url", "input_image"):
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, Mapping) else url
                if not isinstance(url, str) or not url:
                    raise bad_request(
                        f"'{where}.content[{j}].image_url.url' must be a string", "messages"
                    )
                urls.append(url)
            elif kind in ("image", "input_audio", "file"):
                raise unsupported("messages", f"{kind} content is not available yet")
            else:
                raise bad_request(f"unknown content part type {kind!r} in {where}", "messages")
        return "".join(texts), urls
    raise bad_request(f"'{where}.content' must be a string or a list of parts", "messages")


ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise bad_request(f"'{where}.tool_calls' must be a list", "messages")
    out = []
    for j, call in enumerate(value):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise bad_request(f"'{where}.tool_calls[{j}].function.name' is missing", "messages")
        args = fn.get("arguments", "{}")
        if not isinstance(args, (str, Mapping)):
            raise bad_request(
                f"'{where}.tool_calls[{j}].function.arguments' must be a JSON string", "messages"
            )
        out.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def parse_response_format(value: Any, param: str = "response_format") -> Any:
    """``response_format`` → a :class:`~localllm.structured.Constraint` (or None for text);
    a bad schema is a 400 naming ``param``."""
    from localllm.errors import UsageError
    from localllm.session import make_constraint

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise bad_request(f"'{param}' must be an object", param)
    kind = value.get("type")
    try:
        if kind == "text":
            return None
        if kind == "json_object":
            return make_constraint(json_format=True)
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, Mapping) or "schema" not in spec:
                raise bad_request(f"'{param}.json_schema' must be an object with a 'schema'", param)
            return make_constraint(json_schema=spec["schema"], source=f"{param} schema")
    except UsageError as exc:
        raise bad_request(exc.message + (f" ({exc.hint})" if exc.hint else ""), param) from None
    raise bad_request(f"'{param}.type' must be text, json_object or json_schema", param)


def parse_tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    """``tools`` and ``tool_choice``, checked (400 naming the field)."""
    from localllm import tools as tool_calls
    from localllm.errors import UsageError

    raw = body.get("tools")
    tools = None
    if raw:
        try:
            tools = tool_calls.check_tools(raw)
        except UsageError as exc:
            raise bad_request(exc.message, "tools") from None
    try:
        choice = tool_calls.parse_tool_choice(body.get("tool_choice"), tools)
    except UsageError as exc:
        raise bad_request(exc.message, "tool_choice") from None
    return tools, choice


def parse_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"'{where}' must be an object", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(
                f"'{where}.role' must be system, developer, user, assistant or tool, not {role!r}",
                "messages",
            )
        text, urls = content_parts(message.get("content"), where)
        entry: dict[str, Any] = {"role": ROLES[role], "content": text}
        if urls:
            entry["image_urls"] = urls
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = _tool_calls(message["tool_calls"], where)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise bad_request(f"'{where}.tool_call_id' must be a string", "messages")
            entry["tool_call_id"] = call_id
            if isinstance(message.get("name"), str):
                entry["name"] = message["name"]
        out.append(entry)
    return out


def resolve_images(messages: list[dict[str, Any]], *, allow_remote: bool) -> None:
    """Turn each message's ``image_urls`` (data URLs; http(s) only with ``allow_remote``) and
    ``image_b64`` (Ollama) into decoded, checked ``images``; a bad one is a 400."""
    from localllm import images
    from localllm.errors import UsageError

    for i, message in enumerate(messages):
        urls = message.pop("image_urls", None) or []
        raw = message.pop("image_b64", None) or []
        if not urls and not raw:
            continue
        found = []
        try:
            for url in urls:
                if images.is_remote(url) and not allow_remote:
                    raise bad_request(
                        f"image URLs are not fetched: {url[:60]} (send a data: URL, or start "
                        "the server with --allow-remote)",
                        "messages",
                    )
                found.append(images.from_data_url(url, allow_remote=allow_remote))
            for j, payload in enumerate(raw):
                if not isinstance(payload, str):
                    raise bad_request(f"messages[{i}].images[{j}] must be a base64 string")
                found.append(images.from_base64(payload, f"messages[{i}].images[{j}]"))
        except UsageError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            raise bad_request(exc.message + hint, "messages") from None
        message["images"] = found


def parse_chat(body: Mapping[str, Any]) -> Request:
    _refuse_unsupported(body)
    stream = _flag(body, "stream")
    tools, choice = parse_tools(body)
    return Request(
        model=_optional_str(body, "model"),
        profile=_optional_str(body, "profile"),
        overrides=common_overrides(body),
        messages=parse_messages(body.get("messages")),
        stream=stream,
        include_usage=_stream_options(body, stream),
        constraint=parse_response_format(body.get("response_format")),
        tools=tools,
        tool_choice=choice,
    )


def parse_completion(body: Mapping[str, Any]) -> Request:
    _refuse_unsupported(body)
    if body.get("echo"):
        raise unsupported("echo")
    if body.get("best_of") not in (None, 1):
        raise unsupported("best_of")
    if body.get("suffix"):
        raise unsupported("suffix")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise unsupported("prompt", "one prompt string per request")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    if body.get("tools"):
        raise unsupported("tools", "use /v1/chat/completions")
    stream = _flag(body, "stream")
    overrides = common_overrides(body)
    overrides.setdefault("max_tokens", 16)  # the OpenAI default for completions
    return Request(
        model=_optional_str(body, "model"),
        profile=_optional_str(body, "profile"),
        overrides=overrides,
        prompt=prompt,
        stream=stream,
        include_usage=_stream_options(body, stream),
        constraint=parse_response_format(body.get("response_format")),
    )


# -- responses --------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(stats: Any, turn: Any = None) -> str | None:
    if turn is not None and getattr(turn, "finish_reason", None):
        return turn.finish_reason
    if stats is None:
        return None
    return {"stop": "stop", "length": "length", "context": "length"}.get(stats.stop_reason)


def tool_calls_json(turn: Any) -> list[dict[str, Any]]:
    return [call.as_openai() for call in getattr(turn, "tool_calls", None) or ()]


def usage(turn: Any) -> dict[str, Any]:
    stats = turn.stats
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generated_tokens if stats else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens if stats else 0},
        "completion_tokens_details": {"reasoning_tokens": turn.reasoning_tokens},
    }


def extension(turn: Any) -> dict[str, Any]:
    """Our own figures (as ``run --json`` has them); clients ignore unknown keys."""
    out = turn.parts_dict()
    if turn.stats is not None:
        out["stats"] = turn.stats.as_dict()
    return out


def chat_response(rid: str, created: int, model: str, turn: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.answer}
    calls = tool_calls_json(turn)
    if calls:
        message["tool_calls"] = calls
        message["content"] = turn.answer or None
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "localllm",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(turn.stats, turn),
            }
        ],
        "usage": usage(turn),
        "localllm": extension(turn),
    }


def completion_response(rid: str, created: int, model: str, turn: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "localllm",
        "choices": [
            {
                "index": 0,
                "text": turn.answer,
                "logprobs": None,
                "finish_reason": finish_reason(turn.stats),
            }
        ],
        "usage": usage(turn),
        "localllm": extension(turn),
    }


def sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class ChatChunks:
    """Builds the ``chat.completion.chunk`` stream for one request."""

    def __init__(self, model: str, *, include_usage: bool, completion: bool = False) -> None:
        self.id = new_id("cmpl" if completion else "chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.completion = completion
        # The per-token chunks are the same envelope around one JSON string: built once, so a
        # token costs one json.dumps of its text, not of the whole chunk.
        self._text = self._template({"content": "\0"})
        self._thinking = self._template({"reasoning_content": "\0"})

    def _template(self, delta: dict[str, Any]) -> tuple[bytes, bytes]:
        head, _, tail = self._chunk([self._choice(delta)]).partition(b'"\\u0000"')
        return head, tail

    @staticmethod
    def _fill(template: tuple[bytes, bytes], text: str) -> bytes:
        return template[0] + json.dumps(text, ensure_ascii=False).encode() + template[1]

    def _chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self.completion else "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "localllm",
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = None
        payload.update(more)
        return sse(payload)

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.completion:
            return {
                "index": 0,
                "text": delta.get("content", ""),
                "logprobs": None,
                "finish_reason": finish,
            }
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def role(self) -> bytes:
        if self.completion:
            return b""
        return self._chunk([self._choice({"role": "assistant", "content": ""})])

    def answer(self, text: str) -> bytes:
        return self._fill(self._text, text)

    def tool_call(self, delta: Any) -> bytes:
        """A ``delta.tool_calls`` chunk: the first of a call has its id and name."""
        call: dict[str, Any] = {"index": delta.index}
        if delta.name is not None:
            call.update(
                id=delta.id,
                type="function",
                function={"name": delta.name, "arguments": delta.arguments},
            )
        else:
            call["function"] = {"arguments": delta.arguments}
        return self._chunk([self._choice({"tool_calls": [call]})])

    def reasoning(self, text: str) -> bytes:
        if self.completion:
            return b""
        return self._fill(self._thinking, text)

    def end(self, turn: Any) -> bytes:
        out = self._chunk(
            [self._choice({}, finish_reason(turn.stats, turn) or "stop")],
            localllm=extension(turn),
        )
        if self.include_usage:
            payload = {
                "id": self.id,
                "object": "text_completion" if self.completion else "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "localllm",
                "choices": [],
                "usage": usage(turn),
            }
            out += sse(payload)
        return out + sse("[DONE]")

    def error(self, exc: HTTPError) -> bytes:
        return sse(exc.openai_body())


def models_list(entries: list[Any], loaded: set[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": e.name,
                "object": "model",
                "created": _created(e.modified),
                "owned_by": getattr(e, "owned_by", "localllm"),
                "loaded": e.name in loaded,
            }
            for e in entries
        ],
    }


def _created(stamp: str | None) -> int:
    if not stamp:
        return 0
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return 0


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(value: Any) -> Any:
    """``value`` with lone surrogates (valid JSON escapes, invalid text) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value

"""The Ollama wire format (``/api``): requests to profile overrides and messages, session
events to NDJSON lines. Translation only, like :mod:`localllm.server.openai`.

Not covered: pulling, pushing, creating, copying and deleting models (``localllm pull`` /
``rm`` do that; ``/api/embed`` and ``/api/embeddings`` live in
:mod:`localllm.server.embeddings`), ``keep_alive`` (models stay loaded
until ``--max-loaded`` pushes them out), and ``options`` that change how a model is loaded
(``num_ctx``, ``num_gpu``, ``num_thread``: set them on ``localllm serve``). Other unknown
options are ignored, as Ollama does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from localllm.server import openai
from localllm.server.errors import bad_request, unsupported

OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "stop": "stop",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def overrides(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise bad_request("'options' must be an object", "options")
    out: dict[str, Any] = {
        ours: options[theirs] for theirs, ours in OPTION_FIELDS.items() if theirs in options
    }
    predict = options.get("num_predict")
    if predict is not None:
        if not openai._is_int(predict):
            raise bad_request("'options.num_predict' must be an integer", "options")
        if predict > 0:  # -1 (no limit) and -2 (fill the context) keep the profile's limit
            out["max_tokens"] = predict
    if openai.is_random_seed(out.get("seed")):
        out["seed"] = None  # -1: random, as in Ollama
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    think = body.get("think")
    if think is not None:
        out.update(openai.common_overrides({"think": think}))
    return out


def parse_format(body: Mapping[str, Any]) -> Any:
    """``format``: ``"json"`` (any JSON value... an object, as Ollama's models answer) or a
    JSON schema; a bad one is a 400 naming ``format``."""
    fmt = body.get("format")
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return openai.parse_response_format({"type": "json_object"}, "format")
    if isinstance(fmt, Mapping):
        return openai.parse_response_format(
            {"type": "json_schema", "json_schema": {"schema": fmt}}, "format"
        )
    raise bad_request("'format' must be \"json\" or a JSON schema", "format")


def parse_chat(body: Mapping[str, Any]) -> openai.Request:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list")
    tools, choice = openai.parse_tools({"tools": body.get("tools")})
    prepared = [
        {**m, "tool_calls": _openai_calls(m["tool_calls"])}
        if isinstance(m, Mapping) and m.get("tool_calls")
        else m
        for m in raw
    ]
    for m in prepared:  # Ollama's tool results carry no call id
        if isinstance(m, Mapping) and m.get("role") == "tool":
            m.setdefault("tool_call_id", "")  # type: ignore[union-attr]
    messages = openai.parse_messages(prepared)
    for message, source in zip(messages, raw, strict=True):
        pictures = source.get("images") if isinstance(source, Mapping) else None
        if pictures:
            message["image_b64"] = _image_list(pictures)
    return openai.Request(
        model=openai._optional_str(body, "model"),
        profile=openai._optional_str(body, "profile"),
        overrides=overrides(body),
        messages=messages,
        stream=_stream(body),
        constraint=parse_format(body),
        tools=tools,
        tool_choice=choice,
    )


def _openai_calls(calls: Any) -> Any:
    """Ollama's tool calls (arguments as objects) in OpenAI's form (arguments as JSON text)."""
    if not isinstance(calls, list):
        return calls
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), Mapping):
            fn = {**fn, "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}
            call = {**call, "function": fn}
        out.append(call)
    return out


def tool_calls(turn: Any) -> list[dict[str, Any]]:
    """A turn's calls as Ollama writes them: arguments decoded."""
    out = []
    for call in getattr(turn, "tool_calls", None) or ():
        args = call.parsed_arguments()
        out.append({"function": {"name": call.name, "arguments": args if args is not None else {}}})
    return out


def _image_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("'images' must be a list of base64 strings", "images")
    return value


def parse_generate(body: Mapping[str, Any]) -> openai.Request:
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string")
    system = openai._optional_str(body, "system")
    if body.get("suffix"):
        raise unsupported("suffix")
    over = overrides(body)
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise bad_request("'raw' must be true or false")
    request = openai.Request(
        model=openai._optional_str(body, "model"),
        profile=openai._optional_str(body, "profile"),
        overrides=over,
        stream=_stream(body),
        constraint=parse_format(body),
    )
    pictures = body.get("images")
    if raw:
        if pictures:
            raise unsupported("images", "images need the chat template: leave 'raw' off")
        request.prompt = prompt
    else:
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        user: dict[str, Any] = {"role": "user", "content": prompt}
        if pictures:
            user["image_b64"] = _image_list(pictures)
        request.messages = [*messages, user]
    request.extra["empty"] = not prompt  # Ollama: an empty prompt just loads the model
    return request


def _stream(body: Mapping[str, Any]) -> bool:
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise bad_request("'stream' must be true or false")
    return value


# -- responses --------------------------------------------------------------------------------


def line(payload: Mapping[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False) + "\n").encode()


def piece(model: str, *, chat: bool, answer: str = "", thinking: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if thinking:
            message["thinking"] = thinking
        out["message"] = message
    else:
        out["response"] = answer
        if thinking:
            out["thinking"] = thinking
    out["done"] = False
    return out


class Lines:
    """Writes the NDJSON stream of ``/api/chat`` and ``/api/generate`` for one request (the
    wire format :func:`localllm.server.app.pump` drives)."""

    def __init__(self, model: str, *, chat: bool, t0: float) -> None:
        self.model = model
        self.chat = chat
        self.t0 = t0
        # A token's line is one template around its text and the time: built once.
        shape = {**piece(model, chat=chat, answer="\0"), "created_at": "\1"}
        head, _, tail = line(shape).partition(b'"\\u0000"')
        self._head = head.split(b'"\\u0001"')
        self._tail = tail

    def role(self) -> bytes:
        return b""

    def answer(self, text: str) -> bytes:
        head = self._head
        stamp = json.dumps(now()).encode()
        text_json = json.dumps(text, ensure_ascii=False).encode()
        return head[0] + stamp + head[1] + text_json + self._tail

    def reasoning(self, text: str) -> bytes:
        return line(piece(self.model, chat=self.chat, thinking=text))

    def tool_call(self, delta: Any) -> bytes:
        return b""  # Ollama sends a turn's tool calls whole, in the last object

    def end(self, turn: Any) -> bytes:
        total = time.perf_counter() - self.t0
        return line(final(self.model, turn, chat=self.chat, total_s=total))

    def error(self, exc: Any) -> bytes:
        return line(exc.ollama_body())


def final(
    model: str, turn: Any, *, chat: bool, total_s: float, whole: bool = False
) -> dict[str, Any]:
    """The last object: counts and durations (in nanoseconds); ``whole`` carries the full
    answer (``stream: false``)."""
    stats = turn.stats if turn is not None else None
    answer = turn.answer if whole and turn is not None else ""
    thinking = turn.reasoning if whole and turn is not None else ""
    out = piece(model, chat=chat, answer=answer, thinking=thinking)
    calls = tool_calls(turn) if chat and turn is not None else []
    if calls:
        out["message"]["tool_calls"] = calls
    reason = "stop"
    if stats is not None and stats.stop_reason in ("length", "context"):
        reason = "length"
    out.update(
        {
            "done": True,
            "done_reason": reason,
            "total_duration": int(total_s * 1e9),
            "load_duration": 0,
            "prompt_eval_count": stats.prompt_tokens if stats else 0,
            "prompt_eval_duration": int(stats.ttft_s * 1e9) if stats else 0,
            "eval_count": stats.generated_tokens if stats else 0,
            "eval_duration": int(stats.generation_s * 1e9) if stats else 0,
        }
    )
    return out


def _details(entry: Any) -> dict[str, Any]:
    params = entry.parameters
    size = ""
    if params:
        size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": entry.architecture or "",
        "families": [entry.architecture] if entry.architecture else None,
        "parameter_size": size,
        "quantization_level": entry.quant or "",
    }


def tags(entries: list[Any]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": e.name,
                "model": e.name,
                "modified_at": e.modified or now(),
                "size": e.size,
                "digest": "",
                "details": _details(e),
            }
            for e in entries
        ]
    }


def ps(entries: list[Any]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": e.name,
                "model": e.name,
                "size": e.size,
                "digest": "",
                "details": _details(e),
                "expires_at": "9999-12-31T23:59:59Z",
                "size_vram": 0,
            }
            for e in entries
        ]
    }


def show(entry: Any, template: str | None, capabilities: list[str]) -> dict[str, Any]:
    return {
        "modelfile": f"FROM {entry.path}\n",
        "parameters": "",
        "template": template or "",
        "details": _details(entry),
        "model_info": {
            "general.architecture": entry.architecture or "",
            "general.parameter_count": entry.parameters or 0,
            "general.context_length": entry.context_length or 0,
        },
        "capabilities": capabilities,
        "modified_at": entry.modified or now(),
    }

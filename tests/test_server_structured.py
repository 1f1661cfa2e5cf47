"""``localllm serve`` with structured output and tool calls: ``response_format`` and Ollama's
``format``, ``tools``/``tool_choice`` with ``message.tool_calls`` (whole and streamed), tool
results through the model's own template, and full round trips with the ``openai`` client. Real
server subprocesses, tiny random-weight models carrying real chat templates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from ggufgen import write_tiny_gguf
from serverproc import ServerProcess

TEMPLATES = Path(__file__).parent / "tool_templates"

# ASCII-pattern strings: random weights write bytes that are not UTF-8 (see test_structured).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
}
ALARM = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "description": "Set an alarm",
        "parameters": {
            "type": "object",
            "properties": {"time": {"const": "07:30"}, "loud": {"enum": [True]}},
            "required": ["time", "loud"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
            "required": ["q"],
        },
    },
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tool-models")
    return {
        family: write_tiny_gguf(
            folder / f"{family}.gguf",
            chat_template=(TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8"),
            name=f"{family}-tiny",
        )
        for family in ("qwen2.5", "mistral-nemo", "llama3.1")
    }


class Servers:
    """One server per model (``serve`` takes one model path), started on first use."""

    def __init__(self, paths: dict[str, Path], home: Path) -> None:
        self.paths = paths
        self.home = home
        self.running: dict[str, ServerProcess] = {}

    def __call__(self, family: str) -> ServerProcess:
        if family not in self.running:
            proc = ServerProcess(
                "-m", str(self.paths[family]), env={"LOCALLLM_HOME": str(self.home / family)}
            )
            self.running[family] = proc.__enter__()
        return self.running[family]

    def close(self) -> None:
        for proc in self.running.values():
            proc.__exit__(None, None, None)


@pytest.fixture(scope="module")
def servers(
    models: dict[str, Path], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    running = Servers({**models, "chatml": tiny_model}, tmp_path_factory.mktemp("homes"))
    yield running
    running.close()


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def name_of(path: Path) -> str:
    return path.stem


# -- response_format ------------------------------------------------------------------------


def test_response_format_json_schema_and_json_object(servers: Servers, tiny_model: Path):
    c = client(servers("chatml"))
    for seed in (1, 2):
        r = c.chat.completions.create(
            model=name_of(tiny_model),
            messages=[{"role": "user", "content": "A person, please"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
            seed=seed,
            max_tokens=200,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)
    r = c.chat.completions.create(
        model=name_of(tiny_model),
        messages=[{"role": "user", "content": "Any object"}],
        response_format={"type": "json_object"},
        seed=3,
        max_tokens=300,
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}, "'type'"),
        ({"type": "json_schema", "json_schema": {"schema": {"minimum": 1}}}, "'minimum'"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "'schema'"),
        ({"type": "xml"}, "json_object or json_schema"),
    ],
)
def test_bad_response_format_is_400_naming_the_param(
    servers: Servers, tiny_model: Path, fmt: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(servers("chatml")).chat.completions.create(
            model=name_of(tiny_model),
            messages=[{"role": "user", "content": "hi"}],
            response_format=fmt,  # type: ignore[arg-type]
        )
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "response_format", body
    assert message in body["message"]


def test_ollama_format_json_and_schema(servers: Servers, tiny_model: Path) -> None:
    url = servers("chatml").url + "/api/chat"
    base = {"model": name_of(tiny_model), "stream": False, "options": {"seed": 4}}
    msgs = [{"role": "user", "content": "A person"}]
    r = httpx.post(url, json={**base, "messages": msgs, "format": PERSON}, timeout=60)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["message"]["content"]), PERSON)
    r = httpx.post(url, json={**base, "messages": msgs, "format": "json"}, timeout=60)
    assert isinstance(json.loads(r.json()["message"]["content"]), dict)
    r = httpx.post(url, json={**base, "messages": msgs, "format": {"type": 3}}, timeout=60)
    assert r.status_code == 400 and "error" in r.json()


# -- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2.5", "mistral-nemo", "llama3.1"])
def test_named_tool_choice_gives_tool_calls(
    servers: Servers, models: dict[str, Path], family: str
) -> None:
    r = client(servers(family)).chat.completions.create(
        model=name_of(models[family]),
        messages=[{"role": "user", "content": "Wake me at 7:30"}],
        tools=[ALARM, SEARCH],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "set_alarm"}},
        max_tokens=200,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["set_alarm"]
    assert json.loads(calls[0].function.arguments) == {"time": "07:30", "loud": True}
    assert calls[0].id and calls[0].type == "function"


def test_streamed_tool_calls_arrive_as_argument_fragments(
    servers: Servers, models: dict[str, Path]
) -> None:
    stream = client(servers("qwen2.5")).chat.completions.create(
        model=name_of(models["qwen2.5"]),
        messages=[{"role": "user", "content": "search for cats"}],
        tools=[SEARCH, ALARM],  # type: ignore[list-item]
        tool_choice="required",
        stream=True,
        seed=5,
        max_tokens=200,
    )
    content, calls, finish, fragments = "", {}, None, 0
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": None, "args": "", "id": None})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["args"] += tc.function.arguments
                fragments += 1
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert content == "" and "<tool_call>" not in content
    assert len(calls) == 1 and calls[0]["id"]
    schemas = {"search": SEARCH, "set_alarm": ALARM}
    fn = schemas[calls[0]["name"]]["function"]
    jsonschema.validate(json.loads(calls[0]["args"]), fn["parameters"])
    assert fragments >= 2  # the arguments streamed, not sent whole at the end


@pytest.mark.parametrize("family", ["qwen2.5", "mistral-nemo"])
def test_round_trip_call_then_tool_result_then_answer(
    servers: Servers, models: dict[str, Path], family: str
) -> None:
    """The openai client's own objects go back as history: the assistant's call and the
    tool's result (with its tool_call_id) render through the model's template, and the model
    answers. Mistral's template refuses any call id that is not 9 alphanumerics."""
    c = client(servers(family))
    model = name_of(models[family])
    messages: list[Any] = [{"role": "user", "content": "Wake me at 7:30"}]
    first = c.chat.completions.create(
        model=model,
        messages=messages,
        tools=[ALARM],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=200,
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    messages.append(first.choices[0].message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'})
    final = c.chat.completions.create(
        model=model,
        messages=messages,
        tools=[ALARM],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=8,
        seed=6,
    )
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str)
    assert final.usage is not None
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_model_without_tool_support_is_400(servers: Servers, tiny_model: Path) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(servers("chatml")).chat.completions.create(
            model=name_of(tiny_model),
            messages=[{"role": "user", "content": "hi"}],
            tools=[SEARCH],  # type: ignore[list-item]
        )
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "tools"
    assert "no tool support" in body["message"]


def test_bad_tools_and_tool_choice_are_400(servers: Servers, models: dict[str, Path]):
    c = client(servers("qwen2.5"))
    for extra, param in (
        ({"tools": [{"type": "function", "function": {}}]}, "tools"),
        (
            {"tools": [SEARCH], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(
                model=name_of(models["qwen2.5"]),
                messages=[{"role": "user", "content": "hi"}],
                **extra,  # type: ignore[arg-type]
            )
        assert info.value.body["param"] == param  # type: ignore[index]


FORCED_CALL = (
    'root ::= "Let me set it.\\n<tool_call>\\n{\\"name\\": \\"set_alarm\\", '
    '\\"arguments\\": {\\"time\\": \\"07:30\\", \\"loud\\": true}}\\n</tool_call>"'
)


@pytest.fixture(scope="module")
def calling_server(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The Qwen2.5-template model forced to write some text and then a call in its syntax."""
    home = tmp_path_factory.mktemp("home")
    with ServerProcess(
        "-m", str(models["qwen2.5"]), grammar=FORCED_CALL, env={"LOCALLLM_HOME": str(home)}
    ) as proc:
        yield proc


def test_auto_tool_choice_parses_the_models_own_call(
    calling_server: ServerProcess, models: dict[str, Path]
) -> None:
    c = client(calling_server)
    kwargs: dict[str, Any] = {
        "model": name_of(models["qwen2.5"]),
        "messages": [{"role": "user", "content": "alarm at 7:30"}],
        "tools": [ALARM, SEARCH],
    }
    r = c.chat.completions.create(**kwargs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me set it.\n"
    calls = choice.message.tool_calls or []
    assert [(x.function.name, json.loads(x.function.arguments)) for x in calls] == [
        ("set_alarm", {"time": "07:30", "loud": True})
    ]
    streamed = ""
    for chunk in c.chat.completions.create(**kwargs, stream=True):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
    assert streamed == "Let me set it.\n"  # the call never leaks into the content

    # without tools the same text is plain content
    r = c.chat.completions.create(model=kwargs["model"], messages=kwargs["messages"])
    assert "<tool_call>" in (r.choices[0].message.content or "")


def test_ollama_tools(calling_server: ServerProcess, models: dict[str, Path]) -> None:
    r = httpx.post(
        calling_server.url + "/api/chat",
        json={
            "model": name_of(models["qwen2.5"]),
            "messages": [{"role": "user", "content": "alarm"}],
            "tools": [ALARM],
            "stream": False,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    assert message["tool_calls"] == [
        {"function": {"name": "set_alarm", "arguments": {"time": "07:30", "loud": True}}}
    ]
    assert "<tool_call>" not in message["content"]

"""``localllm serve``, Ollama side: the real ``ollama`` client against a server subprocess,
and raw HTTP for the NDJSON stream and the error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import ollama
import pytest
from ggufgen import write_tiny_gguf
from serverproc import ServerProcess
from test_reasoning import QWEN3_TEMPLATE

THINK = 'root ::= "<think>" "step one" "</think>" "\\n\\n" "The answer."'
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("ollama-models")
    model = write_tiny_gguf(folder / "qwen3.gguf", chat_template=QWEN3_TEMPLATE, name="qwen3-tiny")
    home = tmp_path_factory.mktemp("home")
    with ServerProcess("-m", str(model), grammar=THINK, env={"LOCALLLM_HOME": str(home)}) as srv:
        yield srv


def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_tags_version_show_ps(server: ServerProcess) -> None:
    c = client(server)
    names = [m.model for m in c.list().models]
    assert names == ["qwen3"]
    assert server.get("/api/version")[1]["version"]
    shown = c.show("qwen3")
    assert "enable_thinking" in shown.template
    assert "thinking" in shown.capabilities
    assert [m.model for m in c.ps().models] == ["qwen3"]


def test_chat_not_streamed_with_thinking(server: ServerProcess) -> None:
    result = client(server).chat(model="qwen3", messages=HI, think=True)
    assert result.message.role == "assistant"
    assert result.message.content == "The answer."
    assert result.message.thinking == "step one"
    assert result.done and result.done_reason == "stop"
    assert result.eval_count > 0 and result.prompt_eval_count > 0


def test_chat_streamed(server: ServerProcess) -> None:
    parts = list(client(server).chat(model="qwen3", messages=HI, stream=True, think=True))
    assert "".join(p.message.content or "" for p in parts) == "The answer."
    assert "".join(p.message.thinking or "" for p in parts) == "step one"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count > 0


def test_generate_and_options(server: ServerProcess) -> None:
    c = client(server)
    result = c.generate(model="qwen3", prompt="hi", think=True)
    assert (result.thinking, result.response) == ("step one", "The answer.")
    limited = c.generate(model="qwen3", prompt="hi", raw=True, options={"num_predict": 2})
    assert limited.eval_count == 2 and limited.done_reason == "length"
    stopped = c.generate(model="qwen3", prompt="hi", think=True, options={"stop": ["swer"]})
    assert stopped.response == "The an"
    raw = c.generate(model="qwen3", prompt="hi", raw=True, options={"num_predict": 64})
    assert raw.response == "<think>step one</think>\n\nThe answer."  # no template, no split
    streamed = list(c.generate(model="qwen3", prompt="hi", stream=True, think=True))
    assert "".join(p.response or "" for p in streamed) == "The answer."
    loaded = c.generate(model="qwen3", prompt="")  # loads the model, generates nothing
    assert loaded.done


def test_ndjson_format(server: ServerProcess) -> None:
    status, headers, body = server.request(
        "POST", "/api/chat", {"model": "qwen3", "messages": HI, "think": False}
    )
    assert status == 200
    assert headers["content-type"].startswith("application/x-ndjson")
    lines = body.decode().splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(not o["done"] for o in objects[:-1]) and objects[-1]["done"]
    assert "".join(o["message"]["content"] for o in objects) == "The answer."
    assert all("thinking" in o["message"] for o in objects if o["message"].get("thinking"))


def test_errors_have_the_ollama_shape(server: ServerProcess) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client(server).chat(model="nope", messages=HI)
    assert info.value.status_code == 404
    status, body = server.post("/api/chat", {"model": "qwen3", "messages": "hi"})
    assert status == 400 and isinstance(body["error"], str)
    status, body = server.post("/api/chat", {"messages": HI, "format": "yaml"})
    assert status == 400 and "format" in body["error"]
    status, _, raw = server.request("POST", "/api/chat", raw=b"{oops")
    assert status == 400 and isinstance(json.loads(raw)["error"], str)
    status, body = server.get("/api/nothing")
    assert status == 404 and isinstance(body["error"], str)

"""``localllm serve``, OpenAI side: a real server subprocess driven by the real ``openai``
client and by raw HTTP (the SSE byte format, errors). Tiny generated models, with grammars
forcing known text where the test needs to know what the model says."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from ggufgen import write_tiny_gguf
from serverproc import ServerProcess
from test_reasoning import QWEN3_TEMPLATE

SENTENCE = 'root ::= "alpha beta gamma delta epsilon"'
THINK = 'root ::= "<think>" "step one" "</think>" "\\n\\n" "The answer."'


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("server-models")
    return write_tiny_gguf(folder / "qwen3.gguf", chat_template=QWEN3_TEMPLATE, name="qwen3-tiny")


@pytest.fixture(scope="module")
def free_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The tiny ChatML model, sampling freely."""
    home = tmp_path_factory.mktemp("home")
    with ServerProcess("-m", str(tiny_model), env={"LOCALLLM_HOME": str(home)}) as server:
        yield server


@pytest.fixture(scope="module")
def sentence_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The tiny model forced to say SENTENCE."""
    home = tmp_path_factory.mktemp("home")
    with ServerProcess(
        "-m", str(tiny_model), grammar=SENTENCE, env={"LOCALLLM_HOME": str(home)}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def think_server(qwen3_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A Qwen3-template model forced to think, then answer."""
    home = tmp_path_factory.mktemp("home")
    with ServerProcess(
        "-m", str(qwen3_model), grammar=THINK, env={"LOCALLLM_HOME": str(home)}
    ) as server:
        yield server


def client(server: ServerProcess, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), **kw)


HI = [{"role": "user", "content": "hi"}]


# -- chat and completions ---------------------------------------------------------------------


def test_chat_completion(sentence_server: ServerProcess) -> None:
    result = client(sentence_server).chat.completions.create(model="default", messages=HI)
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "alpha beta gamma delta epsilon"
    assert choice.finish_reason == "stop"
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.model == "tiny-chat"  # "default" names the server's model
    usage = result.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == 0
    sentence_server.wait_line(
        r"^POST /v1/chat/completions tiny-chat prompt \d+ \(\d+ cached\) · completion \d+ · "
        r"TTFT \d+ ms · [\d.]+ tok/s · stop 200$"
    )  # the access log


def test_text_part_content_and_system_message(sentence_server: ServerProcess) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]},
    ]
    result = client(sentence_server).chat.completions.create(model="default", messages=messages)
    assert result.choices[0].message.content == "alpha beta gamma delta epsilon"


def test_completions_endpoint_uses_no_template(sentence_server: ServerProcess) -> None:
    result = client(sentence_server).completions.create(
        model="default", prompt="Once upon a time", max_tokens=64
    )
    assert result.choices[0].text == "alpha beta gamma delta epsilon"
    assert result.object == "text_completion"
    # The raw prompt alone: far fewer tokens than the chat template would add.
    chat = client(sentence_server).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Once upon a time"}]
    )
    assert result.usage.prompt_tokens < chat.usage.prompt_tokens


def test_completions_stream(sentence_server: ServerProcess) -> None:
    stream = client(sentence_server).completions.create(
        model="default", prompt="Once", max_tokens=64, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == (
        "alpha beta gamma delta epsilon"
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.object for c in chunks} == {"text_completion"}


def test_max_tokens_gives_finish_reason_length(sentence_server: ServerProcess) -> None:
    c = client(sentence_server)
    result = c.chat.completions.create(model="default", messages=HI, max_tokens=3)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3
    newer = c.chat.completions.create(model="default", messages=HI, max_completion_tokens=2)
    assert newer.usage.completion_tokens == 2


def test_streaming_with_the_client(sentence_server: ServerProcess) -> None:
    stream = client(sentence_server).chat.completions.create(
        model="default", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha beta gamma delta epsilon"
    assert len({c.id for c in chunks}) == 1
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_a_fast_stream_shares_chunks_within_the_stream_interval(
    tiny_model: Path, tmp_path: Path
) -> None:
    """With --stream-interval 1000 every token after the first waits for company (the tiny
    model makes them in far less than a second), so the answer comes in fewer content chunks
    than tokens, the same text, and still ends as the protocol says."""
    with ServerProcess(
        "-m", str(tiny_model), "--stream-interval", "1000", grammar=SENTENCE,
        env={"LOCALLLM_HOME": str(tmp_path)},
    ) as server:  # fmt: skip
        stream = client(server).chat.completions.create(
            model="default", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices]
    content = [text for text in content if text]
    assert "".join(content) == "alpha beta gamma delta epsilon"
    tokens = chunks[-1].usage.completion_tokens
    assert tokens >= 3 and len(content) < tokens, (content, tokens)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_sse_byte_format(sentence_server: ServerProcess) -> None:
    status, headers, body = sentence_server.request(
        "POST",
        "/v1/chat/completions",
        {"messages": HI, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")
    events = body.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {p["id"] for p in payloads} == {payloads[0]["id"]}
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-2]["choices"][0]["delta"] == {}
    last = payloads[-1]
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    assert all(p["usage"] is None for p in payloads[:-1])
    # Without include_usage there is no usage chunk and no usage key.
    _, _, plain = sentence_server.request(
        "POST", "/v1/chat/completions", {"messages": HI, "stream": True}
    )
    plain_payloads = [json.loads(e[6:]) for e in plain.split(b"\n\n")[:-2]]
    assert all("usage" not in p for p in plain_payloads)
    assert plain_payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_across_token_boundaries(sentence_server: ServerProcess) -> None:
    c = client(sentence_server)
    # "ta gam" is spelled by several tokens of the byte-level vocabulary.
    result = c.chat.completions.create(model="default", messages=HI, stop=["ta gam", "zzz"])
    assert result.choices[0].message.content == "alpha be"
    assert result.choices[0].finish_reason == "stop"
    stream = c.chat.completions.create(model="default", messages=HI, stop="a del", stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "alpha beta gamm"
    completion = c.completions.create(model="default", prompt="x", stop=["beta"], max_tokens=64)
    assert completion.choices[0].text == "alpha "


def test_kv_prefix_reuse_shows_cached_tokens(sentence_server: ServerProcess) -> None:
    c = client(sentence_server)
    first = c.chat.completions.create(model="default", messages=HI)
    answer = first.choices[0].message.content
    follow = [*HI, {"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    second = c.chat.completions.create(model="default", messages=follow)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1
    assert cached < second.usage.prompt_tokens


def test_clients_taking_turns_find_their_prompt_cached(sentence_server: ServerProcess) -> None:
    c = client(sentence_server)
    a = [{"role": "user", "content": "apples and pears for the first client, please"}]
    b = [{"role": "user", "content": "bananas for another client, thank you"}]
    first = c.chat.completions.create(model="default", messages=a)
    c.chat.completions.create(model="default", messages=b)  # A's KV state is set aside
    again = c.chat.completions.create(model="default", messages=a)  # and loaded back
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens - 5


def test_seed_reproducibility(free_server: ServerProcess) -> None:
    c = client(free_server)

    def say(seed: int) -> str:
        result = c.chat.completions.create(
            model="default",
            messages=HI,
            seed=seed,
            temperature=1.5,
            top_p=1.0,
            max_tokens=24,
            extra_body={"top_k": 0, "min_p": 0.0},
        )
        return result.choices[0].message.content

    first = say(7)
    assert say(7) == first
    assert len({first, say(8), say(9), say(10)}) > 1


def test_seed_minus_one_means_random(free_server: ServerProcess) -> None:
    """OpenAI clients, llama.cpp and Ollama send ``seed: -1`` for "random": accepted, and
    answers differ (a fixed seed would repeat one answer)."""
    c = client(free_server)
    sampling = {"temperature": 1.5, "top_p": 1.0, "max_tokens": 24}
    answers = {
        c.chat.completions.create(
            model="default", messages=HI, seed=-1, extra_body={"top_k": 0}, **sampling
        )
        .choices[0]
        .message.content
        for _ in range(4)
    }
    assert len(answers) > 1
    options = {"seed": -1, "temperature": 1.5, "top_k": 0, "num_predict": 24}
    body = {"model": "default", "prompt": "hi", "stream": False, "options": options}
    texts = set()
    for _ in range(4):
        status, answer = free_server.post("/api/generate", body)
        assert status == 200, answer
        texts.add(answer["response"])
    assert len(texts) > 1
    status, answer = free_server.post(
        "/v1/chat/completions", {"messages": HI, "seed": -2, "max_tokens": 2}
    )
    assert status == 400 and answer["error"]["param"] == "seed"  # only -1 means random


def test_profile_field_sets_the_base(sentence_server: ServerProcess) -> None:
    c = client(sentence_server)
    # The 'reasoning' built-in switches the mode: the chat template's instruction adapter
    # then adds its system instruction, so the prompt grows.
    plain = c.chat.completions.create(model="default", messages=HI)
    reasoning = c.chat.completions.create(
        model="default", messages=HI, extra_body={"profile": "reasoning"}
    )
    assert reasoning.localllm["mode"] == "reasoning"
    assert plain.localllm["mode"] == "instant"
    assert reasoning.usage.prompt_tokens > plain.usage.prompt_tokens
    # Request fields override the request's profile.
    instant = c.chat.completions.create(
        model="default", messages=HI, reasoning_effort="none", extra_body={"profile": "reasoning"}
    )
    assert instant.localllm["mode"] == "instant"
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="default", messages=HI, extra_body={"profile": "nope"})
    assert info.value.body["param"] == "profile"


# -- reasoning --------------------------------------------------------------------------------


def test_reasoning_content_apart_from_the_answer(think_server: ServerProcess) -> None:
    c = client(think_server)
    result = c.chat.completions.create(model="default", messages=HI, reasoning_effort="high")
    message = result.choices[0].message
    assert message.content == "The answer."
    assert message.reasoning_content == "step one"
    assert result.usage.completion_tokens_details.reasoning_tokens >= 3
    assert result.localllm["adapter"] == "enable_thinking"
    stream = c.chat.completions.create(
        model="default",
        messages=HI,
        stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    reasoning = answer = ""
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            answer += delta.content or ""
    assert (reasoning, answer) == ("step one", "The answer.")


def test_instant_mode_reports_the_leak(think_server: ServerProcess) -> None:
    c = client(think_server)
    result = c.chat.completions.create(model="default", messages=HI, extra_body={"think": False})
    assert result.localllm["mode"] == "instant"
    assert result.choices[0].message.content == "The answer."  # never the thinking
    assert result.localllm["reasoning_leaked"] is True


def test_instant_mode_without_thinking_has_empty_reasoning(sentence_server: ServerProcess) -> None:
    result = client(sentence_server).chat.completions.create(
        model="default", messages=HI, reasoning_effort="none"
    )
    assert getattr(result.choices[0].message, "reasoning_content", None) is None
    assert result.localllm["reasoning_leaked"] is False
    assert result.usage.completion_tokens_details.reasoning_tokens == 0


# -- models and errors ------------------------------------------------------------------------


def test_models_list(sentence_server: ServerProcess, tiny_model: Path) -> None:
    models = client(sentence_server).models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == tiny_model.stem
    one = client(sentence_server).models.retrieve(tiny_model.stem)
    assert one.id == tiny_model.stem
    with pytest.raises(openai.NotFoundError):
        client(sentence_server).models.retrieve("nothing-here")


def test_unknown_model_is_404(sentence_server: ServerProcess, tiny_model: Path) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(sentence_server).chat.completions.create(model="no-such-model", messages=HI)
    body = info.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert tiny_model.stem in body["message"]  # lists what is installed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 9}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [1]}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    sentence_server: ServerProcess, extra: dict, param: str
) -> None:
    status, body = sentence_server.post("/v1/chat/completions", {"messages": HI, **extra})
    assert status == 400, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"


def test_unknown_vendor_keys_are_ignored(sentence_server: ServerProcess) -> None:
    status, body = sentence_server.post(
        "/v1/chat/completions", {"messages": HI, "x_vendor": {"a": 1}, "user": "me"}
    )
    assert status == 200, body


def test_malformed_bodies_are_400(sentence_server: ServerProcess) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        status, _, body = sentence_server.request("POST", "/v1/chat/completions", raw=raw)
        assert status == 400, (raw, body)
        assert "error" in json.loads(body)


def test_non_utf8_and_lone_surrogates_do_not_crash(sentence_server: ServerProcess) -> None:
    raw = b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    status, _, body = sentence_server.request("POST", "/v1/chat/completions", raw=raw)
    assert status == 200, body
    lone = b'{"messages": [{"role": "user", "content": "x\\ud800y"}], "stop": ["\\udfff"]}'
    status, _, body = sentence_server.request("POST", "/v1/chat/completions", raw=lone)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "alpha beta gamma delta epsilon"


def test_prompt_longer_than_the_context_is_400_naming_both(
    tiny_model: Path, tmp_path: Path
) -> None:
    with ServerProcess(
        "-m", str(tiny_model), "--ctx", "128", env={"LOCALLLM_HOME": str(tmp_path)}
    ) as server:
        long = [{"role": "user", "content": "word " * 400}]
        for stream in (False, True):
            status, body = server.post("/v1/chat/completions", {"messages": long, "stream": stream})
            assert status == 400, body
            assert body["error"]["code"] == "context_length_exceeded"
            match = re.search(
                r"prompt is (\d+) tokens but the context holds (\d+)", body["error"]["message"]
            )
            assert match, body
            assert int(match.group(1)) > 400 and 128 <= int(match.group(2)) <= 512


def test_body_over_8_mib_is_413(sentence_server: ServerProcess) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (9 << 20)}]}).encode()
    status, _, body = sentence_server.request("POST", "/v1/chat/completions", raw=big)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "too_large"


def test_unknown_path_404_and_wrong_method_405(sentence_server: ServerProcess) -> None:
    status, body = sentence_server.get("/v1/nothing")
    assert status == 404 and "error" in body
    status, _, raw = sentence_server.request("GET", "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(raw)


def test_host_header_is_checked_on_loopback(sentence_server: ServerProcess) -> None:
    status, _, _ = sentence_server.request("GET", "/v1/models", headers={"Host": "evil.example:80"})
    assert status == 403
    status, _, _ = sentence_server.request("GET", "/v1/models", headers={"Host": "localhost:1"})
    assert status == 200


def test_api_key(tiny_model: Path, tmp_path: Path) -> None:
    env = {"LOCALLLM_HOME": str(tmp_path), "LOCALLLM_API_KEY": "s3cret"}
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        assert server.get("/health")[0] == 200  # stays open
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").models.list()
        status, body = server.get("/v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, body = server.get("/api/tags")
        assert status == 401 and isinstance(body["error"], str)
        assert client(server, api_key="s3cret").models.list().data


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-m", "no-such-model"], 3, "error: no model named 'no-such-model'"),
        (["--queue", "0"], 2, "error: --queue must be at least 1"),
        (["--cache-ram", "-1"], 2, "error: --cache-ram must be 0 or more MiB"),
        (["--stream-interval", "-5"], 2, "error: --stream-interval must be between 0 and 1000"),
        (["--alias", "gpt-4o"], 2, "error: --alias takes NAME=MODEL"),
        (["--alias", "gpt-4o=nope"], 2, "error: --alias gpt-4o=nope"),
    ],
)
def test_bad_serve_options_exit_with_one_line(
    tiny_model: Path, args: list[str], code: int, message: str
) -> None:
    import subprocess
    import sys

    if args[0] != "-m":
        args = ["-m", str(tiny_model), *args]
    result = subprocess.run(
        [sys.executable, "-m", "localllm", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_usage_error(tiny_model: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "localllm", "serve", "-m", str(tiny_model), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot listen on")
    assert "Traceback" not in result.stderr
    assert "--port" in result.stderr


HOST = ("--host", "no-such-host.invalid")


def test_unknown_host_hint_names_the_host_not_the_port(tiny_model: Path) -> None:
    """`serve --host my-laptop.invalid`: the port is fine, so the hint must not send the user
    to change it."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "localllm", "serve", "-m", str(tiny_model), "--port", "0", *HOST],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot listen on no-such-host.invalid:0"), lines
    assert "--host" in lines[-1] and "--port" not in lines[-1], lines


def test_cors_off_by_default_and_on_for_named_origins(
    sentence_server: ServerProcess, tiny_model: Path, tmp_path: Path
) -> None:
    origin = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    _, headers, _ = sentence_server.request("GET", "/v1/models", headers=origin)
    assert "access-control-allow-origin" not in headers
    env = {"LOCALLLM_HOME": str(tmp_path)}
    args = ("-m", str(tiny_model), "--cors-origin", "http://app.example", "--api-key", "k")
    with ServerProcess(*args, env=env) as server:
        status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", headers=origin)
        assert status == 200  # a preflight needs no key
        assert headers["access-control-allow-origin"] == "http://app.example"


def test_other_hosts_warn_without_a_key(tiny_model: Path, tmp_path: Path) -> None:
    with ServerProcess(
        "-m", str(tiny_model), "--host", "0.0.0.0", env={"LOCALLLM_HOME": str(tmp_path)}
    ) as server:
        line = server.wait_line("warning: listening on 0.0.0.0")
        assert "--api-key" in line
        # 0.0.0.0 is where it listens, not an address to connect to: clients get loopback.
        start = server.wait_line("localllm serving")
        assert "OPENAI_BASE_URL=http://127.0.0.1:" in start and "=http://0.0.0.0" not in start
        # Not bound to loopback: any Host header is accepted.
        status, _, _ = server.request("GET", "/v1/models", headers={"Host": "myhost.lan"})
        assert status == 200
    assert any(line.startswith("GET /v1/models") for line in server.lines)  # access log


@pytest.mark.slow
def test_a_real_model_answers_as_localllm_run_does(starter_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    question = "What is the capital of France?"
    args = ["-m", str(starter_model), "--ctx", "1024"]
    run = subprocess.run(
        [sys.executable, "-m", "localllm", "run", *args, "--temperature", "0", "-n", "24",
         "--json", question],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    expected = json.loads(run.stdout)["answer"]
    with ServerProcess(*args, env={"LOCALLLM_HOME": str(tmp_path)}) as server:
        c = client(server)

        def ask() -> str:
            result = c.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=24,
            )
            return result.choices[0].message.content

        assert len(expected) > 10
        assert ask() == expected  # the same profile + session path as the CLI
        assert ask() == expected
        text = c.completions.create(
            model="default", prompt="The capital of France is", temperature=0, max_tokens=4
        )
        assert text.usage.completion_tokens == 4 and text.choices[0].text.strip()

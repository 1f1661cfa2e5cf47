"""``POST /v1/embeddings`` and ``POST /api/embed`` on a real ``localllm serve`` subprocess,
driven by the real ``openai`` client (which asks for base64 by default) and by raw HTTP."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from serverproc import ServerProcess

from localllm.embeddings import Embedder


@pytest.fixture(scope="module")
def embed_server(
    tiny_model: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The tiny chat model by default, with the tiny BERT installed as ``tiny-bert``."""
    home = tmp_path_factory.mktemp("home")
    env = {"LOCALLLM_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "localllm", "import", str(tiny_bert), "--name", "tiny-bert"],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def expected(tiny_bert: Path) -> Embedder:
    with Embedder(tiny_bert, threads=1) as e:
        yield e


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def test_openai_client_default_base64(embed_server: ServerProcess, expected: Embedder) -> None:
    texts = ["hello world", "the man is eating food", "a horse"]
    result = client(embed_server).embeddings.create(model="tiny-bert", input=texts)
    assert result.model == "tiny-bert" and result.object == "list"
    assert [d.index for d in result.data] == [0, 1, 2]
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    want = expected.embed(texts)
    assert np.allclose(got, want.vectors, atol=1e-5)
    assert result.usage.prompt_tokens == want.prompt_tokens == result.usage.total_tokens
    embed_server.wait_line(
        rf"^POST /v1/embeddings tiny-bert 3 inputs · {want.prompt_tokens} tokens 200"
    )


def test_float_format_and_single_string(embed_server: ServerProcess, expected: Embedder) -> None:
    result = client(embed_server).embeddings.create(
        model="tiny-bert", input="hello world", encoding_format="float"
    )
    assert len(result.data) == 1 and len(result.data[0].embedding) == 32
    assert np.allclose(result.data[0].embedding, expected.embed(["hello world"]).vectors[0])


def test_raw_base64_is_little_endian_float32(embed_server: ServerProcess) -> None:
    status, body = embed_server.post(
        "/v1/embeddings", {"model": "tiny-bert", "input": "hello", "encoding_format": "base64"}
    )
    assert status == 200, body
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (32,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_token_arrays(embed_server: ServerProcess, expected: Embedder) -> None:
    ids = expected.tokenize("hello world").tolist()
    one = client(embed_server).embeddings.create(model="tiny-bert", input=ids)
    many = client(embed_server).embeddings.create(model="tiny-bert", input=[ids, ids[:3]])
    want = expected.embed(["hello world"]).vectors[0]
    assert np.allclose(one.data[0].embedding, want, atol=1e-5)
    assert np.allclose(many.data[0].embedding, want, atol=1e-5)
    assert len(many.data) == 2 and one.usage.prompt_tokens == len(ids)


def test_dimensions_other_than_the_models_is_a_400(embed_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(embed_server).embeddings.create(model="tiny-bert", input="hi", dimensions=16)
    assert info.value.body["param"] == "dimensions"
    same = client(embed_server).embeddings.create(model="tiny-bert", input="hi", dimensions=32)
    assert len(same.data[0].embedding) == 32


def test_bad_requests(embed_server: ServerProcess) -> None:
    for body, param in [
        ({"model": "tiny-bert"}, "input"),
        ({"model": "tiny-bert", "input": []}, "input"),
        ({"model": "tiny-bert", "input": ""}, "input"),
        ({"model": "tiny-bert", "input": ["a", 3]}, "input"),
        ({"model": "tiny-bert", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "tiny-bert", "input": "hello " * 100}, "input"),
    ]:
        status, answer = embed_server.post("/v1/embeddings", body)
        assert status == 400, (body, answer)
        assert answer["error"]["param"] == param, answer
    status, answer = embed_server.post("/v1/embeddings", {"model": "nope", "input": "a"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"


def test_too_long_input_is_named(embed_server: ServerProcess) -> None:
    status, answer = embed_server.post(
        "/v1/embeddings", {"model": "tiny-bert", "input": ["hello", "hello " * 100]}
    )
    assert status == 400
    assert answer["error"]["code"] == "context_length_exceeded"
    assert "input 1 is 102 tokens" in answer["error"]["message"]


def test_ollama_embed(embed_server: ServerProcess, expected: Embedder) -> None:
    status, body = embed_server.post(
        "/api/embed", {"model": "tiny-bert", "input": ["hello world", "a horse"]}
    )
    assert status == 200, body
    assert body["model"] == "tiny-bert"
    assert np.allclose(body["embeddings"], expected.embed(["hello world", "a horse"]).vectors)
    assert body["prompt_eval_count"] == 4 + 4
    # Ollama truncates by default; truncate=false makes a long input an error.
    status, body = embed_server.post("/api/embed", {"model": "tiny-bert", "input": "hello " * 100})
    assert status == 200 and len(body["embeddings"]) == 1
    status, body = embed_server.post(
        "/api/embed", {"model": "tiny-bert", "input": "hello " * 100, "truncate": False}
    )
    assert status == 400 and "102 tokens" in body["error"]


def test_ollama_client(embed_server: ServerProcess) -> None:
    ollama = pytest.importorskip("ollama")
    result = ollama.Client(host=embed_server.url).embed(model="tiny-bert", input="hello world")
    assert len(result["embeddings"]) == 1 and len(result["embeddings"][0]) == 32


def test_chat_on_an_encoder_says_use_embed(embed_server: ServerProcess) -> None:
    status, body = embed_server.post(
        "/v1/chat/completions",
        {"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert 400 <= status < 500, body
    assert "localllm embed" in body["error"]["message"] or "encoder" in body["error"]["message"]


def test_ollama_legacy_embeddings_route(embed_server: ServerProcess, expected: Embedder) -> None:
    """Ollama's older ``POST /api/embeddings``: one prompt, one vector (the ``ollama`` client's
    ``embeddings()``), an empty prompt just loads the model."""
    status, body = embed_server.post(
        "/api/embeddings", {"model": "tiny-bert", "prompt": "hello world"}
    )
    assert status == 200, body
    assert np.allclose(body["embedding"], expected.embed(["hello world"]).vectors[0], atol=1e-5)
    assert embed_server.post("/api/embeddings", {"model": "tiny-bert", "prompt": ""}) == (
        200,
        {"embedding": []},
    )
    status, body = embed_server.post("/api/embeddings", {"model": "tiny-bert", "prompt": 3})
    assert status == 400 and "prompt" in body["error"]
    status, body = embed_server.post("/api/embeddings", {"model": "nope", "prompt": "hi"})
    assert status == 404 and "nope" in body["error"]
    ollama = pytest.importorskip("ollama")
    result = ollama.Client(host=embed_server.url).embeddings(model="tiny-bert", prompt="a horse")
    assert np.allclose(result["embedding"], expected.embed(["a horse"]).vectors[0], atol=1e-5)


def test_an_encoder_as_the_default_serves_embeddings_only(
    tiny_bert: Path, expected: Embedder, tmp_path: Path
) -> None:
    """``serve -m encoder.gguf`` says at start that it serves embeddings only; embeddings with
    no model name use it; chat and completions on it answer one clear 400."""
    with ServerProcess("-m", str(tiny_bert), env={"LOCALLLM_HOME": str(tmp_path)}) as server:
        start = server.wait_line("localllm serving")
        assert "tiny-bert (an embedding model: embeddings only) at http://" in start
        assert server.health()["status"] == "ok"
        got = client(server).embeddings.create(model="default", input="hello world")
        want = expected.embed(["hello world"]).vectors[0]
        assert np.allclose(got.data[0].embedding, want, atol=1e-5)
        status, body = server.post("/api/embeddings", {"model": "tiny-bert", "prompt": "hi"})
        assert status == 200 and len(body["embedding"]) == 32
        for path, body in [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/completions", {"prompt": "hi"}),
        ]:
            status, answer = server.post(path, body)
            assert status == 400, answer
            assert answer["error"]["code"] == "embeddings_only"
            assert "embedding model" in answer["error"]["message"]
        status, answer = server.post(
            "/api/chat", {"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert status == 400 and "embeddings only" in answer["error"]
        status, answer = server.post("/api/generate", {"model": "tiny-bert", "prompt": ""})
        assert status == 400 and "embeddings only" in answer["error"]
        assert server.health()["models"] == []  # no chat engine was ever loaded
        assert not any("could not load" in line for line in server.lines)

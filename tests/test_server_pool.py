"""``localllm serve`` under load: disconnects cancel, the FIFO queue and its bound, model
switching with least-recently-used unloading, /health while loading, Ctrl-C.

Generations that must run "forever" are forced by a grammar with no end, so a test that failed
to cancel would run into max_tokens and fail on the generated count, not on a clock. Waits are
on the server's own state (/health), never on sleeps.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import openai
import pytest
from ggufgen import write_tiny_gguf
from serverproc import ServerProcess

ENDLESS = "root ::= [a-z ] root"
LIMIT = 3000  # far more tokens than a cancelled stream gets to generate
HI = [{"role": "user", "content": "hi"}]


def open_stream(server: ServerProcess, **extra) -> tuple[http.client.HTTPConnection, object]:
    """Start an endless streaming chat and read until its first answer chunk arrives."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    body = {"messages": HI, "stream": True, "max_tokens": LIMIT, **extra}
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(3):  # role chunk, blank line, first content chunk
        resp.readline()
    return conn, resp


@pytest.fixture
def endless(tiny_model: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "-m", str(tiny_model), "--queue", "8", grammar=ENDLESS, env={"LOCALLLM_HOME": str(tmp_path)}
    ) as server:
        yield server


def test_disconnect_cancels_the_generation(endless: ServerProcess) -> None:
    conn, _ = open_stream(endless)
    endless.wait_until(lambda: endless.worker()["busy"])
    conn.close()
    endless.wait_until(lambda: not endless.worker()["busy"])
    worker = endless.worker()
    assert worker["last"]["stop_reason"] == "cancelled"
    assert worker["last"]["generated_tokens"] < LIMIT
    stopped_at = worker["generated_tokens"]
    # The next request starts at once and the cancelled one generates nothing more.
    result = openai.OpenAI(base_url=endless.url + "/v1", api_key="x").chat.completions.create(
        model="default", messages=HI, max_tokens=5
    )
    assert result.usage.completion_tokens == 5
    after = endless.worker()
    assert after["jobs"] == worker["jobs"] + 1
    assert after["generated_tokens"] == stopped_at + 5
    assert any("499" in line for line in endless.lines)  # the access log saw it


def test_disconnect_cancels_a_non_streaming_request(endless: ServerProcess) -> None:
    url = urlparse(endless.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    body = json.dumps({"messages": HI, "max_tokens": LIMIT})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    endless.wait_until(lambda: endless.worker()["busy"])
    conn.close()
    endless.wait_until(lambda: not endless.worker()["busy"])
    last = endless.worker()["last"]
    assert last["stop_reason"] == "cancelled" and last["generated_tokens"] < LIMIT


def test_eight_clients_answered_in_fifo_order(endless: ServerProcess) -> None:
    conn, _ = open_stream(endless)  # holds the worker while the others queue up
    client = openai.OpenAI(base_url=endless.url + "/v1", api_key="x", max_retries=0)
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": f"client {i}"}], max_tokens=4
        )
        results[i] = (int(raw.headers["x-localllm-job"]), raw.parse())

    threads = []
    for i in range(8):
        thread = threading.Thread(target=ask, args=(i,))
        thread.start()
        threads.append(thread)
        endless.wait_until(lambda n=i + 1: endless.worker()["queued"] == n)
    conn.close()  # the blocker goes; the queue drains in order
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(8))
    jobs = [results[i][0] for i in range(8)]
    assert jobs == sorted(jobs) and len(set(jobs)) == 8
    assert all(results[i][1].usage.completion_tokens == 4 for i in range(8))
    assert all(len(results[i][1].choices[0].message.content) >= 1 for i in range(8))


def test_full_queue_is_503_with_retry_after(tiny_model: Path, tmp_path: Path) -> None:
    with ServerProcess(
        "-m", str(tiny_model), "--queue", "1", grammar=ENDLESS, env={"LOCALLLM_HOME": str(tmp_path)}
    ) as server:
        conn, _ = open_stream(server)
        waiting = threading.Thread(
            target=server.post, args=("/v1/chat/completions", {"messages": HI, "max_tokens": 2})
        )
        waiting.start()
        server.wait_until(lambda: server.worker()["queued"] == 1)
        status, headers, body = server.request(
            "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 2}
        )
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "queue_full"
        conn.close()
        waiting.join(timeout=120)


@pytest.fixture
def store_models(tmp_path: Path) -> dict[str, Path]:
    """Three installed models in a fresh store."""
    from localllm import store

    paths = {}
    for name in ("alpha", "beta", "gamma"):
        path = write_tiny_gguf(tmp_path / "src" / f"{name}.gguf", name=name)
        store.import_model(path, name=name)
        paths[name] = path
    return paths


def test_model_switching_and_lru_unload(store_models: dict[str, Path], tmp_path: Path) -> None:
    import os

    home = os.environ["LOCALLLM_HOME"]
    with ServerProcess("-m", "alpha", "--max-loaded", "2", env={"LOCALLLM_HOME": home}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")

        def ask(model: str) -> str:
            result = client.chat.completions.create(model=model, messages=HI, max_tokens=2)
            return result.model

        def loaded() -> list[str]:
            return [m["name"] for m in server.health()["models"]]

        assert sorted(m.id for m in client.models.list().data) == ["alpha", "beta", "gamma"]
        assert ask("alpha") == "alpha"
        assert ask("beta") == "beta"
        assert loaded() == ["beta", "alpha"]  # most recently used first
        assert ask("alpha") == "alpha"
        assert ask("gamma") == "gamma"  # beta is the least recently used: unloaded
        server.wait_line(r"unloaded beta")
        assert loaded() == ["gamma", "alpha"]
        assert [m.id for m in client.models.list().data][:2] == ["gamma", "alpha"]
        assert ask("beta") == "beta"
        server.wait_line(r"unloaded alpha")
        assert loaded() == ["beta", "gamma"]


def test_alias_names_a_model(store_models: dict[str, Path]) -> None:
    import os

    env = {"LOCALLLM_HOME": os.environ["LOCALLLM_HOME"]}
    with ServerProcess("-m", "alpha", "--alias", "gpt-4o=beta", env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        result = client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2)
        assert result.model == "gpt-4o"
        assert [m["name"] for m in server.health()["models"]] == ["beta"]


def test_health_is_503_while_a_model_loads(store_models: dict[str, Path]) -> None:
    import os

    env = {"LOCALLLM_HOME": os.environ["LOCALLLM_HOME"]}
    with ServerProcess("-m", "alpha", "--max-loaded", "1", grammar=ENDLESS, env=env) as server:
        assert server.get("/health")[0] == 200
        conn, _ = open_stream(server)
        # beta must wait for alpha to unload, and alpha is busy: beta stays "loading".
        other = threading.Thread(
            target=server.post,
            args=("/v1/chat/completions", {"model": "beta", "messages": HI, "max_tokens": 2}),
        )
        other.start()
        server.wait_until(lambda: any(m["name"] == "beta" for m in server.health()["models"]))
        status, body = server.get("/health")
        assert status == 503 and body["status"] == "loading"
        conn.close()
        other.join(timeout=120)
        server.wait_until(lambda: server.get("/health")[0] == 200)
        assert [m["name"] for m in server.health()["models"]] == ["beta"]


def test_ctrl_c_cancels_running_generations_and_exits_0(endless: ServerProcess) -> None:
    conn, resp = open_stream(endless)
    endless.wait_until(lambda: endless.worker()["busy"])
    endless.interrupt()
    assert endless.proc.wait(timeout=60) == 0
    body = resp.read()  # the stream ends (no hang)
    conn.close()
    # ... with an error event, so a client does not take the cut answer for a whole one.
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: {")]
    assert json.loads(events[-1])["error"]["code"] == "shutting_down", body[-400:]
    assert not any("Traceback" in line for line in endless.lines)
    assert any("unloaded" in line for line in endless.lines)


def test_ctrl_c_ends_an_ollama_stream_with_an_error(endless: ServerProcess) -> None:
    """A cut Ollama stream must not end with a `done` line that says the model stopped."""
    url = urlparse(endless.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    body = {"messages": HI, "options": {"num_predict": LIMIT}}
    conn.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.readline())["done"] is False  # generating
    endless.wait_until(lambda: endless.worker()["busy"])
    endless.interrupt()
    assert endless.proc.wait(timeout=60) == 0
    lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    conn.close()
    assert lines[-1] == {"error": "the server is stopping"}, lines[-3:]


def test_a_second_ctrl_c_quits_at_once_with_130(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess("-m", str(tiny_model), env={"LOCALLLM_HOME": str(tmp_path)}).start()
    url = urlparse(server.url)
    try:
        # A request whose body never finishes keeps the graceful shutdown waiting.
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            server.wait_until(lambda: server.health()["requests"] == 2)  # it, and this check
            server.interrupt()
            server.wait_line(r"^stopping: .*Ctrl-C again")
            server.interrupt()
            assert server.proc.wait(timeout=60) == 130
    finally:
        server.stop()
    assert not any("Traceback" in line for line in server.lines)

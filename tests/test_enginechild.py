"""An engine in a child process (localllm/enginechild.py): the same output as in-process,
cancel and steering across the pipe, and a front end that survives the process dying.

Crashes are real: the child is killed with a signal in the middle of a stream (after the Nth
text event has arrived, never after a delay). Generations that must go on until killed are
forced by a grammar with no end on the tiny random-weight model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localllm import enginechild
from localllm.engine import Engine, Stats, Steering, TextEvent
from localllm.enginechild import EngineProcess, crash_error, unreachable
from localllm.errors import EngineCrashed, InvalidModelError, UsageError
from localllm.loading import open_engine, plan
from localllm.profiles import Profile
from localllm.session import ChatSession

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="watches processes through /proc (Linux)"
)

GREEDY = Profile(temperature=0.0, max_tokens=48, seed=1, threads=1, gpu_layers=0)
ENDLESS = "root ::= [a-z ] root"
LIMIT = 3000  # far more tokens than a stream that is killed or stopped gets to make
LONG = 30000  # the server's stream: ~10 s of the tiny model, where 3000 tokens take ~1 s


@pytest.fixture
def tiny_process(tiny_model: Path) -> Iterator[EngineProcess]:
    process = EngineProcess(tiny_model, plan(tiny_model, GREEDY))
    yield process
    process.close()


def events(engine: Any, prompt: str, settings: Profile = GREEDY, **kwargs: Any) -> list[Any]:
    return list(engine.generate(prompt, settings, **kwargs))


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for a parent that is gone counts).

    Its main thread shows "Z" as soon as it is killed, but waitpid() (its parent's poll())
    reports the exit only once every other thread has ended too (llama.cpp's and the
    lifeline): until then the parent rightly still sees it running. So a zombie counts as
    gone when it is the last thread of its process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the same engine, in another process ------------------------------------------------------


def test_child_output_equals_in_process_token_for_token(starter_model: Path) -> None:
    options = plan(starter_model, GREEDY)
    local = Engine(starter_model, options)
    child = EngineProcess(starter_model, options)
    try:
        assert child.info == local.info and child.n_ctx == local.n_ctx
        assert child.n_vocab == local.n_vocab and child.is_chat_model
        prompt = "The three primary colours are"
        assert child.tokenize(prompt) == local.tokenize(prompt)
        tokens = local.tokenize(prompt)
        assert child.detokenize(tokens) == local.detokenize(tokens)
        assert child.piece(tokens[1]) == local.piece(tokens[1])
        assert child.is_end_of_generation(tokens[1]) is False
        eos = child.tokenize(child.info.eos_token, add_bos=False)[0]
        assert child.is_end_of_generation(eos) is True

        mine, theirs = events(local, prompt), events(child, prompt)
        text = [(e.text, e.tokens, e.injected) for e in mine if isinstance(e, TextEvent)]
        assert text and text == [
            (e.text, e.tokens, e.injected) for e in theirs if isinstance(e, TextEvent)
        ]
        assert isinstance(theirs[-1], Stats) and theirs[-1].generated_tokens > 5
        assert theirs[-1].generated_tokens == mine[-1].generated_tokens
        assert theirs[-1].stop_reason == mine[-1].stop_reason

        # Steering: text injected after the third event is read by the model in both.
        def steered(engine: Any) -> list[tuple[str, int, bool]]:
            steering = Steering()
            out = []
            for e in engine.generate(prompt, GREEDY, steering=steering, cancel=lambda: False):
                if isinstance(e, TextEvent):
                    out.append((e.text, e.tokens, e.injected))
                    if len(out) == 3:
                        steering.inject(" Not quite: in fact")
            return out

        injected = steered(child)
        assert (" Not quite: in fact", 0, True) in injected
        assert injected == steered(local)

        # A chat through the session: the same answers, and the second turn reuses the
        # first one's KV cache in the child as it does in-process.
        def chat(engine: Any) -> list[tuple[str, Stats]]:
            session = ChatSession(engine, GREEDY.replace(max_tokens=24))
            out = []
            for question in ("Name a fruit.", "And a vegetable?"):
                stats = [e for e in session.send(question) if isinstance(e, Stats)][-1]
                assert session.last_turn is not None
                out.append((session.last_turn.answer, stats))
            return out

        local.reset()
        child.reset()
        assert child.n_kv == 0
        here, there = chat(local), chat(child)
        assert [a for a, _ in here] == [a for a, _ in there]
        assert there[1][1].cached_tokens == here[1][1].cached_tokens > 0
        assert child.n_kv == local.n_kv > 0
    finally:
        local.close()
        child.close()


def test_cancel_stops_within_a_token_and_the_stream_can_be_abandoned(tiny_model: Path) -> None:
    settings = GREEDY.replace(max_tokens=LIMIT)
    local = Engine(tiny_model, plan(tiny_model, settings))
    child = EngineProcess(tiny_model, plan(tiny_model, settings))
    try:

        def stopped_after(engine: Any, n: int) -> list[Any]:
            seen: list[Any] = []

            def cancel() -> bool:
                return len(seen) >= n

            for e in engine.generate("hi", settings, grammar=ENDLESS, cancel=cancel):
                seen.append(e)
            return seen

        mine, theirs = stopped_after(local, 7), stopped_after(child, 7)
        stats = theirs[-1]
        assert isinstance(stats, Stats) and stats.stop_reason == "cancelled"
        # The child stopped at the token it was told to, exactly as in-process.
        assert stats.generated_tokens == mine[-1].generated_tokens < LIMIT
        assert [e.text for e in theirs[:-1]] == [e.text for e in mine[:-1]]

        # A consumer that stops reading leaves the engine ready for the next request.
        stream = child.generate("hi", settings, grammar=ENDLESS, cancel=lambda: False)
        for _ in range(5):
            next(stream)
        stream.close()
        again = events(child, "hi", GREEDY.replace(max_tokens=4), grammar=ENDLESS)
        assert again[-1].generated_tokens == 4
        assert child.n_kv > 0
        # Errors from the engine come back as themselves, hint included, and do not
        # break the pipe.
        with pytest.raises(UsageError) as info:
            events(child, "word " * (child.n_ctx + 10))
        assert "context holds" in info.value.message and info.value.hint
        with pytest.raises(UsageError):
            events(child, "hi", grammar="root ::= nothing-defined")
        assert events(child, "hi", GREEDY.replace(max_tokens=2))[-1].generated_tokens <= 2
    finally:
        local.close()
        child.close()


# -- when the process dies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "said"),
    [
        (signal.SIGKILL, "killed by SIGKILL"),
        (signal.SIGSEGV, "killed by SIGSEGV"),
        (signal.SIGABRT, "killed by SIGABRT (llama.cpp aborted)"),
    ],
)
def test_a_child_killed_mid_stream_raises_engine_crashed_and_reopens(
    tiny_process: EngineProcess, sig: int, said: str
) -> None:
    first = tiny_process.pid
    assert first is not None and tiny_process.alive
    seen = 0
    settings = GREEDY.replace(max_tokens=LIMIT)
    with pytest.raises(EngineCrashed) as info:
        for event in tiny_process.generate("hi", settings, grammar=ENDLESS, cancel=lambda: False):
            if isinstance(event, TextEvent):
                seen += 1
                if seen == 5:
                    tiny_process.kill(sig)
    error = info.value
    assert seen >= 5
    assert f"engine process was {said} while running the model" in error.message
    assert error.exit_code == 6 and error.hint
    assert not tiny_process.alive
    with pytest.raises(EngineCrashed, match="loaded again"):  # until it is reopened
        tiny_process.tokenize("hi")
    with pytest.raises(EngineCrashed):
        events(tiny_process, "hi")

    assert tiny_process.reopen() is tiny_process
    assert tiny_process.alive and tiny_process.pid != first
    assert gone(first)
    out = events(tiny_process, "hi", GREEDY.replace(max_tokens=3), grammar=ENDLESS)
    assert out[-1].generated_tokens == 3


def test_an_abort_names_the_signal_and_the_rpc_worker_that_is_down(
    tiny_model: Path, tmp_path: Path
) -> None:
    # A stand-in for llama.cpp's RPC abort, written before anything else runs in the child:
    # its last words on stderr, then SIGABRT.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    down = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there any more
    alive = socket.socket()
    alive.bind(("127.0.0.1", 0))
    alive.listen()
    up = f"127.0.0.1:{alive.getsockname()[1]}"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys
            sys.stderr.write("llama_model_load: loading model tensors\\n")
            sys.stderr.write("ggml-rpc.cpp:547: Failed to connect to {down}\\n")
            sys.stderr.flush()
            os.abort()
            """
        ),
        encoding="utf-8",
    )
    try:
        with pytest.raises(EngineCrashed) as info:
            EngineProcess(
                tiny_model,
                plan(tiny_model, GREEDY),
                env={"PYTHONPATH": str(hooks)},
                endpoints=(up, down),
            )
    finally:
        alive.close()
    message = info.value.message
    assert "killed by SIGABRT (llama.cpp aborted) while loading the model" in message
    assert f"RPC worker not answering: {down}" in message and up not in message
    assert f"Failed to connect to {down}" in message
    assert "loading model tensors" not in message  # only the lines that tell
    assert "doctor --rpc" in (info.value.hint or "")


def test_crash_error_and_unreachable() -> None:
    assert "exited with code 3" in crash_error(3, ["plain line"]).message
    assert crash_error(3, ["plain line"]).message.endswith(": plain line")
    killed = crash_error(-signal.SIGSEGV, ["a", "GGML_ASSERT(x) failed", "b"])
    assert "killed by SIGSEGV while running" in killed.message
    assert killed.message.endswith(": GGML_ASSERT(x) failed")
    assert unreachable(["not-an-endpoint", "127.0.0.1:notaport"]) == [
        "not-an-endpoint",
        "127.0.0.1:notaport",
    ]


def test_the_environment_reaches_the_child(tiny_model: Path, tmp_path: Path) -> None:
    # LLAMA_CPP_LIB_PATH is how an RPC-enabled llama.cpp build is chosen: an empty folder
    # makes llama_cpp fail to import in the child, and that failure comes back as an error.
    with pytest.raises(FileNotFoundError, match="llama"):
        EngineProcess(
            tiny_model, plan(tiny_model, GREEDY), env={"LLAMA_CPP_LIB_PATH": str(tmp_path)}
        )


def test_a_load_error_in_the_child_is_the_engines_own(tmp_path: Path, tiny_model: Path) -> None:
    options = plan(tiny_model, GREEDY)
    with pytest.raises(InvalidModelError, match="not found"):
        EngineProcess(tmp_path / "missing.gguf", options)


def test_the_child_ends_with_its_parent(tiny_model: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from localllm.enginechild import EngineProcess
        from localllm.loading import plan
        from localllm.profiles import Profile
        engine = EngineProcess({str(tiny_model)!r}, plan({str(tiny_model)!r}, Profile()))
        print(engine.pid, flush=True)
        sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(enginechild.__file__).parent.parent)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert not gone(pid)
    parent.kill()  # SIGKILL: no cleanup runs in the parent
    parent.wait()
    wait_until(lambda: gone(pid), "the orphaned engine process to exit")


def test_open_engine_isolates_when_asked(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALLLM_ISOLATE", raising=False)
    plain = open_engine(tiny_model, GREEDY)
    try:
        assert isinstance(plain, Engine)
    finally:
        plain.close()
    assert not enginechild.wants_isolation(GREEDY)
    monkeypatch.setenv("LOCALLLM_ISOLATE", "1")
    assert enginechild.wants_isolation(GREEDY)
    # The child plans the load itself; its warnings come back to the caller's ``warn``.
    long = GREEDY.replace(context_length=8192)  # longer than the 4096 it was trained on
    here: list[str] = []
    open_engine(tiny_model, long, warn=here.append, isolate=False).close()
    there: list[str] = []
    isolated = open_engine(tiny_model, long, warn=there.append)
    try:
        assert isinstance(isolated, EngineProcess)
        assert there == here and "longer than the 4096 tokens" in there[0]
        assert [name for name, _ in isolated.load_phases[:2]] == [
            "start engine process",
            "read header + plan",
        ]
        assert isolated.options == plan(tiny_model, long)
        assert isolated.n_ctx == 8192
        with pytest.raises(EngineCrashed):  # reopen() plans again in the new child
            isolated.kill()
            events(isolated, "hi")
        isolated.reopen()
        assert isolated.options == plan(tiny_model, long) and isolated.n_ctx == 8192
    finally:
        isolated.close()
    with pytest.raises(InvalidModelError):  # the child's refusal is the same error
        open_engine(tiny_model.parent / "missing.gguf", GREEDY)
    vocab = open_engine(tiny_model, GREEDY, vocab_only=True)  # a tokenizer needs no child
    try:
        assert isinstance(vocab, Engine)
    finally:
        vocab.close()


# -- the front ends survive -------------------------------------------------------------------


def test_the_server_answers_a_killed_engine_with_an_error_and_reloads(
    tiny_model: Path, tmp_path: Path
) -> None:
    import http.client
    import json
    from urllib.parse import urlparse

    import openai
    from serverproc import ServerProcess

    env = {"LOCALLLM_HOME": str(tmp_path), "LOCALLLM_ISOLATE": "1"}
    # A long context and budget: the stream is still going (seconds of it) when the client,
    # having read its fifth chunk, kills the engine process.
    ctx = ("--ctx", str(LONG + 64))
    with ServerProcess("-m", str(tiny_model), *ctx, grammar=ENDLESS, env=env) as server:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        api.chat.completions.create(model="default", messages=HI, max_tokens=2)
        worker = server.worker()
        first = worker["engine_pid"]
        assert first and worker["engine_crashed"] is None

        url = urlparse(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        body = {"messages": HI, "stream": True, "max_tokens": LONG}
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        chunks = 0
        while chunks < 5:  # the fifth answer chunk has arrived: the engine is mid-stream
            line = resp.readline()
            if line.startswith(b"data: ") and b'"content"' in line:
                chunks += 1
        os.kill(first, signal.SIGKILL)
        rest = resp.read().decode()
        conn.close()
        errors = [
            json.loads(line[6:])
            for line in rest.splitlines()
            if line.startswith("data: {") and '"error"' in line
        ]
        assert errors, rest[-2000:]
        error = errors[-1]["error"]
        assert "killed by SIGKILL" in error["message"] and error["code"] == "engine_crashed"
        server.wait_until(lambda: server.worker()["engine_crashed"] is not None)

        # The server stayed up; the next request loads the model again and is answered.
        assert server.get("/health")[0] == 200
        result = api.chat.completions.create(model="default", messages=HI, max_tokens=5)
        assert result.usage.completion_tokens == 5
        worker = server.worker()
        assert worker["engine_pid"] != first and worker["engine_crashed"] is None
        server.wait_line("reloaded")  # stderr is read by a thread: wait for the line, never race it

        # Killed while idle: the next request finds it dead and loads the model first.
        second = worker["engine_pid"]
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: gone(second), "the killed engine process to end")
        status, _, raw = server.request(
            "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 5}
        )
        assert status == 200, raw
        last = server.worker()["engine_pid"]
        assert last not in (first, second)
    # The server stopped (SIGINT, as Ctrl-C): no engine process is left behind.
    wait_until(lambda: gone(last), "the engine process to end with the server")


HI = [{"role": "user", "content": "hi"}]


def test_the_chat_shows_the_crash_and_the_next_message_reloads(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_tui import SIZE, ask, loaded
    from textual.pilot import Pilot

    from localllm.tui.app import ChatApp
    from localllm.tui.engine_host import default_engine

    class KilledMidStream:
        """The app's engine, whose process is killed once the fifth text event has come
        through (in the worker thread, between two tokens: no race with the stream)."""

        def __init__(self, engine: EngineProcess) -> None:
            self.engine = engine
            self.kill_at: int | None = 5

        def __getattr__(self, name: str) -> Any:
            return getattr(self.engine, name)

        def generate(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            seen = 0
            for event in self.engine.generate(*args, **kwargs):
                yield event
                seen += isinstance(event, TextEvent)
                if seen == self.kill_at:
                    self.kill_at = None
                    self.engine.kill(signal.SIGKILL)

    def factory(path: Path, profile: Profile) -> Any:
        return KilledMidStream(default_engine(path, profile))

    monkeypatch.setenv("LOCALLLM_ISOLATE", "1")  # the app's own engine factory isolates
    profile = GREEDY.replace(max_tokens=LIMIT, grammar=ENDLESS)
    app = ChatApp(tiny_model, profile, engine_factory=factory)
    shown: list[str] = []
    titles: list[str] = []
    notify = app.notify

    def spy(message: str, *args: Any, **kwargs: Any) -> None:
        shown.append(message)
        titles.append(str(kwargs.get("title")))
        notify(message, *args, **kwargs)

    app.notify = spy  # type: ignore[method-assign]
    pids: list[int | None] = []

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        engine = app.session.engine.engine
        assert isinstance(engine, EngineProcess)
        first = engine.pid
        await ask(pilot, "go on forever")
        assert any("killed by SIGKILL" in m for m in shown), shown
        assert "The model's process died" in titles, titles
        assert not engine.alive

        # The app is still usable: the next message loads the model again and is answered.
        app.apply_profile(GREEDY.replace(max_tokens=4, grammar=ENDLESS))
        answer = await ask(pilot, "again")
        assert answer.answer.strip()
        assert engine.alive and engine.pid != first
        assert app.session.engine.engine is engine
        pids.extend((first, engine.pid))

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await body(pilot)
        app.close_engine()

    asyncio.run(main())
    assert len(pids) == 2 and all(pid is not None and gone(pid) for pid in pids)  # no orphan


def test_images_need_the_model_in_process(tiny_process: EngineProcess, tmp_path: Path) -> None:
    from localllm import vision

    with pytest.raises(UsageError, match="child process"):
        vision.Projector(tiny_process, tmp_path / "mmproj.gguf")


def test_ctrl_c_on_run_stops_and_leaves_no_engine_process(starter_model: Path) -> None:
    from test_interrupts import LONG as LONG_RUN
    from test_interrupts import finish, read_at_least, small_pipe

    # The terminal sends Ctrl-C to the whole process group: the child ignores it, and the
    # parent stops the generation, says so, exits 130, and its engine process ends with it.
    read_end, write_end = small_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", "-m", str(starter_model), *LONG_RUN],
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        env={**os.environ, "LOCALLLM_ISOLATE": "1"},
        start_new_session=True,
    )
    os.close(write_end)
    read_at_least(read_end, 20)  # answering: blocked on the full pipe, it cannot finish
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1
    engine = int(children[0])
    assert "localllm.enginechild" in Path(f"/proc/{engine}/cmdline").read_text()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = finish(proc, read_end)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    wait_until(lambda: gone(engine), "the engine process to end with run")

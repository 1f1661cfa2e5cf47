"""The streaming path between a model's worker thread and the event loop
(:class:`localllm.server.models.Events`, :func:`localllm.server.app.pump`): the worker wakes the
loop only when the loop waits, and what waits goes out as one write, runs of text joined."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from localllm.errors import InferenceError
from localllm.profiles import Profile
from localllm.server import app, openai
from localllm.server.models import Done, Events, Job
from localllm.session import AnswerText, ReasoningText


def _job(loop: asyncio.AbstractEventLoop) -> Job:
    return Job(loop, Profile(), lambda session, cancel: iter(()))


def _from_thread(fn: Any) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()


def test_the_worker_wakes_the_loop_only_when_it_waits() -> None:
    async def main() -> None:
        events = _job(asyncio.get_running_loop()).events
        _from_thread(lambda: [events.put_threadsafe(AnswerText(str(i))) for i in range(5)])
        assert events.wakeups == 0  # nobody waited: no wake-up at all
        await events.wait()  # items are there: returns at once
        assert [e.text for e in events.drain()] == ["0", "1", "2", "3", "4"]
        assert events.empty() and events.drain() == []
        waiting = asyncio.ensure_future(events.get())
        await asyncio.sleep(0)  # let it start waiting
        _from_thread(lambda: [events.put_threadsafe(AnswerText(s)) for s in "ab"])
        assert (await waiting).text == "a"
        assert events.wakeups == 1  # one wake-up for two items
        assert events.get_nowait().text == "b"

    asyncio.run(main())


def test_paced_items_wait_for_company_up_to_the_interval() -> None:
    """After a paced item woke the loop, the next ones within ``interval`` do not wake it; an
    item of another kind does, at once, and takes them along; with nothing else coming, the
    loop's timer sends them once ``interval`` has passed since the last paced wake-up."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        events = Events(loop, interval=3600, paced=(AnswerText,))
        waiting = asyncio.ensure_future(events.wait())
        await asyncio.sleep(0)
        _from_thread(lambda: events.put_threadsafe(AnswerText("a")))  # the first: at once
        await waiting
        assert events.wakeups == 1 and [e.text for e in events.drain()] == ["a"]
        waiting = asyncio.ensure_future(events.wait())
        await asyncio.sleep(0)
        _from_thread(lambda: [events.put_threadsafe(AnswerText(s)) for s in "bc"])
        await asyncio.sleep(0)
        assert events.wakeups == 1 and not waiting.done()  # waiting for company
        _from_thread(lambda: events.put_threadsafe(ReasoningText("r")))  # not paced: at once
        await waiting
        assert events.wakeups == 2
        assert [e.text for e in events.drain()] == ["b", "c", "r"]

        # The timer: due one second after the last paced wake-up.
        events.interval = 1.0
        start = events._paced_at = time.monotonic()  # as if a paced item had just woken it
        waiting = asyncio.ensure_future(events.wait())
        await asyncio.sleep(0)
        _from_thread(lambda: events.put_threadsafe(AnswerText("d")))
        put_at = time.monotonic()
        await waiting  # sent by the timer, or by the worker if the put came late: never lost
        assert [e.text for e in events.drain()] == ["d"]
        if put_at < start + 1.0:  # it came before the deadline: the worker left it to the timer
            assert events.wakeups == 2

    asyncio.run(main())


def test_a_reply_not_streamed_wakes_the_loop_once_at_the_end() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        job = _job(loop)
        watcher = loop.create_task(asyncio.Event().wait())
        running = app.Running(job, None, watcher, 0.0)  # type: ignore[arg-type]
        collect = asyncio.ensure_future(app._collect(running, AnswerText("a")))
        await asyncio.sleep(0)  # let it start waiting
        _from_thread(lambda: [job.events.put_threadsafe(AnswerText(s)) for s in "bcdef"])
        await asyncio.sleep(0)
        assert job.events.wakeups == 0 and not collect.done()  # tokens do not wake the loop
        turn = object()
        _from_thread(lambda: job.events.put_threadsafe(Done(turn)))
        assert await collect is turn
        assert job.events.wakeups == 1
        watcher.cancel()

    asyncio.run(main())


def _payloads(data: bytes) -> list[dict[str, Any]]:
    parts = data.split(b"\n\n")
    assert parts[-1] == b""
    return [json.loads(p[len(b"data: ") :]) for p in parts[:-1]]


def test_pump_joins_what_waits_into_one_write() -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        job = _job(loop)
        watcher = loop.create_task(asyncio.Event().wait())
        running = app.Running(job, None, watcher, 0.0)  # type: ignore[arg-type]
        for item in [AnswerText("b"), ReasoningText("r"), AnswerText("c"), AnswerText("d")]:
            job.events.put_nowait(item)
        writes = []
        chunks = openai.ChatChunks("m", include_usage=False)
        stream = app.pump(running, AnswerText("a"), chunks)
        writes.append(await stream.__anext__())
        later = loop.create_task(stream.__anext__())
        await asyncio.sleep(0)
        assert not later.done()  # nothing waits: the pump waits for the worker
        _from_thread(lambda: job.emit(AnswerText("e")))
        writes.append(await later)
        _from_thread(lambda: job.emit(InferenceError("boom")))
        writes.append(await stream.__anext__())
        assert running.status == 500
        watcher.cancel()
        return writes

    first, second, third = asyncio.run(main())
    deltas = [p["choices"][0]["delta"] for p in _payloads(first)]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "ab"},
        {"reasoning_content": "r"},
        {"content": "cd"},
    ]
    assert [p["choices"][0]["delta"] for p in _payloads(second)] == [{"content": "e"}]
    assert "boom" in _payloads(third)[0]["error"]["message"]


def test_chunk_templates_write_what_json_would() -> None:
    for completion in (False, True):
        for usage in (False, True):
            chunks = openai.ChatChunks('a "model"', include_usage=usage, completion=completion)
            for text in ["x", '"\\\n\u00e9\U0001f600\x00 ', ""]:
                choice = chunks._choice({"content": text})
                assert chunks.answer(text) == chunks._chunk([choice])

"""The UI-free streaming helper: batching a turn's text for a screen, and running a turn."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from localllm.engine import Engine, plan_load
from localllm.profiles import Profile
from localllm.session import ChatSession
from localllm.streaming import Coalescer, Delta, settled, stream_turn

QUICK = Profile(temperature=0.0, max_tokens=24, gpu_layers=0, seed=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_text_goes_out_at_once_then_at_most_once_per_interval() -> None:
    clock = Clock()
    batch = Coalescer(0.2, clock)
    assert batch.due() is None  # nothing yet
    batch.add(answer="Hel")
    assert batch.due() == Delta("Hel")
    batch.add(answer="lo")
    batch.add(reasoning="hmm", reasoning_tokens=2)
    clock.now += 0.1
    assert batch.due() is None  # too soon: kept
    clock.now += 0.15
    assert batch.due() == Delta("lo", "hmm", 2)
    batch.add(answer="!")
    assert batch.due() is None
    assert batch.flush() == Delta("!")
    assert batch.flush() is None
    assert "".join(batch.answer) == "Hello!" and "".join(batch.reasoning) == "hmm"


@given(st.lists(st.tuples(st.text(max_size=5), st.floats(0, 0.5)), max_size=30))
def test_deltas_add_up_to_the_whole_text(pieces: list[tuple[str, float]]) -> None:
    clock = Clock()
    batch = Coalescer(0.2, clock)
    out: list[Delta] = []
    for text, step in pieces:
        clock.now += step
        batch.add(answer=text)
        delta = batch.due()
        if delta is not None:
            out.append(delta)
    last = batch.flush()
    if last is not None:
        out.append(last)
    assert "".join(d.answer for d in out) == "".join(t for t, _ in pieces)
    assert all(out)  # never an empty delta


def test_a_turn_streams_in_deltas_and_returns_the_session_record(tiny_model: Path) -> None:
    deltas: list[Delta] = []
    with Engine(tiny_model, plan_load(QUICK)) as engine:
        session = ChatSession(engine, QUICK)
        result = stream_turn(session, "hello \udcff there", emit=deltas.append, interval=0.0)
        assert result.error is None and result.stats is not None
        assert result.stats.generated_tokens > 0
        assert "".join(d.answer for d in deltas) == result.answer
        assert result.mode == "instant" and not result.stopped
        assert result.history == session.messages
        assert session.messages[0] == {"role": "user", "content": "hello \ufffd there"}

        # Stopped from outside: what was written is kept, marked stopped.
        stopped = stream_turn(session, "again", emit=deltas.append, cancel=lambda: True)
        assert stopped.stopped and stopped.error is None
        assert len(session.messages) == 4


def test_a_constraint_shapes_the_streamed_answer(tiny_model: Path) -> None:
    from localllm.session import make_constraint

    forced = make_constraint(grammar='root ::= "only this"', source="test")
    with Engine(tiny_model, plan_load(QUICK)) as engine:
        session = ChatSession(engine, QUICK.replace(max_tokens=32))
        deltas: list[Delta] = []
        result = stream_turn(session, "hello", emit=deltas.append, constraint=forced)
        assert result.error is None and result.answer == "only this"
        assert "".join(d.answer for d in deltas) == "only this"
        free = stream_turn(session, "hello", emit=lambda d: None)
        assert free.error is None and free.answer != "only this"


def test_a_failed_turn_is_a_result_not_an_exception(tiny_model: Path) -> None:
    with Engine(tiny_model, plan_load(QUICK.replace(context_length=512))) as engine:
        session = ChatSession(engine, QUICK)
        result = stream_turn(session, "word " * 2000, emit=lambda d: None)
    assert result.error is not None and "context" in result.error.message
    assert result.history is None and result.stats is None


def test_settled_markdown_is_cut_at_a_blank_line_outside_code() -> None:
    text = "para one\n\n```\ncode\n\nmore code\n```\n\npara two\n\ntail"
    cut = settled(text, min_chars=1)
    assert text[cut:] == "tail"
    assert settled(text, min_chars=1000) == 0  # too short to be worth a cut
    inside = "intro\n\n```\ncode\n\nstill code"
    assert inside[settled(inside, min_chars=1) :] == "```\ncode\n\nstill code"
    assert settled("no blank line yet", min_chars=1) == 0
    assert settled(text, cut, min_chars=1) == cut  # nothing settled after the last cut

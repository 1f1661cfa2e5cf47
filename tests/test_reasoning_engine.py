"""The reasoning splitter's newer cases through the real engine: tiny random-weight models whose
output a grammar forces into shape, run through ChatSession exactly as ``run`` and the TUI do.

* an orphan ``</think>`` (the template pre-filled ``<think>`` where we cannot see it) still ends
  the reasoning in reasoning mode;
* Granite 3.2's plain-text "Here is my thought process:" / "Here is my response:" split.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ggufgen import write_tiny_gguf
from test_reasoning import GRANITE32_TEMPLATE, QWEN3_TEMPLATE

from localllm.engine import Engine, LoadOptions, Stats
from localllm.profiles import Profile
from localllm.session import AnswerText, ChatSession, ReasoningText

REASONING = Profile(temperature=0.0, max_tokens=40, mode="reasoning")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Engine]]:
    folder = tmp_path_factory.mktemp("reasoning-engine")
    paths = {
        "qwen3": write_tiny_gguf(folder / "qwen3.gguf", chat_template=QWEN3_TEMPLATE),
        "granite32": write_tiny_gguf(folder / "granite32.gguf", chat_template=GRANITE32_TEMPLATE),
    }
    loaded = {
        name: Engine(path, LoadOptions(n_ctx=1024, n_threads=2, n_gpu_layers=0))
        for name, path in paths.items()
    }
    yield loaded
    for engine in loaded.values():
        engine.close()


def send(session: ChatSession, grammar: str) -> tuple[str, list]:
    events = list(session.send("hi", grammar=grammar))
    assert isinstance(events[-1], Stats)
    kinds = ""
    for e in events:
        tag = "R" if isinstance(e, ReasoningText) else "A" if isinstance(e, AnswerText) else ""
        if tag and not kinds.endswith(tag):
            kinds += tag
    return kinds, events


def test_orphan_closing_tag_through_the_engine(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["qwen3"], REASONING)
    assert session.adapter == "enable_thinking"
    assert not session.render("hi").rstrip().endswith("<think>")  # the prompt opened nothing
    kinds, _ = send(session, 'root ::= "step one" "</think>" "\\n\\n" "The answer."')
    turn = session.last_turn
    assert turn is not None
    assert (turn.reasoning, turn.answer) == ("step one", "The answer.")
    assert kinds == "RA"  # reasoning was never shown as answer
    assert turn.reasoning_tokens + turn.answer_tokens == turn.stats.generated_tokens


def test_granite_32_plain_text_thoughts_through_the_engine(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["granite32"], REASONING.replace(max_tokens=200))
    assert session.adapter == "thinking"
    assert "Here is my thought process:" in session.render("hi")
    grammar = (
        'root ::= "Here is my thought process:\\n" "They greet me." '
        '"\\n\\nHere is my response:\\n" "Hello!"'
    )
    kinds, _ = send(session, grammar)
    turn = session.last_turn
    assert turn is not None
    assert (turn.reasoning, turn.answer) == ("They greet me.", "Hello!")
    assert kinds == "RA"


def test_granite_32_budget_closes_with_the_response_heading(engines: dict[str, Engine]) -> None:
    profile = REASONING.replace(max_tokens=6, reasoning_budget=40)
    session = ChatSession(engines["granite32"], profile)
    send(session, 'root ::= "Here is my thought process:\\n" [a-z ]+')
    turn = session.last_turn
    assert turn is not None
    assert turn.budget_exhausted
    assert turn.reasoning.endswith("Time is up; answering now.")
    assert turn.answer  # the model answered after the injected heading
    assert "Here is my response:" not in turn.answer + turn.reasoning

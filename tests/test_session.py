"""ChatSession on the real engine: tiny generated models carrying each family's template, with
grammars forcing reasoning-shaped output, so the splitter, the leak check and the budget
injection are tested on the actual token stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ggufgen import gpt2_vocab, write_tiny_gguf
from test_reasoning import (
    DEEPSEEK_R1_TEMPLATE,
    GPT_OSS_TEMPLATE,
    GRANITE_TEMPLATE,
    QWEN3_TEMPLATE,
)

from localllm import reasoning
from localllm.engine import Engine, LoadOptions, Stats, TextEvent
from localllm.profiles import Profile
from localllm.session import AnswerText, ChatSession, ReasoningText, Turn

HARMONY_SPECIAL = (
    "<|endoftext|>",
    "<|start|>",
    "<|channel|>",
    "<|message|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
)


def harmony_vocab() -> Any:
    # With <|return|> and <|call|> present, llama.cpp does not treat <|end|> as end of
    # generation (as for gpt-oss): generation continues into the final channel.
    return gpt2_vocab(special=HARMONY_SPECIAL, user_defined=(), eos="<|return|>")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reasoning-models")
    return {
        "qwen3": write_tiny_gguf(folder / "qwen3.gguf", chat_template=QWEN3_TEMPLATE),
        "granite": write_tiny_gguf(folder / "granite.gguf", chat_template=GRANITE_TEMPLATE),
        "r1": write_tiny_gguf(folder / "r1.gguf", chat_template=DEEPSEEK_R1_TEMPLATE),
        "gpt-oss": write_tiny_gguf(
            folder / "gpt-oss.gguf", chat_template=GPT_OSS_TEMPLATE, vocab=harmony_vocab()
        ),
        # A harmony template whose generation prompt opens the analysis channel itself.
        "harmony-open": write_tiny_gguf(
            folder / "harmony-open.gguf",
            chat_template=GPT_OSS_TEMPLATE.replace(
                '"<|start|>assistant"', '"<|start|>assistant<|channel|>analysis<|message|>"'
            ),
            vocab=harmony_vocab(),
        ),
        # No <think> tokens in the vocabulary: the tags can only be spelled byte by byte.
        "qwen3-bytes": write_tiny_gguf(
            folder / "qwen3-bytes.gguf",
            chat_template=QWEN3_TEMPLATE,
            vocab=gpt2_vocab(user_defined=()),
        ),
    }


@pytest.fixture(scope="module")
def engines(models: dict[str, Path], tiny_model: Path) -> Iterator[dict[str, Engine]]:
    loaded = {
        name: Engine(path, LoadOptions(n_ctx=512, n_threads=2, n_gpu_layers=0))
        for name, path in {**models, "chatml": tiny_model}.items()
    }
    yield loaded
    for engine in loaded.values():
        engine.close()


class Recorder:
    """Wraps an engine's ``generate`` to keep the raw events it yields."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        original = engine.generate

        def generate(prompt: Any, settings: Profile, **kwargs: Any) -> Iterator[Any]:
            self.calls.append({"prompt": prompt, "settings": settings, **kwargs})
            for event in original(prompt, settings, **kwargs):
                self.events.append(event)
                yield event

        monkeypatch.setattr(engine, "generate", generate)

    def texts(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextEvent)]


def run(session: ChatSession, text: str = "hi", grammar: str | None = None) -> tuple[list, Turn]:
    events = list(session.send(text, grammar=grammar))
    assert isinstance(events[-1], Stats)
    assert session.last_turn is not None
    return events, session.last_turn


def order(events: list) -> str:
    """R for reasoning events, A for answer events, collapsed: 'RA' means reasoning first."""
    out = ""
    for e in events:
        tag = "R" if isinstance(e, ReasoningText) else "A" if isinstance(e, AnswerText) else ""
        if tag and not out.endswith(tag):
            out += tag
    return out


REASONING = Profile(temperature=0.0, max_tokens=40, mode="reasoning")
INSTANT = Profile(temperature=0.0, max_tokens=40, mode="instant")

THINK_TOKENS = 'root ::= <think> "step one" </think> "\\n\\n" "The answer."'
THINK_TEXT = 'root ::= "<think>" "step one" "</think>" "\\n\\n" "The answer."'


def test_adapter_per_family(engines: dict[str, Engine]) -> None:
    expected = {
        "qwen3": "enable_thinking",
        "granite": "thinking",
        "r1": "prefill",
        "gpt-oss": "harmony",
        "chatml": "instruction",
    }
    for name, adapter in expected.items():
        assert ChatSession(engines[name], REASONING).adapter == adapter
    forced = REASONING.replace(reasoning_format="prefill")
    assert ChatSession(engines["chatml"], forced).adapter == "prefill"


def test_think_tags_as_single_tokens(engines: dict[str, Engine], monkeypatch) -> None:
    engine = engines["qwen3"]
    rec = Recorder(engine, monkeypatch)
    events, turn = run(ChatSession(engine, REASONING), grammar=THINK_TOKENS)
    assert "<think>" in rec.texts() and "</think>" in rec.texts()  # each one token, one event
    assert (turn.reasoning, turn.answer) == ("step one", "The answer.")
    assert order(events) == "RA"
    assert turn.reasoning_tokens >= 3 and turn.answer_tokens >= 3
    assert turn.reasoning_tokens + turn.answer_tokens == turn.stats.generated_tokens
    assert not turn.reasoning_leaked and not turn.budget_exhausted
    assert (turn.mode, turn.adapter) == ("reasoning", "enable_thinking")


def test_think_tags_split_across_tokens(engines: dict[str, Engine], monkeypatch) -> None:
    engine = engines["qwen3-bytes"]
    rec = Recorder(engine, monkeypatch)
    events, turn = run(ChatSession(engine, REASONING), grammar=THINK_TEXT)
    texts = rec.texts()
    assert "".join(texts).startswith("<think>step one</think>")
    assert "<think>" not in texts and "</think>" not in texts  # spelled over several tokens
    assert (turn.reasoning, turn.answer) == ("step one", "The answer.")
    assert order(events) == "RA"
    assert turn.reasoning_tokens >= len("<think>step one</think>") // 2
    assert turn.reasoning_tokens + turn.answer_tokens == turn.stats.generated_tokens


def test_prompt_that_opened_the_block(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["r1"], REASONING.replace(max_tokens=4))
    assert session.render("hi").endswith("<｜Assistant｜><think>\n")
    grammar = 'root ::= "plan" </think> "\\n\\n" [a-z]+'
    events, turn = run(session, grammar=grammar)
    assert turn.reasoning == "plan"
    assert order(events) == "RA"
    # The answer had max_tokens of its own, on top of the reasoning.
    assert turn.answer_tokens == 4
    assert turn.stats.generated_tokens == turn.reasoning_tokens + 4
    assert turn.stats.stop_reason == "length"


def test_leak_in_instant_mode_is_caught(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["qwen3"], INSTANT)
    assert session.render("hi").endswith("<think>\n\n</think>\n\n")
    events, turn = run(session, grammar='root ::= <think> "oops" </think> " Fine."')
    assert turn.reasoning_leaked
    assert (turn.reasoning, turn.answer) == ("oops", "Fine.")
    assert turn.reasoning_tokens >= 3
    assert any(isinstance(e, ReasoningText) for e in events)
    assert "oops" not in "".join(e.text for e in events if isinstance(e, AnswerText))
    _, clean = run(session, grammar='root ::= "Just an answer."')
    assert not clean.reasoning_leaked and clean.reasoning_tokens == 0


def recorded_budget(rec: Recorder) -> tuple[int, str]:
    """Generated tokens before the first injected event, and its text."""
    n = 0
    for event in rec.events:
        if isinstance(event, TextEvent):
            if event.injected:
                return n, event.text
            n += event.tokens
    raise AssertionError("nothing was injected")


@pytest.mark.parametrize("budget", [1, 7])
def test_budget_injects_the_close_after_n_tokens(
    engines: dict[str, Engine], monkeypatch, budget: int
) -> None:
    engine = engines["r1"]
    rec = Recorder(engine, monkeypatch)
    profile = REASONING.replace(reasoning_budget=budget, max_tokens=5)
    events, turn = run(ChatSession(engine, profile), grammar="root ::= [a-z ]+")
    before, injected = recorded_budget(rec)
    assert before == budget
    assert injected == reasoning.close_text("prefill", reasoning.DEFAULT_BRIDGE)
    assert rec.calls[0]["settings"].max_tokens == 5 + budget + reasoning.TOKEN_SLACK
    assert turn.budget_exhausted
    assert turn.reasoning_tokens == budget
    assert turn.reasoning.endswith(reasoning.DEFAULT_BRIDGE)
    # The model went on to answer, with its full max_tokens.
    assert turn.answer and order(events) == "RA"
    assert turn.answer_tokens == 5
    assert turn.stats.generated_tokens == budget + 5
    assert turn.stats.stop_reason == "length"
    assert not turn.reasoning_truncated


def test_budget_bridge_is_configurable(engines: dict[str, Engine], monkeypatch) -> None:
    engine = engines["r1"]
    rec = Recorder(engine, monkeypatch)
    profile = REASONING.replace(reasoning_budget=2, max_tokens=3)
    object.__setattr__(profile, "reasoning_bridge", "")  # until profiles has the field
    _, turn = run(ChatSession(engine, profile), grammar="root ::= [a-z]+")
    assert recorded_budget(rec) == (2, "\n</think>\n\n")
    assert reasoning.DEFAULT_BRIDGE not in turn.reasoning


def test_budget_zero_behaves_as_instant(engines: dict[str, Engine]) -> None:
    for name in ("qwen3", "r1", "gpt-oss", "chatml"):
        zero = ChatSession(engines[name], REASONING.replace(reasoning_budget=0))
        assert zero.mode == "instant"
        assert zero.render("hi") == ChatSession(engines[name], INSTANT).render("hi")


def test_unterminated_reasoning_at_the_limit(models: dict[str, Path]) -> None:
    # llama.cpp rounds the context up to 256 tokens: it fills up long before the budget.
    with Engine(models["r1"], LoadOptions(n_ctx=48, n_threads=2, n_gpu_layers=0)) as engine:
        session = ChatSession(engine, REASONING.replace(max_tokens=1000))
        events, turn = run(session, grammar="root ::= [a-z ]+")
    assert turn.stats.stop_reason == "context"
    assert turn.reasoning and turn.answer == ""
    assert turn.reasoning_truncated and not turn.budget_exhausted
    assert order(events) == "R"


def test_cancel_keeps_what_was_produced(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["r1"], REASONING)
    calls = iter(range(1000))
    events = list(session.send("hi", cancel=lambda: next(calls) >= 3, grammar="root ::= [a-z]+"))
    turn = session.last_turn
    assert turn is not None and turn.stopped and turn.stats.stop_reason == "cancelled"
    assert turn.reasoning_tokens == 4 and turn.answer == ""
    assert session.messages[-1]["content"] == ""
    assert order(events) == "R"


def test_harmony_channels_end_to_end(engines: dict[str, Engine], monkeypatch) -> None:
    engine = engines["gpt-oss"]
    rec = Recorder(engine, monkeypatch)
    session = ChatSession(engine, REASONING)
    prompt = session.render("hi")
    assert "Reasoning: medium" in prompt and prompt.endswith("<|start|>assistant")
    grammar = (
        'root ::= <|channel|> "analysis" <|message|> "User greets." <|end|> '
        '<|start|> "assistant" <|channel|> "final" <|message|> "Hello!"'
    )
    events, turn = run(session, grammar=grammar)
    assert rec.calls[0]["special"] is True
    assert "<|channel|>" in rec.texts()
    assert (turn.reasoning, turn.answer) == ("User greets.", "Hello!")
    assert order(events) == "RA"
    assert turn.reasoning_tokens >= 5 and turn.answer_tokens >= 2


def test_harmony_instant_starts_in_the_final_channel(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["gpt-oss"], INSTANT)
    prompt = session.render("hi")
    assert "Reasoning: low" in prompt
    assert prompt.endswith(reasoning.HARMONY_SKIP_ANALYSIS)
    events, turn = run(session, grammar='root ::= "Hi there."')
    assert (turn.reasoning, turn.answer) == ("", "Hi there.")
    assert not turn.reasoning_leaked and order(events) == "A"


def test_harmony_budget_switches_to_the_final_channel(
    engines: dict[str, Engine], monkeypatch
) -> None:
    engine = engines["harmony-open"]
    rec = Recorder(engine, monkeypatch)
    profile = REASONING.replace(reasoning_budget=6, max_tokens=4)
    session = ChatSession(engine, profile)
    assert session.adapter == "harmony"
    assert session.render("hi").endswith("<|channel|>analysis<|message|>")
    events, turn = run(session, grammar="root ::= [a-z]+")
    before, injected = recorded_budget(rec)
    assert before == 6
    assert injected.endswith("<|end|><|start|>assistant<|channel|>final<|message|>")
    assert turn.reasoning_tokens == 6 and turn.answer_tokens == 4
    assert order(events) == "RA"


def test_granite_thinking_variable_and_response_tags(engines: dict[str, Engine]) -> None:
    on = ChatSession(engines["granite"], REASONING)
    off = ChatSession(engines["granite"], INSTANT)
    assert "<think></think>" in on.render("hi") and "<think>" not in off.render("hi")
    grammar = 'root ::= <think> "hmm" </think> "\\n" "<response>" "Yes." "</response>"'
    _, turn = run(on, grammar=grammar)
    assert (turn.reasoning, turn.answer) == ("hmm", "Yes.")


def test_instruction_adapter_on_a_plain_chat_template(engines: dict[str, Engine]) -> None:
    profile = REASONING.replace(system_prompt="Be brief.")
    session = ChatSession(engines["chatml"], profile)
    prompt = session.render("hi")
    assert prompt.startswith(
        "<|im_start|>system\nBe brief.\n\n" + reasoning.REASONING_INSTRUCTION + "<|im_end|>"
    )
    instant = ChatSession(engines["chatml"], INSTANT.replace(system_prompt="Be brief."))
    assert instant.render("hi").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    _, turn = run(session, grammar=THINK_TOKENS)
    assert (turn.reasoning, turn.answer) == ("step one", "The answer.")


def test_multi_turn_keeps_reasoning_out_of_the_prompt(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["qwen3"], REASONING)
    run(session, "first", grammar=THINK_TOKENS)
    assert session.messages == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "The answer.", "reasoning": "step one"},
    ]
    assert all("reasoning" not in m for m in session.request_messages("second"))
    prompt = session.render("second")
    assert "step one" not in prompt and "<think>" not in prompt
    assert "<|im_start|>assistant\nThe answer.<|im_end|>\n<|im_start|>user\nsecond" in prompt
    _, second = run(session, "second", grammar=THINK_TOKENS)
    assert second.stats.cached_tokens > 0  # the history's tokens came from the KV cache
    # Switching the mode between turns changes only the new request's rendering.
    session.profile = INSTANT
    assert session.render("third").endswith("<think>\n\n</think>\n\n")
    session.reset()
    assert session.messages == [] and session.last_turn is None


def test_reasoning_format_none_passes_everything_through(engines: dict[str, Engine]) -> None:
    session = ChatSession(engines["qwen3"], REASONING.replace(reasoning_format="none"))
    assert session.render("hi").endswith("<|im_start|>assistant\n")
    _, turn = run(session, grammar=THINK_TOKENS)
    assert turn.answer == "<think>step one</think>\n\nThe answer."
    assert turn.reasoning == "" and turn.reasoning_tokens == 0


def test_respond_runs_a_whole_conversation_and_leaves_the_history(
    engines: dict[str, Engine], monkeypatch
) -> None:
    engine = engines["qwen3"]
    rec = Recorder(engine, monkeypatch)
    session = ChatSession(engine, REASONING.replace(system_prompt="Be brief."))
    conversation = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    events = list(session.respond(conversation, grammar=THINK_TEXT))
    assert isinstance(events[-1], Stats) and order(events) == "RA"
    turn = session.last_turn
    assert (turn.reasoning, turn.answer) == ("step one", "The answer.")
    assert session.messages == []  # a server's request is not the session's history
    prompt = rec.calls[0]["prompt"]
    assert prompt.index("Be brief.") < prompt.index("first") < prompt.index("second")
    # The conversation's own system message replaces the profile's.
    list(session.respond([{"role": "system", "content": "Own."}, *conversation]))
    assert "Be brief." not in rec.calls[1]["prompt"] and "Own." in rec.calls[1]["prompt"]


def test_complete_continues_plain_text_without_template_or_split(
    engines: dict[str, Engine], monkeypatch
) -> None:
    engine = engines["qwen3"]
    rec = Recorder(engine, monkeypatch)
    session = ChatSession(engine, REASONING)
    events = list(session.complete("Once upon", grammar=THINK_TEXT))
    assert rec.calls[0]["prompt"] == "Once upon"
    answer = "".join(e.text for e in events if isinstance(e, AnswerText))
    assert answer == "<think>step one</think>\n\nThe answer."
    assert session.last_turn.adapter == "none" and session.messages == []

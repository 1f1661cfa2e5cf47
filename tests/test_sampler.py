"""The engine's own token loop: llama.cpp's sampler chain, grammars (strict and lazy), and
KV-cache reuse that keeps the generated token ids. Real llama.cpp, tiny random models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localllm.engine import Engine, LoadOptions, Stats, Steering, TextEvent
from localllm.errors import UsageError
from localllm.profiles import Profile

GREEDY = Profile(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    eng = Engine(tiny_model, LoadOptions(n_ctx=512, n_threads=2, n_gpu_layers=0))
    yield eng
    eng.close()


def run(engine: Engine, prompt: str, settings: Profile, **kw) -> tuple[str, Stats]:
    texts, stats = [], None
    for event in engine.generate(prompt, settings, **kw):
        if isinstance(event, TextEvent):
            texts.append(event.text)
        else:
            stats = event
    assert stats is not None
    return "".join(texts), stats


def literal(text: str) -> str:
    return 'root ::= "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize(
    "grammar",
    ['root ::= "unterminated', "root ::= missing_rule", 'nope = "x"', 'other ::= "x"'],
)
def test_a_grammar_that_does_not_parse_is_a_usage_error(engine: Engine, grammar: str) -> None:
    prompt = engine.render([{"role": "user", "content": "hi"}])
    with pytest.raises(UsageError, match="grammar does not parse") as info:
        run(engine, prompt, GREEDY, grammar=grammar)
    assert info.value.hint and "GBNF" in info.value.hint
    # the engine is still usable afterwards
    assert run(engine, prompt, GREEDY)[1].generated_tokens == 24


def test_a_bad_grammar_in_a_subprocess_is_one_line_not_an_abort(tiny_model: Path) -> None:
    code = (
        "import sys\n"
        "from localllm.engine import Engine, LoadOptions\n"
        "from localllm.errors import UsageError\n"
        "from localllm.profiles import Profile\n"
        f"e = Engine({str(tiny_model)!r}, LoadOptions(n_ctx=128, n_threads=1, n_gpu_layers=0))\n"
        "try:\n"
        "    list(e.generate('hi', Profile(max_tokens=2), grammar='root ::= ('))\n"
        "except UsageError as exc:\n"
        "    print('usage:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: the grammar does not parse")


def test_lazy_grammar_constrains_only_after_the_trigger(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "think then answer"}])
    steering = Steering()
    steering.inject("</think>")  # taken after the first generated token
    text, stats = run(
        engine,
        prompt,
        Profile(temperature=0.0, max_tokens=64),
        grammar=literal('{"ok": true}'),
        grammar_lazy_after="</think>",
        steering=steering,
    )
    _, sep, after = text.partition("</think>")
    assert sep, text
    assert after == '{"ok": true}'
    assert stats.stop_reason == "stop"  # the grammar completed: only end-of-turn was allowed


def test_lazy_grammar_without_its_trigger_changes_nothing(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "free text"}])
    plain, _ = run(engine, prompt, GREEDY)
    lazy, _ = run(engine, prompt, GREEDY, grammar=literal("x"), grammar_lazy_after="\x00never")
    assert lazy == plain
    strict, _ = run(engine, prompt, GREEDY, grammar=literal("x"))
    assert strict == "x"


def test_next_prompt_reuses_the_generated_token_ids(engine: Engine) -> None:
    """A re-tokenized answer ("hel"+"lo" generated, "hello" tokenized) costs nothing."""
    answer = "hello world, hello world"
    first = engine.render([{"role": "user", "content": "say it"}])
    text, stats = run(
        engine, first, Profile(temperature=0.0, max_tokens=64), grammar=literal(answer)
    )
    assert text == answer and stats.stop_reason == "stop"
    kv = engine.kv_tokens
    generated = kv[len(engine.tokenize(first)) :]
    # the grammar made the random model spell the answer in pieces the tokenizer would merge
    assert generated != engine.tokenize(answer, add_bos=False)
    follow = first + answer + "<|im_end|>\n<|im_start|>user\nand then?"
    _, again = run(engine, follow, GREEDY)
    assert again.cached_tokens >= len(kv) - 1
    plain = engine.tokenize(follow)
    shared = next((i for i, (a, b) in enumerate(zip(plain, kv, strict=False)) if a != b), 0)
    assert again.cached_tokens > shared, "more than a fresh tokenization would have kept"
    assert again.prompt_tokens - again.cached_tokens < len(engine.tokenize("and then?")) + 8


def test_spliced_tokens_spell_the_same_prompt(engine: Engine) -> None:
    first = engine.render([{"role": "user", "content": "abc"}])
    run(engine, first, Profile(temperature=0.0, max_tokens=16), grammar=literal("café ☕ ok"))
    follow = first + "café ☕ ok" + "<|im_end|>\n"
    tokens = engine._prompt_tokens(follow)
    assert engine.detokenize(tokens, special=True) == follow
    # a prompt that leaves the cached text differs: fall back to plain tokens
    other = "something else entirely"
    assert engine._prompt_tokens(other) == engine.tokenize(other)


def test_penalties_and_greedy_are_independent_of_kv_reuse(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "again and again"}])
    settings = Profile(temperature=0.0, max_tokens=32, repeat_penalty=1.3, presence_penalty=0.5)
    cold_engine_text = run(engine, prompt, settings)[0]
    warm, stats = run(engine, prompt, settings)
    assert stats.cached_tokens == stats.prompt_tokens - 1
    assert warm == cold_engine_text


def test_injected_text_joins_the_context_without_a_new_pass(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "go"}])
    steering = Steering()
    events = []
    for event in engine.generate(prompt, Profile(temperature=0.0, max_tokens=6), steering=steering):
        events.append(event)
        if isinstance(event, TextEvent) and not event.injected and len(events) == 1:
            steering.inject(" [note] ")
    injected = [e for e in events if isinstance(e, TextEvent) and e.injected]
    assert [e.text for e in injected] == [" [note] "]
    stats = events[-1]
    assert isinstance(stats, Stats) and stats.generated_tokens == 6
    kv_text = engine.detokenize(engine.kv_tokens, special=True)
    assert " [note] " in kv_text  # the model read what was injected


def test_chat_turns_reuse_the_answer_tokens(engine: Engine) -> None:
    """Through ChatSession: the second turn evaluates only its own new text."""
    from localllm.session import ChatSession

    engine.reset()
    chat = ChatSession(engine, Profile(temperature=0.0, max_tokens=64))
    answer = "hello world, hello world"
    list(chat.send("say it", grammar=literal(answer)))
    assert chat.last_turn.answer == answer
    kv = engine.n_kv
    list(chat.send("and then?"))
    stats = chat.last_turn.stats
    assert stats is not None
    # every token of turn one, the generated answer included, came from the cache (a fresh
    # tokenization of the answer differs from the generated ids: see the test above)
    assert stats.cached_tokens >= kv - 1


def test_a_cached_answer_that_diverges_inside_a_character(engine: Engine) -> None:
    """☕ and ☔ share their first two UTF-8 bytes: the cached tokens' bytes match the new
    prompt into the middle of a character, which must not break tokenization."""
    first = engine.render([{"role": "user", "content": "x"}])
    run(engine, first, Profile(temperature=0.0, max_tokens=32), grammar=literal("tea ☕ now"))
    follow = first + "tea ☔ now<|im_end|>\n"
    tokens = engine._prompt_tokens(follow)
    assert engine.detokenize(tokens, special=True) == follow
    _, stats = run(engine, follow, GREEDY)
    assert stats.prompt_tokens == len(tokens)


CHOICE = 'root ::= ("yes" | "no" | "maybe") (", " ("yes" | "no" | "maybe"))* "."'


@pytest.mark.parametrize(
    "settings",
    [
        Profile(temperature=0.0, max_tokens=40),
        Profile(temperature=0.9, seed=5, max_tokens=40),
        Profile(temperature=0.9, seed=5, max_tokens=40, repeat_penalty=1.3),
        Profile(temperature=0.0, max_tokens=40, speculative="ngram"),
    ],
    ids=["greedy", "seeded", "penalties", "speculative"],
)
def test_the_grammar_holds_on_every_sampling_path(engine: Engine, settings: Profile) -> None:
    """The grammar checks the drawn token and redraws only on a rejection (or sits in the
    chain when penalties keep a history): either way every answer matches it. The random
    model left alone says none of these words, so a path that skips the check fails here."""
    import re

    prompt = "yes, no, maybe, yes, no. " * 12  # long enough for n-gram drafts to be tried
    text, _ = run(engine, prompt, settings, grammar=CHOICE)
    assert re.fullmatch(r"(yes|no|maybe)(, (yes|no|maybe))*\.?", text), text
    free, _ = run(engine, prompt, settings)
    assert not re.fullmatch(r"(yes|no|maybe)(, (yes|no|maybe))*\.?", free)


def test_greedy_under_a_grammar_is_the_best_allowed_token(engine: Engine) -> None:
    """Check-then-redraw picks the same greedy tokens as the grammar in the chain (the path
    repetition penalties take): a penalty of 1.0 is neutral, so both paths must agree."""
    prompt = "Say something."
    fast, _ = run(engine, prompt, Profile(temperature=0.0, max_tokens=30), grammar=CHOICE)
    inline, _ = run(
        engine,
        prompt,
        Profile(temperature=0.0, max_tokens=30, frequency_penalty=1e-9),
        grammar=CHOICE,
    )
    assert fast == inline

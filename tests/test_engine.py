"""The engine on tiny generated models: the real llama.cpp, random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localllm.engine import Engine, LoadOptions, Stats, StopMatcher, TextEvent
from localllm.errors import InvalidModelError, UsageError
from localllm.profiles import Profile

GREEDY = Profile(temperature=0.0, max_tokens=24)


def load(path: Path, n_ctx: int = 512) -> Engine:
    return Engine(path, LoadOptions(n_ctx=n_ctx, n_threads=2, n_gpu_layers=0))


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    eng = load(tiny_model)
    yield eng
    eng.close()


def collect(events) -> tuple[list[str], Stats]:
    texts, stats = [], None
    for event in events:
        if isinstance(event, TextEvent):
            texts.append(event.text)
        else:
            assert isinstance(event, Stats)
            stats = event
    assert stats is not None, "every stream ends with stats"
    return texts, stats


def grammar_for(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'root ::= "{escaped}"'


def test_greedy_is_deterministic(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "hello there"}])
    a, sa = collect(engine.generate(prompt, GREEDY))
    b, sb = collect(engine.generate(prompt, GREEDY))
    assert "".join(a) == "".join(b)
    assert sa.generated_tokens == sb.generated_tokens == 24
    assert sa.stop_reason == "length"


def test_seed_makes_sampling_reproducible(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "tell me"}])
    hot = Profile(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_tokens=32)
    a = "".join(collect(engine.generate(prompt, hot.replace(seed=7)))[0])
    b = "".join(collect(engine.generate(prompt, hot.replace(seed=7)))[0])
    c = "".join(collect(engine.generate(prompt, hot.replace(seed=8)))[0])
    assert a == b
    assert a != c


@pytest.mark.parametrize("target", ["你好，世界！今天天气很好。", "안녕하세요 세계", "naïve ☕ 😀"])
def test_multibyte_characters_are_never_split(engine: Engine, target: str) -> None:
    prompt = engine.render([{"role": "user", "content": "say it"}])
    settings = Profile(temperature=0.0, max_tokens=200)
    texts, stats = collect(engine.generate(prompt, settings, grammar=grammar_for(target)))
    assert "".join(texts) == target
    assert all("\ufffd" not in t for t in texts)
    # The byte-level vocabulary spells each CJK character with several tokens, so the
    # detokenizer really had to hold bytes back.
    assert stats.generated_tokens > len(target)
    assert len(texts) < stats.generated_tokens


def test_stop_sequence_across_token_boundaries(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "go"}])
    grammar = grammar_for("alpha beta STOP gamma")
    settings = Profile(temperature=0.0, max_tokens=100, stop=("STOP",))
    texts, stats = collect(engine.generate(prompt, settings, grammar=grammar))
    assert "".join(texts) == "alpha beta "
    assert stats.stop_reason == "stop"
    assert not any("S" in t for t in texts), "no partial stop text is emitted"


def test_partial_stop_prefix_is_flushed_at_the_end(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "go"}])
    settings = Profile(temperature=0.0, max_tokens=100, stop=("STOX",))
    texts, _ = collect(engine.generate(prompt, settings, grammar=grammar_for("one STO")))
    assert "".join(texts) == "one STO"


def test_max_tokens_and_cancel(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "go"}])
    _, stats = collect(engine.generate(prompt, Profile(temperature=0.0, max_tokens=5)))
    assert (stats.generated_tokens, stats.stop_reason) == (5, "length")
    calls = iter(range(100))
    _, stats = collect(
        engine.generate(prompt, Profile(max_tokens=50), cancel=lambda: next(calls) >= 2)
    )
    assert (stats.generated_tokens, stats.stop_reason) == (3, "cancelled")


def test_penalties_change_what_greedy_decoding_picks(engine: Engine) -> None:
    prompt = engine.render([{"role": "user", "content": "repeat"}])
    plain = Profile(temperature=0.0, max_tokens=48)
    base = collect(engine.generate(prompt, plain))[0]
    freq = collect(engine.generate(prompt, plain.replace(frequency_penalty=2.0)))[0]
    pres = collect(engine.generate(prompt, plain.replace(presence_penalty=2.0)))[0]
    assert "".join(freq) != "".join(base)
    assert "".join(pres) != "".join(base)
    # Penalised decoding repeats itself less: more distinct characters.
    assert len(set("".join(freq))) >= len(set("".join(base)))


def test_kv_cache_prefix_is_reused(engine: Engine) -> None:
    history = [{"role": "user", "content": "first question about a long topic"}]
    prompt = engine.render(history)
    collect(engine.generate(prompt, GREEDY))
    longer = engine.render(
        [*history, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}]
    )
    _, stats = collect(engine.generate(longer, GREEDY))
    assert stats.cached_tokens >= len(engine.tokenize(prompt)) - 1
    assert stats.evaluated_prompt_tokens < stats.prompt_tokens


def test_prompt_longer_than_context_is_a_usage_error(tiny_model: Path) -> None:
    with load(tiny_model, n_ctx=64) as eng, pytest.raises(UsageError, match="context holds"):
        list(eng.generate("word " * 200, GREEDY))


def test_base_model_renders_plain_text(tiny_base_model: Path) -> None:
    with load(tiny_base_model) as eng:
        assert not eng.is_chat_model
        assert eng.render([{"role": "user", "content": "Once upon"}]) == "Once upon"


def test_missing_and_garbage_files_are_invalid_models(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError):
        load(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(InvalidModelError):
        load(junk)


def run_matcher(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out, hit = [], False
    for c in chunks:
        text, hit = m.feed(c)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    return "".join(out), hit


@given(
    text=st.text(alphabet="abST OP", max_size=40),
    stops=st.lists(st.text(alphabet="abST OP", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_stop_matcher_is_independent_of_chunking(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    whole = run_matcher(stops, [text])
    assert run_matcher(stops, chunks) == whole
    # the stop complete first (the earliest end; at the same end, the earliest start) wins
    ends = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in stops) if i >= 0]
    assert whole == ((text[: min(ends)[1]], True) if ends else (text, False))


def test_a_stop_complete_first_wins_over_a_longer_one_that_started_earlier() -> None:
    """Found by the property above: with stops "O" and "POO", "POO" streamed as "PO" + "O"
    stopped at "P" but whole at "" (the earliest start). A stream cannot wait to see whether a
    longer stop completes, so the stop complete first wins either way."""
    assert run_matcher(["O", "POO"], ["POO"]) == ("P", True)
    assert run_matcher(["O", "POO"], ["PO", "O"]) == ("P", True)
    assert run_matcher(["OO", "POO"], ["POO"]) == ("", True)  # same end: the earlier start
    assert run_matcher(["b", "ab"], ["xab"]) == ("x", True)


def test_a_renewed_context_is_empty_of_the_size_asked_and_decodes_the_same(
    tiny_model: Path,
) -> None:
    """``localllm bench`` runs each test in a context sized for it (``renew_context``)."""
    eng = load(tiny_model, n_ctx=512)
    fresh = load(tiny_model, n_ctx=128)
    try:
        list(eng.generate("hello there", GREEDY))
        assert eng.n_kv > 0
        eng.renew_context(128)
        assert eng.n_kv == 0
        assert eng.n_ctx == fresh.n_ctx < 512  # llama.cpp may pad 128 (to 256 here)
        renewed, _ = collect(eng.generate("hello there", GREEDY))
        expected, _ = collect(fresh.generate("hello there", GREEDY))
        assert renewed == expected
    finally:
        eng.close()
        fresh.close()


def test_a_failed_decode_leaves_the_cache_as_the_engine_records_it(tiny_model: Path) -> None:
    """A chunk llama.cpp cannot place (the context is full) fails; what the cache holds then
    is exactly ``kv_tokens``, so the next prompt reuses it and decodes as a fresh engine."""
    from localllm.errors import InferenceError

    eng = load(tiny_model, n_ctx=64)
    fresh = load(tiny_model, n_ctx=64)
    try:
        tokens = eng.tokenize("word " * 100, add_bos=False)
        n_ctx = eng.n_ctx
        with pytest.raises(InferenceError, match="llama_decode failed"):
            eng.evaluate(tokens[: n_ctx + 8])
        kept = list(eng.kv_tokens)
        assert 0 < len(kept) <= n_ctx and kept == tokens[: len(kept)]
        assert eng.n_kv == len(kept)
        prompt = eng.detokenize(tokens[:12])
        again, stats = collect(eng.generate(prompt, GREEDY))
        expected, _ = collect(fresh.generate(prompt, GREEDY))
        assert again == expected and stats.cached_tokens > 0
    finally:
        eng.close()
        fresh.close()

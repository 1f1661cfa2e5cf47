"""promptcache.PromptCache on the real starter model: clients that take turns on one context find
their earlier prompt's KV state again, and greedy output does not change."""

from __future__ import annotations

from pathlib import Path

import pytest

from localllm.engine import Engine, LoadOptions, Stats
from localllm.profiles import Profile
from localllm.promptcache import PromptCache

GREEDY = Profile(temperature=0.0, max_tokens=12, seed=0)


@pytest.fixture(scope="module")
def engine(starter_model: Path):
    eng = Engine(starter_model, LoadOptions(n_ctx=1024, n_threads=2, n_gpu_layers=0))
    yield eng
    eng.close()


def answer(engine: Engine, question: str) -> tuple[str, Stats]:
    prompt = engine.render([{"role": "user", "content": question}])
    texts, stats = [], None
    for event in engine.generate(prompt, GREEDY):
        if isinstance(event, Stats):
            stats = event
        else:
            texts.append(event.text)
    assert stats is not None
    return "".join(texts), stats


A = "Alice asks: name three colours of the rainbow, please."
B = "Bob asks: what is the capital city of France?"


def test_alternating_prompts_restore_their_state_with_identical_output(engine: Engine) -> None:
    engine.prompt_cache = None
    engine.reset()
    fresh_a, _ = answer(engine, A)
    engine.reset()
    fresh_b, _ = answer(engine, B)

    engine.reset()
    cache = engine.prompt_cache = PromptCache(64 * 1024 * 1024)
    try:
        first_a, _ = answer(engine, A)
        first_b, stats_b = answer(engine, B)
        again_a, stats_a = answer(engine, A)
        again_b, stats_b2 = answer(engine, B)
    finally:
        engine.prompt_cache = None
    assert (first_a, first_b, again_a, again_b) == (fresh_a, fresh_b, fresh_a, fresh_b)
    assert cache.hits == 2
    # the prompt's every token but the last came from the restored state
    assert stats_a.cached_tokens == stats_a.prompt_tokens - 1
    assert stats_b2.cached_tokens == stats_b2.prompt_tokens - 1
    assert stats_b.cached_tokens < stats_b.prompt_tokens - 5  # B's first time: only the prefix


def test_without_room_nothing_is_kept(engine: Engine) -> None:
    engine.reset()
    cache = engine.prompt_cache = PromptCache(1024)  # smaller than any state
    try:
        answer(engine, A)
        answer(engine, B)
        _, stats = answer(engine, A)
    finally:
        engine.prompt_cache = None
    assert cache.entries == [] and cache.hits == 0
    assert stats.cached_tokens < stats.prompt_tokens - 5


def test_least_recently_used_state_goes_first(engine: Engine) -> None:
    engine.reset()
    cache = engine.prompt_cache = PromptCache(64 * 1024 * 1024)
    try:
        answer(engine, A)
        answer(engine, B)  # A's state saved
        one = cache.entries[0][1]
        cache.limit_bytes = len(one) + len(one) // 2  # room for one state of this size
        answer(engine, "Carol asks: how many legs does a spider have?")  # B's replaces A's
        _, stats = answer(engine, A)
    finally:
        engine.prompt_cache = None
    assert cache.hits == 0
    assert stats.cached_tokens < stats.prompt_tokens - 5
    assert len(cache.entries) == 1

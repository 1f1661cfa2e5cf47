"""Prompt-lookup (n-gram) speculative decoding: the same tokens as plain decoding, fewer
decodes. Each case runs plain and speculative generation side by side on the real engine.

Grammars force the tiny random models to write text that their prompt contains (so drafts
are proposed) or that leaves it (so drafts are rejected), which makes every rejection path
reachable on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from localllm.engine import Engine, LoadOptions, Stats, Steering, TextEvent
from localllm.errors import UsageError
from localllm.profiles import Profile
from localllm.speculative import NgramDrafter

PASSAGE = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    eng = Engine(tiny_model, LoadOptions(n_ctx=1024, n_threads=1, n_gpu_layers=0))
    yield eng
    eng.close()


def literal(text: str) -> str:
    return 'root ::= "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(engine: Engine, prompt: str, settings: Profile, inject_at: int | None = None, **kw):
    """(events' texts, stats, the KV cache's tokens afterwards); a fresh cache each time."""
    engine.reset()
    steering = Steering()
    texts: list[tuple[str, bool]] = []
    stats = None
    for event in engine.generate(prompt, settings, steering=steering, **kw):
        if isinstance(event, TextEvent):
            texts.append((event.text, event.injected))
            if inject_at is not None and len(texts) == inject_at:
                steering.inject("</think>")
        else:
            stats = event
    assert isinstance(stats, Stats)
    return texts, stats, engine.kv_tokens


def both(engine: Engine, prompt: str, settings: Profile, **kw):
    plain = generate(engine, prompt, settings.replace(speculative="off"), **kw)
    spec = generate(engine, prompt, settings.replace(speculative="ngram"), **kw)
    assert spec[0] == plain[0], "speculation changed the text"
    assert spec[1].generated_tokens == plain[1].generated_tokens
    assert spec[1].stop_reason == plain[1].stop_reason
    assert spec[2] == plain[2], "speculation left a different KV cache"
    assert plain[1].drafted_tokens == 0
    return plain, spec


def prompt_with(engine: Engine, text: str) -> str:
    return engine.render([{"role": "user", "content": f"Copy this: {text}\n{text}"}])


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_drafts_that_match_are_accepted_and_change_nothing(
    engine: Engine, temperature: float
) -> None:
    prompt = prompt_with(engine, PASSAGE)
    settings = Profile(temperature=temperature, seed=11, max_tokens=200)
    _, spec = both(engine, prompt, settings, grammar=literal(PASSAGE))
    stats = spec[1]
    assert stats.drafted_tokens > 0
    assert stats.accepted_tokens > stats.generated_tokens // 3


def test_free_running_greedy_and_seeded_sampling_are_identical(engine: Engine) -> None:
    prompt = prompt_with(engine, PASSAGE + " " + PASSAGE)
    for settings in (
        Profile(temperature=0.0, max_tokens=96),
        Profile(temperature=0.8, seed=5, max_tokens=96, repeat_penalty=1.1),
    ):
        both(engine, prompt, settings)


def test_a_draft_entirely_wrong_is_rejected(engine: Engine) -> None:
    # The prompt continues "alpha beta" with "gamma delta ...", the grammar with "omega".
    prompt = prompt_with(engine, PASSAGE)
    forced = "alpha beta omega omega alpha beta omega omega alpha beta omega"
    _, spec = both(
        engine, prompt, Profile(temperature=0.0, max_tokens=200), grammar=literal(forced)
    )
    assert spec[1].drafted_tokens > spec[1].accepted_tokens


def test_a_draft_partially_right_keeps_its_accepted_prefix(engine: Engine) -> None:
    prompt = prompt_with(engine, PASSAGE)
    forced = "alpha beta gamma delta OMEGA zeta eta theta iota kappa XX mu"
    _, spec = both(
        engine, prompt, Profile(temperature=0.0, max_tokens=200), grammar=literal(forced)
    )
    stats = spec[1]
    assert 0 < stats.accepted_tokens < stats.drafted_tokens


def test_a_stop_string_inside_a_draft(engine: Engine) -> None:
    prompt = prompt_with(engine, PASSAGE)
    settings = Profile(temperature=0.0, max_tokens=200, stop=("iota",))
    _, spec = both(engine, prompt, settings, grammar=literal(PASSAGE))
    assert "".join(t for t, _ in spec[0]) == PASSAGE.split("iota")[0]
    assert spec[1].stop_reason == "stop"
    assert spec[1].drafted_tokens > 0


@pytest.mark.parametrize("max_tokens", [1, 3, 7, 12])
def test_max_tokens_inside_a_draft(engine: Engine, max_tokens: int) -> None:
    prompt = prompt_with(engine, PASSAGE)
    settings = Profile(temperature=0.0, max_tokens=max_tokens)
    _, spec = both(engine, prompt, settings, grammar=literal(PASSAGE))
    assert spec[1].generated_tokens == max_tokens
    assert spec[1].stop_reason == "length"


@pytest.mark.parametrize("inject_at", [2, 5, 9])
def test_an_injected_close_inside_a_draft(engine: Engine, inject_at: int) -> None:
    """The reasoning budget's injected </think> lands while accepted draft tokens are still
    in the cache: the rest of the draft is dropped and the injection comes first."""
    prompt = prompt_with(engine, PASSAGE)
    settings = Profile(temperature=0.0, max_tokens=40)
    _, spec = both(engine, prompt, settings, inject_at=inject_at)
    assert any(injected for _, injected in spec[0])
    assert "</think>" in Engine.detokenize(engine, spec[2], special=True)


def test_interrupt_during_a_verified_draft_leaves_a_usable_engine(engine: Engine) -> None:
    """Ctrl-C between the tokens of a verified batch: the cache is dropped (it may hold
    unverified drafts), and the next generation is as if nothing happened."""
    prompt = prompt_with(engine, PASSAGE)
    settings = Profile(temperature=0.0, max_tokens=200, speculative="ngram")
    calls = 0

    def interrupt() -> bool:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise KeyboardInterrupt
        return False

    engine.reset()
    with pytest.raises(KeyboardInterrupt):
        for _ in engine.generate(prompt, settings, cancel=interrupt, grammar=literal(PASSAGE)):
            pass
    assert engine.kv_tokens == []
    again = [e for e in engine.generate(prompt, settings, grammar=literal(PASSAGE))]
    assert "".join(e.text for e in again if isinstance(e, TextEvent)) == PASSAGE


def test_cancel_inside_a_draft_stops_at_that_token(engine: Engine) -> None:
    prompt = prompt_with(engine, PASSAGE)
    runs = []
    for mode in ("off", "ngram"):
        calls = iter(range(100))
        settings = Profile(temperature=0.0, max_tokens=100, speculative=mode)
        runs.append(
            generate(
                engine,
                prompt,
                settings,
                grammar=literal(PASSAGE),
                cancel=lambda c=calls: next(c) >= 6,
            )
        )
    (plain_text, plain, plain_kv), (spec_text, spec, spec_kv) = runs
    assert spec_text == plain_text and spec_kv == plain_kv
    assert spec.stop_reason == plain.stop_reason == "cancelled"
    assert spec.generated_tokens == plain.generated_tokens == 7
    assert spec.drafted_tokens > 0


def test_auto_drafts_only_for_long_prompts(engine: Engine) -> None:
    short = prompt_with(engine, PASSAGE)
    _, stats, _ = generate(
        engine,
        short,
        Profile(temperature=0.0, max_tokens=40, speculative="auto"),
        grammar=literal(PASSAGE),
    )
    assert stats.drafted_tokens == 0
    long = prompt_with(engine, " ".join([PASSAGE] * 3))
    _, stats, _ = generate(
        engine,
        long,
        Profile(temperature=0.0, max_tokens=60, speculative="auto"),
        grammar=literal(PASSAGE),
    )
    assert stats.drafted_tokens > 0


def test_drafting_turns_itself_off_when_drafts_keep_failing() -> None:
    drafter = NgramDrafter([1, 2, 3, 1, 2, 3, 1, 2])
    assert drafter.draft(4) == [3, 1, 2]
    assert drafter.keep_going(drafted=16, accepted=0)  # too early to judge
    assert not drafter.keep_going(drafted=40, accepted=5)
    assert drafter.keep_going(drafted=40, accepted=40) is False  # off stays off


def test_the_drafter_prefers_the_longest_and_latest_match() -> None:
    drafter = NgramDrafter([7, 1, 2, 9, 9, 5, 1, 2, 8, 8, 3, 1, 2])
    # "1 2" occurred twice before; the latest continues with 8 8; no 3-gram "3 1 2" before
    assert drafter.draft(2) == [8, 8]
    drafter.extend([4])
    assert drafter.draft(3) == []


def test_the_drafter_follows_the_passage_being_copied() -> None:
    """Two functions share a block longer than any n-gram; while the answer copies the
    second, the n-gram at the block's end last occurred in the answer's copy of the first
    (followed by 20), but the passage being copied goes on with 21."""
    block = [1, 2, 3, 4, 5]
    prompt = [10, 11, *block, 20, 12, 13, *block, 21]
    drafter = NgramDrafter([*prompt, 10, 11, *block, 20, 12, 13])
    assert drafter.draft(2) == [1, 2]  # looked up: the prompt's second function
    drafter.extend([1, 2, 3])  # both accepted, and the next token
    assert drafter.draft(1) == [4]
    drafter.extend([4, 5])
    assert drafter.draft(2) == [21, 10]  # "2 3 4 5" last came before 20


def test_the_drafter_picks_a_passage_up_again_after_a_respelt_token() -> None:
    """The answer writes the passage's 35 as another token (99, say "\n\n" for "\n" "\n");
    after its next token, which the passage has, drafting goes on from there."""
    passage = list(range(30, 42))
    drafter = NgramDrafter([*passage, 30, 31, 32, 33])
    assert drafter.draft(4) == [34, 35, 36, 37]
    drafter.extend([34, 99])  # 34 accepted, then the answer's own token
    assert drafter.draft(4) == []  # 99 occurs nowhere before
    drafter.extend([36])
    assert drafter.draft(4) == [37, 38, 39, 40]


def test_speculative_equals_plain_on_the_starter_model(starter_model: Path) -> None:
    text = (
        "Rewrite this code, renaming `area` to `rectangle_area`. Output only the code.\n\n"
        "def area(width, height):\n"
        '    """Return the area of a rectangle."""\n'
        "    if width < 0 or height < 0:\n"
        '        raise ValueError("width and height must be positive")\n'
        "    return width * height\n\n\n"
        "def perimeter(width, height):\n"
        '    """Return the perimeter of a rectangle."""\n'
        "    if width < 0 or height < 0:\n"
        '        raise ValueError("width and height must be positive")\n'
        "    return 2 * (width + height)\n"
    )
    with Engine(starter_model, LoadOptions(n_ctx=1024, n_threads=1, n_gpu_layers=0)) as eng:
        prompt = eng.render([{"role": "user", "content": text}])
        _, spec = both(eng, prompt, Profile(temperature=0.0, max_tokens=120, repeat_penalty=1.0))
        assert spec[1].accepted_tokens > 20


# -- draft-model speculation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_weights(model_dir: Path) -> Path:
    """Same vocabulary as tiny_model, different random weights: drafts are often wrong."""
    from ggufgen import write_tiny_gguf

    return write_tiny_gguf(model_dir / "tiny-draft-seed1.gguf", seed=1, name="tiny-draft")


def with_draft(main: Path, draft: Path) -> Engine:
    options = LoadOptions(n_ctx=1024, n_threads=1, n_gpu_layers=0)
    eng = Engine(main, options)
    eng.attach_draft(Engine(draft, options))
    return eng


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_draft_model_with_the_same_weights_is_always_right(
    engine: Engine, tiny_model: Path, tiny_base_model: Path, temperature: float
) -> None:
    """tiny_base_model has tiny_model's vocabulary and weights: every greedy draft matches."""
    prompt = engine.render([{"role": "user", "content": "anything"}])
    settings = Profile(temperature=temperature, seed=3, max_tokens=48)
    plain = generate(engine, prompt, settings.replace(speculative="off"))
    with with_draft(tiny_model, tiny_base_model) as eng:
        spec = generate(eng, prompt, settings)
    assert spec[0] == plain[0] and spec[2] == plain[2]
    assert spec[1].drafted_tokens > 0
    if temperature == 0.0:
        assert spec[1].accepted_tokens == spec[1].drafted_tokens


def test_a_draft_model_that_guesses_wrong_changes_nothing(
    engine: Engine, tiny_model: Path, other_weights: Path
) -> None:
    prompt = engine.render([{"role": "user", "content": "anything at all"}])
    for settings in (
        Profile(temperature=0.0, max_tokens=48),
        Profile(temperature=0.8, seed=9, max_tokens=48, stop=("e",)),
    ):
        plain = generate(engine, prompt, settings.replace(speculative="off"))
        with with_draft(tiny_model, other_weights) as eng:
            spec = generate(eng, prompt, settings)
        assert spec[0] == plain[0] and spec[1].stop_reason == plain[1].stop_reason
        assert spec[2] == plain[2]


def test_a_draft_model_with_another_vocabulary_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from ggufgen import spm_vocab, write_tiny_gguf

    from localllm import loading

    spm = write_tiny_gguf(tmp_path / "spm.gguf", vocab=spm_vocab())
    with pytest.raises(UsageError, match=r"draft model spm\.gguf") as info:
        loading.open_engine(tiny_model, Profile(draft_model=str(spm)))
    assert info.value.hint and "tokenizer" in info.value.hint


def test_run_with_a_draft_model_reports_drafted_tokens(
    tiny_model: Path, tiny_base_model: Path
) -> None:
    import subprocess
    import sys

    args = ["run", "-m", str(tiny_model), "--draft-model", str(tiny_base_model), "hi"]
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", *args, "-n", "24", "--temperature", "0", "--stats"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "drafted" in proc.stderr and "accepted" in proc.stderr


def test_no_draft_while_verifying_is_slower_than_decoding() -> None:
    """The durations are given (no clock in the test). Drafting waits for one timed plain
    decode; then, where a verify batch costs more than decoding its tokens one by one (a CPU
    at one thread), ``auto`` (pause) decodes plainly and drafts once every PROBE_EVERY tokens
    to measure again, even while every draft is accepted; where a batch is cheap it drafts
    every time. ``ngram`` (no pause) always drafts."""
    slow = NgramDrafter([1, 2, 1, 2], size=16, adaptive=True, pause=True)
    assert slow.draft_size() == 0  # nothing to compare a batch with yet
    slow.timed_single(0.010)
    for _ in range(10):  # a batch of 2 costs 2.3 decodes and yields 2 tokens
        slow.timed_batch(0.023, 2)
        slow.verified(1, 1)
    sizes = [slow.draft_size() for _ in range(3 * NgramDrafter.PROBE_EVERY)]
    assert sizes.count(0) == len(sizes) - 3, sizes
    assert all(size >= 1 for size in sizes if size), sizes
    forced = NgramDrafter([1, 2, 1, 2], size=16, adaptive=True)
    assert forced.draft_size() == 0
    forced.timed_single(0.010)
    for _ in range(10):
        forced.timed_batch(0.023, 2)
        forced.verified(1, 1)
    assert all(forced.draft_size() >= 1 for _ in range(3 * NgramDrafter.PROBE_EVERY))
    fast = NgramDrafter([1, 2, 1, 2], size=16, adaptive=True, pause=True)
    fast.timed_single(0.010)
    for _ in range(10):  # a batch of 5 costs 2 decodes and yields 5 tokens
        fast.timed_batch(0.020, 5)
        fast.verified(4, 4)
    assert all(fast.draft_size() >= 4 for _ in range(3 * NgramDrafter.PROBE_EVERY))


def test_adaptive_draft_length_follows_acceptance_and_batch_cost() -> None:
    """The draft length is the one that yields the most tokens per unit of time: long while
    drafts are accepted whole and a batch is cheap, short when they fail or a batch costs
    about one decode per token."""
    copying = NgramDrafter([1, 2, 1, 2], size=16, adaptive=True)
    copying.timed_single(0.010)
    for _ in range(10):
        copying.timed_batch(0.014, 9)  # 8 drafted tokens for 1.4 decodes
        copying.verified(8, 8)
    assert copying.draft_size() >= 12
    failing = NgramDrafter([1, 2, 1, 2], size=16, adaptive=True)
    failing.timed_single(0.010)
    for _ in range(10):
        failing.timed_batch(0.080, 9)  # a batch costs almost a decode per token
        failing.verified(0, 8)
    assert failing.draft_size() <= 2
    fixed = NgramDrafter([1, 2, 1, 2], size=8)  # not adaptive: the size given
    fixed.timed_single(0.010)
    fixed.timed_batch(0.080, 9)
    fixed.verified(0, 8)
    assert fixed.draft_size() == 8


def test_a_passage_whose_first_draft_failed_is_not_picked_up_again() -> None:
    """In free text a short n-gram ("is a") finds some passage; when its first draft is
    rejected outright the answer was never copying it, and a common token near it later
    ("the") must not start drafts from it again."""
    prompt = [10, 11, 12, 13, 14, 15, 16, 17]
    drafter = NgramDrafter([*prompt, 50, 51, 11, 12])  # the answer ends with "11 12"
    assert drafter.draft(4) == [13, 14, 15, 16]
    drafter.extend([60, 61, 14])  # 13 rejected; later a token the passage has nearby
    assert drafter.draft(4) == []

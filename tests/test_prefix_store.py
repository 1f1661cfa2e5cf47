"""promptcache.PrefixStore: the KV state of the part of a prompt that no user's words shape
(the chat template's opening, the system prompt) kept on disk, so a fresh ``run`` reads it
instead of evaluating it. On the real starter model, through the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localllm import paths
from localllm.cli import app
from localllm.engine import Engine, LoadOptions, Stats
from localllm.profiles import Profile
from localllm.promptcache import PrefixStore
from localllm.session import ChatSession

runner = CliRunner()


def run_json(model: Path, prompt: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    args = ["run", "-m", str(model), prompt, "--temperature", "0", "-n", "16", "--json", *extra]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored() -> list[Path]:
    folder = paths.prefix_cache_dir()
    return sorted(folder.glob("*.kv")) if folder.is_dir() else []


def test_a_second_run_reads_the_template_prefix_and_answers_the_same(starter_model: Path) -> None:
    first = run_json(starter_model, "Name a colour.")
    assert first["stats"]["cached_tokens"] == 0  # evaluated here, not read
    files = stored()
    assert len(files) == 1
    second = run_json(starter_model, "Name a colour.")
    cached = second["stats"]["cached_tokens"]
    # the default system prompt and the template's opening, but no word of the message
    assert 15 <= cached < second["stats"]["prompt_tokens"] - 3
    assert second["text"] == first["text"]
    assert stored() == files


def test_the_users_words_never_reach_the_disk(starter_model: Path) -> None:
    secret = "My locker code is 4417; what rhymes with orange?"
    run_json(starter_model, secret)
    other = run_json(starter_model, "Say hi.")
    assert other["stats"]["cached_tokens"] > 0  # the same prefix file serves both messages
    (only,) = stored()
    engine = Engine(starter_model, LoadOptions(n_ctx=512, n_threads=1, n_gpu_layers=0,
                                               vocab_only=True))  # fmt: skip
    try:
        head = only.read_bytes()
        end = head.index(b"\n", len(PrefixStore.MAGIC))
        saved = json.loads(head[len(PrefixStore.MAGIC) : end])["tokens"]
        text = engine.detokenize(saved, special=True)
    finally:
        engine.close()
    assert "helpful AI assistant" in text  # SmolLM2's default system prompt
    assert text.endswith("<|im_start|>user\n")  # it stops where the message would start
    assert b"4417" not in only.read_bytes()


def test_a_system_prompt_gets_its_own_file(starter_model: Path) -> None:
    run_json(starter_model, "Hello", "--system", "You answer in one word.")
    run_json(starter_model, "Hello", "--system", "You answer in French.")
    assert len(stored()) == 2
    again = run_json(starter_model, "Hello", "--system", "You answer in one word.")
    assert again["stats"]["cached_tokens"] > 0


def test_a_damaged_file_is_evaluated_again_and_replaced(starter_model: Path) -> None:
    fresh = run_json(starter_model, "Name a fruit.")
    (path,) = stored()
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-1000] ^= 0x40  # one bit of a KV cell
    for damage in (b"", b"garbage", good[: len(good) // 2], good[:40] + b"x" + good[41:],
                   bytes(flipped)):  # fmt: skip
        path.write_bytes(damage)
        again = run_json(starter_model, "Name a fruit.")
        assert again["text"] == fresh["text"]
        assert again["stats"]["cached_tokens"] == 0  # read as a miss...
        assert path.read_bytes() == good  # ...and written anew


def test_off_keeps_nothing_and_a_bad_value_is_a_usage_error(starter_model: Path) -> None:
    out = run_json(starter_model, "Hello", env={"LOCALLLM_PREFIX_CACHE": "off"})
    assert out["stats"]["cached_tokens"] == 0 and stored() == []
    out = run_json(starter_model, "Hello", env={"LOCALLLM_PREFIX_CACHE": "0"})
    assert stored() == []
    for bad in ("lots", "-5", "inf", "nan"):
        proc = subprocess.run(
            [sys.executable, "-m", "localllm", "run", "-m", str(starter_model), "Hello"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LOCALLLM_PREFIX_CACHE": bad},
        )
        assert proc.returncode == 2, proc.stderr
        assert f"LOCALLLM_PREFIX_CACHE={bad!r} is not a size" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_model_in_a_child_process_uses_the_store_too(starter_model: Path) -> None:
    env = {"LOCALLLM_ISOLATE": "1"}
    first = run_json(starter_model, "Count to three.", env=env)
    second = run_json(starter_model, "Count to three.", env=env)
    assert (first["stats"]["cached_tokens"], len(stored())) == (0, 1)
    assert second["stats"]["cached_tokens"] > 0
    assert second["text"] == first["text"]


@pytest.fixture
def engine(starter_model: Path):
    eng = Engine(starter_model, LoadOptions(n_ctx=512, n_threads=2, n_gpu_layers=0))
    yield eng
    eng.close()


def chat_once(engine: Engine, system: str, question: str) -> Stats:
    engine.reset()
    session = ChatSession(engine, Profile(temperature=0.0, max_tokens=4, system_prompt=system))
    stats = [e for e in session.send(question) if isinstance(e, Stats)]
    return stats[-1]


def test_least_recently_used_files_go_first_past_the_limit(engine: Engine, tmp_path: Path) -> None:
    store = engine.prefix_store = PrefixStore(tmp_path / "prefixes")
    chat_once(engine, "You are terse.", "Hi")
    (one,) = list(store.folder.glob("*.kv"))
    size = one.stat().st_size
    store.limit_bytes = int(size * 2.5)  # room for two files of about this size
    chat_once(engine, "You are cheerful.", "Hi")
    os.utime(one, ns=(1, 1))  # the oldest by far...
    assert chat_once(engine, "You are terse.", "Hi").cached_tokens > 0  # ...until used again
    chat_once(engine, "You are precise and formal.", "Hi")
    names = {p.name for p in store.folder.glob("*.kv")}
    assert one.name in names and len(names) == 2  # the cheerful one went
    assert store.hits == 1 and store.saves == 3


def test_a_cache_with_tokens_already_in_it_is_left_alone(engine: Engine, tmp_path: Path) -> None:
    store = engine.prefix_store = PrefixStore(tmp_path / "prefixes")
    session = ChatSession(engine, Profile(temperature=0.0, max_tokens=4))
    list(session.send("Hi"))
    assert store.saves == 1
    list(session.send("And again?"))  # the second turn continues from the KV cache
    assert store.saves == 1 and store.hits == 0


def test_an_unwritable_folder_costs_only_the_store(engine: Engine, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    engine.prefix_store = PrefixStore(blocker / "prefixes")
    stats = chat_once(engine, "You are terse.", "Hi")
    assert stats.generated_tokens > 0 and stats.stop_reason == "length"

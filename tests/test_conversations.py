"""Saved conversations: append-only JSONL files, crash tolerance, list/rename/delete/export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ptyrun import in_a_terminal

from localllm import conversations
from localllm.conversations import Conversation
from localllm.errors import UsageError
from localllm.paths import conversations_dir


def _chat() -> Conversation:
    conversation = Conversation.new({"model": "tiny", "profile": "default", "mode": "instant"})
    conversation.add_message("user", "What is 2+2?")
    conversation.add_message("assistant", "4", stats={"generated_tokens": 1})
    return conversation


def test_no_file_until_the_first_message() -> None:
    conversation = Conversation.new({"model": "tiny"})
    conversation.set_settings(profile="precise")
    assert not conversation.path.exists()
    assert conversations.list_conversations() == []
    conversation.add_message("user", "hi")
    assert conversation.path.parent == conversations_dir()
    loaded = conversations.load(conversation.id)
    assert loaded.settings == {"model": "tiny", "profile": "precise"}


def test_round_trip_and_history() -> None:
    conversation = _chat()
    loaded = conversations.load(conversation.id)
    assert [m["content"] for m in loaded.messages] == ["What is 2+2?", "4"]
    assert loaded.messages[1]["stats"] == {"generated_tokens": 1}
    assert loaded.history() == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert loaded.settings["model"] == "tiny"
    assert loaded.display_title == "What is 2+2?"


def test_the_file_is_only_appended_to() -> None:
    conversation = _chat()
    before = conversation.path.read_bytes()
    conversation.rename("Sums")
    conversation.set_settings(profile="precise")
    conversation.set_settings(profile="precise")  # unchanged: nothing written
    after = conversation.path.read_bytes()
    assert after.startswith(before)
    records = [json.loads(line) for line in after.decode().splitlines()]
    assert [r["type"] for r in records] == [
        "conversation",
        "settings",
        "message",
        "message",
        "title",
        "settings",
    ]
    loaded = conversations.load(conversation.id)
    assert loaded.title == "Sums"
    assert loaded.settings["profile"] == "precise"


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line() -> None:
    conversation = _chat()
    with open(conversation.path, "ab") as f:
        f.write(b'{"type": "message", "role": "user", "content": "half')
    loaded = conversations.load(conversation.id)
    assert loaded.skipped_lines == 1
    assert len(loaded.messages) == 2
    loaded.add_message("user", "again")
    reread = conversations.load(conversation.id)
    assert [m["content"] for m in reread.messages][-1] == "again"
    assert reread.skipped_lines == 1


def test_an_unanswered_question_is_left_out_of_the_history() -> None:
    conversation = _chat()
    conversation.add_message("user", "lost to a crash")
    conversation.add_message("user", "asked again")
    conversation.add_message("assistant", "answer", reasoning="thought", stopped=True)
    history = conversations.load(conversation.id).history()
    assert [m["content"] for m in history] == ["What is 2+2?", "4", "asked again", "answer"]
    assert history[-1]["reasoning"] == "thought"


def test_list_newest_first_and_delete() -> None:
    first = _chat()
    second = Conversation.new({"model": "other"})
    second.add_message("user", "second one")
    os.utime(first.path, (1, 1))
    listed = conversations.list_conversations()
    assert [s.id for s in listed] == [second.id, first.id]
    assert listed[0].title == "second one" and listed[0].model == "other"
    assert listed[1].messages == 2
    conversations.delete(first.id)
    assert [s.id for s in conversations.list_conversations()] == [second.id]
    with pytest.raises(UsageError):
        conversations.delete(first.id)


def test_ids_cannot_escape_the_folder() -> None:
    with pytest.raises(UsageError):
        conversations.load("../../etc/passwd")
    with pytest.raises(UsageError):
        conversations.delete("../x")


def test_export_markdown(tmp_path: Path) -> None:
    conversation = _chat()
    conversation.add_message("user", "Think first")
    conversation.add_message("assistant", "Done.", reasoning="hmm", stopped=True)
    conversation.set_settings(system_prompt="Be brief.")
    target = conversations.export_markdown(conversation, tmp_path)
    assert target == tmp_path / "what-is-2-2.md"
    text = target.read_text()
    assert text.startswith("# What is 2+2?\n")
    assert "Model: tiny" in text and "## System\n\nBe brief." in text
    assert "## You\n\nWhat is 2+2?" in text and "## Assistant · instant\n\n4" in text
    assert "<summary>Reasoning</summary>" in text and "*(stopped)*" in text
    named = conversations.export_markdown(conversation, tmp_path / "out" / "chat.md")
    assert named.read_text() == text


def test_the_export_names_each_answers_mode(tmp_path: Path) -> None:
    conversation = Conversation.new({"model": "tiny", "mode": "instant"})
    conversation.add_message("user", "first")
    with open(conversation.path, "a") as f:  # as written before answers recorded their mode
        f.write('{"type": "message", "role": "assistant", "content": "quick"}\n')
    conversation.set_settings(mode="reasoning")
    conversation.add_message("user", "second")
    conversation.add_message("assistant", "slow", reasoning="hmm", mode="reasoning")
    conversation.set_settings(mode="instant")  # the mode now is not the mode then
    text = conversations.load(conversation.id).to_markdown()
    header = text.split("## You", 1)[0]
    assert "Mode:" not in header and "instant" not in header
    assert "## Assistant · instant\n\nquick" in text
    assert "## Assistant · reasoning\n\n<details>" in text
    assert text.count("## Assistant") == 2


def test_long_first_question_makes_a_short_title() -> None:
    conversation = Conversation.new()
    conversation.add_message("user", "word " * 40)
    assert len(conversation.display_title) <= 60
    assert conversation.display_title.endswith("…")


def test_chat_resume_of_an_unknown_id_is_refused_before_the_screen_opens(
    tiny_model: Path,
) -> None:
    """`localllm chat --resume TYPO` in a terminal: one error line, exit 2, and no app that
    opens only to show an error; a malformed id is refused the same way."""
    proc = in_a_terminal("chat", "-m", str(tiny_model), "--resume", "20990101-000000-abcd")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: no saved conversation '20990101-000000-abcd'")
    assert "Ctrl+L" in lines[0]
    proc = in_a_terminal("chat", "--resume", "../../etc/passwd")
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert "is not a conversation id" in proc.stderr

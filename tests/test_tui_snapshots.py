"""Snapshot tests of the chat app's screens (pytest-textual-snapshot).

Deterministic by construction: fixed conversation content (nothing generated), a user profile
that keeps the model on the CPU, timings left out of the status bar, cursors not blinking.
Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from localllm import conversations, store
from localllm.profiles import Profile, load_profile, save_user_profile
from localllm.tui.app import ChatApp
from localllm.tui.widgets.messages import AssistantMessage
from localllm.tui.widgets.status import StatusBar

SIZE = (100, 30)

ANSWER = """Here is a function that adds two numbers:

```python
def add(a: int, b: int) -> int:
    return a + b
```

- it takes **two** integers
- it returns their sum"""


def _profile() -> Profile:
    save_user_profile(
        {"temperature": 0.0, "max_tokens": 64, "gpu_layers": 0, "seed": 1, "mode": "instant"},
        "snap",
    )
    return load_profile("snap")


def _install(model: Path, name: str, quant: str | None, size: int) -> Path:
    manifest = store.Manifest(name=name, files=[model.name], size=size, quant=quant)
    manifest.folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, manifest.folder / model.name)
    store.save_manifest(manifest)
    return manifest.primary


async def _ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    deadline = time.monotonic() + 60
    bar = app._chat_screen().query_one(StatusBar)
    while app.state.model_path is None or app.state.loading or bar.status.ctx_used is None:
        assert time.monotonic() < deadline, "the model did not load"
        await pilot.pause(0.05)
    await pilot.pause()


def _still(pilot: Pilot[Any]) -> None:
    for widget in pilot.app.screen.query("Input, TextArea"):
        assert isinstance(widget, (Input, TextArea))
        widget.cursor_blink = False


@pytest.fixture
def installed_tiny(tiny_model: Path) -> Path:
    return _install(tiny_model, "tiny-chat", "F32", 1_234_567)


def test_chat_screen(snap_compare: Any, installed_tiny: Path) -> None:
    profile = _profile()
    conversation = conversations.Conversation.new(
        {
            "model": "tiny-chat",
            "model_path": str(installed_tiny),
            "profile": "snap",
            "mode": "instant",
        }
    )
    conversation.add_message("user", "Write a Python function that adds two numbers.")
    conversation.add_message("assistant", ANSWER, reasoning="The user wants a tiny function.")
    conversation.add_message("user", "Now explain recursion at length.")
    conversation.add_message("assistant", "Recursion is when a function calls", stopped=True)
    app = ChatApp(None, profile, resume=conversation.id, timings=False)

    async def before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        _still(pilot)
        app.prompt.load_text("What about loops?")

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=before)
    finally:
        app.close_engine()


def test_model_picker(snap_compare: Any, installed_tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    _install(other, "bartowski/Qwen3-1.7B-GGUF:Q4_K_M", "Q4_K_M", 1_282_500_000)
    _install(other, "unsloth/gemma-3-270m-it-GGUF:Q8_0", "Q8_0", 292_000_000)
    app = ChatApp(installed_tiny, _profile(), timings=False)

    async def before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        _still(pilot)

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=before)
    finally:
        app.close_engine()


def test_profile_editor_with_a_refused_value(snap_compare: Any, installed_tiny: Path) -> None:
    app = ChatApp(installed_tiny, _profile(), timings=False)

    async def before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        _still(pilot)
        pilot.app.screen.query_one("#f-temperature", Input).value = "hot"
        await pilot.press("ctrl+s")
        await pilot.pause()
        pilot.app.clear_notifications()

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=before)
    finally:
        app.close_engine()


POEM = """Here is a haiku:

An old silent pond
A frog jumps into the pond
Splash! Silence again.

| line | syllables |
|------|-----------|
| 1    | 5         |

- one list item
  continued on a new line
- two

```
code keeps
  its lines
```"""


def test_single_newlines_are_line_breaks(snap_compare: Any, installed_tiny: Path) -> None:
    """A poem keeps its lines, in the live answer and in an archived one, while the table, the
    list and the code block look as before."""
    conversation = conversations.Conversation.new(
        {"model": "tiny-chat", "model_path": str(installed_tiny), "profile": "snap"}
    )
    answers = {
        "A haiku, please.": POEM,
        "A couplet?": "Roses are red,\nviolets are blue.",
        "Once more.": POEM,
    }
    for question, answer in answers.items():
        conversation.add_message("user", question)
        conversation.add_message("assistant", answer)
    app = ChatApp(None, _profile(), resume=conversation.id, timings=False)

    async def before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        _still(pilot)
        # The first answer is archived (pre-rendered), the others live: all keep their lines.
        assert [a.archived for a in app.screen.query(AssistantMessage)] == [True, False, False]

    try:
        assert snap_compare(app, terminal_size=(100, 76), run_before=before)
    finally:
        app.close_engine()


def test_a_message_with_an_image(snap_compare: Any, installed_tiny: Path, tmp_path: Path) -> None:
    """A sent message lists its images (name, format, size); the next one's wait above the
    prompt."""
    import hashlib

    from imagegen import png_bytes

    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes(512, 512, (220, 20, 20)))
    record = {
        "path": str(picture),
        "name": "red.png",
        "size": picture.stat().st_size,
        "sha256": hashlib.sha256(picture.read_bytes()).hexdigest(),
        "label": "red.png (PNG 512×512, 2 KiB)",
    }
    conversation = conversations.Conversation.new(
        {"model": "tiny-chat", "model_path": str(installed_tiny), "profile": "snap"}
    )
    conversation.add_message("user", "What is in this picture?", images=[record])
    conversation.add_message("assistant", "A red square.")
    app = ChatApp(None, _profile(), resume=conversation.id, timings=False)

    async def before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        _still(pilot)
        app.attach(str(picture))
        app.prompt.load_text("And this one?")
        await pilot.pause()
        app.clear_notifications()  # the text-only model's warning

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=before)
    finally:
        app.close_engine()

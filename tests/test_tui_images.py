"""Images in the chat app (#13), driven with Pilot on the tiny vision fixture: a random-weight
projector beside a tiny text model whose embedding size matches (tests/mmprojgen.py).

The image must reach the engine: the answer's prompt tokens include the image's 16 tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ggufgen import write_tiny_gguf
from imagegen import pillow_bytes, png_bytes
from mmprojgen import write_tiny_mmproj
from textual.pilot import Pilot

from localllm import conversations
from localllm.profiles import Profile
from localllm.tui.app import ChatApp
from localllm.tui.screens.images import ImagePicker, ImageTree
from localllm.tui.widgets.messages import AssistantMessage, UserMessage

SIZE = (100, 30)
QUICK = Profile(temperature=0.0, max_tokens=6, gpu_layers=0, seed=1, context_length=512)
IMAGE_TOKENS = 16  # the fixture's 32×32 input in 8×8 patches


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tui-vision")
    write_tiny_gguf(folder / "tiny-vlm.gguf", name="tiny-vlm", n_embd=64)
    write_tiny_mmproj(folder / "mmproj-tiny-vlm-f32.gguf", n_embd_text=64)
    return folder


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "red.png").write_bytes(png_bytes(512, 512, (220, 20, 20)))
    (folder / "blue.png").write_bytes(png_bytes(40, 30, (10, 20, 230)))
    (folder / "green.webp").write_bytes(pillow_bytes([png_bytes(48, 32, (20, 200, 20))], "WEBP"))
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(app: ChatApp, body: Callable[[Pilot[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await body(pilot)
        app.close_engine()

    asyncio.run(main())


async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):  # 60 s at most; each pause lets the app work
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_for(
        pilot, lambda: app.state.model_path is not None and not app.state.loading, "the load"
    )


async def submit(pilot: Pilot[Any], text: str) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    app.prompt.focus()
    app.prompt.load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def answered(pilot: Pilot[Any], count: int) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_for(
        pilot,
        lambda: (
            len(app.screen.query(AssistantMessage)) >= count
            and app.state.turn is None
            and not app.state.turns
            and not app.screen.query(".-streaming")
        ),
        "the answer",
    )


def messages(app: ChatApp) -> list[str]:
    return [n.message for n in app._notifications]


def saved_stats(app: ChatApp) -> list[dict[str, Any]]:
    saved = conversations.load(app.state.conversation.id)
    return [m["stats"] for m in saved.messages if m["role"] == "assistant"]


def test_image_command_attaches_and_the_image_reaches_the_engine(
    vision_dir: Path, pictures: Path
) -> None:
    app = ChatApp(vision_dir / "tiny-vlm.gguf", QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        assert app.state.vision
        await submit(pilot, f"/image {pictures / 'red.png'}")
        assert [a.path.name for a in app.state.attachments] == ["red.png"]
        bar = app.screen.query_one("#attachments")
        assert bar.has_class("-shown") and "red.png" in str(bar.render())
        await submit(pilot, "What is in the picture?")
        await answered(pilot, 1)
        assert app.state.attachments == []  # they went with that message
        assert not app.screen.query_one("#attachments").has_class("-shown")
        shown = app.screen.query(UserMessage).last()
        assert shown.attachments == [f"red.png (PNG 512×512, {_kib(pictures / 'red.png')})"]
        projector = app.session.projector
        assert projector.stats.images == 1 and projector.stats.image_tokens == IMAGE_TOKENS
        first = saved_stats(app)[0]
        assert first["prompt_tokens"] == IMAGE_TOKENS + projector.stats.text_tokens
        # The next turn, text only, keeps the image in the history (and in the KV cache).
        await submit(pilot, "And its colour?")
        await answered(pilot, 2)
        assert projector.stats.encoded == 0 and projector.stats.images == 1
        second = saved_stats(app)[1]
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["generated_tokens"]
        # Saved: the path and sha256 of the image, with the message's text alone.
        saved = conversations.load(app.state.conversation.id)
        question = saved.messages[0]
        assert question["content"] == "What is in the picture?"
        [record] = question["images"]
        assert record["path"] == str((pictures / "red.png").resolve())
        assert record["sha256"] == hashlib.sha256((pictures / "red.png").read_bytes()).hexdigest()
        assert record["size"] == (pictures / "red.png").stat().st_size

    run(app, body)


def _kib(path: Path) -> str:
    size = path.stat().st_size
    return f"{size} B" if size < 1024 else f"{size / 1024:.0f} KiB"


def test_ctrl_a_opens_a_picker_of_image_files(
    vision_dir: Path, pictures: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pictures)
    app = ChatApp(vision_dir / "tiny-vlm.gguf", QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, ImagePicker), "the picker")
        tree = app.screen.query_one(ImageTree)
        await wait_for(pilot, lambda: len(tree.root.children) > 0, "the folder's files")
        names = [node.data.path.name for node in tree.root.children]
        assert names == ["blue.png", "green.webp", "red.png"]  # notes.txt is not an image
        tree.move_cursor(tree.root.children[2])
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, ImagePicker), "the picker")
        assert [a.path.name for a in app.state.attachments] == ["red.png"]
        # Esc closes the picker without attaching anything.
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, ImagePicker), "the picker")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ImagePicker), "the picker")
        assert len(app.state.attachments) == 1
        await submit(pilot, "/image clear")
        assert app.state.attachments == []

    run(app, body)


def test_a_webp_attachment_reaches_the_engine(vision_dir: Path, pictures: Path) -> None:
    app = ChatApp(vision_dir / "tiny-vlm.gguf", QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await submit(pilot, f"/image {pictures / 'green.webp'}")
        assert [a.path.name for a in app.state.attachments] == ["green.webp"]
        await submit(pilot, "What is in the picture?")
        await answered(pilot, 1)
        shown = app.screen.query(UserMessage).last()
        assert shown.attachments[0].startswith("green.webp (WEBP 48×32, ")
        assert app.session.projector.stats.image_tokens == IMAGE_TOKENS
        [record] = conversations.load(app.state.conversation.id).messages[0]["images"]
        assert (
            record["sha256"] == hashlib.sha256((pictures / "green.webp").read_bytes()).hexdigest()
        )

    run(app, body)


def test_bad_attachments_are_notifications(vision_dir: Path, pictures: Path) -> None:
    app = ChatApp(vision_dir / "tiny-vlm.gguf", QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await submit(pilot, f"/image {pictures / 'notes.txt'}")
        await submit(pilot, f"/image {pictures / 'missing.png'}")
        assert app.state.attachments == []
        said = messages(app)
        assert any("not" in m and "notes.txt" in m for m in said), said
        assert any("image not found" in m for m in said), said

    run(app, body)


def test_a_text_only_model_refuses_images_with_a_notification(
    tiny_model: Path, pictures: Path
) -> None:
    app = ChatApp(tiny_model, QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        assert not app.state.vision
        await submit(pilot, f"/image {pictures / 'red.png'}")
        assert any("text-only" in m for m in messages(app))
        await submit(pilot, "Describe it")
        said = messages(app)
        assert any("tiny-chat is a text-only model: it cannot read images" in m for m in said)
        assert app.prompt.text == "Describe it"  # kept, to send again
        assert not app.screen.query(AssistantMessage)  # nothing was sent
        # Without the image, the text goes.
        await submit(pilot, "/image clear")
        await submit(pilot, "Describe it")
        await answered(pilot, 1)
        assert app.screen.query(UserMessage).last().attachments == []

    run(app, body)


def test_resume_warns_when_an_image_changed_or_is_gone(vision_dir: Path, pictures: Path) -> None:
    red, blue = pictures / "red.png", pictures / "blue.png"

    def record(path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        return {
            "path": str(path),
            "name": path.name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "label": f"{path.name} (PNG)",
        }

    conversation = conversations.Conversation.new(
        {"model": "tiny-vlm", "model_path": str(vision_dir / "tiny-vlm.gguf")}
    )
    conversation.add_message("user", "First", images=[record(red)])
    conversation.add_message("assistant", "A red square.")
    conversation.add_message("user", "Second", images=[record(blue), record(red)])
    conversation.add_message("assistant", "Blue and red.")
    blue.unlink()
    red.write_bytes(png_bytes(64, 64, (0, 200, 0)))  # another picture under the same name
    app = ChatApp(None, QUICK, resume=conversation.id)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await wait_for(pilot, lambda: len(app.screen.query(UserMessage)) == 2, "the transcript")
        said = messages(app)
        assert sum("red.png changed since it was sent" in m for m in said) == 2, said
        assert any("blue.png is gone" in m for m in said), said
        shown = app.screen.query(UserMessage)
        assert shown[1].attachments == ["blue.png (PNG)", "red.png (PNG)"]  # as sent
        assert not any(m.get("images") for m in app.state.history)  # none sent again
        await submit(pilot, "Third")
        await answered(pilot, 3)
        assert app.session.projector.stats.images == 0

    run(app, body)


def test_resume_sends_unchanged_images_again(vision_dir: Path, pictures: Path) -> None:
    red = pictures / "red.png"
    data = red.read_bytes()
    conversation = conversations.Conversation.new(
        {"model": "tiny-vlm", "model_path": str(vision_dir / "tiny-vlm.gguf")}
    )
    conversation.add_message(
        "user",
        "First",
        images=[{"path": str(red), "name": "red.png", "sha256": hashlib.sha256(data).hexdigest()}],
    )
    conversation.add_message("assistant", "A red square.")
    app = ChatApp(None, QUICK, resume=conversation.id)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await wait_for(pilot, lambda: len(app.screen.query(UserMessage)) == 1, "the transcript")
        assert not any("changed" in m or "gone" in m for m in messages(app))
        [image] = app.state.history[0]["images"]
        assert image.data == data
        await submit(pilot, "Again?")
        await answered(pilot, 2)
        assert app.session.projector.stats.images == 1  # the old image is in the prompt

    run(app, body)


def test_conversation_history_and_export_keep_the_images(pictures: Path) -> None:
    conversation = conversations.Conversation.new()
    image = {"path": str(pictures / "red.png"), "name": "red.png", "sha256": "0" * 64}
    conversation.add_message("user", "Look", images=[image])
    conversation.add_message("assistant", "Red.")
    again = conversations.load(conversation.id)
    assert again.history() == [
        {"role": "user", "content": "Look", "attachments": [image]},
        {"role": "assistant", "content": "Red."},
    ]
    assert "*(image: red.png)*" in again.to_markdown()


def test_a_projector_that_does_not_fit_leaves_the_model_for_text(
    tmp_path: Path, pictures: Path
) -> None:
    folder = tmp_path / "mismatched"
    folder.mkdir()
    write_tiny_gguf(folder / "tiny-vlm.gguf", name="tiny-vlm", n_embd=64)
    write_tiny_mmproj(folder / "mmproj-other.gguf", n_embd_text=48)
    app = ChatApp(folder / "tiny-vlm.gguf", QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        assert not app.state.vision and app.session.projector is None
        said = messages(app)
        assert any("does not match" in m for m in said), said  # named, with a hint
        await submit(pilot, f"/image {pictures / 'red.png'}")
        await submit(pilot, "Describe it")
        assert any("text-only model" in m for m in messages(app))
        assert not app.screen.query(AssistantMessage)

    run(app, body)

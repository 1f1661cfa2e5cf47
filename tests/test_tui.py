"""The chat app driven headless with Pilot, on the tiny generated model.

The engine is wrapped so tests can see what each request was sent with, and can hold the token
stream (a stop must land in the middle of an answer, whatever the machine's speed or load).
Tests wait for events (a widget's text, a state change), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Markdown, Static

from localllm import conversations
from localllm.engine import Engine, plan_load
from localllm.profiles import Profile, save_user_profile
from localllm.tui.app import ChatApp
from localllm.tui.screens.dialogs import ErrorDialog
from localllm.tui.screens.help import HelpScreen
from localllm.tui.screens.profiles import ProfileEditor, ProfilePicker
from localllm.tui.widgets.messages import AssistantMessage, UserMessage
from localllm.tui.widgets.status import StatusBar

SIZE = (100, 30)
QUICK = Profile(temperature=0.0, max_tokens=12, gpu_layers=0, seed=1)


class RecordingEngine:
    """An Engine that records the settings of each request and can hold its output.

    With ``hold``, each request stops after its second piece of text until the test calls
    :meth:`Factory.release`: a stop then lands in the middle of an answer whatever the
    machine's speed, without racing a timer.
    """

    def __init__(self, engine: Engine, factory: Factory) -> None:
        self.engine = engine
        self.factory = factory
        self.requests: list[tuple[Any, Profile]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, prompt: Any, settings: Profile, **kwargs: Any) -> Iterator[Any]:
        self.requests.append((prompt, settings))
        texts = 0
        for event in self.engine.generate(prompt, settings, **kwargs):
            yield event
            if not getattr(event, "text", ""):
                continue
            texts += 1
            if self.factory.hold and texts == 2:
                self.factory.held.set()
                assert self.factory.released.wait(60), "the test never released the engine"
                self.factory.released.clear()


class Factory:
    """Makes RecordingEngines and remembers them."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.held = threading.Event()  # a request is holding its output
        self.released = threading.Event()
        self.engines: list[RecordingEngine] = []

    def __call__(self, path: Path, profile: Profile) -> RecordingEngine:
        engine = RecordingEngine(Engine(path, plan_load(profile)), self)
        self.engines.append(engine)
        return engine

    def release(self) -> None:
        self.held.clear()
        self.released.set()

    @property
    def requests(self) -> list[tuple[Any, Profile]]:
        return [r for e in self.engines for r in e.requests]


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 60.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_for(
        pilot, lambda: app.state.model_path is not None and not app.state.loading, what="load"
    )


async def ask(pilot: Pilot[Any], text: str, *, wait: bool = True) -> AssistantMessage:
    """Type ``text``, press Enter, and return the answer's widget (finished unless not ``wait``)."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    before = len(app.screen.query(AssistantMessage))
    app.prompt.focus()
    app.prompt.load_text(text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(app.screen.query(AssistantMessage)) > before, what="send")
    widget = app.screen.query(AssistantMessage).last()
    if wait:
        await idle(pilot)
    return widget


async def idle(pilot: Pilot[Any], timeout: float = 60.0) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_for(
        pilot, lambda: app.state.turn is None and not app.state.turns, timeout, "the answer"
    )
    await wait_for(
        pilot,
        lambda: not app.screen.query(".-streaming"),
        timeout,
        "the answer to be drawn",
    )
    await pilot.pause()


async def stop_mid_answer(
    pilot: Pilot[Any], widget: AssistantMessage, factory: Factory, key: str
) -> None:
    """Press ``key`` while the answer is held mid-stream, then let the engine go on (it
    finds the stop at its next token)."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_for(pilot, lambda: factory.held.is_set(), what="the engine to hold")
    await wait_for(pilot, lambda: bool(widget.answer), what="the first words")
    turn = app.state.turn
    assert turn is not None
    await pilot.press(key)
    await wait_for(pilot, turn.stop.is_set, what="the stop")
    factory.release()


def status(app: ChatApp) -> Any:
    return app._chat_screen().query_one(StatusBar).status


def chat_app(model: Path | None, profile: Profile = QUICK, **kwargs: Any) -> ChatApp:
    kwargs.setdefault("engine_factory", Factory())
    return ChatApp(model, profile, **kwargs)


Run = Callable[[ChatApp, Callable[[Pilot[Any]], Awaitable[None]]], None]


def run(app: ChatApp, body: Callable[[Pilot[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await body(pilot)
        app.close_engine()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------


def test_a_prompt_streams_an_answer_and_is_saved(tiny_model: Path) -> None:
    factory = Factory()
    app = chat_app(tiny_model, engine_factory=factory)
    deltas: list[str] = []

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        assert status(app).model == "tiny-chat" and status(app).backend == "CPU"
        original = AssistantMessage.on_assistant_message_delta

        async def spy(self: AssistantMessage, event: AssistantMessage.Delta) -> None:
            deltas.append(event.answer)
            await original(self, event)

        AssistantMessage.on_assistant_message_delta = spy  # type: ignore[method-assign]
        try:
            widget = await ask(pilot, "Hello there")
        finally:
            AssistantMessage.on_assistant_message_delta = original  # type: ignore[method-assign]
        assert widget.answer
        assert "".join(deltas) == widget.answer
        assert widget.query_one(".answer", Markdown).source == widget.answer
        assert [m.text for m in app.screen.query(UserMessage)] == ["Hello there"]
        assert app.state.history == [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": widget.answer},
        ]
        bar = status(app)
        assert bar.ctx_used and bar.ctx_used > 0 and bar.ctx_total == 4096
        assert bar.ttft_s is not None
        saved = conversations.load(app.state.conversation.id)
        assert [m["role"] for m in saved.messages] == ["user", "assistant"]
        assert saved.messages[1]["content"] == widget.answer
        assert saved.settings["profile"] == "default" and saved.settings["mode"] == "instant"
        assert saved.settings["model_path"] == str(tiny_model)

    run(app, body)
    assert len(factory.requests) == 1


def test_stop_keeps_the_partial_answer_and_the_next_prompt_works(tiny_model: Path) -> None:
    factory = Factory(hold=True)
    app = chat_app(tiny_model, QUICK.replace(max_tokens=400), engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        widget = await ask(pilot, "Tell me a long story", wait=False)
        await stop_mid_answer(pilot, widget, factory, "escape")
        await idle(pilot)
        assert "-stopped" in widget.classes, widget.query_one(".note").render()
        assert widget.query_one(".note").render().plain == "stopped"  # type: ignore[attr-defined]
        partial = widget.answer
        assert partial
        assert app.state.history[-1] == {"role": "assistant", "content": partial}
        saved = conversations.load(app.state.conversation.id).messages[-1]
        assert saved["stopped"] is True and saved["content"] == partial
        assert saved["stats"]["stop_reason"] == "cancelled"
        assert saved["stats"]["generated_tokens"] < 400

        # The model stays loaded and the next prompt answers at once; Ctrl+C stops too.
        engine = app.session.engine
        second = await ask(pilot, "Another one", wait=False)
        await stop_mid_answer(pilot, second, factory, "ctrl+c")
        await idle(pilot)
        assert "-stopped" in second.classes and second.answer
        assert app.session.engine is engine
        assert len(app.state.history) == 4

        # Not answering: Esc does nothing harmful, and a short answer completes.
        await pilot.press("escape")
        factory.hold = False
        app.apply_profile(app.profile.replace(max_tokens=3))
        third = await ask(pilot, "Short")
        assert "-stopped" not in third.classes
        assert len(app.state.history) == 6

    run(app, body)
    assert len(factory.engines) == 1


def test_switching_profile_and_mode_applies_to_the_next_request(tiny_model: Path) -> None:
    save_user_profile({"temperature": 0.1, "max_tokens": 4, "gpu_layers": 0}, "cold")
    save_user_profile({"temperature": 1.3, "max_tokens": 3, "gpu_layers": 0}, "hot")
    factory = Factory()
    app = chat_app(tiny_model, engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await ask(pilot, "first")
        assert factory.requests[-1][1].temperature == 0.0

        # The picker: Ctrl+P, choose "cold".
        await pilot.press("ctrl+p")
        picker = app.screen
        assert isinstance(picker, ProfilePicker)
        names = [p.name for p in picker._profiles]
        picker.query_one("OptionList").highlighted = names.index("cold")  # type: ignore[attr-defined]
        await pilot.press("enter")
        await pilot.pause()
        assert app.profile.name == "cold"
        await pilot.press("ctrl+t")
        assert app.profile.mode == "reasoning"
        assert status(app).profile == "cold" and status(app).mode == "reasoning"
        await ask(pilot, "second")
        assert factory.requests[-1][1].temperature == 0.1
        assert app.session.profile.max_tokens == 4
        assert app.session.last_turn.mode == "reasoning"

        # Slash commands do the same.
        await ask_command(pilot, "/profile hot")
        await ask_command(pilot, "/mode instant")
        await ask(pilot, "third")
        assert factory.requests[-1][1].temperature == 1.3
        assert app.session.profile.max_tokens == 3
        assert app.session.last_turn.mode == "instant"
        saved = conversations.load(app.state.conversation.id)
        assert saved.settings["profile"] == "hot" and saved.settings["mode"] == "instant"

    run(app, body)
    assert len(factory.engines) == 1  # same load settings: no reload


async def ask_command(pilot: Pilot[Any], line: str) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    app.prompt.focus()
    app.prompt.load_text(line)
    await pilot.press("enter")
    await pilot.pause()


def _saved_conversation(tiny_model: Path) -> conversations.Conversation:
    save_user_profile({"temperature": 0.0, "max_tokens": 5, "gpu_layers": 0}, "saved")
    conversation = conversations.Conversation.new(
        {
            "model": "tiny-chat",
            "model_path": str(tiny_model),
            "profile": "saved",
            "mode": "reasoning",
            "system_prompt": "You are terse.",
            "sampling": {"top_k": 7},
        }
    )
    conversation.add_message("user", "What is the capital of France?")
    conversation.add_message("assistant", "**Paris.**", reasoning="Easy one.")
    conversation.add_message("user", "And of Italy?")
    conversation.add_message("assistant", "Rome", stopped=True)
    conversation.rename("Capitals")
    return conversation


def test_resume_a_saved_conversation_with_its_model_and_profile(tiny_model: Path) -> None:
    saved = _saved_conversation(tiny_model)
    factory = Factory()
    app = chat_app(None, Profile(gpu_layers=0), resume=saved.id, engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        assert app.state.model_path == tiny_model
        assert app.profile.name == "saved" and app.profile.mode == "reasoning"
        assert app.profile.system_prompt == "You are terse." and app.profile.top_k == 7
        answers = list(app.screen.query(AssistantMessage))
        assert [a.answer for a in answers] == ["**Paris.**", "Rome"]
        assert answers[0].reasoning == "Easy one."
        assert "stopped" in str(answers[1].query_one(".note").render())
        assert len(app.screen.query(UserMessage)) == 2
        await ask(pilot, "And of Spain?")
        prompt = factory.requests[-1][0]
        text = prompt if isinstance(prompt, str) else app.session.engine.engine.render([])
        assert "capital of France" in text and "You are terse." in text
        reread = conversations.load(saved.id)
        assert len(reread.messages) == 6 and reread.title == "Capitals"
        # The prompt history offers the conversation's questions.
        app.prompt.focus()
        await pilot.press("up")
        assert app.prompt.text == "And of Spain?"
        await pilot.press("up")
        assert app.prompt.text == "And of Italy?"
        await pilot.press("down", "down")
        assert app.prompt.text == ""

    run(app, body)


def test_resume_from_the_conversation_list(tiny_model: Path) -> None:
    saved = _saved_conversation(tiny_model)
    other = conversations.Conversation.new({"model": "gone", "profile": "nope"})
    other.add_message("user", "orphan question")
    other.add_message("assistant", "orphan answer")
    app = chat_app(tiny_model)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+l")
        listing = app.screen
        ids = [s.id for s in listing.summaries]  # type: ignore[attr-defined]
        assert set(ids) == {saved.id, other.id}
        listing.query_one("OptionList").highlighted = ids.index(saved.id)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.conversation.id == saved.id)
        await wait_for(pilot, lambda: len(app.screen.query(AssistantMessage)) == 2)
        assert app.profile.name == "saved"
        assert app.state.model_path == tiny_model  # same model: not reloaded

        # A conversation whose model and profile are gone keeps the current ones.
        await pilot.press("ctrl+l")
        listing = app.screen
        ids = [s.id for s in listing.summaries]  # type: ignore[attr-defined]
        listing.query_one("OptionList").highlighted = ids.index(other.id)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.conversation.id == other.id)
        await pilot.pause()
        assert app.state.model_path == tiny_model and app.profile.name == "saved"
        await ask(pilot, "still works?")

        # Rename and delete from the list.
        await pilot.press("ctrl+l")
        listing = app.screen
        ids = [s.id for s in listing.summaries]  # type: ignore[attr-defined]
        listing.query_one("OptionList").highlighted = ids.index(saved.id)
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one(Input).value = "Renamed"
        await pilot.press("enter")
        await pilot.pause()
        assert conversations.load(saved.id).title == "Renamed"
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert not saved.path.exists()
        await pilot.press("escape")

    run(app, body)


def test_a_bad_value_in_the_profile_editor_is_refused_with_a_message(tiny_model: Path) -> None:
    app = chat_app(tiny_model)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+s")
        editor = app.screen
        assert isinstance(editor, ProfileEditor)
        editor.query_one("#f-temperature", Input).value = "hot"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is editor
        error = str(editor.query_one("#error").render())
        assert "temperature: must be a number between 0 and 2, got the string 'hot'" in error
        assert app.profile.temperature == 0.0
        editor.query_one("#f-temperature", Input).value = "3"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "must be between 0 and 2, got 3" in str(editor.query_one("#error").render())
        editor.query_one("#f-temperature", Input).value = "0.4"
        editor.query_one("#f-stop", Input).value = "['###', END]"
        editor.query_one("#f-top_k", Input).value = "12.0"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "top_k: must be a whole number" in str(editor.query_one("#error").render())
        editor.query_one("#f-top_k", Input).value = "12"
        editor.query_one("#save-as", Input).value = "mine"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is not editor
        assert app.profile.temperature == 0.4 and app.profile.stop == ("###", "END")
        assert app.profile.top_k == 12 and app.profile.name == "mine"
        from localllm.profiles import load_profile

        assert load_profile("mine").temperature == 0.4

    run(app, body)


def test_a_model_that_fails_to_load_shows_a_dialog(tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    app = chat_app(bad)

    async def body(pilot: Pilot[Any]) -> None:
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, ErrorDialog) and bool(app.screen.query(".dialog-title")),
            what="the dialog",
        )
        assert "broken" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("escape")
        assert app.state.model_path is None and status(app).model is None
        app.prompt.load_text("hello?")
        await pilot.press("enter")
        await pilot.pause()
        assert app.state.turn is None and app.prompt.text == "hello?"  # kept for later
        await ask_command(pilot, f"/model {tiny_model}")
        await loaded(pilot)
        await ask(pilot, "now?")

    run(app, body)


def test_prompt_keys_history_and_newlines(tiny_model: Path) -> None:
    app = chat_app(tiny_model)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        prompt = app.prompt
        prompt.focus()
        await pilot.press("a", "ctrl+j", "b", "shift+enter", "c")
        assert prompt.text == "a\nb\nc"
        await pilot.press("enter")
        await idle(pilot)
        assert app.screen.query(UserMessage).last().text == "a\nb\nc"
        assert prompt.text == ""
        await pilot.press("x", "up")
        assert prompt.text == "a\nb\nc"
        await pilot.press("down", "down", "down")
        assert prompt.text == "x"

    run(app, body)


def test_slash_commands_help_system_new_export_and_quit(tiny_model: Path, tmp_path: Path) -> None:
    factory = Factory()
    app = chat_app(tiny_model, engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await ask_command(pilot, "/help")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await ask_command(pilot, "/?")  # an alias the help screen lists too
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await ask_command(pilot, "/system Answer in French.")
        assert app.profile.system_prompt == "Answer in French."
        await ask(pilot, "Bonjour")
        assert "Answer in French." in factory.requests[-1][0]
        await ask_command(pilot, f"/export {tmp_path}/chat.md")
        text = (tmp_path / "chat.md").read_text()
        assert "Bonjour" in text and "Answer in French." in text
        await ask_command(pilot, "/rename French lesson")
        assert conversations.load(app.state.conversation.id).title == "French lesson"
        first = app.state.conversation.id
        await ask_command(pilot, "/new")
        assert app.state.conversation.id != first and app.state.history == []
        assert not app.screen.query(UserMessage)
        await ask(pilot, "again")
        second = app.state.conversation.id
        await ask_command(pilot, "/CLEAR")  # an alias, any case
        assert app.state.conversation.id != second and not app.screen.query(UserMessage)
        await ask_command(pilot, "/bogus")
        assert app.state.turn is None
        await ask_command(pilot, "/quit")
        await pilot.pause()

    run(app, body)
    assert app.return_code == 0


def test_ctrl_q_quits_even_while_answering(tiny_model: Path) -> None:
    factory = Factory(hold=True)
    app = chat_app(tiny_model, QUICK.replace(max_tokens=400), engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        widget = await ask(pilot, "long", wait=False)
        await wait_for(pilot, lambda: factory.held.is_set() and bool(widget.answer))
        await pilot.press("ctrl+q")
        assert app.state.turn is not None and app.state.turn.stop.is_set()
        factory.release()

    run(app, body)
    assert app.return_code == 0


@pytest.mark.parametrize("mode", ["reasoning", "instant"])
def test_chat_command_refuses_without_a_terminal(mode: str) -> None:
    from typer.testing import CliRunner

    from localllm.cli import app as cli

    result = CliRunner().invoke(cli, ["chat", "--mode", mode])
    assert result.exit_code != 0
    assert "interactive terminal" in str(result.exception or result.output)


def test_help_does_not_import_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from localllm.cli import main\n"
        "for argv in (['--help'], ['chat', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('textual' in sys.modules, 'llama_cpp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "chat" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_pull_a_model_by_reference_with_progress(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import threading

    from localllm import hub, store
    from localllm.errors import NetworkError

    release = threading.Event()

    def plan_pull(ref: str, **_: Any) -> str:
        if ref == "nobody/nothing":
            raise NetworkError("the Hub could not be reached", hint="check the connection")
        return ref

    def pull(plan: str, *, progress: Any = None, say: Any = None) -> store.Manifest:
        progress(0, 100)
        progress(40, 100)  # however soon after: the bar ends up showing the latest figures
        assert release.wait(30)
        manifest = store.Manifest(name="someone/tiny:F32", files=[tiny_model.name], quant="F32")
        manifest.folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_model, manifest.folder / tiny_model.name)
        store.save_manifest(manifest)
        progress(100, 100)
        return manifest

    monkeypatch.setattr(hub, "plan_pull", plan_pull)
    monkeypatch.setattr(hub, "pull", pull)
    app = chat_app(tiny_model)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+o")
        picker = app.screen
        picker.query_one("#pull", Input).value = "someone/tiny:F32"
        picker.query_one("#pull", Input).focus()
        await pilot.press("enter")
        bar = app._chat_screen().query_one("#download-bar")
        await wait_for(pilot, lambda: bar.progress == 40, what="progress")
        assert app._chat_screen().query_one("#download").display
        # The chat stays usable while the download runs.
        await ask(pilot, "meanwhile")
        release.set()
        await wait_for(
            pilot, lambda: app.state.model_name == "someone/tiny:F32", what="the new model"
        )
        await loaded(pilot)
        assert not app._chat_screen().query_one("#download").display
        assert status(app).quant == "F32"
        await ask(pilot, "with the new model")
        # A failed pull is a notification, not a crash.
        await ask_command(pilot, "/pull nobody/nothing")
        await wait_for(pilot, lambda: app.download_bar.ref is None, what="the failure")
        assert any("could not be reached" in n.message for n in app._notifications)

    run(app, body)


def test_new_chat_while_answering_saves_the_stopped_turn(tiny_model: Path) -> None:
    factory = Factory(hold=True)
    app = chat_app(tiny_model, QUICK.replace(max_tokens=400), engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        widget = await ask(pilot, "long", wait=False)
        old = app.state.conversation
        await stop_mid_answer(pilot, widget, factory, "ctrl+n")
        factory.hold = False
        await wait_for(pilot, lambda: not app.state.turns, what="the old turn to end")
        assert (
            app.state.turn is None and app.state.conversation is not old and app.state.history == []
        )
        saved = conversations.load(old.id).messages
        assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["stopped"]
        await ask(pilot, "fresh start")
        assert len(app.state.history) == 2

    run(app, body)


def test_older_answers_are_archived_to_keep_streaming_cheap(tiny_model: Path) -> None:
    conversation = conversations.Conversation.new({"model_path": str(tiny_model)})
    for i in range(4):
        conversation.add_message("user", f"question {i}")
        conversation.add_message("assistant", f"**answer {i}**", reasoning=f"thought {i}")
    app = chat_app(None, QUICK, resume=conversation.id)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await wait_for(pilot, lambda: len(app.screen.query(AssistantMessage)) == 4)
        answers = list(app.screen.query(AssistantMessage))
        assert [a.archived for a in answers] == [True, True, False, False]
        archived = answers[0].query_one(".answer")
        assert getattr(archived.content, "markup", None) == "**answer 0**"
        await ask(pilot, "one more")
        await wait_for(pilot, lambda: answers[2].archived, what="archiving")
        assert not answers[3].archived
        assert answers[2].query_one(".answer.archived") is not None
        assert answers[2].reasoning == "thought 2"
        # The archived copy still holds the text for the next request's history.
        assert [m["content"] for m in app.state.history if m["role"] == "assistant"][:2] == [
            "**answer 0**",
            "**answer 1**",
        ]

    run(app, body)


def test_every_slash_command_has_a_handler_and_a_help_line() -> None:
    from rich.console import Console

    from localllm.tui import commands
    from localllm.tui.screens.help import help_renderable

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(help_renderable())
    shown = console.export_text()
    for command in commands.COMMANDS:
        assert callable(getattr(ChatApp, command.handler)), command.name
        for spelling in command.spellings:
            assert f"/{spelling}" in shown, spelling
            assert commands.parse(f"/{spelling.upper()}  arg ")[0] is command
    assert commands.parse("/nope x") == (None, "/nope", "x")
    assert not commands.is_command("//not a command") and commands.is_command(" /new")


def test_pasted_text_with_invalid_characters_is_sent_with_replacements(tiny_model: Path) -> None:
    """A lone surrogate (half an emoji, or a byte smuggled in by surrogateescape) would not
    encode for the tokenizer; it becomes U+FFFD, as invalid bytes do in ``localllm run``."""
    from textual import events

    factory = Factory()
    app = chat_app(tiny_model, engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        app.prompt.focus()
        app.post_message(events.Paste("half \ud83d and \udcff"))  # as the terminal driver does
        await wait_for(pilot, lambda: "half" in app.prompt.text, what="the paste")
        await pilot.pause()
        assert app.prompt.text == "half \ud83d and \udcff"  # pasted once, as it came
        await pilot.press("enter")
        await idle(pilot)
        [shown] = app.screen.query(UserMessage)
        assert shown.text == "half \ufffd and \ufffd"
        assert any("not valid UTF-8" in n.message for n in app._notifications)  # as run warns
        assert app.state.history[0]["content"] == "half \ufffd and \ufffd"
        widget = app.screen.query(AssistantMessage).last()
        assert "-error" not in widget.classes and widget.answer
        saved = conversations.load(app.state.conversation.id).messages
        assert saved[0]["content"] == "half \ufffd and \ufffd"
        await ask_command(pilot, "/system be \udcff brief")
        assert app.profile.system_prompt == "be \ufffd brief"
        await ask(pilot, "ok?")
        assert "be \ufffd brief" in factory.requests[-1][0]

    run(app, body)


def test_the_terminal_driver_reads_invalid_bytes_as_replacement_characters() -> None:
    from textual.drivers import linux_driver

    from localllm.tui.terminal import tolerate_invalid_input

    tolerate_invalid_input()
    tolerate_invalid_input()  # twice is harmless
    decode = linux_driver.getincrementaldecoder("utf-8")().decode
    assert decode(b"ab\xff") + decode(b"\xe2\x82", final=True) == "ab\ufffd\ufffd"
    assert decode(b"\xe2\x82") + decode(b"\xac") == "€"  # split characters still join


def test_a_long_streamed_answer_draws_its_settled_head_once() -> None:
    """While streaming, blocks that more text cannot change are drawn once (``.head``) and
    only the rest is redrawn; the finished answer is one Markdown widget with the whole text."""
    from localllm.streaming import TurnResult

    paragraph = "A line of a long story, told one token at a time. " * 8
    parts = [f"{paragraph}\n\n" for _ in range(12)] + ["```\ncode\n\n\nkept\n```\n\nend."]
    app = chat_app(None)

    async def body(pilot: Pilot[Any]) -> None:
        widget = AssistantMessage(streaming=True)
        await app.chat_log.mount(widget)
        for part in parts:
            widget.post_message(AssistantMessage.Delta(part))
        await wait_for(pilot, lambda: widget.answer == "".join(parts), what="the text")
        heads = list(widget.query(".head"))
        assert len(heads) >= 2
        live = widget.query_one(".answer.live", Static)
        tail = live.content.markup  # type: ignore[attr-defined]
        assert tail == "end."
        drawn = [h.content.markup for h in heads]  # type: ignore[attr-defined]
        assert "".join(drawn) + tail == widget.answer
        assert any("```\ncode\n\n\nkept\n```" in h for h in drawn)  # the fence kept whole
        widget.post_message(AssistantMessage.Finished(TurnResult(answer=widget.answer)))
        await wait_for(pilot, lambda: not widget.query(".live"), what="the final answer")
        assert widget.query_one(".answer", Markdown).source == "".join(parts)

    run(app, body)

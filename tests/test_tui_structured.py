"""Structured output in the chat: a profile's json_schema or grammar shapes the answers.

Driven headless with Pilot on the tiny random-weight model: only the constraint can make its
answers parse, so a passing test shows the constraint reached the engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from test_tui import QUICK, Factory, ask, ask_command, chat_app, loaded, run, wait_for
from textual.pilot import Pilot
from textual.widgets import Markdown, Static

from localllm.profiles import save_user_profile
from localllm.tui.widgets.messages import AssistantMessage

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}
FORCED = "forced by the grammar"
GRAMMAR = f'root ::= "{FORCED}"\n'
LIMITS = {"temperature": 0.0, "max_tokens": 64, "gpu_layers": 0, "seed": 1}


def shown(widget: AssistantMessage) -> str:
    return widget.query_one(".answer", Markdown).source


def notes(app: Any) -> list[str]:
    return [n.message for n in app._notifications]


def test_a_json_schema_profile_gives_valid_json_shown_as_a_code_block(tiny_model: Path) -> None:
    save_user_profile({**LIMITS, "json_schema": SCHEMA}, "person")
    factory = Factory(hold=True)
    app = chat_app(tiny_model, engine_factory=factory)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await ask_command(pilot, "/profile person")
        assert app.constraint is not None and app.constraint.is_json
        widget = await ask(pilot, "Describe a color", wait=False)
        # Live: the streamed text is drawn as a fenced json block already.
        await wait_for(pilot, factory.held.is_set, what="the engine to hold")
        await wait_for(pilot, lambda: bool(widget.answer), what="the first words")
        live = widget.query_one(".answer.live", Static)
        assert live.content.markup.startswith("```json\n")  # type: ignore[union-attr]
        assert widget.answer in live.content.markup  # type: ignore[union-attr]
        factory.hold = False
        factory.release()
        await wait_for(pilot, lambda: app.state.turn is None, what="the answer")
        await wait_for(pilot, lambda: not app.screen.query(".-streaming"), what="the drawing")
        parsed = json.loads(widget.answer)
        jsonschema.validate(parsed, SCHEMA)  # raises if the answer does not match
        assert parsed["color"] in ("red", "green") and isinstance(parsed["ok"], bool)
        assert shown(widget) == f"```json\n{widget.answer.strip()}\n```"
        assert app.state.history[-1]["content"] == widget.answer  # saved as the bare JSON

    run(app, body)


def test_a_grammar_forces_the_text_and_a_free_profile_frees_it(tiny_model: Path) -> None:
    save_user_profile({**LIMITS, "grammar": GRAMMAR}, "forced")
    save_user_profile({**LIMITS, "max_tokens": 12}, "free")
    app = chat_app(tiny_model, QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await ask_command(pilot, "/profile forced")
        forced = await ask(pilot, "Say anything")
        assert forced.answer == FORCED
        assert shown(forced) == FORCED  # a grammar's text is not JSON: no code block
        await ask_command(pilot, "/profile free")
        assert app.constraint is None
        free = await ask(pilot, "Say anything")
        assert free.answer and free.answer != FORCED
        assert not shown(free).startswith("```")

    run(app, body)


def test_a_bad_schema_or_grammar_in_a_profile_is_a_notification(tiny_model: Path) -> None:
    path = save_user_profile(dict(LIMITS), "broken")
    path.write_text(path.read_text() + 'grammar: "root ::= ("\n')
    app = chat_app(tiny_model, QUICK)

    async def body(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        # A profile file whose grammar does not parse is refused when chosen.
        await ask_command(pilot, "/profile broken")
        await wait_for(pilot, lambda: any("broken" in n for n in notes(app)), what="the note")
        assert app.profile.name == "default" and app.constraint is None
        # A schema that cannot become a grammar (set in this chat): a note, answers stay free.
        app.apply_profile(app.profile.replace(json_schema={"type": "objekt"}))
        await wait_for(pilot, lambda: any("objekt" in n for n in notes(app)), what="the note")
        assert app.constraint is None
        widget = await ask(pilot, "still there?")
        assert widget.answer and app.is_running

    run(app, body)

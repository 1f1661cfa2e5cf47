"""Models in other tools' stores through the server and the chat app: listed with their
references and source, and loaded in place on demand like installed models.

The stores are laid out as each tool leaves them (see tests/test_foreign.py) under a temporary
HOME, with tiny generated GGUFs as the model files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from ggufgen import CHATML_TEMPLATE, write_tiny_gguf
from serverproc import ServerProcess
from test_foreign import make_lmstudio, make_ollama
from test_tui import ask_command, chat_app, loaded, run, wait_for

from localllm import store

HI = [{"role": "user", "content": "hi"}]
REF = "ollama:tiny:1b"


@pytest.fixture
def user(tmp_path: Path) -> dict[str, Any]:
    """A HOME with one Ollama model and one LM Studio model (different files)."""
    home = tmp_path / "user"
    ollama = home / ".ollama" / "models"
    gguf = write_tiny_gguf(tmp_path / "o.gguf", chat_template=CHATML_TEMPLATE, seed=7)
    blob = make_ollama(ollama, "tiny", "1b", gguf)
    other = write_tiny_gguf(tmp_path / "l.gguf", chat_template=CHATML_TEMPLATE, seed=8)
    lms = make_lmstudio(
        home / ".lmstudio" / "models", "acme", "Tiny-GGUF", {"Tiny-Q8_0.gguf": other}
    )
    return {"home": home, "ollama": ollama, "blob": blob, "lms": lms / "Tiny-Q8_0.gguf"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _env(user: dict[str, Any], tmp_path: Path, stores: str) -> dict[str, str]:
    return {
        "HOME": str(user["home"]),
        "LOCALLLM_HOME": str(tmp_path / "localllm"),
        "OLLAMA_MODELS": str(user["ollama"]),
        "LOCALLLM_FOREIGN_STORES": stores,
        "XDG_CACHE_HOME": str(user["home"] / ".cache"),
    }


# -- the server ---------------------------------------------------------------------------


def test_server_lists_and_loads_an_ollama_model_in_place(
    tiny_model: Path, user: dict[str, Any], tmp_path: Path
) -> None:
    env = _env(user, tmp_path, "ollama,lmstudio")
    before = _tree(user["ollama"])
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        owners = {m.id: m.owned_by for m in client.models.list()}
        assert owners == {
            "tiny-chat": "localllm",
            REF: "ollama",
            "lmstudio:acme/Tiny-GGUF:Q8_0": "lmstudio",
        }
        # Named by its reference, it loads on demand from the blob in Ollama's store.
        result = client.chat.completions.create(model=REF, messages=HI, max_tokens=4)
        assert result.usage.completion_tokens == 4
        worker = server.worker(REF)
        assert worker["state"] == "ready" and worker["jobs"] == 1
        server.wait_line(re.escape(f"loaded {REF}"))  # stderr is read by a thread: wait for it
        # The same model under Ollama's looser spelling: the same worker, no second load.
        again = client.chat.completions.create(model="ollama:TINY:1b", messages=HI, max_tokens=3)
        assert again.usage.completion_tokens == 3
        assert server.worker(REF)["jobs"] == 2
        loaded_ids = {m.id for m in client.models.list() if m.model_extra.get("loaded")}
        assert loaded_ids == {REF}
        assert client.models.retrieve(REF).owned_by == "ollama"
        # Ollama's own API lists it too, with the quant its config records.
        status, tags = server.get("/api/tags")
        assert status == 200
        row = next(m for m in tags["models"] if m["name"] == REF)
        assert row["size"] == user["blob"].stat().st_size
        assert row["details"]["quantization_level"] == "Q4_K_M"
        body = {"model": REF, "messages": HI, "stream": False, "options": {"num_predict": 2}}
        status, answer = server.post("/api/chat", body)
        assert status == 200 and answer["model"] == REF
    assert _tree(user["ollama"]) == before  # used in place: nothing written to Ollama's store


def test_server_unknown_foreign_names_are_404_with_a_hint(
    tiny_model: Path, user: dict[str, Any], tmp_path: Path
) -> None:
    env = _env(user, tmp_path, "ollama")
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="ollama:nothing:7b", messages=HI, max_tokens=2)
        assert REF in str(missing.value)  # it names what Ollama does have
        with pytest.raises(openai.NotFoundError) as bare:  # a bare name Ollama lacks
            client.chat.completions.create(model="nothing:7b", messages=HI, max_tokens=2)
        assert "installed: tiny-chat" in str(bare.value)
        loaded = [m["name"] for m in server.health()["models"]]
        assert loaded == ["tiny-chat"]  # the default, loaded at start; nothing for either
        # Only the enabled stores are listed.
        assert {m.id for m in client.models.list()} == {"tiny-chat", REF}


def test_server_resolves_bare_ollama_names(
    tiny_model: Path, user: dict[str, Any], tmp_path: Path
) -> None:
    """Ollama clients send Ollama's own names (``tiny:1b``, no ``ollama:``): a model in the
    Ollama store `localllm list` shows is loaded in place; with that store off it is a 404."""
    import ollama

    env = _env(user, tmp_path, "ollama")
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        result = client.chat.completions.create(model="tiny:1b", messages=HI, max_tokens=3)
        assert result.usage.completion_tokens == 3 and result.model == "tiny:1b"
        assert server.worker(REF)["jobs"] == 1  # the same model as its reference names
        answer = ollama.Client(host=server.url).chat(
            model="tiny:1b", messages=HI, options={"num_predict": 2}
        )
        assert answer.model == "tiny:1b" and answer.eval_count == 2
        assert server.worker(REF)["jobs"] == 2
    env = _env(user, tmp_path, "lmstudio")
    with ServerProcess("-m", str(tiny_model), env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="tiny:1b", messages=HI, max_tokens=2)


def test_server_serves_a_foreign_default_by_its_reference(
    user: dict[str, Any], tmp_path: Path
) -> None:
    env = _env(user, tmp_path, "ollama")
    with ServerProcess("-m", REF, env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert [(m.id, m.owned_by) for m in client.models.list()] == [(REF, "ollama")]
        result = client.chat.completions.create(model="default", messages=HI, max_tokens=2)
        assert result.model == REF


# -- the chat app -------------------------------------------------------------------------


def test_model_picker_shows_foreign_models_with_their_source_and_loads_one(
    tiny_model: Path, user: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(user, tmp_path, "ollama,lmstudio").items():
        if key != "LOCALLLM_HOME":
            monkeypatch.setenv(key, value)
    before = _tree(user["ollama"])
    store.import_model(write_tiny_gguf(tmp_path / "mine.gguf", seed=9), name="mine")
    app = chat_app(tiny_model)

    async def body(pilot: Any) -> None:
        from textual.widgets import OptionList

        from localllm.tui.screens.models import ModelPicker

        await loaded(pilot)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the picker")
        picker = app.screen
        rows = {m.name: m for m in picker._models}
        assert set(rows) == {str(tiny_model), "mine", REF, "lmstudio:acme/Tiny-GGUF:Q8_0"}
        assert (rows["mine"].source, rows[REF].source) == (None, "Ollama")
        assert rows["lmstudio:acme/Tiny-GGUF:Q8_0"].source == "LM Studio"
        assert rows[REF].path == user["blob"] and rows[REF].quant == "Q4_K_M"
        options = picker.query_one(OptionList)
        shown = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        line = next(s for s in shown if REF in s)
        assert line.rstrip().endswith("Ollama") and "Q4_K_M" in line
        options.highlighted = [m.name for m in picker._models].index(REF)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.model_path == user["blob"], what="the switch")
        await loaded(pilot)
        assert app.state.model_name == REF
        # /model with a reference loads in place too, named by its reference.
        await ask_command(pilot, "/model lmstudio:acme/Tiny-GGUF:Q8_0")
        await wait_for(pilot, lambda: app.state.model_path == user["lms"], what="the /model")
        await loaded(pilot)
        assert app.state.model_name == "lmstudio:acme/Tiny-GGUF:Q8_0"

    run(app, body)
    assert _tree(user["ollama"]) == before  # read in place, never written

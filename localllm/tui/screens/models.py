"""The model picker: installed models and those in other tools' stores (Ollama, LM Studio,
llama.cpp; used in place) with size, quant and source, or a Hub reference to pull."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option


@dataclass(frozen=True)
class ModelEntry:
    """One row of the picker."""

    name: str
    path: Path
    size: int | None = None
    quant: str | None = None
    source: str | None = None  # the tool whose store holds it ("Ollama"); None: ours


@dataclass(frozen=True)
class ModelChoice:
    """What the person picked: a model to load, or a reference to pull (then load)."""

    action: Literal["load", "pull"]
    ref: str
    path: Path | None = None


def _size(n: int | None) -> str:
    if not n:
        return ""
    from localllm.refs import format_bytes

    return format_bytes(n)


class ModelPicker(ModalScreen[ModelChoice | None]):
    """Enter loads the highlighted model; typing a reference and Enter pulls it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, models: list[ModelEntry], current: Path | None, *, can_pull: bool) -> None:
        super().__init__(classes="dialog-screen")
        self._models = models
        self._current = current.resolve() if current is not None else None
        self._can_pull = can_pull

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Models", classes="dialog-title")
            yield OptionList(*self._options(), id="models")
            if self._can_pull:
                yield Input(
                    placeholder="pull from the Hub: owner/repo or owner/repo:Q4_K_M", id="pull"
                )
            yield Static(
                "Enter: load · Tab: "
                + ("pull a new model · " if self._can_pull else "")
                + "Esc: close",
                classes="dialog-hint",
            )

    def _options(self) -> list[Option]:
        if not self._models:
            return [Option(Text("no models found", style="italic"), id="-", disabled=True)]
        width = max(len(m.name) for m in self._models)
        options = []
        for i, model in enumerate(self._models):
            loaded = self._current is not None and model.path.resolve() == self._current
            text = Text()
            text.append("● " if loaded else "  ", style="green")
            text.append(model.name.ljust(width), style="bold")
            text.append(f"  {_size(model.size):>9}", style="dim")
            text.append(f"  {model.quant or ''}")
            if model.source:
                text.append(f"  {model.source}", style="dim italic")
            options.append(Option(text, id=str(i)))
        return options

    def on_mount(self) -> None:
        models = self.query_one(OptionList)
        models.focus()
        for i, model in enumerate(self._models):
            if self._current is not None and model.path.resolve() == self._current:
                models.highlighted = i

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id in (None, "-"):
            return
        model = self._models[int(event.option.id)]
        self.dismiss(ModelChoice("load", model.name, model.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        ref = event.value.strip()
        if ref:
            self.dismiss(ModelChoice("pull", ref))

    def action_close(self) -> None:
        self.dismiss(None)

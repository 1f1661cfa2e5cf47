"""Profiles: a picker, and an inline editor for the sampling values.

The editor reads each field as a YAML value and validates the whole profile with
:func:`localllm.profiles.validate_dict`, so a value is accepted or refused exactly as it would be
in a profile file, with the same message.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from localllm.errors import ProfileError
from localllm.profiles import Profile, ProfileSource
from localllm.tui.state import SAMPLING_FIELDS

SOURCE = "sampling editor"


def to_yaml(value: Any) -> str:
    """A value as one line of YAML (``null``, ``0.7``, ``[a, b]``)."""
    import yaml

    text = yaml.safe_dump(
        list(value) if isinstance(value, tuple) else value,
        default_flow_style=True,
        allow_unicode=True,
        width=1 << 20,
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def parse_fields(base: Profile, edits: dict[str, str]) -> Profile:
    """``base`` with each edited field read as YAML, validated like a profile file."""
    import yaml

    from localllm.profiles import profile_to_dict, validate_dict

    data = profile_to_dict(base)
    for key, text in edits.items():
        try:
            data[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ProfileError(
                f"{SOURCE}: {key}: invalid YAML: {problem}",
                hint='quote text values, e.g. "###"',
            ) from None
    return validate_dict(data, source=SOURCE)


class ProfilePicker(ModalScreen[str | None]):
    """Enter switches to the highlighted profile."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, profiles: list[ProfileSource], current: str | None) -> None:
        super().__init__(classes="dialog-screen")
        self._profiles = profiles
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Profiles", classes="dialog-title")
            yield OptionList(*self._options(), id="profiles")
            yield Static(
                "Enter: use · Esc: close · Ctrl+S in the chat edits sampling values",
                classes="dialog-hint",
            )

    def _options(self) -> list[Option]:
        width = max((len(p.name) for p in self._profiles), default=0)
        options = []
        for source in self._profiles:
            text = Text()
            text.append("● " if source.name == self._current else "  ", style="green")
            text.append(source.name.ljust(width), style="bold")
            text.append("  user" if not source.builtin else "  built-in", style="dim")
            if source.description:
                text.append(f"  {source.description}")
            options.append(Option(text, id=source.name))
        return options

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        for i, source in enumerate(self._profiles):
            if source.name == self._current:
                options.highlighted = i

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_close(self) -> None:
        self.dismiss(None)


class ProfileEditor(ModalScreen[Profile | None]):
    """Edit the sampling values of the active profile; Ctrl+S applies, Esc cancels.

    Filling "save as" also writes the result as a user profile of that name.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Cancel"),
        Binding("ctrl+s", "apply", "Apply", priority=True),
    ]

    def __init__(self, profile: Profile) -> None:
        super().__init__(classes="dialog-screen")
        self.profile = profile

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="editor"):
            yield Label(Text(f"Sampling · profile {self.profile.name}"), classes="dialog-title")
            with Grid(id="fields"):
                for key in SAMPLING_FIELDS:
                    yield Label(key, classes="field-label")
                    yield Input(to_yaml(getattr(self.profile, key)), id=f"f-{key}", classes="field")
                yield Label("save as", classes="field-label")
                yield Input(placeholder="(optional) user profile name", id="save-as")
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")
            yield Static(
                "Values are YAML, checked as in a profile file · Ctrl+S: apply · Esc: cancel",
                classes="dialog-hint",
            )

    def on_mount(self) -> None:
        self.query_one("#error").display = False
        self.query_one(f"#f-{SAMPLING_FIELDS[0]}", Input).focus()

    def edits(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key in SAMPLING_FIELDS}

    def show_error(self, message: str) -> None:
        error = self.query_one("#error", Static)
        error.update(Text(message))
        error.display = bool(message)

    def action_apply(self) -> None:
        from dataclasses import replace

        from localllm.profiles import check_name, save_user_profile

        try:
            profile = parse_fields(self.profile, self.edits())
            name = self.query_one("#save-as", Input).value.strip()
            if name:
                check_name(name)
                profile = replace(profile, name=name)
                path = save_user_profile(profile, name)
                self.notify(f"saved profile '{name}' to {path}", title="Profile saved")
        except ProfileError as exc:
            message = exc.message + (f"\n{exc.hint}" if exc.hint else "")
            self.show_error(message)
            self.notify(exc.message, title="Invalid value", severity="error")
            return
        self.dismiss(profile)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "apply":
            self.action_apply()
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

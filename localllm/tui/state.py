"""What the chat is doing, as plain data: the profile, the model, the conversation, the request
in flight, and how settings are recorded in (and restored from) a saved conversation.

No widgets here: the app reads and changes a :class:`ChatState` and redraws from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localllm.conversations import Conversation
from localllm.errors import LocalLLMError, ProfileError
from localllm.profiles import Profile

LOAD_FIELDS = ("context_length", "threads", "gpu_layers", "verbose")
# What the sampling editor shows, and what a conversation records when it differs from the
# named profile.
SAMPLING_FIELDS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "reasoning_budget",
)


@dataclass(eq=False)
class Turn:
    """One request in flight: what was asked, with which settings, for which conversation.

    ``widget`` is the answer's widget (opaque here); ``stop`` is set to stop it.
    """

    text: str
    widget: Any
    profile: Profile
    history: list[dict[str, Any]]
    conversation: Conversation
    stop: threading.Event = field(default_factory=threading.Event)
    images: list[Any] = field(default_factory=list)  # localllm.images.Image, before the text
    constraint: Any = None  # localllm.structured.Constraint the answer must match, or None


@dataclass(frozen=True)
class Attachment:
    """An image attached to the next message: where it was read from, and what was read."""

    path: Path
    image: Any  # localllm.images.Image

    def label(self) -> str:
        """``red.png (PNG 512×512, 1 KiB)``: what the message shows."""
        return str(self.image.describe())

    def record(self) -> dict[str, Any]:
        """What a saved conversation keeps: enough to find the file and tell if it changed."""
        return {
            "path": str(self.path),
            "name": self.image.name,
            "size": len(self.image.data),
            "sha256": self.image.sha256,
            "label": self.label(),
        }


def read_attachment(ref: str) -> Attachment:
    """The image at ``ref`` (a path; ``~`` expanded), checked by its header; UsageError
    when it is missing, not an image, or too big."""
    from localllm import images

    path = Path(ref.strip().strip("'\"")).expanduser()
    image = images.read_image(str(path))
    return Attachment(path.resolve(), image)


def restore_images(
    history: list[dict[str, Any]], marker: str | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """A saved conversation's history made ready for the model again: each user message's
    recorded images (``attachments``) are read back from their paths and checked against
    their sha256. Returns the history and one warning per image that changed or is gone;
    such an image is left out (the message keeps its text). ``marker`` is the projector's
    image marker (None: a text-only model, every image is left out without a warning)."""
    from localllm import images
    from localllm.errors import LocalLLMError

    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for message in history:
        records = message.get("attachments")
        message = {k: v for k, v in message.items() if k != "attachments"}
        if records and marker is not None:
            pictures = []
            for record in records:
                name = record.get("name") or Path(str(record.get("path"))).name
                try:
                    image = images.read_image(str(record.get("path")))
                except LocalLLMError:
                    warnings.append(f"{name} is gone ({record.get('path')}): left out")
                    continue
                if image.sha256 != record.get("sha256"):
                    warnings.append(f"{name} changed since it was sent: left out")
                    continue
                pictures.append(image)
            if pictures:
                message["content"] = "".join(f"{marker}\n" for _ in pictures) + message["content"]
                message["images"] = pictures
        out.append(message)
    return out, warnings


@dataclass
class ChatState:
    """The chat's state; ``None`` model fields mean no model is loaded."""

    profile: Profile
    model_path: Path | None = None
    model_name: str | None = None
    loaded_profile: Profile | None = None  # what the loaded model was loaded with
    loading: str | None = None  # the name of the model being loaded
    history: list[dict[str, Any]] = field(default_factory=list)  # what the model sees again
    conversation: Conversation = field(default_factory=Conversation.new)
    turn: Turn | None = None  # the request shown as in progress
    turns: set[Turn] = field(default_factory=set)  # every request not finished, stopping too
    attachments: list[Attachment] = field(default_factory=list)  # for the next message
    vision: bool = False  # the loaded model reads images (its projector is loaded)

    @property
    def busy(self) -> bool:
        """An answer is being generated (and was not asked to stop)."""
        return self.turn is not None and not self.turn.stop.is_set()

    @property
    def activity(self) -> str:
        if self.loading:
            return f"loading {self.loading}…"
        if self.turn is not None:
            return "answering…" if not self.turn.stop.is_set() else "stopping…"
        return ""

    def stop(self) -> None:
        """Ask the request in flight to stop (it keeps what it wrote)."""
        if self.turn is not None:
            self.turn.stop.set()

    def new_conversation(self) -> None:
        self.stop()
        self.conversation = Conversation.new()
        self.history = []
        self.attachments = []

    def needs_reload(self, profile: Profile) -> bool:
        """Whether ``profile`` loads the model differently (context length, threads ...)."""
        loaded = self.loaded_profile
        return (
            self.model_path is not None
            and loaded is not None
            and any(getattr(loaded, k) != getattr(profile, k) for k in LOAD_FIELDS)
        )

    # -- saved with a conversation ---------------------------------------------------------

    def settings_record(self) -> dict[str, Any]:
        """What a resumed conversation needs to continue as it was."""
        from localllm.profiles import load_profile

        try:
            base: Profile | None = load_profile(self.profile.name)
        except ProfileError:
            base = None
        sampling = {}
        for key in SAMPLING_FIELDS:
            value = getattr(self.profile, key)
            if base is None or getattr(base, key) != value:
                sampling[key] = list(value) if isinstance(value, tuple) else value
        return {
            "model": self.model_name,
            "model_path": str(self.model_path) if self.model_path else None,
            "profile": self.profile.name,
            "mode": self.profile.mode,
            "system_prompt": self.profile.system_prompt,
            "sampling": sampling,
        }


def profile_from_settings(settings: dict[str, Any], source: str) -> Profile | None:
    """The profile a saved conversation ran with (its named profile plus the recorded mode,
    system prompt and sampling changes); None when it names none. Raises ProfileError when
    that profile is gone or the values no longer validate."""
    from localllm.profiles import load_profile, profile_to_dict, validate_dict

    name = settings.get("profile")
    if not (isinstance(name, str) and name):
        return None
    data = profile_to_dict(load_profile(name))
    sampling = settings.get("sampling")
    if isinstance(sampling, dict):
        data.update({k: v for k, v in sampling.items() if k in SAMPLING_FIELDS})
    for key in ("mode", "system_prompt"):
        if key in settings:
            data[key] = settings[key]
    return validate_dict(data, source=source)


def model_from_settings(settings: dict[str, Any]) -> Path | None:
    """The model file a saved conversation ran with, if it is still there."""
    from localllm import store

    stored = settings.get("model_path")
    if isinstance(stored, str) and stored and Path(stored).is_file():
        return Path(stored)
    name = settings.get("model")
    if isinstance(name, str) and name:
        try:
            return store.resolve_model(name)
        except LocalLLMError:
            return None
    return None

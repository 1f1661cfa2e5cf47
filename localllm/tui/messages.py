"""Messages the engine host posts to the app (thread-safe: ``post_message``), as dataclasses.

Widget-owned messages stay with their widgets (``AssistantMessage.Delta``,
``DownloadBar.Finished``, ``PromptInput.Submitted``); these are the ones between the
:class:`~localllm.tui.engine_host.EngineHost` workers and the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message

from localllm.errors import LocalLLMError
from localllm.streaming import TurnResult
from localllm.tui.state import Turn


@dataclass
class ModelLoaded(Message):
    """A model is loaded and its session is ready."""

    path: Path
    name: str
    engine: Any
    backend: str
    profile: Any  # the Profile it was loaded with
    vision: bool = False  # its projector is loaded: it reads images
    projector_error: LocalLLMError | None = None  # a projector was found but failed to load


@dataclass
class ModelFailed(Message):
    """Loading a model failed; no model is loaded now."""

    path: Path
    name: str
    error: LocalLLMError


@dataclass
class ContextCounted(Message):
    """How many tokens a conversation's history fills in the context."""

    tokens: int
    conversation_id: str


@dataclass
class TurnFinished(Message):
    """A request is over: what to save and show (the answer's widget may be gone)."""

    turn: Turn
    result: TurnResult

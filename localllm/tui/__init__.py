"""The terminal chat (``localllm chat``), built on Textual.

Imported only by the ``chat`` command, so ``localllm --help`` never loads Textual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localllm.tui.app import ChatApp, run_chat

__all__ = ["ChatApp", "run_chat"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from localllm.tui import app

        return getattr(app, name)
    raise AttributeError(name)

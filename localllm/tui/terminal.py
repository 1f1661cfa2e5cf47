"""The real terminal's input: bytes that are not UTF-8 become U+FFFD instead of ending the app.

Textual's Linux driver decodes what the terminal sends with a strict UTF-8 decoder, so one
invalid byte (a Latin-1 paste, a stray byte from a serial console, ``tmux send-keys -H ff``)
raises in its input thread and the app exits with a traceback. ``localllm run`` reads invalid
bytes as U+FFFD; the chat follows the same rule by giving the driver a replacing decoder.
"""

from __future__ import annotations

import codecs
from typing import Any


def replacing_decoder(encoding: str) -> Any:
    """``codecs.getincrementaldecoder`` whose decoders default to ``errors="replace"``."""
    base = codecs.getincrementaldecoder(encoding)

    def make(errors: str = "replace") -> codecs.IncrementalDecoder:
        return base(errors=errors)

    return make


def tolerate_invalid_input() -> None:
    """Make the terminal drivers decode input with replacement (idempotent; called when the
    chat starts, never at import)."""
    import importlib

    for name in ("textual.drivers.linux_driver", "textual.drivers.linux_inline_driver"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # Windows, or a Textual without this driver
            continue
        if hasattr(module, "getincrementaldecoder"):
            module.getincrementaldecoder = replacing_decoder

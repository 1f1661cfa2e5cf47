"""Text that comes in from outside: command-line arguments, stdin, files, profile fields.

One rule for all of it: text is UTF-8, and bytes that are not valid UTF-8 become U+FFFD (�), as
a browser or an editor shows them, with one warning naming where they were. A tokenizer never
sees a lone surrogate (the form Python gives undecodable bytes of ``argv`` and, in some
locales, of stdin), which would otherwise end a run in a ``UnicodeEncodeError``.

Pure: no terminal, no model. The front ends create one :class:`TextInputs` per command, pass
every input through it, and print :meth:`TextInputs.warning` once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REPLACEMENT", "TextInputs", "clean_text", "decode_bytes"]

REPLACEMENT = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]+")


def _replace_run(match: re.Match[str]) -> str:
    run = match.group()
    try:
        # Escaped bytes (U+DC80..U+DCFF) decode exactly as the raw bytes would have.
        return run.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        # Other lone surrogates (from JSON or YAML escapes): one replacement each.
        return "".join(
            c.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if "\udc80" <= c <= "\udcff"
            else REPLACEMENT
            for c in run
        )


def clean_text(text: str) -> tuple[str, bool]:
    """``text`` with every lone surrogate replaced; and whether anything was replaced.

    Surrogate-escaped bytes (Python's form of undecodable ``argv`` bytes) are decoded the way
    :func:`decode_bytes` decodes the raw bytes, so an argument and the same bytes on stdin give
    the same text.
    """
    if _SURROGATES.search(text) is None:
        return text, False
    return _SURROGATES.sub(_replace_run, text), True


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """UTF-8 bytes as text; invalid bytes become U+FFFD."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


class TextInputs:
    """Decodes every text input of one command and remembers which needed replacing."""

    def __init__(self) -> None:
        self.replaced: list[str] = []

    def _note(self, source: str, replaced: bool) -> None:
        if replaced and source not in self.replaced:
            self.replaced.append(source)

    def text(self, value: str, source: str) -> str:
        """An argument or a field that is already ``str``."""
        cleaned, replaced = clean_text(value)
        self._note(source, replaced)
        return cleaned

    def optional(self, value: str | None, source: str) -> str | None:
        return None if value is None else self.text(value, source)

    def texts(self, values: Iterable[str], source: str) -> list[str]:
        return [self.text(v, source) for v in values]

    def data(self, data: bytes, source: str) -> str:
        """Bytes read from stdin or a file."""
        text, replaced = decode_bytes(data)
        self._note(source, replaced)
        return text

    def warning(self) -> str | None:
        """One line naming every input that held invalid UTF-8, or ``None``."""
        if not self.replaced:
            return None
        names = self.replaced
        where = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "is" if len(names) == 1 else "are"
        return (
            f"warning: {where} {verb} not valid UTF-8: invalid bytes were replaced by "
            f"{REPLACEMENT} (U+FFFD)"
        )

"""Saved conversations: one append-only JSON Lines file per conversation.

Each line is one record, and a file is only ever appended to (a rename or a change of model is a
new record; the latest one wins), so a crash can cost at most the record being written:

* ``{"type": "conversation", "version": 1, "id": ..., "created": ...}``: the first line;
* ``{"type": "message", "role": "user" | "assistant", "content": ..., "time": ...}``, an
  assistant message possibly with ``reasoning``, ``stopped``, ``stats`` and ``mode`` (the mode
  that answer ran in; older files get it from the settings record before it);
* ``{"type": "settings", "model": ..., "profile": ..., "mode": ..., ...}``: what the next turns
  ran with (a resumed conversation continues with the latest);
* ``{"type": "title", "title": ...}``: a rename.

Every append is flushed and fsynced. A half-written last line (power loss) is skipped when the
file is read, and the next append starts on a fresh line. Pure file I/O: no terminal, no model.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from localllm import paths
from localllm.durable import fsync_dir
from localllm.errors import LocalLLMError, UsageError

FORMAT_VERSION = 1
SUFFIX = ".jsonl"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TITLE_CHARS = 60


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def new_id() -> str:
    """A sortable, unique conversation id: ``20250101-120000-a1b2c3``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _storage_error(action: str, path: Path, exc: OSError) -> LocalLLMError:
    return LocalLLMError(
        f"cannot {action} {path}: {exc.strerror or exc}",
        hint="check free disk space and the permissions of the conversations folder",
    )


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > _TITLE_CHARS:
        line = line[: _TITLE_CHARS - 1].rstrip() + "…"
    return line


@dataclass
class Conversation:
    """One conversation: its records as read from (or appended to) its file."""

    id: str
    path: Path
    created: str = field(default_factory=_now)
    title: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0
    # Settings given before the file exists; written with the first record.
    _pending_settings: dict[str, Any] | None = field(default=None, init=False, repr=False)

    # -- creating and reading -----------------------------------------------------------

    @classmethod
    def new(cls, settings: dict[str, Any] | None = None) -> Conversation:
        """A conversation with no file yet: the file appears with the first record written.

        ``settings`` are recorded with that first write.
        """
        ident = new_id()
        conversation = cls(id=ident, path=paths.conversations_dir() / f"{ident}{SUFFIX}")
        if settings:
            conversation.settings = dict(settings)
            conversation._pending_settings = dict(settings)
        return conversation

    @classmethod
    def read(cls, path: Path) -> Conversation:
        """Parse a conversation file; unreadable lines (a torn last write) are skipped."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no conversation file {path}") from None
        except OSError as exc:
            raise _storage_error("read", path, exc) from None
        conversation = cls(id=path.name.removesuffix(SUFFIX), path=path)
        created = None
        mode: Any = None  # the mode in the settings at this point of the file
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                conversation.skipped_lines += 1
                continue
            if not isinstance(record, dict):
                conversation.skipped_lines += 1
                continue
            kind = record.get("type")
            if kind == "conversation":
                created = created or record.get("created")
            elif kind == "message" and isinstance(record.get("content"), str):
                if record.get("role") in ("user", "assistant", "system"):
                    message = {k: v for k, v in record.items() if k != "type"}
                    if message["role"] == "assistant" and mode and "mode" not in message:
                        message["mode"] = mode  # a file written before turns recorded it
                    conversation.messages.append(message)
            elif kind == "settings":
                mode = record.get("mode", mode)
                conversation.settings.update(
                    {k: v for k, v in record.items() if k not in ("type", "time")}
                )
            elif kind == "title":
                title = record.get("title")
                conversation.title = title if isinstance(title, str) and title else None
        if created is None:
            try:
                created = (
                    datetime.fromtimestamp(path.stat().st_mtime)
                    .astimezone()
                    .isoformat(timespec="seconds")
                )
            except OSError:
                created = _now()
        conversation.created = created
        return conversation

    # -- what it holds ---------------------------------------------------------------------

    @property
    def display_title(self) -> str:
        """The title, or the first question when it was never renamed."""
        if self.title:
            return self.title
        first = next((m["content"] for m in self.messages if m.get("role") == "user"), "")
        return _title_from(first) if first.strip() else "(empty conversation)"

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def history(self) -> list[dict[str, Any]]:
        """The exchanges a model should see again: every user message that got an answer,
        followed by that answer (``role``, ``content`` and ``reasoning`` when there was some;
        a question's attached images, as recorded, under ``attachments``).
        A question whose answer was lost (a crash, an error) is left out."""
        out: list[dict[str, Any]] = []
        pending: dict[str, Any] | None = None
        for message in self.messages:
            role = message.get("role")
            if role == "user":
                pending = message
            elif role == "assistant" and pending is not None:
                question: dict[str, Any] = {"role": "user", "content": pending["content"]}
                if pending.get("images"):  # what was attached: path, name, size, sha256
                    question["attachments"] = pending["images"]
                out.append(question)
                answer: dict[str, Any] = {"role": "assistant", "content": message["content"]}
                if message.get("reasoning"):
                    answer["reasoning"] = message["reasoning"]
                out.append(answer)
                pending = None
        return out

    # -- appending -----------------------------------------------------------------------

    def _append(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        folder = self.path.parent
        lines: list[str] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            if fresh:
                header = {
                    "type": "conversation",
                    "version": FORMAT_VERSION,
                    "id": self.id,
                    "created": self.created,
                }
                lines.append(json.dumps(header, ensure_ascii=False))
                if self._pending_settings:
                    pending = {"type": "settings", "time": _now(), **self._pending_settings}
                    lines.append(json.dumps(pending, ensure_ascii=False))
                    self._pending_settings = None
            lines.extend(json.dumps(r, ensure_ascii=False) for r in records)
            with open(self.path, "ab") as f:
                if not fresh and f.tell() > 0 and not self._ends_with_newline():
                    f.write(b"\n")  # a torn last line must not swallow this record
                f.write(("\n".join(lines) + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            if fresh:
                fsync_dir(folder)
        except OSError as exc:
            raise _storage_error("save the conversation to", self.path, exc) from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def add_message(self, role: str, content: str, **extra: Any) -> dict[str, Any]:
        """Append one message (written and fsynced before this returns); an answer records
        its ``mode`` (by default the one in the settings)."""
        message: dict[str, Any] = {"role": role, "content": content, "time": _now()}
        if role == "assistant" and extra.get("mode") is None:
            extra["mode"] = {**self.settings, **(self._pending_settings or {})}.get("mode")
        message.update({k: v for k, v in extra.items() if v is not None})
        self._append([{"type": "message", **message}])
        self.messages.append(message)
        return message

    def set_settings(self, **settings: Any) -> bool:
        """Record the settings the next turns use, when they differ from the last ones.

        Before the first message they are only remembered (an empty chat leaves no file).
        Returns whether anything changed.
        """
        current = {**self.settings, **(self._pending_settings or {})}
        changed = {k: v for k, v in settings.items() if current.get(k) != v}
        if not changed:
            return False
        if not self.exists:
            self._pending_settings = {**(self._pending_settings or {}), **changed}
        else:
            self._append([{"type": "settings", "time": _now(), **changed}])
        self.settings.update(changed)
        return True

    def rename(self, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise UsageError("a conversation title cannot be empty")
        self._append([{"type": "title", "time": _now(), "title": title}])
        self.title = title

    # -- export ----------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """The conversation as a Markdown document."""
        out = [f"# {self.display_title}", ""]
        facts = []
        for key, label in (("model", "Model"), ("profile", "Profile")):
            if self.settings.get(key):
                facts.append(f"{label}: {self.settings[key]}")
        facts.append(f"Started: {self.created}")
        out += [" · ".join(facts), ""]
        if self.settings.get("system_prompt"):
            out += ["## System", "", str(self.settings["system_prompt"]).rstrip(), ""]
        for message in self.messages:
            role = message.get("role")
            heading = "## You" if role == "user" else f"## {str(role).capitalize()}"
            if role == "assistant" and message.get("mode"):
                heading += f" · {message['mode']}"  # each answer's own mode
            out += [heading, ""]
            reasoning = message.get("reasoning")
            if reasoning:
                out += ["<details><summary>Reasoning</summary>", "", reasoning.rstrip(), ""]
                out += ["</details>", ""]
            for image in message.get("images") or ():
                out += [f"*(image: {image.get('label') or image.get('name')})*", ""]
            out += [message["content"].rstrip() or "*(no text)*", ""]
            if message.get("stopped"):
                out += ["*(stopped)*", ""]
        return "\n".join(out).rstrip() + "\n"


@dataclass(frozen=True)
class Summary:
    """One line of the conversation list."""

    id: str
    path: Path
    title: str
    created: str
    updated: float
    messages: int
    model: str | None
    profile: str | None


def _check_id(ident: str) -> str:
    if not isinstance(ident, str) or not _ID_RE.match(ident.removesuffix(SUFFIX)):
        raise UsageError(f"'{ident}' is not a conversation id")
    return ident.removesuffix(SUFFIX)


def path_of(ref: str | Path) -> Path:
    """The file of a conversation given its id or its path."""
    if isinstance(ref, Path):
        return ref
    return paths.conversations_dir() / f"{_check_id(ref)}{SUFFIX}"


def load(ref: str | Path) -> Conversation:
    """The conversation with id (or file) ``ref``."""
    path = path_of(ref)
    if not path.is_file():
        raise UsageError(
            f"no conversation '{path.name.removesuffix(SUFFIX)}'",
            hint="the conversation list shows the saved ones",
        )
    return Conversation.read(path)


def list_conversations() -> list[Summary]:
    """Every saved conversation, the most recently updated first."""
    folder = paths.conversations_dir()
    if not folder.is_dir():
        return []
    found: list[Summary] = []
    for path in folder.glob(f"*{SUFFIX}"):
        if not path.is_file() or not _ID_RE.match(path.name.removesuffix(SUFFIX)):
            continue
        try:
            conversation = Conversation.read(path)
            updated = path.stat().st_mtime
        except (LocalLLMError, OSError):
            continue
        found.append(
            Summary(
                id=conversation.id,
                path=path,
                title=conversation.display_title,
                created=conversation.created,
                updated=updated,
                messages=len(conversation.messages),
                model=conversation.settings.get("model"),
                profile=conversation.settings.get("profile"),
            )
        )
    found.sort(key=lambda s: (s.updated, s.id), reverse=True)
    return found


def delete(ref: str | Path) -> Path:
    """Remove a saved conversation; returns the file that was removed."""
    path = path_of(ref)
    try:
        path.unlink()
    except FileNotFoundError:
        raise UsageError(f"no conversation '{path.name.removesuffix(SUFFIX)}'") from None
    except OSError as exc:
        raise _storage_error("delete", path, exc) from None
    return path


def slug(text: str) -> str:
    """A file-name-safe form of a title."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return cleaned[:50].rstrip("-") or "conversation"


def export_markdown(conversation: Conversation, dest: str | Path | None = None) -> Path:
    """Write the conversation as Markdown to ``dest`` (a file, or a folder to put it in;
    the current folder by default) and return the file written."""
    target = Path(dest).expanduser() if dest is not None else Path.cwd()
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", os.sep))):
        target = target / f"{slug(conversation.display_title)}.md"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(conversation.to_markdown(), encoding="utf-8")
    except OSError as exc:
        raise _storage_error("write", target, exc) from None
    return target

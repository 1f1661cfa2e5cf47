"""The download bar: pulls one model at a time in its own worker and shows its progress.

Hidden while idle. The worker reports progress by leaving the latest figures for the bar and
posting a message only when the previous one was drawn, so a fast download never floods the
screen and no figure is lost: the bar always ends up showing the latest.
When the pull ends the bar posts :class:`DownloadBar.Finished`, which the app turns into a model
load (or an error notification).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, ProgressBar
from textual.worker import get_current_worker

from localllm.errors import LocalLLMError


def can_pull() -> bool:
    try:
        from localllm import hub

        return hasattr(hub, "plan_pull") and hasattr(hub, "pull")
    except ImportError:
        return False


class DownloadBar(Horizontal):
    """``pulling owner/repo:QUANT ━━━━━━━━━━ 40%``"""

    @dataclass
    class Progress(Message):
        """New figures are waiting in the bar (posted by its worker)."""

    @dataclass
    class Finished(Message):
        """A pull ended: ``path`` of the model, or ``error``."""

        ref: str
        name: str | None
        path: Path | None
        error: LocalLLMError | None = None

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ref: str | None = None  # what is being pulled
        self._figures: tuple[int, int | None] = (0, None)
        self._posted = threading.Event()  # a Progress message is on its way

    def compose(self) -> ComposeResult:
        yield Label("", id="download-label")

    def on_mount(self) -> None:
        self.display = False

    async def pull(self, ref: str) -> None:
        """Start pulling ``ref`` (the caller checks that nothing else is being pulled)."""
        self.ref = ref
        self._figures = (0, None)
        self.display = True
        self.query_one("#download-label", Label).update(f"pulling {ref} ")
        # Mounted only while pulling: an idle progress bar still animates 15 times a second,
        # waking the UI thread that llama.cpp's threads would rather have to themselves.
        await self.mount(ProgressBar(id="download-bar", show_eta=False, total=None))
        self._pull_worker(ref)

    @work(thread=True, exclusive=True, group="download", exit_on_error=False)
    def _pull_worker(self, ref: str) -> None:
        from localllm import hub
        from localllm.tui.engine_host import as_error

        worker = get_current_worker()

        class _Aborted(Exception):
            pass

        def progress(done: int, total: int | None) -> None:
            if worker.is_cancelled:
                raise _Aborted
            self._figures = (done, total)  # first the figures, then the flag (see the handler)
            if not self._posted.is_set():
                self._posted.set()
                self.post_message(self.Progress())

        try:
            plan = hub.plan_pull(ref)
            manifest = hub.pull(plan, progress=progress)
        except _Aborted:
            return
        except Exception as exc:
            self.post_message(self.Finished(ref, None, None, as_error(exc, "download failed")))
            return
        self.post_message(self.Finished(ref, manifest.name, manifest.primary))

    def on_download_bar_progress(self, message: Progress) -> None:
        message.stop()
        self._posted.clear()  # before reading: figures left after this get a message of theirs
        done, total = self._figures
        self.query_one(ProgressBar).update(total=total, progress=done)

    async def on_download_bar_finished(self, message: Finished) -> None:
        # Seen here first (then it bubbles to the app): the bar hides and is free again.
        self.ref = None
        self.display = False
        await self.query(ProgressBar).remove()

"""The status bar: what is loaded, how it is set up, and how fast the last answer came."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rich.text import Text
from textual.widgets import Static


@dataclass(frozen=True)
class Status:
    """Everything the bar shows; ``None`` is shown as a dash."""

    model: str | None = None
    quant: str | None = None
    profile: str | None = None
    mode: str | None = None
    ctx_used: int | None = None
    ctx_total: int | None = None
    tokens_per_s: float | None = None
    ttft_s: float | None = None
    backend: str | None = None
    activity: str = ""  # "loading …", "answering", "downloading 40%"


def format_status(status: Status, *, timings: bool = True) -> Text:
    """The bar's text (``timings=False`` leaves out the speed figures, for snapshots)."""
    text = Text(no_wrap=True, overflow="ellipsis")

    def part(value: str, style: str = "") -> None:
        if text:
            text.append(" │ ", style="dim")
        text.append(value, style=style)

    if status.activity:
        part(status.activity, "bold")
    part(status.model or "no model", "bold" if status.model else "italic")
    details = " ".join(x for x in (status.quant, status.backend) if x)
    if details:
        text.append(f" {details}", style="dim")
    part(f"{status.profile or '-'} · {status.mode or '-'}")
    total = f"{status.ctx_total:,}" if status.ctx_total else "-"
    used = f"{status.ctx_used:,}" if status.ctx_used is not None else "-"
    part(f"ctx {used}/{total}")
    if timings:
        tps = f"{status.tokens_per_s:.1f} tok/s" if status.tokens_per_s else "- tok/s"
        ttft = "TTFT -"
        if status.ttft_s is not None:
            seconds = status.ttft_s
            ttft = f"TTFT {seconds * 1000:.0f} ms" if seconds < 10 else f"TTFT {seconds:.1f} s"
        part(f"{tps} · {ttft}")
    return text


class StatusBar(Static):
    """One line at the bottom of the chat."""

    def __init__(self, *, timings: bool = True, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.status = Status()
        self.timings = timings

    def on_mount(self) -> None:
        self.update(format_status(self.status, timings=self.timings))

    def set(self, **changes: Any) -> None:
        """Change some fields and redraw."""
        self.status = replace(self.status, **changes)
        self.update(format_status(self.status, timings=self.timings))

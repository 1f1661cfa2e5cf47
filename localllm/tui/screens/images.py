"""The image picker (Ctrl+A): a folder tree that lists only the images a vision model reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Label, Static

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class ImageTree(DirectoryTree):
    """A DirectoryTree showing folders and image files (hidden entries left out)."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        shown = []
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
                    shown.append(path)
            except OSError:  # a broken link, a folder we may not read
                continue
        return shown


class ImagePicker(ModalScreen[Path | None]):
    """Pick an image file: Enter on a file attaches it, Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Cancel")]
    AUTO_FOCUS = "ImageTree"

    def __init__(self, root: Path) -> None:
        super().__init__(classes="dialog-screen")
        self._root = root

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Attach an image · {self._root}", classes="dialog-title")
            yield ImageTree(self._root, id="image-tree")
            yield Static(
                "Enter: attach the image (PNG, JPEG, GIF, BMP) · Esc: cancel · "
                "/image PATH attaches one from anywhere",
                classes="dialog-hint",
            )

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(event.path)

    def action_close(self) -> None:
        self.dismiss(None)

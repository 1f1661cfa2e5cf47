"""What the benchmark scripts share."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def starter_path() -> Path:
    """The starter model, from the test suite's cached download (no Hub needed)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import conftest

    return conftest.starter_model.__wrapped__()  # type: ignore[attr-defined]

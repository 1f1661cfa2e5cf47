"""Where localllm keeps its files.

Every location is a function so nothing is read at import time. ``LOCALLLM_HOME`` moves every
user directory under one root (tests and portable installs use it); otherwise the platform's
conventions apply through platformdirs.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "localllm"


def home_override() -> Path | None:
    """The ``LOCALLLM_HOME`` root, when set."""
    value = os.environ.get("LOCALLLM_HOME")
    return Path(value).expanduser() if value else None


def _platform_dir(kind: str) -> Path:
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "cache": platformdirs.user_cache_dir,
    }[kind]
    return Path(getter(APP_NAME, appauthor=False))


def _user_dir(kind: str) -> Path:
    root = home_override()
    return root / kind if root is not None else _platform_dir(kind)


def config_dir() -> Path:
    """User configuration: profiles live here."""
    return _user_dir("config")


def data_dir() -> Path:
    """User data: the model store and conversations."""
    return _user_dir("data")


def cache_dir() -> Path:
    """Disposable files: partial downloads, fetched wheels."""
    return _user_dir("cache")


def profiles_dir() -> Path:
    """User profiles (YAML); they may shadow the built-ins."""
    return config_dir() / "profiles"


def models_dir() -> Path:
    """The local model store."""
    return data_dir() / "models"


def conversations_dir() -> Path:
    """Saved chat transcripts."""
    return data_dir() / "conversations"


def prefix_cache_dir() -> Path:
    """Saved KV states of shared prompt prefixes (:class:`localllm.promptcache.PrefixStore`)."""
    return cache_dir() / "prefixes"


def downloads_dir() -> Path:
    """Partial downloads and their sidecars."""
    return cache_dir() / "downloads"

"""The error hierarchy of the core.

The core raises these with a one-line message and a hint for the next step; the CLI prints them
to stderr and exits with the class's code, the TUI shows them as notifications. Exit codes are
documented in the README and must stay stable.
"""

from __future__ import annotations


class LocalLLMError(Exception):
    """Base class: a failure a user can act on."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LocalLLMError):
    """Bad arguments or a bad combination of options."""

    exit_code = 2


class ProfileError(LocalLLMError):
    """A profile is missing, unreadable or invalid."""

    exit_code = 2


class ModelNotFoundError(LocalLLMError):
    """A model reference matches nothing (or more than one thing)."""

    exit_code = 3


class InvalidModelError(LocalLLMError):
    """A model file is not a usable GGUF (truncated, corrupt, hostile, unsupported)."""

    exit_code = 3


class TemplateError(LocalLLMError):
    """A chat template failed to render or tried something the sandbox forbids."""

    exit_code = 3


class NetworkError(LocalLLMError):
    """The Hub or the package index could not be reached, or refused us."""

    exit_code = 4


class OfflineError(NetworkError):
    """A command needed the network while offline mode is on."""

    exit_code = 4


class ChecksumError(NetworkError):
    """Downloaded bytes do not match the expected sha256."""

    exit_code = 4


class ResourceError(LocalLLMError):
    """Not enough disk space or memory for what was asked."""

    exit_code = 5


class InferenceError(LocalLLMError):
    """The engine failed while loading or generating."""

    exit_code = 6


class EngineCrashed(InferenceError):
    """The process running the model died (llama.cpp aborted, a signal, an RPC worker lost):
    the front end survives it and loads the model again on the next request."""

    exit_code = 6


# Exit code for an interrupted command (128 + SIGINT), as shells expect.
EXIT_INTERRUPTED = 130

# Exit code when whoever read our output closed it early (`localllm list | head -1`):
# 128 + SIGPIPE, the status `cat` and other Unix tools end with there.
EXIT_PIPE_CLOSED = 141

"""Errors at the HTTP edge, in the two wire shapes.

OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Ollama: ``{"error": "..."}``.
The core's :class:`~localllm.errors.LocalLLMError` subclasses map onto statuses here, so a
client's mistake is always a 4xx (clients retry 5xx).
"""

from __future__ import annotations

from typing import Any

from localllm.errors import (
    EngineCrashed,
    InferenceError,
    InvalidModelError,
    LocalLLMError,
    ModelNotFoundError,
    ProfileError,
    ResourceError,
    TemplateError,
    UsageError,
)


class HTTPError(Exception):
    """An error answer: status, message, and the OpenAI ``type``/``param``/``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _default_type(status)
        self.headers = headers or {}

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> HTTPError:
    return HTTPError(400, message, param=param, code=code)


def unsupported(param: str, what: str | None = None) -> HTTPError:
    """A field that would change the result but that localllm does not do (yet)."""
    return HTTPError(
        400,
        f"'{param}' is not supported by this server" + (f": {what}" if what else ""),
        param=param,
        code="unsupported_parameter",
    )


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status in (429, 503):
        return "server_busy"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def from_core(exc: LocalLLMError) -> HTTPError:
    """The HTTP answer for a core error."""
    message = exc.message + (f" ({exc.hint})" if exc.hint else "")
    if isinstance(exc, ModelNotFoundError):
        return HTTPError(404, message, param="model", code="model_not_found")
    if isinstance(exc, UsageError) and "context holds" in exc.message:
        return HTTPError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(exc, UsageError) and "no tool support" in exc.message:
        return HTTPError(400, message, param="tools", code="tools_unsupported")
    if isinstance(exc, (UsageError, ProfileError, TemplateError)):
        return HTTPError(400, message)
    if isinstance(exc, ResourceError):
        return HTTPError(503, message, code="insufficient_memory")
    if isinstance(exc, EngineCrashed):  # the server is up; the next request loads again
        return HTTPError(500, message, code="engine_crashed")
    if isinstance(exc, (InvalidModelError, InferenceError)):
        return HTTPError(500, message, code="model_error")
    return HTTPError(500, message)

"""Render a model's chat template in a sandbox.

Chat templates come from model files written by strangers, so they run only in Jinja's
``ImmutableSandboxedEnvironment`` (the fix for CVE-2024-34359): no attribute walks to Python
internals, no mutation of passed-in objects, bounded ``range``. We render them ourselves rather
than through llama-cpp-python so per-request variables (``enable_thinking``, ``thinking``,
``reasoning_effort``) can change from one request to the next.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from localllm.errors import TemplateError

Message = Mapping[str, Any]

# Caps for hostile templates: no real chat template comes near them.
MAX_EXPONENT = 64
MAX_REPEAT = 1_000_000


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as Hugging Face chat templates expect it: plain JSON text in the given key
    order. Jinja's own filter sorts keys and returns markup, so ``"text" + x|tojson`` in a
    template (gpt-oss, Mistral tool messages) HTML-escaped the text around it."""
    import json

    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=1)
def _environment_class() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Jinja's sandbox renders an unsafe attribute as empty; we stop the render instead,
        so a template probing for Python internals fails loudly rather than half-working."""

        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
            )

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            # Bound the two operators that can exhaust memory or CPU in one expression.
            if operator == "**":
                if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                    raise SecurityError(f"exponent {right} is too large for a chat template")
                return left**right
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT
                ):
                    raise SecurityError("a repeated string or list in the template is too long")
            return left * right

    return StrictSandbox


def warm() -> None:
    """Import what rendering needs (jinja2's sandbox), e.g. on a thread while a model loads."""
    _environment_class()


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2

    env = _environment_class()(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise TemplateError(
            f"the model's chat template does not parse: {exc}",
            hint="pass a replacement with --template-file or a profile's chat_template",
        ) from exc


def render(
    source: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render ``messages`` with the chat template ``source``.

    ``variables`` are extra template variables for this request only (``enable_thinking``...).
    Any failure, including a sandbox violation, becomes a :class:`TemplateError`.
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    template = _compile(source)
    context: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if variables:
        context.update(variables)
    try:
        return template.render(**context)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(
            f"the model's chat template tried something unsafe and was stopped: {exc}",
            hint="pass a replacement with --template-file or a profile's chat_template",
        ) from exc
    except (jinja2.TemplateError, TypeError, ValueError, OverflowError, KeyError) as exc:
        raise TemplateError(
            f"the model's chat template failed to render: {exc}",
            hint="pass a replacement with --template-file or a profile's chat_template",
        ) from exc
    except RecursionError as exc:
        raise TemplateError("the model's chat template recursed too deeply") from exc


def template_variables(source: str) -> set[str]:
    """Names the template reads but does not define (``enable_thinking``, ``tools``...)."""
    import jinja2
    from jinja2 import meta

    try:
        ast = _compile(source).environment.parse(source)
    except jinja2.TemplateError:
        return set()
    return set(meta.find_undeclared_variables(ast))

"""Chat templates come from strangers: they render only in the sandbox."""

from __future__ import annotations

import pytest

from localllm import templates
from localllm.errors import TemplateError

MSGS = [{"role": "user", "content": "hi"}]

# The CVE-2024-34359 proof of concept: a chat template that walks from a string's class to
# os.popen. In llama-cpp-python < 0.2.72 loading such a model ran the command.
CVE_2024_34359 = (
    "{% for x in ().__class__.__base__.__subclasses__() %}"
    '{% if "warning" in x.__name__ %}'
    "{{ x()._module.__builtins__['__import__']('os').popen('touch /tmp/pwned-localllm').read() }}"
    "{% endif %}{% endfor %}"
)

ESCAPES = [
    CVE_2024_34359,
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "{{ bos_token.format.__globals__ }}",
    "{{ 'x' * 10**12 }}",
    "{{ [1] * 100000000 }}",
    "{{ 2 ** 99999999999 }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_escapes_are_stopped_with_a_template_error(source: str, tmp_path) -> None:
    with pytest.raises(TemplateError) as info:
        templates.render(source, MSGS)
    assert "template" in str(info.value)
    assert info.value.hint and "--template-file" in info.value.hint


def test_cve_payload_runs_no_code() -> None:
    import os

    marker = "/tmp/pwned-localllm"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(TemplateError):
        templates.render(CVE_2024_34359, MSGS)
    assert not os.path.exists(marker)


def test_raise_exception_in_a_template_is_a_clear_error() -> None:
    source = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(TemplateError, match="System role not supported"):
        templates.render(source, MSGS)


def test_unparseable_template() -> None:
    with pytest.raises(TemplateError, match="does not parse"):
        templates.render("{% for %}", MSGS)


def test_per_request_variables_and_loop_controls() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
        "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}"
    )
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert templates.render(source, msgs) == "a"
    assert templates.render(source, msgs, variables={"enable_thinking": False}) == "a/no_think"
    assert "enable_thinking" in templates.template_variables(source)


def test_messages_passed_in_are_not_mutated() -> None:
    msgs = [{"role": "user", "content": "keep"}]
    with pytest.raises(TemplateError):
        templates.render("{{ messages[0].update({'content': 'changed'}) }}", msgs)
    assert msgs[0]["content"] == "keep"

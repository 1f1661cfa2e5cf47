"""The reasoning module on its own: adapter detection, prompt plans, the streaming splitters
(with hypothesis: any chunking gives the same split), and the budget accounting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localllm import reasoning, templates
from localllm.errors import UsageError
from localllm.reasoning import (
    HARMONY_SKIP_ANALYSIS,
    HarmonySplitter,
    Part,
    PassThrough,
    ReasoningStream,
    ThinkSplitter,
)

# -- realistic templates of each family ------------------------------------------------------

QWEN3_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

GRANITE_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Knowledge Cutoff Date: April 2024.\\nYou are Granite, developed by \
IBM." %}
    {%- if thinking %}
        {%- set system_message = system_message + " You are a helpful AI assistant.\\nRespond \
to every user query in a comprehensive and detailed way. You can write down your thoughts and \
reasoning process before responding. Write your thoughts between <think></think> and write your \
response between <response></response> for each user query." %}
    {%- endif %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}
{%- for message in loop_messages %}
    {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + \
'<|end_of_text|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
{%- endif %}
"""

DEEPSEEK_R1_TEMPLATE = """\
{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}
{%- set ns = namespace(system_prompt='') -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {%- set ns.system_prompt = message['content'] -%}
    {%- endif -%}
{%- endfor -%}
{{ bos_token }}{{ ns.system_prompt }}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
        {{ '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' -%}
        {%- set content = message['content'] -%}
        {%- if '</think>' in content -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<｜Assistant｜><think>\\n' }}{%- endif -%}
"""

GPT_OSS_TEMPLATE = """\
{%- if not reasoning_effort is defined %}{%- set reasoning_effort = "medium" %}{%- endif %}
{{- "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n" }}
{{- "Knowledge cutoff: 2024-06\\n\\nReasoning: " + reasoning_effort + "\\n\\n" }}
{{- "# Valid channels: analysis, commentary, final. Channel must be included for every \
message.<|end|>" }}
{%- for message in messages %}
    {%- if message.role == 'system' or message.role == 'developer' %}
        {{- "<|start|>developer<|message|># Instructions\\n\\n" + message.content + "<|end|>" }}
    {%- elif message.role == 'user' %}
        {{- "<|start|>user<|message|>" + message.content + "<|end|>" }}
    {%- elif message.role == 'assistant' %}
        {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|start|>assistant" }}{%- endif %}
"""

QWQ_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TEMPLATES = {
    "qwen3": (QWEN3_TEMPLATE, "enable_thinking"),
    "granite": (GRANITE_TEMPLATE, "thinking"),
    "deepseek-r1": (DEEPSEEK_R1_TEMPLATE, "prefill"),
    "qwq": (QWQ_TEMPLATE, "prefill"),
    "gpt-oss": (GPT_OSS_TEMPLATE, "harmony"),
    "chatml": (CHATML_TEMPLATE, "none"),
}


# -- adapters ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_detect_adapter_per_family(family: str) -> None:
    template, expected = TEMPLATES[family]
    assert reasoning.detect_adapter(template) == expected


def test_choose_adapter_defaults_and_overrides() -> None:
    assert reasoning.choose_adapter(CHATML_TEMPLATE) == "instruction"
    assert reasoning.choose_adapter(None) == "none"
    assert reasoning.choose_adapter(QWEN3_TEMPLATE, "auto") == "enable_thinking"
    assert reasoning.choose_adapter(CHATML_TEMPLATE, "prefill") == "prefill"
    assert reasoning.choose_adapter(QWEN3_TEMPLATE, "none") == "none"
    with pytest.raises(UsageError):
        reasoning.choose_adapter(CHATML_TEMPLATE, "bogus")
    for adapter in reasoning.ADAPTERS:
        assert reasoning.describe_adapter(adapter).startswith(adapter)


def test_detect_adapter_survives_unparsable_and_unrenderable_templates() -> None:
    assert reasoning.detect_adapter("{% if enable_thinking %}") == "enable_thinking"
    assert reasoning.detect_adapter("{% for %}") == "none"
    # Renders only with a conversation the sample does not match: falls back to the source.
    refusing = (
        "{{ raise_exception('no') }}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
    )
    assert reasoning.detect_adapter(refusing) == "prefill"
    # Mentions <think> only to strip it from history: no prefill.
    stripping = CHATML_TEMPLATE.replace(
        "message['content']", "message['content'].split('</think>')[-1]"
    )
    assert reasoning.detect_adapter(stripping + "{# <think> #}") == "none"


def test_effective_mode_budget_zero_is_instant() -> None:
    assert reasoning.effective_mode("reasoning", None) == "reasoning"
    assert reasoning.effective_mode("reasoning", 100) == "reasoning"
    assert reasoning.effective_mode("reasoning", 0) == "instant"
    assert reasoning.effective_mode("instant", 100) == "instant"


def render(template: str, mode: str, adapter: str | None = None) -> str:
    adapter = adapter or reasoning.choose_adapter(template)
    plan = reasoning.plan_prompt(adapter, mode, [{"role": "user", "content": "Hi"}])  # type: ignore[arg-type]
    text = templates.render(template, plan.messages, bos_token="<s>", variables=plan.variables)
    return text + reasoning.prefill(adapter, plan.mode, text)


def test_qwen3_prompts() -> None:
    assert (
        render(QWEN3_TEMPLATE, "reasoning")
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(QWEN3_TEMPLATE, "instant") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_granite_prompts() -> None:
    on, off = render(GRANITE_TEMPLATE, "reasoning"), render(GRANITE_TEMPLATE, "instant")
    assert "<think></think>" in on and "<think>" not in off
    assert on.endswith("<|start_of_role|>assistant<|end_of_role|>")


def test_deepseek_r1_prompts() -> None:
    assert render(DEEPSEEK_R1_TEMPLATE, "reasoning") == "<s><｜User｜>Hi<｜Assistant｜><think>\n"
    assert render(DEEPSEEK_R1_TEMPLATE, "instant") == (
        "<s><｜User｜>Hi<｜Assistant｜><think>\n\n\n</think>\n\n"
    )
    # Forced on a template that does not open the block: the prefill opens or fills it.
    assert render(CHATML_TEMPLATE, "reasoning", "prefill").endswith("assistant\n<think>\n")
    assert render(CHATML_TEMPLATE, "instant", "prefill").endswith(
        "assistant\n<think>\n\n</think>\n\n"
    )


def test_gpt_oss_prompts() -> None:
    on, off = render(GPT_OSS_TEMPLATE, "reasoning"), render(GPT_OSS_TEMPLATE, "instant")
    assert "Reasoning: medium" in on and on.endswith("<|start|>assistant")
    assert "Reasoning: low" in off and off.endswith("<|start|>assistant" + HARMONY_SKIP_ANALYSIS)
    plan = reasoning.plan_prompt("harmony", "reasoning", [], effort="high")
    assert plan.variables == {"reasoning_effort": "high"} and plan.special


def test_instruction_prompts() -> None:
    on = render(CHATML_TEMPLATE, "reasoning")
    assert on.startswith("<|im_start|>system\n" + reasoning.REASONING_INSTRUCTION)
    assert (
        render(CHATML_TEMPLATE, "instant")
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    plan = reasoning.plan_prompt(
        "instruction", "reasoning", [{"role": "system", "content": "Be brief."}]
    )
    assert plan.messages == [
        {"role": "system", "content": "Be brief.\n\n" + reasoning.REASONING_INSTRUCTION}
    ]


def test_close_text() -> None:
    assert reasoning.close_text("prefill", None) == "\n</think>\n\n"
    assert reasoning.close_text("enable_thinking", "Done.") == "\n\nDone.\n</think>\n\n"
    assert reasoning.close_text("harmony", "").startswith("<|end|><|start|>assistant")


# -- the think splitter ------------------------------------------------------------------------


def split(text: str, chunks: list[int] | None = None, **kwargs: object) -> tuple[str, str]:
    splitter = ThinkSplitter(**kwargs)  # type: ignore[arg-type]
    parts: list[Part] = []
    pos = 0
    for size in chunks or []:
        parts += splitter.feed(text[pos : pos + size])
        pos += size
    parts += splitter.feed(text[pos:])
    parts += splitter.flush()
    assert all(p.text for p in parts), "no empty parts"
    return (
        "".join(p.text for p in parts if p.kind == "reasoning"),
        "".join(p.text for p in parts if p.kind == "answer"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>plan</think>answer", ("plan", "answer")),
        ("<think>\nplan it\n</think>\n\n  The answer.\n", ("plan it", "The answer.\n")),
        ("  \n<think>a</think>b", ("a", "b")),
        ("no thinking here", ("", "no thinking here")),
        ("answer <think>not reasoning</think>", ("", "answer <think>not reasoning</think>")),
        ("<thinking>x", ("", "<thinking>x")),
        ("<think>never closed", ("never closed", "")),
        ("<think></think>", ("", "")),
        ("<thi", ("", "<thi")),
        ("<think>a</thi", ("a</thi", "")),
        ("<think>a < b </ c</think> ok", ("a < b </ c", "ok")),
    ],
)
def test_think_splitter_cases(text: str, expected: tuple[str, str]) -> None:
    assert split(text) == expected
    assert split(text, [1] * len(text)) == expected


def test_prompt_already_opened_the_block() -> None:
    assert split("plan\n</think>\n\nanswer", start_in_reasoning=True) == ("plan", "answer")
    splitter = ThinkSplitter(start_in_reasoning=True)
    assert splitter.kind == "reasoning"
    splitter.feed("thinking hard")
    splitter.flush()
    assert splitter.unterminated


def test_unterminated_and_state_flags() -> None:
    splitter = ThinkSplitter()
    assert splitter.kind is None
    assert splitter.feed("<thi") == []
    assert splitter.holding_marker and splitter.kind is None
    assert splitter.feed("nk>x </th") == [Part("reasoning", "x")]
    assert splitter.holding_marker and splitter.kind == "reasoning" and splitter.saw_reasoning
    assert splitter.feed("ink>  y") == [Part("answer", "y")]
    assert splitter.kind == "answer"
    assert splitter.flush() == []
    assert not splitter.unterminated


def test_granite_response_tags_are_dropped() -> None:
    tags = reasoning.RESPONSE_TAGS
    text = "<think>hmm</think>\n<response>The answer.</response>\n"
    assert split(text, answer_tags=tags) == ("hmm", "The answer.\n")
    assert split(text, [1] * len(text), answer_tags=tags) == ("hmm", "The answer.\n")
    assert split("<response>x</resp", answer_tags=tags) == ("", "x</resp")


# Text made of the pieces that matter: tags, their fragments, whitespace, words.
PIECES = st.sampled_from(
    ["<think>", "</think>", "<", "</", "<th", "think", ">", "/", " ", "\n", "a", "bc", "é", "中"]
)
TEXTS = st.lists(PIECES, max_size=30).map("".join)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[str, list[int]]:
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    sizes, last = [], 0
    for cut in cuts:
        sizes.append(cut - last)
        last = cut
    return text, sizes


def reference_split(text: str, start_in_reasoning: bool) -> tuple[str, str]:
    """The same rules, written as a regex over the whole text."""
    if start_in_reasoning:
        text = "<think>" + text
    m = re.match(r"\s*<think>(.*?)(</think>|\Z)(.*)\Z", text, re.DOTALL)
    if m is None:
        return "", text.lstrip()
    return m.group(1).strip(), m.group(3).lstrip()


@settings(max_examples=400, deadline=None)
@given(chunked(), st.booleans())
def test_any_chunking_gives_the_same_split(case: tuple[str, list[int]], opened: bool) -> None:
    text, sizes = case
    whole = split(text, start_in_reasoning=opened)
    assert split(text, sizes, start_in_reasoning=opened) == whole
    assert whole == reference_split(text, opened)


@settings(max_examples=200, deadline=None)
@given(chunked())
def test_any_chunking_gives_the_same_split_with_answer_tags(case: tuple[str, list[int]]) -> None:
    text, sizes = case
    tags = ("<resp>", "</resp>")
    assert split(text, sizes, answer_tags=tags) == split(text, answer_tags=tags)


# -- the harmony splitter ----------------------------------------------------------------------

HARMONY_OUT = (
    "<|channel|>analysis<|message|>User says hi. Reply.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there!"
)


def hsplit(text: str, chunks: list[int] | None = None, prompt: str = "<|start|>assistant"):
    splitter = reasoning.make_splitter("harmony", prompt)
    assert isinstance(splitter, HarmonySplitter)
    parts: list[Part] = []
    pos = 0
    for size in chunks or []:
        parts += splitter.feed(text[pos : pos + size])
        pos += size
    parts += splitter.feed(text[pos:])
    parts += splitter.flush()
    return (
        "".join(p.text for p in parts if p.kind == "reasoning"),
        "".join(p.text for p in parts if p.kind == "answer"),
        splitter,
    )


def test_harmony_channels() -> None:
    r, a, sp = hsplit(HARMONY_OUT)
    assert (r, a) == ("User says hi. Reply.", "Hello there!")
    assert sp.saw_reasoning and not sp.unterminated
    r, a, _ = hsplit(HARMONY_OUT, [1] * len(HARMONY_OUT))
    assert (r, a) == ("User says hi. Reply.", "Hello there!")


def test_harmony_prefilled_final_channel_and_odd_shapes() -> None:
    prompt = "<|start|>user<|message|>hi<|end|><|start|>assistant" + HARMONY_SKIP_ANALYSIS
    r, a, sp = hsplit("Hi!<|return|>", prompt=prompt)
    assert (r, a) == ("", "Hi!") and not sp.saw_reasoning
    # Unterminated analysis: all reasoning, flagged.
    r, a, sp = hsplit("<|channel|>analysis<|message|>thinking and thin")
    assert (r, a) == ("thinking and thin", "") and sp.unterminated
    # No harmony structure at all: the text is the answer.
    assert hsplit("just text")[:2] == ("", "just text")
    # Commentary (tool preambles) is user-visible.
    r, a, _ = hsplit("<|channel|>commentary<|message|>Checking.<|end|>")
    assert (r, a) == ("", "Checking.")
    # A channel switch with no <|end|>.
    r, a, _ = hsplit("<|channel|>analysis<|message|>x<|channel|>final<|message|>y")
    assert (r, a) == ("x", "y")


HPIECES = st.sampled_from(
    [
        "<|channel|>",
        "analysis",
        "final",
        "<|message|>",
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|",
        "|>",
        "<",
        " ",
        "a",
        "b c",
        "<|ret",
        "urn|>",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(HPIECES, max_size=25).map("".join), st.data())
def test_harmony_any_chunking_gives_the_same_split(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert hsplit(text, sizes)[:2] == hsplit(text)[:2]


def test_pass_through_and_split_text() -> None:
    splitter = PassThrough()
    assert splitter.feed("<think>x") == [Part("answer", "<think>x")]
    assert splitter.flush() == []
    assert reasoning.split_text("<think>a</think>b") == ("a", "b")
    assert reasoning.split_text("a</think>b", prompt="...<think>\n") == ("a", "b")
    assert reasoning.split_text("<think>a", adapter="none") == ("", "<think>a")


# -- the budget and the accounting -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_stream_counts_tags_as_reasoning_and_defers_undecided_tokens() -> None:
    stream = ReasoningStream(ThinkSplitter(), budget=None, close="", clock=Clock())
    for piece in ["<", "th", "ink>", "a", " b", "</", "think>", "\n\n", "Hi", "!"]:
        stream.feed(piece)
    stream.finish()
    assert (stream.reasoning, stream.answer) == ("a b", "Hi!")
    assert stream.reasoning_tokens == 7  # the tag fragments included
    assert stream.answer_tokens == 3
    assert stream.reasoning_s == 6.0  # from the first token (t=1) to the close (t=7)
    assert stream.answer_s == 4.0  # to the end (t=11)


def test_budget_injects_once_after_n_reasoning_tokens() -> None:
    close = reasoning.close_text("prefill", "Time is up.")
    stream = ReasoningStream(ThinkSplitter(start_in_reasoning=True), budget=3, close=close)
    injected = []
    for i, piece in enumerate(["a", "b", "c", "d"]):
        stream.feed(piece)
        extra = stream.injection()
        if extra:
            injected.append(i)
            stream.feed(extra, 0)
    assert injected == [2]
    assert stream.injection() is None
    stream.feed("answer")
    stream.finish()
    assert stream.reasoning == "abc\n\nTime is up."
    assert stream.answer == "danswer"
    assert stream.reasoning_tokens == 3


def test_budget_waits_while_a_closing_tag_is_arriving() -> None:
    stream = ReasoningStream(ThinkSplitter(start_in_reasoning=True), budget=1, close="</think>")
    stream.feed("x </thi")
    assert stream.injection() is None  # the model is closing the block itself
    stream.feed("nk> done")
    assert stream.injection() is None
    stream.finish()
    assert (stream.reasoning, stream.answer) == ("x", "done")


def test_harmony_budget_and_answer_limit() -> None:
    splitter = reasoning.make_splitter("harmony", "<|start|>assistant")
    close = reasoning.close_text("harmony", None)
    # The analysis header's three tokens count as reasoning too.
    stream = ReasoningStream(splitter, budget=5, close=close, answer_limit=2)
    for piece in ["<|channel|>", "analysis", "<|message|>", "x"]:
        stream.feed(piece)
        assert stream.injection() is None
    stream.feed("y")
    extra = stream.injection()
    assert extra == close
    stream.feed(extra, 0)
    assert splitter.kind == "answer"
    stream.feed("A")
    assert not stream.answer_full
    stream.feed("B")
    assert stream.answer_full
    stream.finish()
    assert (stream.reasoning, stream.answer) == ("xy", "AB")
    assert (stream.reasoning_tokens, stream.answer_tokens) == (5, 2)


def test_answer_limit_counts_tokens_still_held_back() -> None:
    # Three tokens spelling one character: the text comes with the third, but the engine has
    # asked between tokens (tick) and the answer is full after two.
    stream = ReasoningStream(ThinkSplitter(), budget=None, close="", answer_limit=2)
    stream.feed("Hi")
    stream.tick()
    assert not stream.answer_full
    stream.tick()
    assert stream.answer_full


def test_limits() -> None:
    assert reasoning.budget_for("reasoning", 100, 512) == 100
    assert reasoning.budget_for("reasoning", None, 512) == 512
    assert reasoning.budget_for("instant", 100, 512) == 512
    assert reasoning.engine_limit("none", 512, 512) == 512
    assert reasoning.engine_limit("prefill", 100, 512) == 612 + reasoning.TOKEN_SLACK


# -- orphan closing tags and Granite 3.2's plain-text thoughts ---------------------------------


def test_orphan_closing_tag_still_ends_the_reasoning() -> None:
    """Some templates pre-fill ``<think>`` where the prompt does not show it: the model then
    writes only ``</think>``. In reasoning mode the text before it is reasoning."""
    text = "Let me see, 2+2.\n</think>\n\nIt is 4."
    assert split(text, expect_reasoning=True) == ("Let me see, 2+2.", "It is 4.")
    assert split(text, [1] * len(text), expect_reasoning=True) == (
        "Let me see, 2+2.",
        "It is 4.",
    )
    # Without expecting reasoning (instant mode), an orphan tag is plain answer text.
    assert split(text) == ("", text)
    # Expecting reasoning changes nothing for a model that opens its block or does not think.
    assert split("<think>a</think>b", expect_reasoning=True) == ("a", "b")
    assert split("just an answer", expect_reasoning=True) == ("", "just an answer")
    assert split("<thi", [1] * 4, expect_reasoning=True) == ("", "<thi")
    for adapter in ("prefill", "enable_thinking", "thinking"):
        splitter = reasoning.make_splitter(adapter, "<|im_start|>assistant\n", "reasoning")
        parts = splitter.feed("plan</think>answer") + splitter.flush()
        assert parts == [Part("reasoning", "plan"), Part("answer", "answer")], adapter
        assert splitter.saw_reasoning
    assert reasoning.split_text("plan</think>answer") == ("plan", "answer")
    assert reasoning.split_text("plan</think>answer", mode="instant") == (
        "",
        "plan</think>answer",
    )


def test_orphan_reasoning_is_held_not_shown_as_answer() -> None:
    splitter = ThinkSplitter(expect_reasoning=True)
    assert splitter.feed("thinking about it ") == []
    assert splitter.kind is None and splitter.holding_marker
    assert splitter.feed("</think> Yes") == [
        Part("reasoning", "thinking about it"),
        Part("answer", "Yes"),
    ]
    assert splitter.kind == "answer"
    assert splitter.feed(".") == [Part("answer", ".")]
    assert splitter.flush() == []


def reference_expect_split(text: str) -> tuple[str, str]:
    if text.lstrip().startswith("<think>"):
        return reference_split(text, False)
    head, sep, tail = text.partition("</think>")
    if not sep:
        return "", text.lstrip()
    return head.strip(), tail.lstrip()


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_orphan_split_is_independent_of_chunking(case: tuple[str, list[int]]) -> None:
    text, sizes = case
    whole = split(text, expect_reasoning=True)
    assert split(text, sizes, expect_reasoning=True) == whole
    assert whole == reference_expect_split(text)


GRANITE32_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Knowledge Cutoff Date: April 2024.\\nYou are Granite, developed by \
IBM." %}
    {%- if thinking %}
        {%- set system_message = system_message + " You are a helpful AI assistant.\\nRespond \
to every user query in a comprehensive and detailed way. You can write down your thoughts and \
reasoning process before responding. In the thought process, engage in a comprehensive cycle of \
analysis, summarization, exploration, reassessment, reflection, backtracing, and iteration to \
develop well-considered thinking process. In the response section, based on various attempts, \
explorations, and reflections from the thoughts section, systematically present the final \
solution that you deem correct. The response should summarize the thought process. Write your \
thoughts after 'Here is my thought process:' and write your response after 'Here is my \
response:' for each user query." %}
    {%- endif %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}
{%- for message in loop_messages %}
    {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + \
'<|end_of_text|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
{%- endif %}
"""


def test_granite_32_plain_text_thoughts() -> None:
    assert reasoning.detect_adapter(GRANITE32_TEMPLATE) == "thinking"
    on, off = render(GRANITE32_TEMPLATE, "reasoning"), render(GRANITE32_TEMPLATE, "instant")
    assert reasoning.plain_thoughts("thinking", on) and not reasoning.plain_thoughts(
        "thinking", off
    )
    text = (
        "Here is my thought process:\nThe user greets me. I should greet back.\n\n"
        "Here is my response:\nHello! How can I help?"
    )
    for mode in ("reasoning", None):
        splitter = reasoning.make_splitter("thinking", on, mode)  # type: ignore[arg-type]
        parts: list[Part] = []
        for ch in text:  # one character at a time: headings arrive in pieces
            parts += splitter.feed(ch)
        parts += splitter.flush()
        got = (
            "".join(p.text for p in parts if p.kind == "reasoning"),
            "".join(p.text for p in parts if p.kind == "answer"),
        )
        assert got == ("The user greets me. I should greet back.", "Hello! How can I help?")
    # Without the heading in the prompt (instant mode), the same text is all answer.
    assert reasoning.split_text(text, adapter="thinking", prompt=off, mode="instant")[0] == ""
    # The budget closes plain-text thoughts with the response heading, others with </think>.
    assert reasoning.close_text("thinking", None, on) == "\nHere is my response:\n\n"
    assert reasoning.close_text("thinking", None, GRANITE_TEMPLATE) == "\n</think>\n\n"
    # Granite 3.3 (tags) keeps its tags.
    assert reasoning.split_text(
        "<think>hm</think><response>ok</response>", adapter="thinking", prompt="x"
    ) == ("hm", "ok")

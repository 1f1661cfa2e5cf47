"""Tool calls: real chat templates render tools, each family's call syntax parses back (whole
and streamed in any chunks), and a tiny model forced by grammar to call yields the calls that
were forced."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ggufgen import CHATML_TEMPLATE, write_tiny_gguf
from hypothesis import given, settings
from hypothesis import strategies as st

from localllm import tools
from localllm.errors import UsageError

TEMPLATES = Path(__file__).parent / "tool_templates"
FAMILIES = {
    "qwen2.5": "hermes",
    "llama3.1": "llama3",
    "mistral-nemo": "mistral",
    "gpt-oss": "harmony",
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
#: Every argument fixed by its schema: a grammar built from it can produce exactly one call.
FIXED = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "description": "Set an alarm",
        "parameters": {
            "type": "object",
            "properties": {
                "time": {"const": "07:30"},
                "days": {"type": "array", "items": {"enum": ["mon"]}, "minItems": 1, "maxItems": 1},
                "loud": {"enum": [True]},
            },
            "required": ["time", "days", "loud"],
        },
    },
}
FIXED_ARGS = {"time": "07:30", "days": ["mon"], "loud": True}
#: Free arguments: the model picks them; they must still match the schema.
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search",
        "parameters": {
            "type": "object",
            "properties": {
                "q": {"type": "string", "maxLength": 8},
                "limit": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            },
            "required": ["q", "limit"],
        },
    },
}


def template(family: str) -> str:
    return (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")


def ids() -> Any:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


# -- templates ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detect_format_from_real_templates(family: str) -> None:
    assert tools.detect_format(template(family)) == FAMILIES[family]
    assert tools.supports_tools(template(family))


def test_template_without_tool_support_is_refused() -> None:
    assert tools.detect_format(CHATML_TEMPLATE) is None
    assert tools.detect_format(None) is None
    with pytest.raises(UsageError, match="no tool support"):
        tools.render(CHATML_TEMPLATE, [{"role": "user", "content": "hi"}], [WEATHER])
    # without tools the same template renders as usual
    assert "hi" in tools.render(CHATML_TEMPLATE, [{"role": "user", "content": "hi"}], None)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tools_render_through_the_models_own_template(family: str) -> None:
    text = tools.render(
        template(family),
        [{"role": "user", "content": "Weather in Paris?"}],
        tools.check_tools([WEATHER]),
    )
    assert "get_weather" in text and "Current weather in a city" in text
    assert "&lt;" not in text and "&#34;" not in text  # no HTML escaping of template text
    assert text.count("Weather in Paris?") == 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_call_rendered_by_the_template_parses_back(family: str) -> None:
    """The template writes an earlier call in the model's own syntax; that text, parsed,
    gives the call back; the tool's result renders after it."""
    fmt = FAMILIES[family]
    call_id = tools.make_call_id(fmt)
    args = {"city": "Paris", "unit": "celsius"}
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(args)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'},
    ]
    src = template(family)
    before = tools.render(src, history[:1], [WEATHER])
    with_call = tools.render(
        src, history[:2], [WEATHER], variables={"add_generation_prompt": False}
    )
    assert "21" in tools.render(src, history, [WEATHER])
    assert with_call.startswith(before)
    turn = with_call[len(before) :]  # the assistant's turn as the model would have written it
    parsed = tools.parse(turn, fmt)
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]
    assert parsed.tool_calls[0].parsed_arguments() == args
    assert "get_weather" not in parsed.content


def test_mistral_call_ids_are_nine_alphanumerics() -> None:
    for _ in range(20):
        cid = tools.make_call_id("mistral")
        assert len(cid) == 9 and cid.isalnum()
    assert tools.make_call_id("hermes").startswith("call_")


def test_check_tools_refuses_malformed_definitions() -> None:
    with pytest.raises(UsageError, match="list"):
        tools.check_tools({"name": "x"})
    with pytest.raises(UsageError, match=r"tools\[0\]\.function\.name"):
        tools.check_tools([{"type": "function", "function": {}}])
    with pytest.raises(UsageError, match="defined twice"):
        tools.check_tools([WEATHER, WEATHER])
    with pytest.raises(UsageError, match="only"):
        tools.check_tools([{"type": "retrieval"}])
    out = tools.check_tools([{"type": "function", "function": {"name": "ping"}}])
    assert out[0]["function"]["parameters"] == {"type": "object", "properties": {}}


# -- parsing ------------------------------------------------------------------------------

SAMPLES: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
    (
        "hermes",
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"arguments": {"q": "x}"}, "name": "search"}\n</tool_call>',
        "Let me check.\n",
        [("get_weather", {"city": "Paris"}), ("search", {"q": "x}"})],
    ),
    ("hermes", "No tools needed: 1 < 2.", "No tools needed: 1 < 2.", []),
    (
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        "",
        [("get_weather", {"city": "Paris", "unit": "celsius"})],
    ),
    (
        "llama3",
        '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"n": [1]}}',
        "",
        [("a", {}), ("b", {"n": [1]})],
    ),
    ("llama3", '{"answer": 42} is JSON, not a call', '{"answer": 42} is JSON, not a call', []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "mistral",
        'Sure [TOOL_CALLS]get_weather[ARGS]{"city": "Nice"}',
        "Sure ",
        [("get_weather", {"city": "Nice"})],
    ),
    (
        "harmony",
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions."
        'get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "harmony",
        '<|channel|>commentary to=functions.search <|constrain|>json<|message|>{"q": "a"}<|call|>',
        "",
        [("search", {"q": "a"})],
    ),
    ("harmony", "<|channel|>final<|message|>Plain answer.<|return|>", "Plain answer.", []),
]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_parse_each_family(fmt: str, text: str, content: str, calls: list[Any]) -> None:
    out = tools.parse(text, fmt, id_factory=ids())  # type: ignore[arg-type]
    assert out.content == content
    assert [(c.name, c.parsed_arguments()) for c in out.tool_calls] == calls
    assert [c.id for c in out.tool_calls] == [f"call_{i}" for i in range(len(calls))]


def _stream(fmt: str, text: str, cuts: list[int]) -> tuple[list[Any], tools.ToolCallParser]:
    parser = tools.ToolCallParser(fmt, id_factory=ids())  # type: ignore[arg-type]
    events: list[Any] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        events += parser.feed(text[last:cut])
        last = cut
    events += parser.finish()
    return events, parser


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.integers(0, 400), max_size=12))
def test_streaming_in_any_chunks_matches_whole_and_never_leaks_call_text(
    sample: tuple[str, str, str, list[Any]], cuts: list[int]
) -> None:
    fmt, text, content, calls = sample
    events, _ = _stream(fmt, text, [c for c in cuts if c < len(text)])
    streamed = "".join(e.text for e in events if isinstance(e, tools.ContentDelta))
    assert streamed == content
    for e in events:
        if isinstance(e, tools.ContentDelta):
            for marker in ("<tool_call", "[TOOL_CALLS", "<|python_tag", "to=functions", '"name"'):
                assert marker not in e.text or marker in content
    # deltas rebuild the calls: one start (id + name) per call, then argument fragments
    rebuilt: dict[int, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, tools.ToolCallDelta):
            if e.name is not None:
                assert e.index not in rebuilt and e.id is not None
                rebuilt[e.index] = {"name": e.name, "arguments": ""}
            rebuilt[e.index]["arguments"] += e.arguments
    got = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(rebuilt.items())]
    assert got == calls


def test_argument_fragments_arrive_before_the_call_ends() -> None:
    """Arguments stream as they are generated, not only once the call is complete."""
    text = '<tool_call>\n{"name": "search", "arguments": {"q": "long query text"}}\n</tool_call>'
    parser = tools.ToolCallParser("hermes")
    cut = text.index("query")
    early = parser.feed(text[:cut])
    frags = [e.arguments for e in early if isinstance(e, tools.ToolCallDelta)]
    assert "".join(frags).startswith('{"q": "long ')
    parser.feed(text[cut:])
    parser.finish()
    assert parser.tool_calls[0].parsed_arguments() == {"q": "long query text"}


# -- forcing calls with a grammar on a tiny model -------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("llama_cpp")
    from localllm.engine import Engine, LoadOptions

    path = write_tiny_gguf(tmp_path_factory.mktemp("tools") / "tiny-tools.gguf")
    eng = Engine(path, LoadOptions(n_ctx=4096, n_threads=1, n_gpu_layers=0))
    yield eng
    eng.close()


def _generate(engine: Any, prompt: str, grammar: str, *, seed: int = 1, special: bool) -> str:
    from localllm.engine import TextEvent
    from localllm.profiles import Profile

    settings_ = Profile(temperature=1.0, max_tokens=400, seed=seed)
    out = []
    stats = None
    for event in engine.generate(prompt, settings_, grammar=grammar, special=special):
        if isinstance(event, TextEvent):
            out.append(event.text)
        else:
            stats = event
    assert stats is not None and stats.stop_reason == "stop", "".join(out)
    return "".join(out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_named_call_parses_to_exactly_what_was_forced(engine: Any, family: str) -> None:
    """``tool_choice`` naming a function: the grammar forces the family's call syntax with
    arguments from the parameter schema; the parsed call is the forced one."""
    from localllm.session import schema_grammar

    fmt = FAMILIES[family]
    defs = tools.check_tools([WEATHER, FIXED])
    prompt = tools.render(
        template(family), [{"role": "user", "content": "Wake me at 7:30 on Monday"}], defs
    )
    grammar = tools.tool_call_grammar(fmt, defs, schema_grammar, name="set_alarm")  # type: ignore[arg-type]
    text = _generate(engine, prompt, grammar, special=fmt == "harmony")
    parsed = tools.parse(text, fmt)  # type: ignore[arg-type]
    assert [(c.name, c.parsed_arguments()) for c in parsed.tool_calls] == [
        ("set_alarm", FIXED_ARGS)
    ]
    assert parsed.content.strip() == ""


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_forced_required_call_has_arguments_valid_for_its_schema(
    engine: Any, family: str, seed: int
) -> None:
    """``tool_choice: required``: some call to one of the tools, its arguments valid."""
    from localllm.session import schema_grammar

    fmt = FAMILIES[family]
    defs = tools.check_tools([SEARCH, FIXED])
    prompt = tools.render(template(family), [{"role": "user", "content": "find a"}], defs)
    grammar = tools.tool_call_grammar(fmt, defs, schema_grammar)  # type: ignore[arg-type]
    text = _generate(engine, prompt, grammar, seed=seed, special=fmt == "harmony")
    calls = tools.parse(text, fmt).tool_calls  # type: ignore[arg-type]
    assert len(calls) == 1, text
    schemas = {d["function"]["name"]: d["function"]["parameters"] for d in defs}
    assert calls[0].name in schemas
    jsonschema.validate(calls[0].parsed_arguments(), schemas[calls[0].name])


def test_tool_choice_naming_an_unknown_function_is_refused() -> None:
    with pytest.raises(UsageError, match="not among the tools"):
        tools.tool_call_grammar("hermes", tools.check_tools([WEATHER]), lambda s: "", name="nope")


def test_harmony_parser_primed_with_the_prompt_continues_its_channel() -> None:
    """In instant mode the prompt already opened the final channel; a tool call starts a new
    message. The parser primed with the prompt reads both right."""
    prompt = (
        "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>analysis<|message|>"
        "<|end|><|start|>assistant<|channel|>final<|message|>"
    )
    parser = tools.ToolCallParser("harmony", id_factory=ids())
    parser.prime(prompt)
    parser.feed("Checking.<|end|><|start|>assistant to=functions.f<|channel|>commentary json")
    parser.feed('<|message|>{"a": 1}<|call|>')
    parser.finish()
    assert parser.content == "Checking."
    assert [(c.name, c.parsed_arguments()) for c in parser.tool_calls] == [("f", {"a": 1})]


def test_tool_choice_forms() -> None:
    defs = tools.check_tools([WEATHER])
    assert tools.parse_tool_choice(None, defs) == tools.ToolChoice("auto")
    assert tools.parse_tool_choice(None, None) == tools.ToolChoice("none")
    assert tools.parse_tool_choice("required", defs).forced
    named = tools.parse_tool_choice({"type": "function", "function": {"name": "get_weather"}}, defs)
    assert named == tools.ToolChoice("named", "get_weather") and named.forced
    for bad, message in (
        ("sometimes", "auto, none, required"),
        ({"type": "function"}, "function"),
        ({"type": "function", "function": {"name": "nope"}}, "not among the tools"),
    ):
        with pytest.raises(UsageError, match=message):
            tools.parse_tool_choice(bad, defs)
    with pytest.raises(UsageError, match="no tools"):
        tools.parse_tool_choice("required", None)


# -- through the session (what the server calls) ---------------------------------------------


def _lazy_grammar_supported() -> bool:
    import inspect

    from localllm.engine import Engine

    return "grammar_lazy_after" in inspect.signature(Engine.generate).parameters


@pytest.fixture(scope="module")
def family_engines(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("llama_cpp")
    from test_session import harmony_vocab

    from localllm.engine import Engine, LoadOptions

    folder = tmp_path_factory.mktemp("tool-families")
    loaded = {}
    for family in FAMILIES:
        vocab = harmony_vocab() if family == "gpt-oss" else "gpt2"
        path = write_tiny_gguf(
            folder / f"{family}.gguf", chat_template=template(family), vocab=vocab
        )
        loaded[family] = Engine(path, LoadOptions(n_ctx=4096, n_threads=1, n_gpu_layers=0))
    yield loaded
    for eng in loaded.values():
        eng.close()


def _respond(engine: Any, *, mode: str = "instant", choice: Any = None, budget: int = 8) -> Any:
    from localllm.profiles import Profile
    from localllm.session import ChatSession

    defs = tools.check_tools([FIXED, SEARCH])
    session = ChatSession(
        engine,
        Profile(temperature=1.0, seed=3, mode=mode, reasoning_budget=budget, max_tokens=200),  # type: ignore[arg-type]
    )
    events = list(
        session.respond(
            [{"role": "user", "content": "Wake me at 7:30"}],
            tools=defs,
            tool_choice=choice or tools.ToolChoice("named", "set_alarm"),
        )
    )
    return events, session.last_turn


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_session_respond_forces_and_parses_a_call_per_family(
    family_engines: Any, family: str
) -> None:
    events, turn = _respond(family_engines[family])
    assert [(c.name, c.parsed_arguments()) for c in turn.tool_calls] == [("set_alarm", FIXED_ARGS)]
    assert turn.finish_reason == "tool_calls"
    assert turn.answer.strip() == ""
    deltas = [e for e in events if isinstance(e, tools.ToolCallDelta)]
    assert deltas[0].name == "set_alarm" and deltas[0].id == turn.tool_calls[0].id
    assert json.loads("".join(d.arguments for d in deltas)) == FIXED_ARGS


@pytest.mark.skipif(not _lazy_grammar_supported(), reason="needs the engine's grammar_lazy_after")
@pytest.mark.parametrize("family", ["qwen2.5", "llama3.1", "mistral-nemo"])
def test_forced_call_in_reasoning_mode_comes_after_free_reasoning(
    family_engines: Any, family: str
) -> None:
    """The model thinks first (no grammar); the call is forced once the reasoning closes."""
    _, turn = _respond(family_engines[family], mode="reasoning", budget=8)
    assert turn.mode == "reasoning" and turn.reasoning.strip()
    assert [(c.name, c.parsed_arguments()) for c in turn.tool_calls] == [("set_alarm", FIXED_ARGS)]

"""The profile schema, loading, merging and validation (localllm.profiles)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localllm import paths, profiles
from localllm.errors import ProfileError
from localllm.profiles import (
    MODES,
    REASONING_FORMATS,
    Profile,
    available_profiles,
    field_names,
    load_profile,
    load_profile_file,
    profile_to_yaml,
    resolve,
    save_user_profile,
    validate_dict,
)

REPO = Path(__file__).resolve().parent.parent
BUILTINS = ["creative", "default", "instant", "precise", "reasoning"]


def write_user(name: str, text: str) -> Path:
    folder = paths.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(func, *args) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        func(*args)
    return info.value


# ---------------------------------------------------------------------------------------------
# Built-ins


def test_builtins_are_all_found_and_valid():
    sources = available_profiles()
    assert [s.name for s in sources] == BUILTINS
    for source in sources:
        assert source.builtin and not source.shadows_builtin
        assert source.description
        profile = load_profile(source.name)
        assert profile.name == source.name
        assert profile.description == source.description
        # every built-in file explains its values in comments
        assert "#" in source.path.read_text()
        # and validates as a plain file too
        assert load_profile_file(source.path) == profile


def test_builtin_values():
    precise = load_profile("precise")
    assert precise.temperature <= 0.3 and precise.top_p <= 0.85
    creative = load_profile("creative")
    assert creative.temperature >= 0.9 and creative.presence_penalty > 0
    reasoning = load_profile("reasoning")
    assert reasoning.mode == "reasoning"
    assert (reasoning.temperature, reasoning.top_p, reasoning.top_k) == (0.6, 0.95, 20)
    assert reasoning.reasoning_budget and reasoning.reasoning_budget > 0
    assert reasoning.max_tokens > load_profile("default").max_tokens
    instant = load_profile("instant")
    assert instant.mode == "instant"
    assert (instant.temperature, instant.top_p, instant.top_k) == (0.7, 0.8, 20)
    assert load_profile("default").mode in MODES


def test_builtin_files_are_packaged():
    """pyproject maps profiles/ to localllm._profiles; every built-in must be a *.yaml there."""
    text = (REPO / "pyproject.toml").read_text()
    assert '"localllm._profiles" = "profiles"' in text
    assert sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")) == BUILTINS


def test_builtin_keys_in_schema_order_roundtrip():
    for name in BUILTINS:
        profile = load_profile(name)
        data = yaml.safe_load(profile_to_yaml(profile))
        assert list(data) == [n for n in field_names() if n != "extends"]
        assert validate_dict(data, "roundtrip") == profile


def test_import_is_cheap():
    code = (
        "import sys, localllm.profiles as p; p.load_profile('default'); "
        "bad = [m for m in ('typer', 'rich', 'llama_cpp', 'textual', 'huggingface_hub', "
        "'jinja2') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    env_path = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**_env(), "PYTHONPATH": env_path},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The parse cache: a profile's text parsed once is read back without PyYAML


def _parsed_entries() -> dict:
    return json.loads((paths.cache_dir() / "profiles.json").read_text())["entries"]


def test_a_parsed_profile_is_read_back_by_its_text():
    path = write_user("mine", "temperature: 0.3\nstop: [END]\n")
    assert load_profile("mine").temperature == 0.3
    entries = _parsed_entries()
    (key,) = [k for k, items in entries.items() if ["temperature", 0.3, 1] in items]
    # the next load takes the cached parse, not the YAML: a doctored entry shows which
    entries[key][0][1] = 0.4
    cache = paths.cache_dir() / "profiles.json"
    cache.write_text(json.dumps({"version": profiles.PARSED_CACHE_VERSION, "entries": entries}))
    assert load_profile("mine").temperature == 0.4
    assert load_profile("mine").stop == ("END",)
    path.write_text("temperature: 0.2\n")  # new text: parsed again
    assert load_profile("mine").temperature == 0.2


def test_the_parse_cache_keeps_only_what_json_gives_back():
    write_user("dated", "description: x\nseed: 2024-01-01\n")  # YAML makes it a date
    write_user("tagged", "stop: !!set {END: null}\n")  # a set
    write_user("broken", "temperature: [\n")
    assert "seed" in error_of(load_profile, "dated").message
    assert "stop" in error_of(load_profile, "tagged").message
    assert ":2: invalid YAML" in error_of(load_profile, "broken").message
    cache = paths.cache_dir() / "profiles.json"
    assert not cache.exists() or _parsed_entries() == {}
    assert "seed" in error_of(load_profile, "dated").message  # still checked as YAML


@pytest.mark.parametrize("damage", [b"{not json", b'{"version": 99, "entries": {}}', b"[]"])
def test_a_damaged_parse_cache_means_parsing_again(damage):
    expected = load_profile("default")
    cache = paths.cache_dir() / "profiles.json"
    cache.write_bytes(damage)
    assert load_profile("default") == expected
    assert len(_parsed_entries()) == 1  # written again


def test_the_parse_cache_keeps_the_latest_texts():
    path = write_user("mine", "temperature: 0.0\n")
    for i in range(profiles.PARSED_CACHE_ENTRIES + 5):
        path.write_text(f"temperature: 0.{i:03d}\n")
        load_profile("mine")
    entries = _parsed_entries()
    assert len(entries) == profiles.PARSED_CACHE_ENTRIES
    assert ["temperature", float(f"0.{i:03d}"), 1] in list(entries.values())[-1]


def test_a_start_with_a_parsed_profile_does_not_import_yaml():
    code = "import sys, localllm.profiles as p; p.resolve(None); print('yaml' in sys.modules)"
    seen = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**_env(), "PYTHONPATH": str(REPO)},
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert seen == ["True", "False"]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


# ---------------------------------------------------------------------------------------------
# Field validation


def test_defaults_and_int_for_float():
    profile = validate_dict({"temperature": 1, "top_p": 1, "repeat_penalty": 2}, "x")
    assert profile.temperature == 1.0 and isinstance(profile.temperature, float)
    assert isinstance(profile.top_p, float)
    assert validate_dict({}, "x") == Profile()


def test_stop_string_is_one_item_list():
    assert validate_dict({"stop": "###"}, "x").stop == ("###",)
    assert validate_dict({"stop": ["a", "b"]}, "x").stop == ("a", "b")
    assert validate_dict({"stop": []}, "x").stop == ()


VALID = [
    ("temperature", 0),
    ("temperature", 2),
    ("top_p", 1),
    ("top_p", 0.01),
    ("top_k", 0),
    ("min_p", 0),
    ("min_p", 1),
    ("max_tokens", 1),
    ("frequency_penalty", -2),
    ("presence_penalty", 2),
    ("repeat_penalty", 2),
    ("seed", 0),
    ("seed", None),
    ("system_prompt", "Be brief.\nAnswer in French."),
    ("system_prompt", None),
    ("mode", "reasoning"),
    ("reasoning_budget", 0),
    ("reasoning_budget", None),
    ("show_reasoning", False),
    ("context_length", 64),
    ("context_length", None),
    ("threads", 1),
    ("gpu_layers", "auto"),
    ("gpu_layers", 0),
    ("gpu_layers", 99),
    ("verbose", True),
    ("model", "smollm2-135m"),
    ("description", None),
] + [("reasoning_format", f) for f in (None, *REASONING_FORMATS)]


@pytest.mark.parametrize(("key", "value"), VALID)
def test_valid_values(key, value):
    profile = validate_dict({key: value}, "x")
    expected = "" if (key, value) == ("description", None) else value
    assert getattr(profile, key) == expected


INVALID = [
    ("temperature", True, "true"),
    ("temperature", "hot", "number"),
    ("temperature", -0.1, "between 0 and 2"),
    ("temperature", 2.5, "between 0 and 2"),
    ("temperature", float("nan"), "finite"),
    ("temperature", float("inf"), "finite"),
    ("temperature", None, "number"),
    ("top_p", 0, "greater than 0"),
    ("top_p", 1.5, "at most 1"),
    ("top_k", -1, "at least 0"),
    ("top_k", 2.5, "whole number"),
    ("top_k", 3.0, "drop the '.0'"),
    ("top_k", False, "whole number"),
    ("min_p", 1.1, "between 0 and 1"),
    ("max_tokens", 0, "at least 1"),
    ("max_tokens", "100", "whole number"),
    ("stop", 5, "list of strings"),
    ("stop", [1], "item 1 must be a string"),
    ("stop", ["ok", ""], "item 2 is empty"),
    ("stop", {"a": 1}, "list of strings"),
    ("frequency_penalty", -3, "between -2 and 2"),
    ("presence_penalty", 2.01, "between -2 and 2"),
    ("repeat_penalty", 0, "greater than 0"),
    ("repeat_penalty", 3, "at most 2"),
    ("seed", -1, "between 0 and"),
    ("seed", 1.5, "whole number"),
    ("seed", 2**40, "between 0 and"),
    ("system_prompt", 42, "text"),
    ("mode", "fast", "instant, reasoning"),
    ("mode", None, "instant, reasoning"),
    ("reasoning_budget", -5, "at least 0"),
    ("reasoning_format", "qwen", "enable_thinking"),
    ("reasoning_format", True, "one of"),
    ("show_reasoning", "yes", "true or false"),
    ("show_reasoning", 1, "true or false"),
    ("context_length", 63, "at least 64"),
    ("threads", 0, "at least 1"),
    ("gpu_layers", -1, "'auto'"),
    ("gpu_layers", "all", "'auto'"),
    ("gpu_layers", True, "'auto'"),
    ("verbose", "no", "true or false"),
    ("model", 3, "text"),
    ("description", ["a"], "text"),
    ("name", "bad name", "not a valid profile name"),
    ("extends", "../etc/passwd", "not a valid profile name"),
]


@pytest.mark.parametrize(("key", "value", "words"), INVALID)
def test_invalid_values_dict(key, value, words):
    exc = error_of(validate_dict, {key: value}, "my-source")
    assert exc.message.startswith(f"my-source: {key}: "), exc.message
    assert words in exc.message


@pytest.mark.parametrize(("key", "value", "words"), INVALID)
def test_invalid_values_file_name_line(key, value, words):
    if isinstance(value, float) and not math.isfinite(value):
        value_text = ".nan" if math.isnan(value) else ".inf"
    else:
        value_text = yaml.safe_dump(value, default_flow_style=True).strip()
        if value_text.endswith("\n..."):
            value_text = value_text[:-4].strip()
        value_text = value_text.removesuffix("...").strip()
    path = write_user("broken", f"# a comment\n\n{key}: {value_text}\n")
    exc = error_of(load_profile, "broken")
    assert exc.message.startswith(f"{path}:3: {key}: "), exc.message
    assert words in exc.message


def test_unknown_key_did_you_mean_with_line():
    path = write_user("typo", "temperature: 0.5\n\ntemprature: 0.4\n")
    exc = error_of(load_profile, "typo")
    assert exc.message.startswith(f"{path}:3: unknown key `temprature`")
    assert "did you mean `temperature`?" in exc.message
    exc = error_of(validate_dict, {"max_token": 5}, "src")
    assert "did you mean `max_tokens`?" in exc.message
    exc = error_of(validate_dict, {"zzzzzz": 5}, "src")
    assert "did you mean" not in exc.message
    assert "temperature" in (exc.hint or "")


def test_non_string_key():
    assert "keys must be text" in error_of(validate_dict, {1: 2}, "src").message
    write_user("listkey", "? [a, b]\n: 1\n")
    assert "keys must be text" in error_of(load_profile, "listkey").message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("temperature: 0.5\ntop_p: [0.9,\n", 3, "invalid YAML"),
        ("temperature: 0.5\n  top_p: 0.9\n", 2, "invalid YAML"),
        ("temperature: 0.5\n\tseed: 1\n", 2, "invalid YAML"),
        ("stop: 'unterminated\n", 2, "invalid YAML"),
        ("seed: !!int abc\n", 1, "invalid YAML value"),
        ("seed: !!python/object:os.system x\n", 1, "invalid YAML"),
        ("- temperature: 0.5\n", 1, "must be a mapping"),
        ("just text\n", 1, "must be a mapping"),
        ("temperature: 0.5\ntemperature: 0.6\n", 2, "set twice (first set on line 1)"),
    ],
)
def test_bad_yaml_names_file_and_line(text, line, words):
    path = write_user("bad", text)
    for _ in range(2):  # the second load may come from the parse cache: the same error
        exc = error_of(load_profile, "bad")
        assert exc.message.startswith(f"{path}:{line}: "), exc.message
        assert words in exc.message


def test_not_utf8(isolated_home):
    folder = paths.profiles_dir()
    folder.mkdir(parents=True)
    (folder / "latin.yaml").write_bytes(b"description: caf\xe9\n")
    assert "not UTF-8" in error_of(load_profile, "latin").message


def test_empty_file_is_all_defaults():
    write_user("empty", "# nothing here\n")
    assert load_profile("empty") == Profile(name="empty")


def test_name_must_match_file():
    path = write_user("alpha", "name: beta\ntemperature: 0.3\n")
    exc = error_of(load_profile, "alpha")
    assert exc.message.startswith(f"{path}:1: name: 'beta' does not match")
    write_user("gamma", "name: gamma\n")
    assert load_profile("gamma").name == "gamma"


def test_unknown_profile_lists_available():
    exc = error_of(load_profile, "precize")
    assert "no profile named 'precize'" in exc.message
    assert "did you mean `precise`?" in exc.message
    for name in BUILTINS:
        assert name in (exc.hint or "")


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a b", "x;rm"])
def test_bad_profile_names(name):
    with pytest.raises(ProfileError):
        load_profile(name)


def test_missing_file():
    assert "no such profile file" in error_of(load_profile_file, "/nonexistent/x.yaml").message


def test_load_profile_accepts_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("temperature: 0.1\n")
    assert load_profile(str(path)) == Profile(name="mine", temperature=0.1)
    assert load_profile_file(path).name == "mine"


# ---------------------------------------------------------------------------------------------
# User profiles, shadowing and extends


def test_user_profile_shadows_builtin():
    write_user("precise", "description: my precise\ntemperature: 0.0\n")
    profile = load_profile("precise")
    assert profile.temperature == 0.0 and profile.top_p == Profile().top_p
    source = next(s for s in available_profiles() if s.name == "precise")
    assert not source.builtin and source.shadows_builtin
    assert source.description == "my precise"
    assert source.path == paths.profiles_dir() / "precise.yaml"


def test_user_only_profile_listed():
    write_user("zeta", "description: mine\n")
    source = next(s for s in available_profiles() if s.name == "zeta")
    assert (source.builtin, source.shadows_builtin, source.description) == (False, False, "mine")


def test_invalid_user_profile_still_listed():
    write_user("broken", "temperature: [\n")
    names = [s.name for s in available_profiles()]
    assert "broken" in names


def test_extends_merges_under_own_values():
    write_user("base", "temperature: 0.3\ntop_k: 10\nstop: [END]\nseed: 7\n")
    write_user("child", "extends: base\ntop_k: 5\nseed: null\n")
    child = load_profile("child")
    assert (child.name, child.temperature, child.top_k, child.stop, child.seed) == (
        "child",
        0.3,
        5,
        ("END",),
        None,
    )


def test_extends_builtin_chain():
    write_user("think-more", "extends: reasoning\nreasoning_budget: 4096\n")
    profile = load_profile("think-more")
    assert profile.mode == "reasoning" and profile.reasoning_budget == 4096
    assert profile.description == load_profile("reasoning").description


def test_user_profile_extending_its_own_name_builds_on_the_builtin():
    write_user("creative", "extends: creative\ntemperature: 1.3\n")
    profile = load_profile("creative")
    assert profile.temperature == 1.3
    assert (
        profile.presence_penalty
        == load_profile_file(REPO / "profiles/creative.yaml").presence_penalty
    )


def test_self_extension_without_builtin_is_an_error():
    write_user("solo", "extends: solo\n")
    assert "extends itself" in error_of(load_profile, "solo").message


def test_extends_cycle():
    a = write_user("a", "extends: b\n")
    write_user("b", "temperature: 0.2\nextends: c\n")
    write_user("c", "extends: a\n")
    exc = error_of(load_profile, "a")
    assert "cycle: a -> b -> c -> a" in exc.message
    assert str(paths.profiles_dir() / "c.yaml") + ":1: extends:" in exc.message
    assert a.exists()


def test_extends_unknown_names_line_and_lists():
    path = write_user("orphan", "temperature: 0.2\nextends: nothing\n")
    exc = error_of(load_profile, "orphan")
    assert exc.message.startswith(f"{path}:2: extends: no profile named 'nothing'")
    assert "default" in (exc.hint or "")


def test_error_in_parent_names_the_parent_file():
    write_user("parent", "top_p: 7\n")
    write_user("kid", "extends: parent\n")
    exc = error_of(load_profile, "kid")
    assert exc.message.startswith(f"{paths.profiles_dir() / 'parent.yaml'}:1: top_p:")


def test_validate_dict_extends():
    profile = validate_dict({"name": "x", "extends": "precise", "seed": 3}, "flags")
    assert (profile.name, profile.temperature, profile.seed) == ("x", 0.2, 3)


# ---------------------------------------------------------------------------------------------
# resolve() and CLI overrides


def test_resolve_default_and_overrides():
    assert resolve(None, {}) == load_profile("default")
    profile = resolve(None, {"temperature": 1, "top_k": None, "seed": 5, "stop": ()})
    assert profile.temperature == 1.0 and profile.seed == 5
    assert profile.top_k == load_profile("default").top_k
    assert profile.stop == ()
    assert resolve("reasoning", {"mode": "instant"}).mode == "instant"
    assert resolve("default", {"stop": "END"}).stop == ("END",)
    assert resolve("default", {"gpu_layers": "12"}).gpu_layers == 12
    assert resolve("default", {"gpu_layers": "auto"}).gpu_layers == "auto"


@pytest.mark.parametrize(
    ("key", "value", "flag"),
    [
        ("temperature", 3.0, "--temperature"),
        ("top_p", 0, "--top-p"),
        ("max_tokens", 0, "--max-tokens"),
        ("mode", "think", "--mode"),
        ("gpu_layers", "lots", "--gpu-layers"),
        ("show_reasoning", "yes", "--show-reasoning"),
    ],
)
def test_invalid_override_names_the_flag(key, value, flag):
    exc = error_of(resolve, None, {key: value})
    assert exc.message.startswith(f"option {flag}: "), exc.message


def test_unknown_override():
    exc = error_of(resolve, None, {"temprature": 1.0})
    assert "--temprature" in exc.message
    assert "temperature" in (exc.hint or "")
    assert "unknown option --extends" in error_of(resolve, None, {"extends": "x"}).message


def test_resolve_unknown_profile():
    assert "no profile named 'nope'" in error_of(resolve, "nope", {}).message


# ---------------------------------------------------------------------------------------------
# Writing


def test_save_user_profile_roundtrip(monkeypatch):
    calls = []
    import localllm.durable as durable

    real = durable.write_atomic

    def spy(path, data, **kwargs):
        calls.append(path)
        real(path, data, **kwargs)

    monkeypatch.setattr(durable, "write_atomic", spy)
    profile = Profile(
        name="ignored", temperature=0.1, stop=("a", "b"), system_prompt="Line one\nLine two\n"
    )
    path = save_user_profile(profile, "saved", header="made by a test")
    assert calls == [path] and path == paths.profiles_dir() / "saved.yaml"
    assert path.read_text().startswith("# made by a test\nname: saved\n")
    loaded = load_profile("saved")
    assert loaded == Profile(
        name="saved", temperature=0.1, stop=("a", "b"), system_prompt="Line one\nLine two\n"
    )


def test_save_user_profile_dict_keeps_extends():
    path = save_user_profile({"extends": "precise", "stop": "END"}, "mine")
    data = yaml.safe_load(path.read_text())
    assert data == {"name": "mine", "stop": ["END"], "extends": "precise"}
    assert load_profile("mine").temperature == 0.2


def test_save_user_profile_rejects_invalid():
    with pytest.raises(ProfileError):
        save_user_profile({"temperature": 9}, "nine")
    with pytest.raises(ProfileError):
        save_user_profile(Profile(), "../escape")
    assert not paths.profiles_dir().exists() or not any(paths.profiles_dir().iterdir())


# ---------------------------------------------------------------------------------------------
# Hostile input (hypothesis)

KEYS = [*field_names(), "temprature", "", "bogus", "Mode"]
ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["auto", "reasoning", "instant", "default", "thinking", "none"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), ANY_VALUE, max_size=8))
def test_validate_dict_never_crashes(data):
    try:
        profile = validate_dict(data, "fuzz")
    except ProfileError as exc:
        assert exc.message.startswith("fuzz")
    else:
        assert isinstance(profile, Profile)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), ANY_VALUE, max_size=5))
def test_resolve_overrides_never_crash(overrides):
    try:
        profile = resolve(None, overrides)
    except ProfileError as exc:
        assert exc.message.startswith(("option --", "unknown option --")), exc.message
    else:
        assert isinstance(profile, Profile)


VALID_VALUES = {
    "description": st.text(max_size=30),
    "model": st.none() | st.text(min_size=1, max_size=20),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1, exclude_min=True),
    "top_k": st.integers(0, 1000),
    "min_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 10**6),
    "stop": st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "repeat_penalty": st.floats(0, 2, exclude_min=True),
    "seed": st.none() | st.integers(0, 2**32 - 1),
    "system_prompt": st.none() | st.text(max_size=60),
    "mode": st.sampled_from(MODES),
    "reasoning_budget": st.none() | st.integers(0, 10**5),
    "reasoning_format": st.sampled_from([None, *REASONING_FORMATS]),
    "show_reasoning": st.booleans(),
    "context_length": st.none() | st.integers(64, 10**6),
    "threads": st.none() | st.integers(1, 256),
    "gpu_layers": st.just("auto") | st.integers(0, 200),
    "flash_attn": st.sampled_from([True, False, "auto"]),
    "kv_cache_type": st.just("f16"),  # quantized types need flash_attn: tested apart
    "chat_template": st.none() | st.text(max_size=40),
    "verbose": st.booleans(),
}


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional=VALID_VALUES))
def test_valid_profiles_roundtrip_through_yaml(data):
    profile = validate_dict(data, "gen")
    for key, value in data.items():
        assert getattr(profile, key) == value
    again = validate_dict(yaml.safe_load(profile_to_yaml(profile)), "yaml")
    assert again == profile


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_any_file_text_loads_or_raises_profile_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_profile_file(path), Profile)
    except ProfileError as exc:
        assert exc.message.startswith(str(path))


def test_profile_fields_unchanged():
    """Others rely on these names; adding is fine, renaming is not."""
    names = [f.name for f in fields(Profile)]
    for key in ("temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "seed", "mode"):
        assert key in names
    assert profiles.MODES == ("instant", "reasoning")


def test_quantized_kv_cache_needs_flash_attention() -> None:
    with pytest.raises(ProfileError, match="flash attention") as info:
        validate_dict({"kv_cache_type": "q8_0", "flash_attn": False}, "x.yaml")
    assert info.value.hint and "flash_attn" in info.value.hint
    ok = validate_dict({"kv_cache_type": "q4_0", "flash_attn": True}, "x.yaml")
    assert (ok.kv_cache_type, ok.flash_attn) == ("q4_0", True)
    assert validate_dict({"kv_cache_type": "q8_0"}, "x.yaml").flash_attn == "auto"
    with pytest.raises(ProfileError, match="flash_attn"):
        validate_dict({"flash_attn": "sometimes"}, "x.yaml")
    with pytest.raises(ProfileError, match="kv_cache_type"):
        validate_dict({"kv_cache_type": "q2"}, "x.yaml")


def test_chat_template_replacement_is_a_string_field() -> None:
    p = validate_dict({"chat_template": "{{ messages[0]['content'] }}"}, "x.yaml")
    assert p.chat_template == "{{ messages[0]['content'] }}"
    with pytest.raises(ProfileError, match="chat_template"):
        validate_dict({"chat_template": 5}, "x.yaml")

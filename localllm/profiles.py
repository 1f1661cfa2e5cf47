"""Profiles: named, validated sampling settings and the response mode.

A profile is a YAML file. Built-ins ship in the package (``profiles/`` at the top of the
repository); user profiles live in :func:`localllm.paths.profiles_dir` and may shadow them.
Precedence when resolving: built-in < user profile (< its ``extends`` chain) < CLI flags the user
actually passed.

Every problem becomes one :class:`~localllm.errors.ProfileError` whose message names the file,
the line and the field (``path/to/fast.yaml:3: temperature: must be ...``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from localllm.errors import ProfileError

Mode = Literal["instant", "reasoning"]
MODES: tuple[str, ...] = ("instant", "reasoning")
KV_CACHE_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")
REASONING_EFFORTS: tuple[str, ...] = ("low", "medium", "high")
SPECULATIVE: tuple[str, ...] = ("off", "ngram", "auto")
REASONING_FORMATS: tuple[str, ...] = (
    "auto",
    "enable_thinking",
    "thinking",
    "prefill",
    "harmony",
    "instruction",
    "none",
)
DEFAULT_PROFILE = "default"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
SUFFIX = ".yaml"
_NAME_RE = re.compile(NAME_PATTERN + r"\Z")
_MAX_SEED = 2**32 - 1  # llama.cpp seeds are 32-bit unsigned
_MAX_BYTES = 1 << 20  # a profile is a few hundred bytes; refuse anything absurd


@dataclass(frozen=True)
class Profile:
    """Resolved generation settings. Every field has a valid default."""

    name: str = "default"
    description: str = ""
    model: str | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    system_prompt: str | None = None
    mode: Mode = "instant"
    reasoning_budget: int | None = None
    reasoning_format: str | None = None
    reasoning_bridge: str | None = None
    reasoning_effort: str | None = None
    show_reasoning: bool = True
    context_length: int | None = None
    threads: int | None = None
    gpu_layers: int | Literal["auto"] = "auto"
    kv_cache_type: str = "f16"
    flash_attn: bool | Literal["auto"] = "auto"
    chat_template: str | None = None
    verbose: bool = False
    speculative: str = "off"  # off | ngram | auto (n-gram drafting for long prompts)
    draft_model: str | None = None  # a small model with the same vocabulary that drafts
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers (HOST:PORT) the model is split across
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Profile:
        """A copy with ``changes`` applied; ``None`` values are ignored (flags not given)."""
        from dataclasses import replace

        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def field_names() -> list[str]:
    """Every settable key of a profile file (``extends`` included)."""
    return [f.name for f in fields(Profile) if f.name != "extra"] + ["extends"]


@dataclass(frozen=True)
class ProfileSource:
    """One profile that ``load_profile`` can find, and where it comes from."""

    name: str
    path: Path
    builtin: bool
    shadows_builtin: bool = False
    description: str = ""


# --------------------------------------------------------------------------------------------
# Field validation: each checker takes a raw value and returns the normalized one, or raises
# _Invalid with the problem (without location: the caller adds file, line and field).


class _Invalid(Exception):
    pass


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _number(
    lo: float, hi: float, *, lo_open: bool = False, nullable: bool = False
) -> Callable[[Any], float | None]:
    low = f"greater than {_fmt(lo)}" if lo_open else f"at least {_fmt(lo)}"
    rng = f"between {_fmt(lo)} and {_fmt(hi)}" if not lo_open else f"{low} and at most {_fmt(hi)}"

    def check(value: Any) -> float | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number {rng}, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise _Invalid(f"must be a number {rng}, got {_describe(value)}") from None
        if not math.isfinite(number):
            raise _Invalid(f"must be a finite number {rng}, got {_describe(value)}")
        too_low = number <= lo if lo_open else number < lo
        if too_low or number > hi:
            raise _Invalid(f"must be {rng}, got {_fmt(number)}")
        return number

    return check


def _integer(
    lo: int, hi: int | None = None, *, nullable: bool = False
) -> Callable[[Any], int | None]:
    rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
    rng_null = rng + (" (or null)" if nullable else "")

    def check(value: Any) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            raise _Invalid(f"must be a whole number {rng_null}, got {value!r} (drop the '.0')")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be a whole number {rng_null}, got {_describe(value)}")
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"must be {rng}, got {value}")
        return int(value)

    return check


def _string(*, nullable: bool = False, empty_is: str | None = None) -> Callable[[Any], Any]:
    def check(value: Any) -> str | None:
        if value is None:
            if nullable:
                return None
            if empty_is is not None:
                return empty_is
        if not isinstance(value, str):
            what = "text" + (" or null" if nullable else "")
            raise _Invalid(f"must be {what}, got {_describe(value)} (quote it)")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_describe(value)}")
    return value


def _flash_attn(value: Any) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value
    raise _Invalid(f"must be true, false or auto, got {_describe(value)}")


def _choice(choices: tuple[str, ...], *, nullable: bool = False) -> Callable[[Any], Any]:
    listed = ", ".join(choices) + (" or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(f"must be one of {listed}, got {_describe(value)}")
        return value

    return check


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"must be a list of strings, got {_describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"item {i + 1} must be a string, got {_describe(item)} (quote it)")
        if not item:
            raise _Invalid(f"item {i + 1} is empty: a stop sequence needs at least one character")
    return tuple(value)


def parse_rpc_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of a llama.cpp RPC worker → (host, port); raises ValueError saying what
    is wrong. The port is required (llama.cpp has no default) and IPv6 literals are refused
    (llama.cpp splits the endpoint at its first colon)."""
    text = text.strip()
    host, sep, port_text = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
    if ":" in port_text or host.startswith("["):
        raise ValueError(f"{text!r}: IPv6 addresses are not supported by llama.cpp's RPC")
    if not host or any(c.isspace() or c in "/,@" for c in host):
        raise ValueError(f"{text!r} has no valid host before the port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _rpc(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()] or [value]
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"must be a list of HOST:PORT workers, got {_describe(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"item {i + 1} must be HOST:PORT, got {_describe(item)} (quote it)")
        try:
            host, port = parse_rpc_endpoint(item)
        except ValueError as exc:
            raise _Invalid(f"item {i + 1}: {exc}") from None
        endpoint = f"{host}:{port}"
        if endpoint in out:
            raise _Invalid(f"item {i + 1}: {endpoint} is listed twice")
        out.append(endpoint)
    if len(out) > 16:  # GGML_RPC_MAX_SERVERS
        raise _Invalid(f"at most 16 workers, got {len(out)}")
    return tuple(out)


def _json_schema(value: Any) -> dict[str, Any] | None:
    """A JSON schema the answer must match: a mapping in YAML, or its JSON text."""
    from localllm import structured
    from localllm.errors import UsageError

    if value is None:
        return None
    try:
        if isinstance(value, str):
            value = structured.parse_schema_text(value, "the schema")
        if not isinstance(value, dict):
            raise _Invalid(f"must be a JSON schema (a mapping), got {_describe(value)}")
        structured.check_schema(value, "the schema")
    except UsageError as exc:
        raise _Invalid(exc.message.removeprefix("the schema").lstrip(": ")) from None
    return value


def _grammar(value: Any) -> str | None:
    """GBNF text the answer must match, checked as llama.cpp would parse it."""
    from localllm import structured
    from localllm.errors import UsageError

    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"must be GBNF text, got {_describe(value)}")
    try:
        structured.check_gbnf(value, "the grammar")
    except UsageError as exc:
        raise _Invalid(exc.message.removeprefix("the grammar: ")) from None
    return value


def _gpu_layers(value: Any) -> int | str:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be 'auto' or a whole number of layers >= 0, got {_describe(value)}")
    if value < 0:
        raise _Invalid(f"must be 'auto' or a whole number of layers >= 0, got {value}")
    return int(value)


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a profile name, got {_describe(value)}")
    if not _NAME_RE.match(value):
        raise _Invalid(
            f"{value!r} is not a valid profile name (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)"
        )
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "description": _string(empty_is=""),
    "extends": _name,
    "model": _string(nullable=True),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1, lo_open=True),
    "top_k": _integer(0),
    "min_p": _number(0, 1),
    "max_tokens": _integer(1),
    "stop": _stop,
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "repeat_penalty": _number(0, 2, lo_open=True),
    "seed": _integer(0, _MAX_SEED, nullable=True),
    "system_prompt": _string(nullable=True),
    "mode": _choice(MODES),
    "reasoning_budget": _integer(0, nullable=True),
    "reasoning_format": _choice(REASONING_FORMATS, nullable=True),
    "reasoning_bridge": _string(nullable=True),
    "reasoning_effort": _choice(REASONING_EFFORTS, nullable=True),
    "show_reasoning": _boolean,
    "context_length": _integer(64, nullable=True),
    "threads": _integer(1, nullable=True),
    "gpu_layers": _gpu_layers,
    "kv_cache_type": _choice(KV_CACHE_TYPES),
    "flash_attn": _flash_attn,
    "chat_template": _string(nullable=True),
    "verbose": _boolean,
    "speculative": _choice(SPECULATIVE),
    "draft_model": _string(nullable=True),
    "json_schema": _json_schema,
    "grammar": _grammar,
    "rpc": _rpc,
}
assert set(_CHECKS) == set(field_names())


def is_valid_name(name: str) -> bool:
    """Whether ``name`` can name a profile (and its file)."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def check_name(name: str) -> str:
    """``name`` if it can name a profile; a ProfileError otherwise."""
    try:
        return _name(name)
    except _Invalid as exc:
        raise ProfileError(str(exc), hint="e.g. my-profile") from None


def _did_you_mean(word: str, options: Iterable[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _validate_items(
    items: Iterable[tuple[Any, Any, int | None]], source: str
) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Check every (key, value, line) of one profile; returns normalized values and key lines."""
    values: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    known = field_names()
    for key, value, line in items:
        where = _where(source, line)
        if not isinstance(key, str):
            raise ProfileError(
                f"{where}: keys must be text, got {_describe(key)}",
                hint="valid keys: " + ", ".join(known),
            )
        if key not in _CHECKS:
            suggestion = _did_you_mean(key, known)
            message = f"{where}: unknown key `{key}`"
            if suggestion:
                message += f": {suggestion}"
            raise ProfileError(message, hint="valid keys: " + ", ".join(known))
        if key in values:
            first = lines.get(key)
            again = f" (first set on line {first})" if first is not None else ""
            raise ProfileError(f"{where}: {key}: set twice{again}")
        try:
            values[key] = _CHECKS[key](value)
        except _Invalid as exc:
            raise ProfileError(f"{where}: {key}: {exc}") from None
        lines[key] = line
    return values, lines


# --------------------------------------------------------------------------------------------
# YAML with line numbers: compose the node tree, then construct each value on its own.


# Parsed profiles are kept in the cache folder by the sha256 of their text: importing PyYAML
# and parsing the default profile is about 17 ms of the 0.4 s a one-shot `run` takes. Only
# text that parsed cleanly into plain JSON values is kept (a file with an error is parsed, and
# its error reported, every time); an unreadable or damaged cache just means parsing again.

PARSED_CACHE_VERSION = 1
PARSED_CACHE_ENTRIES = 64  # different texts kept (a profile edited often leaves old versions)
Items = list[tuple[Any, Any, int | None]]


def _parse(text: str, source: str) -> Items:
    """``_parse_yaml(text, source)``, from the cache when this exact text parsed before."""
    import hashlib

    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    entries = _read_parsed()
    cached = entries.get(key)
    if isinstance(cached, list) and all(
        isinstance(item, list) and len(item) == 3 for item in cached
    ):
        return [(k, v, line) for k, v, line in cached]
    items = _parse_yaml(text, source)
    if all(_plain(k) and _plain(v) for k, v, _ in items):
        entries.pop(key, None)
        entries[key] = [list(item) for item in items]
        _write_parsed(dict(list(entries.items())[-PARSED_CACHE_ENTRIES:]))
    return items


def _plain(value: Any) -> bool:
    """Whether JSON gives ``value`` back exactly (no tuples, dates or non-string keys)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _parsed_path() -> Path:
    from localllm import paths

    return paths.cache_dir() / "profiles.json"


def _read_parsed() -> dict[str, Any]:
    from localllm.durable import read_json_table

    return read_json_table(_parsed_path(), PARSED_CACHE_VERSION, "entries")


def _write_parsed(entries: dict[str, Any]) -> None:
    """Keep ``entries``; a cache that cannot be written costs the next run one more parse."""
    from localllm.durable import write_json_table

    write_json_table(_parsed_path(), PARSED_CACHE_VERSION, "entries", entries)


def _parse_yaml(text: str, source: str) -> Items:
    import yaml

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ProfileError(
            f"{_where(source, line)}: invalid YAML: character #x{exc.character:04x} is not "
            "allowed in YAML",
            hint="remove the control character",
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return []
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            raise ProfileError(
                f"{_where(source, node.start_mark.line + 1)}: a profile must be a mapping of "
                f"keys to values, got {kind}",
                hint="write one `key: value` per line, e.g. `temperature: 0.7`",
            )
        items: list[tuple[Any, Any, int | None]] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            try:
                key = loader.construct_object(key_node, deep=True)
                value = loader.construct_object(value_node, deep=True)
            except (ValueError, TypeError, AttributeError, OverflowError, IndexError) as exc:
                # A tagged scalar that its constructor rejects, e.g. `!!int abc`.
                raise ProfileError(
                    f"{_where(source, line)}: invalid YAML value: {exc}",
                    hint="remove the `!!` tag or fix the value",
                ) from None
            items.append((key, value, line))
        return items
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "not valid YAML"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise ProfileError(
            f"{_where(source, line)}: invalid YAML: {problem}",
            hint="check the indentation and quote values containing ':' or '#'",
        ) from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ProfileError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# Where profiles live.


@dataclass(frozen=True)
class _Origin:
    name: str  # the file stem: the profile's name
    path: Any  # Path, or an importlib.resources Traversable for built-ins
    builtin: bool

    def read(self) -> str:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ProfileError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise ProfileError(f"{self.path}: cannot read it: {exc.strerror or exc}") from None
        if len(data) > _MAX_BYTES:
            raise ProfileError(f"{self.path}: too large for a profile ({len(data)} bytes)")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ProfileError(
                f"{self.path}: not UTF-8 text (byte {exc.start})",
                hint="save the file as UTF-8",
            ) from None


def _builtin_root() -> Any | None:
    """The folder of built-in profiles: the installed package, else the source tree's."""
    from importlib import resources

    try:
        root = resources.files("localllm._profiles")
        if root.is_dir() and any(p.name.endswith(SUFFIX) for p in root.iterdir()):
            return root
    except Exception:  # not installed (running from source), or an unusual loader
        pass
    source = Path(__file__).resolve().parent.parent / "profiles"
    return source if source.is_dir() else None


def _builtins() -> dict[str, _Origin]:
    root = _builtin_root()
    if root is None:
        return {}
    found = {}
    for entry in root.iterdir():
        stem = entry.name[: -len(SUFFIX)]
        if entry.name.endswith(SUFFIX) and is_valid_name(stem) and entry.is_file():
            found[stem] = _Origin(stem, entry, builtin=True)
    return dict(sorted(found.items()))


def user_profile_path(name: str) -> Path:
    """Where the user profile ``name`` lives (whether or not it exists)."""
    from localllm import paths

    return paths.profiles_dir() / f"{check_name(name)}{SUFFIX}"


def _users() -> dict[str, _Origin]:
    from localllm import paths

    root = paths.profiles_dir()
    if not root.is_dir():
        return {}
    found = {}
    for entry in sorted(root.glob(f"*{SUFFIX}")):
        if is_valid_name(entry.stem) and entry.is_file():
            found[entry.stem] = _Origin(entry.stem, entry, builtin=False)
    return found


def _find(name: str) -> _Origin | None:
    user = user_profile_path(name)
    if user.is_file():
        return _Origin(name, user, builtin=False)
    return _builtins().get(name)


def _names() -> list[str]:
    return sorted(set(_builtins()) | set(_users()))


def _unknown(name: str, where: str | None = None) -> ProfileError:
    names = _names()
    message = f"no profile named '{name}'"
    if where:
        message = f"{where}: extends: {message}"
    suggestion = _did_you_mean(name, names)
    if suggestion:
        message += f": {suggestion}"
    hint = "available: " + ", ".join(names) if names else "no profiles are installed"
    return ProfileError(message, hint=hint)


# --------------------------------------------------------------------------------------------
# Loading and merging.


def _resolve_extends(
    values: dict[str, Any],
    lines: dict[str, int | None],
    source: str,
    own: _Origin | None,
    chain: tuple[str, ...],
) -> dict[str, Any]:
    """``values`` over the resolved values of the profile it extends (name dropped)."""
    values = {k: v for k, v in values.items() if k != "name"}
    parent_name = values.pop("extends", None)
    if parent_name is None:
        return values
    where = _where(source, lines.get("extends"))
    if own is not None and not own.builtin and parent_name == own.name:
        # A user profile extending its own name builds on the built-in it shadows.
        parent = _builtins().get(parent_name)
        if parent is None:
            raise ProfileError(
                f"{where}: extends: '{parent_name}' extends itself",
                hint="name another profile, or remove `extends`",
            )
    else:
        parent = _find(parent_name)
        if parent is None:
            raise _unknown(parent_name, where)
    key = str(parent.path)
    if key in chain:
        names = [*(Path(p).stem for p in chain), parent.name]
        raise ProfileError(
            f"{where}: extends: cycle: " + " -> ".join(names),
            hint="one profile in the chain must not use `extends`",
        )
    return {**_load_origin(parent, chain), **values}


def _load_origin(origin: _Origin, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved values of one profile file (its ``extends`` chain merged in)."""
    source = str(origin.path)
    values, lines = _validate_items(_parse(origin.read(), source), source)
    if "name" in values and values["name"] != origin.name:
        raise ProfileError(
            f"{_where(source, lines.get('name'))}: name: '{values['name']}' does not match "
            f"the file name '{origin.name}{SUFFIX}'",
            hint="rename the file or remove the `name` key",
        )
    return _resolve_extends(values, lines, source, origin, (*chain, str(origin.path)))


def _make(name: str, values: Mapping[str, Any]) -> Profile:
    settable = {f.name for f in fields(Profile)} - {"name", "extra"}
    profile = Profile(name=name, **{k: v for k, v in values.items() if k in settable})
    check_consistency(profile)
    return profile


def check_consistency(profile: Profile) -> None:
    """Rules that involve more than one field."""
    if profile.json_schema is not None and profile.grammar is not None:
        raise ProfileError(
            f"profile {profile.name!r}: json_schema and grammar cannot both be set",
            hint="a schema already constrains the answer; keep one of them",
        )
    if profile.kv_cache_type != "f16" and profile.flash_attn is False:
        raise ProfileError(
            f"profile {profile.name!r}: kv_cache_type {profile.kv_cache_type} needs flash "
            "attention: llama.cpp can only quantize the V cache when flash attention is on",
            hint="set flash_attn: true or auto, or use kv_cache_type: f16",
        )


def _looks_like_path(ref: str) -> bool:
    import os

    return (
        ref.endswith((".yaml", ".yml"))
        or "/" in ref
        or (os.sep in ref)
        or (os.altsep is not None and os.altsep in ref)
    )


def load_profile(name: str) -> Profile:
    """The resolved profile called ``name`` (user first, then built-in).

    A reference that looks like a path (contains a separator or ends in ``.yaml``) is loaded as a
    file with :func:`load_profile_file`.
    """
    if not isinstance(name, str) or not name:
        raise ProfileError("a profile name is required", hint="e.g. `default`")
    if _looks_like_path(name):
        return load_profile_file(name)
    check_name(name)
    origin = _find(name)
    if origin is None:
        raise _unknown(name)
    return _make(name, _load_origin(origin))


def load_profile_file(path: str | Path) -> Profile:
    """The resolved profile in the YAML file ``path``; its name is the file's stem."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ProfileError(f"{path}: is a directory, not a profile file", hint="name a .yaml file")
    if not path.is_file():
        raise ProfileError(
            f"{path}: no such profile file", hint="`localllm profile list` shows the profiles"
        )
    stem = path.name
    for suffix in (".yaml", ".yml"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if not is_valid_name(stem):
        raise ProfileError(
            f"{path}: '{stem}' is not a valid profile name",
            hint="rename the file: letters, digits, '_', '.' and '-'",
        )
    origin = _Origin(stem, path, builtin=False)
    return _make(stem, _load_origin(origin))


def validate_file_as(path: str | Path, name: str) -> Profile:
    """Validate ``path`` as if it were the user profile ``name`` (used by `profile edit`)."""
    origin = _Origin(check_name(name), Path(path), builtin=False)
    return _make(name, _load_origin(origin))


def validate_dict(data: Mapping[str, Any], source: str = "<profile>") -> Profile:
    """A Profile from already-parsed data; ``source`` labels error messages.

    ``extends`` is resolved against the installed profiles. The profile's name is ``data['name']``
    when given, else the default name.
    """
    if not isinstance(data, Mapping):
        raise ProfileError(
            f"{source}: a profile must be a mapping of keys to values, got {_describe(data)}"
        )
    values, lines = _validate_items(((k, v, None) for k, v in data.items()), source)
    name = values.get("name", Profile.name)
    return _make(name, _resolve_extends(values, lines, source, None, ()))


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """CLI flags -> normalized values; ``None`` (a flag not given) is dropped."""
    settable = [n for n in field_names() if n not in ("name", "extends")]
    result: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        flag = "--ctx" if key == "context_length" else "--" + str(key).replace("_", "-")
        if key not in settable:
            raise ProfileError(f"unknown option {flag}", hint=_did_you_mean(str(key), settable))
        if key in ("stop", "rpc") and isinstance(value, (list, tuple)) and not value:
            continue  # a repeatable option that was not given
        if key == "gpu_layers" and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        try:
            result[key] = _CHECKS[key](value)
        except _Invalid as exc:
            raise ProfileError(f"option {flag}: {exc}") from None
    return result


def resolve(name: str | None, overrides: Mapping[str, Any] | None = None) -> Profile:
    """The profile ``name`` (``None`` -> ``default``) with the CLI flags the user passed.

    Overrides whose value is ``None`` were not given and are ignored; the others are validated
    like profile keys and an invalid one raises ProfileError naming the flag.
    """
    from dataclasses import replace

    profile = load_profile(name if name is not None else DEFAULT_PROFILE)
    resolved = replace(profile, **validate_overrides(overrides or {}))
    check_consistency(resolved)
    return resolved


def available_profiles() -> list[ProfileSource]:
    """Every profile ``load_profile`` can find, by name; user profiles shadow built-ins."""
    builtins = _builtins()
    users = _users()
    result = []
    for name in sorted(set(builtins) | set(users)):
        origin = users.get(name) or builtins[name]
        try:
            description = _make(name, _load_origin(origin)).description
        except ProfileError:
            description = ""
        result.append(
            ProfileSource(
                name=name,
                path=Path(str(origin.path)),
                builtin=origin.builtin,
                shadows_builtin=not origin.builtin and name in builtins,
                description=description,
            )
        )
    return result


def builtin_path(name: str) -> Path | None:
    """The built-in profile file called ``name``, if there is one."""
    origin = _builtins().get(name)
    return Path(str(origin.path)) if origin is not None else None


def builtin_text(name: str) -> str | None:
    """The text of the built-in profile ``name`` (comments included), if there is one."""
    origin = _builtins().get(name)
    return origin.read() if origin is not None else None


def profile_path(name: str) -> Path:
    """The file ``load_profile(name)`` reads."""
    check_name(name)
    origin = _find(name)
    if origin is None:
        raise _unknown(name)
    return Path(str(origin.path))


# --------------------------------------------------------------------------------------------
# Writing.


def _dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        # YAML treats NEL and the Unicode line/paragraph separators as line breaks: such text
        # only survives a round trip double-quoted, with escapes.
        if any(c in data for c in "\x85\u2028\u2029") or not all(
            c.isprintable() or c == "\n" for c in data
        ):
            style = '"'
        else:
            style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper


def _dump(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.dump(
        dict(data),
        Dumper=_dumper(),
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """Every key of ``profile`` in schema order, as plain YAML-able values."""
    data: dict[str, Any] = {}
    for f in fields(Profile):
        if f.name == "extra":
            continue
        value = getattr(profile, f.name)
        data[f.name] = list(value) if isinstance(value, tuple) else value
    return data


def profile_to_yaml(profile: Profile) -> str:
    """The resolved profile as YAML (every key; loads back to an equal Profile)."""
    return _dump(profile_to_dict(profile))


def save_user_profile(
    profile_or_dict: Profile | Mapping[str, Any], name: str, *, header: str | None = None
) -> Path:
    """Write the user profile ``name`` atomically (overwriting it) and return its path.

    A Profile is written in full; a mapping is validated and written with only its own keys
    (``extends`` kept). ``header`` becomes comment lines at the top.
    """
    from localllm.durable import write_atomic

    path = user_profile_path(name)
    if isinstance(profile_or_dict, Profile):
        from dataclasses import replace

        data = profile_to_dict(replace(profile_or_dict, name=name))
    elif isinstance(profile_or_dict, Mapping):
        data = {k: v for k, v in profile_or_dict.items() if k != "name"}
        validate_dict({"name": name, **data}, source=str(path))
        values, _ = _validate_items(((k, v, None) for k, v in data.items()), str(path))
        data = {"name": name}
        for key in field_names():
            if key in values:
                value = values[key]
                data[key] = list(value) if isinstance(value, tuple) else value
    else:
        raise TypeError(f"expected a Profile or a mapping, got {type(profile_or_dict).__name__}")
    text = _dump(data)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    write_atomic(path, text.encode("utf-8"))
    return path

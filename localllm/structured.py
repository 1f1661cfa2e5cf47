"""Structured output: JSON schemas, ``--format json`` and GBNF grammars, checked before
generation and applied to the answer only.

Pure logic (the layer of :mod:`localllm.profiles` and :mod:`localllm.reasoning`): no llama_cpp.
The one step that needs llama-cpp-python, turning a JSON schema into GBNF with its
``SchemaConverter``, is a single call in the engine layer (:func:`localllm.session.schema_grammar`);
everything around it lives here so profiles can validate a schema when they load and the CLI
and the server report mistakes the same way:

* :func:`parse_schema_text` / :func:`check_schema`: not JSON → where the JSON breaks; not a JSON
  Schema → the keyword and the path (``jsonschema``'s metaschema check); a keyword the grammar
  converter cannot express → that keyword and its path. All are :class:`UsageError` (exit 2).
* :func:`check_gbnf`: a parser that mirrors llama.cpp's GBNF parser, so a syntax error names its
  line and column here instead of failing (or crashing) inside llama.cpp. It also finds undefined
  rules, a missing ``root`` and left recursion.
* :data:`JSON_OBJECT_GBNF`: any JSON object (``--format json``, ``response_format: json_object``).
* :func:`answer_grammar`: the grammar as it applies after the reasoning closes (leading
  whitespace, Granite's ``<response>`` tags), and :func:`reasoning_hook`: what to pre-fill so a
  reasoning-mode answer starts inside a think block, and the text after which the grammar
  applies (the engine's ``grammar_lazy_after``).
* :meth:`Constraint.parse`: the decoded answer (``parsed`` in ``run --json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from localllm.errors import UsageError

Kind = Literal["json_schema", "json", "grammar"]

# --------------------------------------------------------------------------------------------
# JSON schemas

#: Keywords the converter honours (or that never constrain the value).
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "strict",  # OpenAI's flag beside a schema; harmless inside one
    }
)
SUPPORTED = frozenset(
    {
        "type",
        "enum",
        "const",
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "pattern",
        "minLength",
        "maxLength",
        "format",
    }
)
#: String formats the converter turns into grammar rules.
FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
#: Limits that keep a grammar small enough to build (the converter unrolls repetitions).
MAX_REPEAT = 256
SCHEMA_HINT = (
    "supported: type, enum, const, properties, required, additionalProperties, items, "
    "prefixItems, minItems, maxItems, minLength, maxLength, pattern, anyOf, oneOf, allOf, "
    "$ref and format " + "/".join(FORMATS[:4])
)


def _pointer(path: Iterable[Any]) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/ (the top level)"


def parse_schema_text(text: str, source: str = "the JSON schema") -> Any:
    """``text`` as JSON, or a :class:`UsageError` naming the line and column where it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}",
            hint="write the schema as JSON, e.g. "
            '\'{"type": "object", "properties": {"name": {"type": "string"}}}\'',
        ) from None


def read_schema_arg(value: str) -> tuple[dict[str, Any], str]:
    """A ``--json-schema`` argument (a file or inline JSON) → (schema, where it came from)."""
    from pathlib import Path

    stripped = value.strip()
    if stripped.startswith(("{", "[")) or stripped in ("true", "false"):
        source = "the --json-schema text"
        schema = parse_schema_text(value, source)
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError(
                f"--json-schema: no such file {value!r}, and it is not inline JSON",
                hint="pass a file with a JSON schema, or the schema itself: "
                '--json-schema \'{"type": "object"}\'',
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"cannot read the schema file {path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        source = str(path)
        schema = parse_schema_text(text, source)
    check_schema(schema, source)
    return schema, source


def check_schema(schema: Any, source: str = "the JSON schema") -> None:
    """Refuse what is not a JSON Schema, or what the grammar converter cannot express.

    The message names the keyword and its JSON pointer, e.g.
    ``the JSON schema: /properties/age/minimum: keyword 'minimum' cannot be enforced``.
    """
    if schema is True:
        return
    if not isinstance(schema, dict):
        raise UsageError(
            f"{source} must be a JSON object (a schema), got {_kind_of(schema)}",
            hint='e.g. {"type": "object", "properties": {"name": {"type": "string"}}}',
        )
    _metaschema_check(schema, source)
    problem = find_unsupported(schema)
    if problem is not None:
        where, message = problem
        raise UsageError(f"{source}: {where}: {message}", hint=SCHEMA_HINT)


def _kind_of(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _metaschema_check(schema: dict[str, Any], source: str) -> None:
    import jsonschema
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        meta = cls(cls.META_SCHEMA)
        best = jsonschema.exceptions.best_match(meta.iter_errors(schema)) or exc
        keyword = best.path[-1] if best.path else best.validator
        where = _pointer(best.path)
        raise UsageError(
            f"{source} is not a valid JSON Schema: {where}: keyword '{keyword}': {best.message}",
            hint="check the keyword against https://json-schema.org/understanding-json-schema",
        ) from None


def find_unsupported(schema: Any) -> tuple[str, str] | None:
    """The first place (JSON pointer, message) the converter cannot express, else ``None``."""
    return _walk(schema, [], schema)


def _walk(node: Any, path: list[Any], root: Any) -> tuple[str, str] | None:
    if node is True:
        return None
    if node is False:
        return _pointer(path), "the schema `false` accepts nothing, so no answer can match it"
    if not isinstance(node, dict):
        return None  # the metaschema check has already refused it
    for key in node:
        if key not in SUPPORTED and key not in ANNOTATIONS:
            return (
                _pointer([*path, key]),
                f"keyword '{key}' cannot be enforced by the grammar converter",
            )
    fmt = node.get("format")
    if fmt is not None and fmt not in FORMATS:
        return (
            _pointer([*path, "format"]),
            f"string format '{fmt}' cannot be enforced by the grammar converter "
            f"(supported: {', '.join(FORMATS[:4])})",
        )
    ref = node.get("$ref")
    if ref is not None:
        if not ref.startswith("#"):
            return _pointer([*path, "$ref"]), f"only local references (#/...) work, not {ref!r}"
        target: Any = root
        for part in ref.lstrip("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return _pointer([*path, "$ref"]), f"reference {ref!r} points at nothing"
        if len(node.keys() - ANNOTATIONS) > 1:
            return _pointer(path), "keywords beside '$ref' cannot be combined with it"
    combos = [k for k in ("anyOf", "oneOf") if k in node]
    if combos and (set(node) - ANNOTATIONS - {combos[0], "type"}):
        other = sorted(set(node) - ANNOTATIONS - {combos[0], "type"})[0]
        return _pointer([*path, other]), f"'{other}' beside '{combos[0]}' cannot be enforced"
    if "allOf" in node:
        for i, part in enumerate(node["allOf"]):
            sub = part
            if isinstance(part, dict) and "$ref" in part:
                sub = _resolve(root, part["$ref"])
            if not (isinstance(sub, dict) and ("properties" in sub or "anyOf" in sub)):
                return (
                    _pointer([*path, "allOf", i]),
                    "allOf works only to combine object schemas with properties",
                )
    props = node.get("properties")
    required = node.get("required", [])
    types = node.get("type")
    type_list = types if isinstance(types, list) else [types] if types else []
    if required and "allOf" not in node:
        missing = [r for r in required if not isinstance(props, dict) or r not in props]
        if missing:
            return (
                _pointer([*path, "required"]),
                f"required property '{missing[0]}' has no schema under 'properties', so the "
                "grammar cannot produce it",
            )
    if isinstance(types, list):
        extra = sorted(set(node) - ANNOTATIONS - {"type"})
        if extra:
            return (
                _pointer([*path, extra[0]]),
                f"'{extra[0]}' beside a list of types cannot be enforced (use anyOf with one "
                "schema per type)",
            )
    for key in ("minItems", "maxItems"):
        if key in node and "items" not in node and "prefixItems" not in node:
            return _pointer([*path, key]), f"'{key}' needs 'items' beside it"
    if "items" in node and "prefixItems" in node:
        return _pointer([*path, "items"]), "'items' beside 'prefixItems' cannot be enforced"
    for key in ("minLength", "maxLength"):
        if key in node and "string" not in type_list:
            return _pointer([*path, key]), f'\'{key}\' needs "type": "string" beside it'
        if key in node and ("pattern" in node or "format" in node):
            return _pointer([*path, key]), f"'{key}' beside 'pattern'/'format' cannot be enforced"
    for key in ("maxItems", "maxLength", "minItems", "minLength"):
        if isinstance(node.get(key), int) and node[key] > MAX_REPEAT:
            return _pointer(
                [*path, key]
            ), f"'{key}' above {MAX_REPEAT} would make the grammar too big"
    if "pattern" in node:
        pattern = node["pattern"]
        if not (pattern.startswith("^") and pattern.endswith("$")):
            return (
                _pointer([*path, "pattern"]),
                f"pattern {pattern!r} must be anchored with ^ and $ to become a grammar",
            )
        for bad in ("\\d", "\\w", "\\s", "\\D", "\\W", "\\S", "\\b", "(?", "*?", "+?", "??"):
            if bad in pattern:
                return (
                    _pointer([*path, "pattern"]),
                    f"pattern {pattern!r} uses {bad!r}, which the grammar converter cannot "
                    "translate (write character classes such as [0-9] instead)",
                )
    for key in ("enum", "const"):
        if key in node and "\\" in json.dumps(node[key], ensure_ascii=False):
            return (
                _pointer([*path, key]),
                f"'{key}' values with quotes, backslashes or control characters cannot be "
                "expressed by the grammar converter",
            )
    if isinstance(props, dict):
        for name in props:
            if "\\" in json.dumps(name, ensure_ascii=False):
                return (
                    _pointer([*path, "properties", name]),
                    "property names with quotes, backslashes or control characters cannot be "
                    "expressed by the grammar converter",
                )
    if "enum" in node and not node["enum"]:
        return _pointer([*path, "enum"]), "an empty enum accepts nothing"
    # descend
    for key in ("properties", "$defs", "definitions"):
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                found = _walk(sub, [*path, key, name], root)
                if found:
                    return found
    add = node.get("additionalProperties")
    if isinstance(add, dict):
        found = _walk(add, [*path, "additionalProperties"], root)
        if found:
            return found
    items = node.get("items")
    if isinstance(items, dict):
        found = _walk(items, [*path, "items"], root)
        if found:
            return found
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                found = _walk(sub, [*path, key, i], root)
                if found:
                    return found
    if isinstance(items, list):
        for i, sub in enumerate(items):
            found = _walk(sub, [*path, "items", i], root)
            if found:
                return found
    return None


def _resolve(root: Any, ref: str) -> Any:
    target = root
    for part in ref.lstrip("#").split("/")[1:]:
        if not isinstance(target, dict):
            return None
        target = target.get(part.replace("~1", "/").replace("~0", "~"))
    return target


def normalize_schema(schema: Any) -> dict[str, Any]:
    """What the converter is given: ``true`` sub-schemas as ``{}``, ``items: {}`` as any value
    (the converter reads an empty ``items`` as missing)."""

    def fix(node: Any) -> Any:
        if node is True:
            return {}
        if isinstance(node, list):
            return [fix(x) for x in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples", "required"):
                out[key] = value
            elif key == "properties" and isinstance(value, dict):
                out[key] = {k: fix(v) for k, v in value.items()}
            else:
                out[key] = fix(value)
        if out.get("items") == {}:
            out["items"] = {"type": ["object", "array", "string", "number", "boolean", "null"]}
        return out

    fixed = fix(schema)
    if not isinstance(fixed, dict):
        return {}
    ref = fixed.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        # The converter reads no other keyword of a node with $ref, so refs inside the root's
        # $defs would stay unresolved: put the referenced schema at the root instead.
        target = _resolve(fixed, ref)
        if isinstance(target, dict):
            rest = {k: v for k, v in fixed.items() if k != "$ref"}
            return {**rest, **target}
    return fixed


#: JSON strings may not hold raw control characters; the converter's ``char`` rule allows them
#: (then ``json.loads`` refuses the answer), so its rule is replaced by this one.
JSON_CHAR_RULE = (
    r'char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)


def fix_converted(gbnf: str) -> str:
    """The converter's grammar with a JSON-safe ``char`` rule."""
    lines = []
    for line in gbnf.splitlines():
        lines.append(JSON_CHAR_RULE if line.startswith("char ::= ") else line)
    return "\n".join(lines) + "\n"


#: Any JSON object: ``--format json``, ``response_format: {"type": "json_object"}``.
JSON_OBJECT_GBNF = r"""root ::= object
value ::= object | array | string | number | ("true" | "false" | "null") space
object ::= "{" space ( string ":" space value ( "," space string ":" space value )* )? "}" space
array ::= "[" space ( value ( "," space value )* )? "]" space
string ::= "\"" char* "\"" space
char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
number ::= "-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})? space
space ::= " "?
"""


# --------------------------------------------------------------------------------------------
# GBNF


@dataclass
class _Item:
    kind: str  # lit | class | ref | group | any | token
    nullable: bool = False
    ref: str = ""
    group: list[list[_Item]] = field(default_factory=list)
    min: int = 1


@dataclass
class Grammar:
    """A parsed GBNF grammar: its rules and where every rule name occurs in the text."""

    text: str
    rules: dict[str, list[list[_Item]]]
    names: list[tuple[int, int, str]]  # (start, end, name) of every definition and reference

    def renamed(self, old: str, new: str) -> str:
        """The text with every occurrence of rule ``old`` (definitions and references) renamed."""
        out, last = [], 0
        for start, end, name in self.names:
            if name == old:
                out.append(self.text[last:start] + new)
                last = end
        out.append(self.text[last:])
        return "".join(out)


class GrammarSyntaxError(UsageError):
    """A GBNF grammar llama.cpp would refuse."""


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.src = text
        self.source = source
        self.rules: dict[str, list[list[_Item]]] = {}
        self.names: list[tuple[int, int, str]] = []
        self.refs: list[tuple[int, str]] = []

    def error(self, pos: int, message: str) -> GrammarSyntaxError:
        line = self.src.count("\n", 0, pos) + 1
        start = self.src.rfind("\n", 0, pos) + 1
        end = self.src.find("\n", pos)
        text = self.src[start : end if end >= 0 else len(self.src)]
        col = pos - start + 1
        return GrammarSyntaxError(
            f"{self.source}: GBNF syntax error at line {line}, column {col}: {message}: "
            f"{text.strip()[:120]!r}",
            hint="see https://github.com/ggml-org/llama.cpp/blob/master/grammars/README.md",
        )

    def space(self, pos: int, newline_ok: bool) -> int:
        src = self.src
        while pos < len(src):
            c = src[pos]
            if c == "#":
                while pos < len(src) and src[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while end < len(self.src) and _is_word(self.src[end]):
            end += 1
        if end == pos:
            raise self.error(pos, "expecting a rule name")
        return end

    def char(self, pos: int) -> int:
        src = self.src
        if pos >= len(src):
            raise self.error(pos, "unexpected end of input")
        if src[pos] != "\\":
            return pos + 1
        if pos + 1 >= len(src):
            raise self.error(pos, "unexpected end of input after '\\'")
        esc = src[pos + 1]
        size = {"x": 2, "u": 4, "U": 8}.get(esc)
        if size is not None:
            digits = src[pos + 2 : pos + 2 + size]
            n = 0
            while n < len(digits) and digits[n] in "0123456789abcdefABCDEF":
                n += 1
            if n != size:
                raise self.error(pos, f"expecting {size} hex digits after '\\{esc}'")
            return pos + 2 + size
        if esc in 'tnr\\"[]':
            return pos + 2
        raise self.error(pos, f"unknown escape '\\{esc}'")

    def parse(self) -> Grammar:
        pos = self.space(0, True)
        if pos >= len(self.src):
            raise self.error(pos, "the grammar is empty")
        while pos < len(self.src):
            pos = self.rule(pos)
        for at, ref in self.refs:
            if ref not in self.rules:
                raise self.error(at, f"undefined rule '{ref}'")
        if "root" not in self.rules:
            raise GrammarSyntaxError(
                f"{self.source}: the grammar has no 'root' rule",
                hint="generation starts at `root ::= ...`",
            )
        self.check_left_recursion()
        return Grammar(self.src, self.rules, sorted(self.names))

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        self.names.append((pos, end, name))
        pos = self.space(end, False)
        if not self.src.startswith("::=", pos):
            raise self.error(pos, f"expecting '::=' after the rule name '{name}'")
        pos = self.space(pos + 3, True)
        alts, pos = self.alternates(pos, nested=False)
        if name in self.rules:
            raise self.error(pos - 1, f"rule '{name}' is defined twice")
        self.rules[name] = alts
        if pos < len(self.src) and self.src[pos] == "\r":
            pos += 1
        if pos < len(self.src):
            if self.src[pos] != "\n":
                raise self.error(pos, f"unexpected {self.src[pos]!r}")
            pos += 1
        return self.space(pos, True)

    def alternates(self, pos: int, nested: bool) -> tuple[list[list[_Item]], int]:
        seq, pos = self.sequence(pos, nested)
        alts = [seq]
        while pos < len(self.src) and self.src[pos] == "|":
            pos = self.space(pos + 1, True)
            seq, pos = self.sequence(pos, nested)
            alts.append(seq)
        return alts, pos

    def sequence(self, pos: int, nested: bool) -> tuple[list[_Item], int]:
        src = self.src
        items: list[_Item] = []
        while pos < len(src):
            c = src[pos]
            start = pos
            if c == '"':
                pos += 1
                empty = True
                while pos < len(src) and src[pos] != '"':
                    if src[pos] in "\r\n":
                        raise self.error(start, "a string literal is not closed on its line")
                    pos = self.char(pos)
                    empty = False
                if pos >= len(src):
                    raise self.error(start, "a string literal is not closed")
                items.append(_Item("lit", nullable=empty))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                if pos < len(src) and src[pos] == "^":
                    pos += 1
                while pos < len(src) and src[pos] != "]":
                    if src[pos] in "\r\n":
                        raise self.error(start, "a character class is not closed on its line")
                    pos = self.char(pos)
                    if pos + 1 < len(src) and src[pos] == "-" and src[pos + 1] != "]":
                        pos = self.char(pos + 1)
                if pos >= len(src):
                    raise self.error(start, "a character class is not closed")
                items.append(_Item("class"))
                pos = self.space(pos + 1, nested)
            elif _is_word(c):
                end = self.name(pos)
                ref = src[pos:end]
                self.names.append((pos, end, ref))
                self.refs.append((pos, ref))
                items.append(_Item("ref", ref=ref))
                pos = self.space(end, nested)
            elif c == "(":
                pos = self.space(pos + 1, True)
                alts, pos = self.alternates(pos, nested=True)
                if pos >= len(src) or src[pos] != ")":
                    raise self.error(start, "expecting ')' to close this group")
                items.append(_Item("group", group=alts))
                pos = self.space(pos + 1, nested)
            elif c == ".":
                items.append(_Item("any"))
                pos = self.space(pos + 1, nested)
            elif c == "<" or (c == "!" and src.startswith("<", pos + 1)):
                end = src.find(">", pos)
                if end < 0 or "\n" in src[pos:end]:
                    raise self.error(start, "a token reference <...> is not closed")
                items.append(_Item("token"))
                pos = self.space(end + 1, nested)
            elif c in "*+?":
                if not items:
                    raise self.error(pos, f"'{c}' has nothing before it to repeat")
                if c in "*?":
                    items[-1].min = 0
                pos = self.space(pos + 1, nested)
            elif c == "{":
                if not items:
                    raise self.error(pos, "'{' has nothing before it to repeat")
                pos = self.space(pos + 1, nested)
                lo, pos = self.integer(pos)
                pos = self.space(pos, nested)
                hi: int | None = lo
                if pos < len(src) and src[pos] == ",":
                    pos = self.space(pos + 1, nested)
                    hi = None
                    if pos < len(src) and src[pos].isdigit():
                        hi, pos = self.integer(pos)
                        pos = self.space(pos, nested)
                if pos >= len(src) or src[pos] != "}":
                    raise self.error(pos, "expecting '}' to close a repetition {m,n}")
                if hi is not None and hi < lo:
                    raise self.error(
                        start, f"repetition {{{lo},{hi}}} has its maximum below its minimum"
                    )
                if lo == 0:
                    items[-1].min = 0
                pos = self.space(pos + 1, nested)
            else:
                break
        return items, pos

    def integer(self, pos: int) -> tuple[int, int]:
        end = pos
        while end < len(self.src) and self.src[end].isdigit():
            end += 1
        if end == pos:
            raise self.error(pos, "expecting a number in a repetition {m,n}")
        return int(self.src[pos:end]), end

    def check_left_recursion(self) -> None:
        nullable: dict[str, bool] = {}

        def item_nullable(item: _Item) -> bool:
            if item.min == 0 or item.nullable:
                return True
            if item.kind == "ref":
                return nullable.get(item.ref, False)
            if item.kind == "group":
                return any(all(item_nullable(i) for i in alt) for alt in item.group)
            return False

        changed = True
        while changed:
            changed = False
            for name, alts in self.rules.items():
                if not nullable.get(name) and any(
                    all(item_nullable(i) for i in alt) for alt in alts
                ):
                    nullable[name] = True
                    changed = True

        def firsts(alts: list[list[_Item]]) -> set[str]:
            out: set[str] = set()
            for alt in alts:
                for item in alt:
                    if item.kind == "ref":
                        out.add(item.ref)
                    elif item.kind == "group":
                        out |= firsts(item.group)
                    if not item_nullable(item):
                        break
            return out

        graph = {name: firsts(alts) for name, alts in self.rules.items()}
        for name in self.rules:
            seen: set[str] = set()
            stack = list(graph[name])
            while stack:
                cur = stack.pop()
                if cur == name:
                    at = next(s for s, _, n in self.names if n == name)
                    raise self.error(
                        at, f"rule '{name}' is left-recursive, which llama.cpp cannot run"
                    )
                if cur in seen:
                    continue
                seen.add(cur)
                stack.extend(graph.get(cur, ()))


def check_gbnf(text: str, source: str = "the grammar") -> Grammar:
    """Parse ``text`` as llama.cpp would; a :class:`GrammarSyntaxError` (exit 2) names the line."""
    if not isinstance(text, str):
        raise GrammarSyntaxError(f"{source} must be GBNF text")
    try:
        return _Parser(text, source).parse()
    except RecursionError:
        raise GrammarSyntaxError(
            f"{source}: the grammar nests groups too deeply",
            hint="use rules instead of deeply nested parentheses",
        ) from None


def read_grammar_file(path: str) -> str:
    """The GBNF in ``path``, checked."""
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the grammar file {p}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    check_gbnf(text, str(p))
    return text


# --------------------------------------------------------------------------------------------
# Constraints and reasoning

ANSWER_ROOT = "answer-root"
#: Whitespace the model may write between the end of its reasoning and the constrained answer.
LEAD = "answer-lead ::= [ \\t\\n]{0,4}"


@dataclass(frozen=True)
class Constraint:
    """What the answer must be: GBNF text plus, for JSON, how to decode and check it."""

    kind: Kind
    grammar: str
    schema: dict[str, Any] | None = None
    source: str = ""

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_schema", "json")

    def parse(self, answer: str) -> Any:
        """The decoded answer; :class:`AnswerError` if it is not valid JSON (or not valid
        against the schema). Only for JSON constraints."""
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            raise AnswerError(
                f"the answer is not valid JSON: {exc.msg} at char {exc.pos}"
            ) from None
        if self.kind == "json" and not isinstance(value, dict):
            raise AnswerError("the answer is JSON but not an object")
        if self.schema is not None:
            errors = validation_errors(value, self.schema)
            if errors:
                raise AnswerError(f"the answer does not match the schema: {errors[0]}")
        return value


class AnswerError(ValueError):
    """A constrained answer that does not decode (cut short by max_tokens, most often)."""


def validation_errors(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """Why ``value`` fails ``schema`` (empty when it validates). Formats are annotations, as
    JSON Schema 2020-12 says by default (the grammar shapes dates, times and uuids but cannot
    know that February has no 31st)."""
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    return [f"{_pointer(e.absolute_path)}: {e.message}" for e in cls(schema).iter_errors(value)]


def json_object_constraint() -> Constraint:
    return Constraint("json", JSON_OBJECT_GBNF, source="--format json")


def grammar_constraint(text: str, source: str = "the grammar") -> Constraint:
    check_gbnf(text, source)
    return Constraint("grammar", text, source=source)


def answer_grammar(grammar: str, adapter: str) -> str:
    """``grammar`` as it applies after the reasoning closes: leading whitespace allowed, and
    for the ``thinking`` adapter (Granite) the ``<response>`` tags around the answer."""
    parsed = check_gbnf(grammar)
    body = parsed.renamed("root", ANSWER_ROOT).rstrip("\n")
    if adapter == "thinking":
        root = (
            f'root ::= answer-lead ("<response>" answer-lead)? {ANSWER_ROOT} '
            f'(answer-lead "</response>")?'
        )
    else:
        root = f"root ::= answer-lead {ANSWER_ROOT}"
    return f"{root}\n{LEAD}\n{body}\n"


@dataclass(frozen=True)
class ReasoningHook:
    """How a constraint meets reasoning: text appended to the prompt so the model starts inside
    its reasoning, and the text after which the grammar applies (``None``: from the start)."""

    prefill: str = ""
    lazy_after: str | None = None


THINK_ADAPTERS = ("enable_thinking", "thinking", "prefill", "instruction")
HARMONY_FINAL = "<|channel|>final<|message|>"


def reasoning_hook(adapter: str, mode: str, prompt: str) -> ReasoningHook:
    """In reasoning mode the model thinks freely first and the grammar applies to the answer
    only. So the boundary is certain, the prompt is made to end inside the reasoning (a think
    block opened, or harmony's analysis channel), and the grammar waits for the closing marker
    (written by the model, or injected when the reasoning budget runs out)."""
    from localllm import reasoning

    if mode != "reasoning" or adapter == "none":
        return ReasoningHook()
    if adapter == "harmony":
        start = reasoning.H_START + "assistant"
        pre = ""
        if prompt.rstrip().endswith(start):
            pre = f"{reasoning.H_CHANNEL}analysis{reasoning.H_MESSAGE}"
        return ReasoningHook(pre, HARMONY_FINAL)
    if adapter in THINK_ADAPTERS:
        pre = "" if reasoning.ends_in_open_think(prompt) else reasoning.THINK_OPEN + "\n"
        return ReasoningHook(pre, reasoning.THINK_CLOSE)
    return ReasoningHook()

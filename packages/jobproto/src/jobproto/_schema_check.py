"""A small JSON Schema checker: the vocabulary ``schema_of`` publishes, and nothing more.

``/openapi.json`` publishes each operation's parameters as JSON Schema (draft 2020-12); this
checks a request against exactly that, so the published schema is what a service enforces. It
knows the keywords ``_schema`` writes (``type properties required additionalProperties items
anyOf allOf``), those a field may declare (``_schema.CONSTRAINTS``) and ``oneOf`` (a class's
rule across its fields, ``_schema.CLASS_KEYWORDS``); ``pattern`` is ECMA-262
(``_ecma``). Values are JSON as ``json.loads`` gives them: a bool is not a number, and a number
written with a fraction or exponent (a ``float``) is not an integer, as jobproto/1 says
(``docs/protocol.md`` §2.2), though ``enum``/``const`` compare ``1 == 1.0``.

``first_error(schema, value)`` gives the first refusal as ``(path, message)``, the path in
jobproto's form (``messages[1].content``, ``labels[gpu]``), or None. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from ._ecma import ecma_regex

__all__ = ["first_error"]

Refusal = tuple[str, str]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):  # 1.0 is no integer in jobproto/1 (docs/protocol.md §2.2)
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    kind = _json_type(value)
    return kind == name or (name == "number" and kind == "integer")


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true != 1``; arrays and objects member by member."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (dict, list, tuple)) or isinstance(b, (dict, list, tuple)):
        return False
    return bool(a == b)


def _key(value: Any) -> Any:
    """A hashable form of a JSON value, equal where ``_equal`` says the values are: so
    ``uniqueItems`` is one pass over a set, not a comparison of every pair."""
    if isinstance(value, bool):
        return ("b", value)  # true is not 1
    if isinstance(value, (int, float)):
        return ("n", value)  # 1 == 1.0, and hash(1) == hash(1.0)
    if isinstance(value, (list, tuple)):
        return ("a", tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, _key(v)) for k, v in value.items()))
    return ("s", value)  # str, None


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any, limit: int = 100) -> str:
    """``repr(value)``, shortened to about ``limit`` characters: a refusal stays small."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}…{text[-19:]}"


def _who(path: str) -> str:
    return f"'{path}'" if path else "the value"


def _number(schema: Mapping[str, Any], value: Any) -> str | None:
    if "minimum" in schema and value < schema["minimum"]:
        return f"must be >= {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        return f"must be <= {schema['maximum']}"
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        return f"must be > {schema['exclusiveMinimum']}"
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        return f"must be < {schema['exclusiveMaximum']}"
    step = schema.get("multipleOf")
    if step is not None and not _multiple(value, step):
        return f"must be a multiple of {step}"
    return None


def _multiple(value: int | float, step: int | float) -> bool:
    """Whether ``value`` is a multiple of ``step``, as jsonschema (the conformance judge) says:
    exactly with an integer step, by the float quotient with a float one, exactly (fractions)
    where that quotient overflows; a value no arithmetic can divide is no multiple."""
    try:
        if not isinstance(step, float):
            return value % step == 0
        try:
            quotient = value / step
            return int(quotient) == quotient
        except OverflowError:  # a huge value, or one that overflows to inf divided by step < 1
            return (Fraction(value) / Fraction(step)).denominator == 1
    except (OverflowError, ValueError, ZeroDivisionError):  # inf, nan
        return False


def _string(schema: Mapping[str, Any], value: str) -> str | None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        return f"must be at least {schema['minLength']} characters long"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"must be at most {schema['maxLength']} characters long"
    if "pattern" in schema and ecma_regex(schema["pattern"]).search(value) is None:
        return f"must match the pattern {schema['pattern']}"
    return None


def _array(schema: Mapping[str, Any], value: list[Any], path: str) -> Refusal | None:
    who = _who(path)
    if "minItems" in schema and len(value) < schema["minItems"]:
        return path, f"{who} must have at least {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return path, f"{who} must have at most {schema['maxItems']} items"
    if schema.get("uniqueItems"):
        seen: set[Any] = set()
        for i, item in enumerate(value):
            key = _key(item)
            if key in seen:
                return f"{path}[{i}]", f"'{path}[{i}]' repeats an earlier item"
            seen.add(key)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            if (found := first_error(items, item, f"{path}[{i}]")) is not None:
                return found
    return None


def _object(
    schema: Mapping[str, Any], value: dict[str, Any], path: str, record: bool
) -> Refusal | None:
    who = _who(path)
    for name in schema.get("required", ()):
        if name not in value:
            where = _member(path, name)
            return where, f"required field {where!r} is missing"
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        return path, f"{who} must have at least {schema['minProperties']} entries"
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        return path, f"{who} must have at most {schema['maxProperties']} entries"
    props: Mapping[str, Any] = schema.get("properties", {})
    names = schema.get("propertyNames")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            # an attrs object's field is ``.name``; a member of a mapping ``[key]``, as cattrs says
            found = first_error(
                props[key], item, _member(path, key) if record else f"{path}[{key}]"
            )
        else:
            where = f"{path}[{key}]"  # a mapping's member, named as cattrs names it
            if extra is False:
                return _member(path, key), f"unknown field(s): {key}"
            if isinstance(names, Mapping) and first_error(names, key, where) is not None:
                return where, f"{who} may not have the key {_show(key)}"
            found = first_error(extra, item, where) if isinstance(extra, Mapping) else None
        if found is not None:
            return found
    return None


def first_error(
    schema: Mapping[str, Any], value: Any, path: str = "", record: bool | None = None
) -> Refusal | None:
    """The first way ``value`` breaks ``schema``: ``(path, message)``; None when it is valid.

    ``record``: whether an object here is an attrs object (its schema, or the schema whose
    ``allOf``/``anyOf``/``oneOf`` this is, closes it with ``additionalProperties: false``)."""
    who = _who(path)
    if "additionalProperties" in schema:
        record = schema["additionalProperties"] is False
    for sub in schema.get("allOf", ()):
        if (found := first_error(sub, value, path, record)) is not None:
            return found
    for key in ("anyOf", "oneOf"):
        if key not in schema:
            continue
        errors = [first_error(sub, value, path, record) for sub in schema[key]]
        if all(e is not None for e in errors):
            # the branch of the value's own type says best what is wrong
            typed = [(s, e) for s, e in zip(schema[key], errors, strict=True) if "type" in s]
            for sub, err in typed:
                kinds = sub["type"]
                if any(_is_type(value, k) for k in ([kinds] if isinstance(kinds, str) else kinds)):
                    return err
            if len(typed) == len(errors):
                return path, f"{who} has the wrong type ({_json_type(value)})"
            # else the form that got furthest into the value names what to fix
            deepest = max(errors, key=lambda e: len(e[0]) if e else -1)
            if deepest is not None and len(deepest[0]) > len(path):
                return deepest
            return path, f"{who} matches none of the forms its schema allows"
        if key == "oneOf" and errors.count(None) > 1:
            return path, f"{who} matches more than one of the forms its schema allows"
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is_type(value, k) for k in allowed):
            return path, f"{who} must be of type {' or '.join(allowed)}, got {_json_type(value)}"
    if "const" in schema and not _equal(value, schema["const"]):
        return path, f"{who} must be {_show(schema['const'])}"
    if "enum" in schema and not any(_equal(value, v) for v in schema["enum"]):
        choices = ", ".join(_show(v) for v in schema["enum"][:20])
        return path, f"{who} must be one of {choices}; got {_show(value)}"
    message: str | None = None
    if _is_type(value, "number"):
        message = _number(schema, value)
    elif isinstance(value, str):
        message = _string(schema, value)
    elif isinstance(value, list):
        return _array(schema, value, path)
    elif isinstance(value, dict):
        return _object(schema, value, path, bool(record))
    return None if message is None else (path, f"{who} {message}")

"""JSON Schema (draft 2020-12, as OpenAPI 3.1 uses it) of attrs parameter classes.

Covers the types operation parameters use: str, int, float, bool, None, Any, list/tuple, dict with
string keys, Optional/Union, Literal, enums and nested attrs classes. A field's ``metadata`` may
carry ``{"schema": {...}}`` (merged in, e.g. ``{"minimum": 1}``) and ``{"description": "..."}``.
"""

from __future__ import annotations

import enum
import types
import typing
from collections import abc
from typing import Any, Literal, Union

import attrs

__all__ = ["schema_of"]

_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and attrs.has(tp):
        return schema_of(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin in (list, tuple, set, frozenset, abc.Sequence, abc.Set):
        items = _type_schema(args[0]) if args else {}
        return {"type": "array", "items": items}
    if origin in (dict, abc.Mapping):
        values = _type_schema(args[1]) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": values}
    return {}


def schema_of(cls: type) -> dict[str, Any]:
    """The object schema of an attrs class: its fields, required ones, no others."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        schema = _type_schema(hints.get(field.name, Any))
        schema.update(field.metadata.get("schema", {}))
        if "description" in field.metadata:
            schema["description"] = field.metadata["description"]
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = field.default
            schema["default"] = default.value if isinstance(default, enum.Enum) else default
        props[field.name] = schema
    out: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "title": cls.__name__,
    }
    if required:
        out["required"] = required
    return out

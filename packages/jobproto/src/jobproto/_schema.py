"""JSON Schema (draft 2020-12, as OpenAPI 3.1 uses it) of attrs parameter classes: one source.

The schema ``/openapi.json`` publishes for an operation is derived from the same declaration that
validates it, and ``_wire.structure_params`` enforces it, so what is published is what is enforced.
Per field, ``schema_of`` writes:

* the type's schema: str, int, float, bool, None, Any, ``list``/``tuple[T, ...]``/``Sequence``,
  ``dict``/``Mapping`` with ``str`` keys, ``Optional``/``Union`` (of what jobproto's
  converter structures), ``Literal``, enums and nested attrs classes. Anything else (``datetime``,
  ``bytes``, ``Decimal``, ``set``, ``tuple[int, str]``, ``dict[int, str]``, other classes) is
  refused;
* the keywords of the field's attrs validators: ``ge le gt lt`` -> ``minimum maximum
  exclusiveMinimum exclusiveMaximum``; ``min_len``/``max_len`` -> ``minLength``/``maxLength``
  (strings), ``minItems``/``maxItems`` (arrays), ``minProperties``/``maxProperties`` (objects),
  and the ``type``s that have a length where the field's type allows others (``Any``);
  ``in_`` -> ``enum`` (a ``range`` -> ``minimum``/``maximum``, on a float field ``multipleOf: 1``);
  ``matches_re`` -> ``pattern`` (ECMA-262, anchored as its match function anchors: ``_ecma``);
  ``instance_of`` -> nothing;
  ``optional``, ``and_`` (a list), ``deep_iterable`` (``items``) and ``deep_mapping``
  (``propertyNames``, ``additionalProperties``) -> their members'. A validator (object or
  function) with a ``__json_schema__`` dict publishes that dict;
* the field's ``metadata={"schema": {...}}``, which must say what any other ("opaque") validator of
  the field checks, in the keywords of ``CONSTRAINTS`` (sub-schemas too), plus annotations
  (``ANNOTATIONS``); ``metadata={"description": "..."}`` too.

A rule across fields (exactly one of two fields, say) is the class's own ``__json_schema__``
dict, merged into its object schema (and inherited): the field keywords plus ``CLASS_KEYWORDS``
(``anyOf allOf oneOf required properties type``), naming only the class's fields. The class's
checks (``__attrs_post_init__``) still run first and give their messages.

Keywords that apply to one JSON type only (``minLength``...) say nothing of other values, and a
field that may be ``None`` gets its keywords on its non-null branch, so ``null`` stays valid.
Everything refused raises ``SchemaError`` naming the class, the field, the reason and what to
write instead; an operation's registration calls ``schema_of``, so a mistake fails there.
"""

from __future__ import annotations

import contextvars
import copy
import enum
import functools
import types
import typing
from collections import abc
from collections.abc import Mapping
from typing import Any, Literal, Union

import attr.validators
import attrs

from ._ecma import ecma_regex, python_pattern_to_ecma
from ._errors import LocalProtocolError
from ._schema_check import _equal, first_error

__all__ = [
    "ANNOTATIONS",
    "CLASS_KEYWORDS",
    "CONSTRAINTS",
    "SchemaError",
    "enforced_schema",
    "schema_of",
]

#: keywords a field may declare in ``metadata["schema"]``: jobproto enforces every one
CONSTRAINTS = frozenset(
    [
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "items",
        "additionalProperties",
    ]
)
#: keywords that only describe (``format`` included: it is not checked)
ANNOTATIONS = frozenset(["description", "title", "examples", "deprecated", "format"])
#: what a parameter class's own ``__json_schema__`` (a rule across its fields) may use besides
CLASS_KEYWORDS = frozenset(["anyOf", "allOf", "oneOf", "required", "properties", "type"])
_JSON_TYPES = frozenset(["string", "number", "integer", "boolean", "null", "array", "object"])
_SUBSCHEMAS = ("items", "propertyNames", "additionalProperties")
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_SUPPORTED = (
    "use str, int, float, bool, None, Any, list[T], tuple[T, ...], dict[str, T], T | None,"
    " Literal[...], an Enum or an attrs class"
)


class SchemaError(LocalProtocolError):
    """A parameter class jobproto cannot publish exactly as it validates it."""

    def __init__(self, cls: type, field: str | None, reason: str) -> None:
        where = cls.__qualname__ if field is None else f"{cls.__qualname__}.{field}"
        super().__init__(f"{cls.__module__}.{where}: {reason}")
        self.cls, self.field, self.reason = cls, field, reason


class _Refused(Exception):
    """A reason, raised deep down; ``schema_of`` adds the class and the field."""


_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}
_SEQUENCES = (list, abc.Sequence, abc.MutableSequence)
_SETS = (set, frozenset, abc.Set, abc.MutableSet)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_SCALARS = (str, int, float, bool, type(None))


def _scalar(value: Any, what: str) -> Any:
    value = value.value if isinstance(value, enum.Enum) else value
    if not isinstance(value, _SCALARS):
        raise _Refused(f"{what} {value!r} is not a JSON string, number, boolean or null")
    return value


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [_scalar(m, "the enum value") for m in tp]}
    if isinstance(tp, type) and attrs.has(tp):
        return copy.deepcopy(_cached(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"enum": [_scalar(a, "the Literal value") for a in args]}
    if origin in (Union, types.UnionType):
        from ._wire import converter  # a cycle otherwise: _wire enforces what this publishes

        try:
            converter.get_structure_hook(tp)
        except Exception:
            raise _Refused(
                f"jobproto cannot structure the union {tp}: use T | None, a union of attrs"
                " classes, or one Literal[...] of all the values"
            ) from None
        return {"anyOf": [_type_schema(a) for a in args]}
    if tp in _SETS or origin in _SETS:
        # the converter would take [1, 1] as {1}: a duplicate the client sent, silently dropped
        raise _Refused(f"{tp!r} drops repeated items: use list[T] or tuple[T, ...]")
    if tp in (list, tuple) or origin in _SEQUENCES:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0])}
        raise _Refused(f"{tp} has a fixed length: use tuple[T, ...], list[T] or an attrs class")
    if tp is dict or origin in _MAPPINGS:
        if args and args[0] not in (str, Any):
            raise _Refused(f"{tp}: JSON object keys are strings; use dict[str, ...]")
        return (
            {"type": "object", "additionalProperties": _type_schema(args[1])}
            if args
            else {"type": "object"}
        )
    raise _Refused(f"{tp!r} is not a type jobproto structures from JSON: {_SUPPORTED}")


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return tp


def _kinds(tp: Any) -> set[str]:
    """The JSON types a value of ``tp`` (``None`` aside) can be."""
    tp = _strip_none(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return {"string", "array", "object", "number"}
    if tp is str or (isinstance(tp, type) and issubclass(tp, str)):
        return {"string"}
    if tp in (list, tuple) or origin in (*_SEQUENCES, tuple):
        return {"array"}
    if tp is dict or origin in _MAPPINGS or (isinstance(tp, type) and attrs.has(tp)):
        return {"object"}
    if tp in (int, float):
        return {"number"}
    return set()


def _member_type(tp: Any, index: int) -> Any:
    args = typing.get_args(_strip_none(tp))
    return args[index] if len(args) > index else Any


# attrs' validator classes (private; an unknown one is opaque, as any function is)
_V = {name: getattr(attr.validators, f"_{name}", None) for name in (
    "AndValidator", "OptionalValidator", "NumberValidator", "MinLengthValidator",
    "MaxLengthValidator", "InValidator", "MatchesReValidator", "InstanceOfValidator",
    "DeepIterable", "DeepMapping",
)}  # fmt: skip
_COMPARE = {">=": "minimum", "<=": "maximum", ">": "exclusiveMinimum", "<": "exclusiveMaximum"}
_LENGTH = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


def _is(validator: Any, name: str) -> bool:
    cls = _V[name]
    return cls is not None and isinstance(validator, cls)


def _options(validator: Any, tp: Any) -> dict[str, Any]:
    options = getattr(validator, "_original_options", validator.options)
    if isinstance(options, range):
        if len(options) == 0 or abs(options.step) != 1:
            raise _Refused(f"in_({options}) is empty or has steps: list the values")
        bounds = {"minimum": min(options), "maximum": max(options)}
        kind = _strip_none(tp)
        if kind is int:
            return bounds
        if kind is float:  # 2.5 is in no range: only whole numbers are
            return {**bounds, "multipleOf": 1}
        raise _Refused(f"in_({options}) on a field that is not int or float: type the field")
    if isinstance(options, str):
        raise _Refused(f"in_({options!r}) tests substrings: give a tuple of the values")
    values = [_scalar(v, "the in_ value") for v in options]
    if isinstance(options, (set, frozenset)):
        values.sort(key=repr)
    return {"enum": values}


def _keywords(validator: Any, tp: Any, opaque: list[str]) -> dict[str, Any]:
    """What ``validator`` checks, in JSON Schema; what it cannot say goes to ``opaque``."""
    if validator is None:
        return {}
    declared = getattr(validator, "__json_schema__", None)
    if isinstance(declared, Mapping):
        return _declared(declared)
    if _is(validator, "AndValidator"):
        out: dict[str, Any] = {}
        for inner in validator._validators:
            out = _merge(out, _keywords(inner, tp, opaque))
        return out
    if _is(validator, "OptionalValidator"):
        out = _keywords(validator.validator, tp, opaque)
        if isinstance(out.get("type"), list):  # a length on an Any field: None passes optional()
            out["type"] = [*out["type"], "null"]
        return out
    if _is(validator, "NumberValidator"):
        bound = validator.bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise _Refused(f"{validator!r}: its bound {bound!r} is not a number")
        return {_COMPARE[validator.compare_op]: bound}
    if _is(validator, "MinLengthValidator") or _is(validator, "MaxLengthValidator"):
        kinds = _kinds(tp) & _LENGTH.keys()
        if not kinds:
            raise _Refused(f"{validator!r} on a value with no length")
        if _is(validator, "MinLengthValidator"):
            which, limit = 0, validator.min_length
        else:
            which, limit = 1, validator.max_length
        out = {_LENGTH[k][which]: limit for k in sorted(kinds)}
        if _kinds(tp) - kinds:  # len() of a number is a TypeError: only these types have a length
            out["type"] = sorted(kinds)
        return out
    if _is(validator, "InValidator"):
        return _options(validator, tp)
    if _is(validator, "MatchesReValidator"):
        how = getattr(validator.match_func, "__name__", "")
        try:
            return {"pattern": python_pattern_to_ecma(validator.pattern, how)}
        except ValueError as exc:
            raise _Refused(
                f"matches_re({validator.pattern.pattern!r}) cannot be published as JSON Schema:"
                f" {exc}"
            ) from None
    if _is(validator, "InstanceOfValidator"):
        return {}
    if _is(validator, "DeepIterable"):
        out = _keywords(validator.iterable_validator, tp, opaque)
        member = _keywords(validator.member_validator, _member_type(tp, 0), opaque)
        return _merge(out, {"items": member}) if member else out
    if _is(validator, "DeepMapping"):
        out = _keywords(validator.mapping_validator, tp, opaque)
        keys = _keywords(validator.key_validator, str, opaque)
        values = _keywords(validator.value_validator, _member_type(tp, 1), opaque)
        out = _merge(out, {"propertyNames": keys}) if keys else out
        return _merge(out, {"additionalProperties": values}) if values else out
    opaque.append(getattr(validator, "__qualname__", None) or repr(validator))
    return {}


def _declared(
    schema: Any, where: str = 'metadata["schema"]', fields: frozenset[str] | None = None
) -> dict[str, Any]:
    """``schema`` checked against the vocabulary jobproto enforces. ``fields``: a class's
    ``__json_schema__``, which may also combine the class's fields (``CLASS_KEYWORDS``)."""
    if not isinstance(schema, Mapping):
        raise _Refused(f"{where} is not a dict")
    for key, value in schema.items():
        if key in CLASS_KEYWORDS and fields is not None:
            _declared_combination(key, value, f"{where}[{key!r}]", fields)
            continue
        if key not in CONSTRAINTS and key not in ANNOTATIONS:
            raise _Refused(
                f"{where} has the keyword {key!r}, which jobproto does not enforce; the type"
                " and default come from the field's declaration, and the constraint keywords"
                f" are {', '.join(sorted(CONSTRAINTS))}"
                + ("" if fields is None else f", and {', '.join(sorted(CLASS_KEYWORDS))}")
            )
        if key in _SUBSCHEMAS and not isinstance(value, bool):
            _declared(value, f"{where}[{key!r}]", None if fields is None else _MEMBERS)
        if key == "pattern":
            if not isinstance(value, str):
                raise _Refused(f"{where}['pattern'] is not a string")
            try:
                ecma_regex(value)
            except ValueError as exc:
                raise _Refused(f"{where}['pattern'] {value!r}: {exc}") from None
    return copy.deepcopy(dict(schema))


#: below a class's own level: members of a field (a mapping's keys), whatever their names
_MEMBERS: frozenset[str] = frozenset({"\0members"})


def _names_ok(names: Any, fields: frozenset[str]) -> bool:
    return fields is _MEMBERS or set(names) <= fields


def _declared_combination(key: str, value: Any, where: str, fields: frozenset[str]) -> None:
    if key in ("anyOf", "allOf", "oneOf"):
        if not isinstance(value, list) or not value:
            raise _Refused(f"{where} is not a list of schemas")
        for i, sub in enumerate(value):
            _declared(sub, f"{where}[{i}]", fields)
    elif key == "required":
        if not isinstance(value, list) or not _names_ok(value, fields):
            raise _Refused(f"{where} is not a list of the class's fields")
    elif key == "properties":
        if not isinstance(value, Mapping) or not _names_ok(value, fields):
            raise _Refused(f"{where} names no field of the class")
        for name, sub in value.items():
            _declared(sub, f"{where}[{name!r}]", _MEMBERS)
    elif key == "type":
        kinds = [value] if isinstance(value, str) else value
        if not isinstance(kinds, list) or not set(kinds) <= _JSON_TYPES:
            raise _Refused(f"{where} is not a JSON type or a list of them")


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas' constraints at once: the tighter bound, the common values, sub-schemas
    merged; two different ``pattern``s (or anything else that cannot be joined) both apply."""
    out = dict(a)
    for key, value in b.items():
        if key not in out or (key != "enum" and out[key] == value):
            out[key] = value
        elif key in _LOWER:
            out[key] = max(out[key], value)
        elif key in _UPPER:
            out[key] = min(out[key], value)
        elif key in _SUBSCHEMAS and isinstance(out[key], Mapping) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value)
        elif key == "enum":
            # JSON equality (true is not 1), as the checker compares a value with the enum
            out[key] = [v for v in out[key] if any(_equal(v, w) for w in value)]
            if not out[key]:
                raise _Refused(
                    f"no value is both one of {a['enum']!r} and one of {value!r}: the type and"
                    " the validators leave nothing a client could send"
                )
        elif key in ANNOTATIONS:
            out[key] = value
        else:
            out["allOf"] = [*out.get("allOf", []), {key: value}]
    return out


def _with_keywords(schema: dict[str, Any], keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with ``keywords`` on the value itself: on the non-null branch when ``null``
    is allowed (a field ``T | None`` with a limit still takes ``null``)."""
    if not keywords:
        return schema
    branches = schema.get("anyOf")
    if branches and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        value = rest[0] if len(rest) == 1 else {"anyOf": rest}
        return {**schema, "anyOf": [_merge(value, keywords), {"type": "null"}]}
    return _merge(schema, keywords)


def _field_schema(field: attrs.Attribute[Any], tp: Any) -> dict[str, Any]:
    opaque: list[str] = []
    derived = _keywords(field.validator, tp, opaque)
    declared = _declared(field.metadata.get("schema", {}))
    if opaque and not (declared.keys() & CONSTRAINTS):
        raise _Refused(
            f"the validator {', '.join(opaque)} checks something the schema cannot say: declare"
            ' it in metadata={"schema": {...}} (e.g. "minimum", "maxLength", "pattern"), or'
            " give the validator a __json_schema__ dict"
        )
    schema = _with_keywords(_type_schema(tp), _merge(derived, declared))
    if "description" in field.metadata:
        schema["description"] = field.metadata["description"]
    if field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        default = field.default
        schema["default"] = default.value if isinstance(default, enum.Enum) else default
        # a create that leaves the field out gets the default: it must be a value the field takes
        found = None if attrs.has(type(default)) else first_error(schema, _json(default))
        if found is not None:
            raise _Refused(
                f"its default {default!r} breaks its own schema ({found[1]}): every create"
                " that leaves the field out would be refused"
            )
    return schema


def _json(value: Any) -> Any:
    """``value`` as JSON gives it back: tuples are arrays, an enum member is its value."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


#: the classes whose schemas are being built, outermost first (per context: no shared state)
_BUILDING: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar(
    "jobproto_schema_building", default=()
)


@functools.cache
def _cached(cls: type) -> dict[str, Any]:
    if not attrs.has(cls):
        raise SchemaError(cls, None, "parameters must be an attrs class (@attrs.frozen)")
    building = _BUILDING.get()
    if cls in building:
        cycle = " -> ".join(c.__qualname__ for c in (*building[building.index(cls) :], cls))
        raise SchemaError(
            cls,
            None,
            f"parameter classes may not refer to themselves ({cycle}): their schema would have"
            " no end; give the nesting a fixed depth, or a field of type Any with a validator",
        )
    token = _BUILDING.set((*building, cls))
    try:
        return _build(cls)
    finally:
        _BUILDING.reset(token)


def _build(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise SchemaError(cls, None, f"its annotations cannot be resolved: {exc}") from None
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        try:
            props[field.name] = _field_schema(field, hints.get(field.name, Any))
        except _Refused as exc:
            raise SchemaError(cls, field.name, str(exc)) from None
        if field.default is attrs.NOTHING:
            required.append(field.name)
    out: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "title": cls.__name__,
    }
    if required:
        out["required"] = required
    declared = None
    for base in cls.__mro__:  # inherited: a subclass keeps its parent's rule across fields
        declared = base.__dict__.get("__json_schema__")
        if declared is not None:
            break
    if declared is not None:
        try:
            out = _merge(out, _declared(declared, "__json_schema__", frozenset(props)))
        except _Refused as exc:
            raise SchemaError(cls, None, str(exc)) from None
    return out


def schema_of(cls: type) -> dict[str, Any]:
    """The object schema of an attrs class: its fields, required ones, no others, and every
    limit its validators and its fields' ``metadata["schema"]`` set. ``SchemaError`` when a
    field's type or validator cannot be published as what jobproto checks."""
    return copy.deepcopy(_cached(cls))


def enforced_schema(cls: type) -> Mapping[str, Any] | None:
    """The schema ``structure_params`` enforces for ``cls`` (shared: do not change it), or None
    for a class with no publishable schema: never an operation's parameters (their registration
    refuses it), e.g. a result read with ``structure_params``, checked by its validators alone."""
    return _enforced(cls)


@functools.cache
def _enforced(cls: Any) -> Mapping[str, Any] | None:
    try:
        return _cached(cls)
    except SchemaError:
        return None

"""The wire format of jobproto/1, in one place: JSON envelopes, SSE frames, operation parameters.

Models (``_events``, ``_registry``) never mention JSON; this module turns them into the shapes of
``docs/protocol.md`` and back. Parameters of operations are structured by a strict cattrs converter:
no type coercion (``"5"`` is not an int, ``true`` is not an int), no extra keys, and every error
names the path of the bad field.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import typing
from collections import abc
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import attr.validators
import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from ._errors import FieldError, LocalProtocolError, RemoteProtocolError, RequestError
from ._events import (
    Cancelled,
    Data,
    Event,
    Expired,
    Failed,
    Gap,
    JobEvent,
    Narration,
    Origin,
    Progress,
    Succeeded,
    UnknownEvent,
)
from ._schema import enforced_schema
from ._schema_check import first_error

__all__ = [
    "CREATED_FIELDS",
    "converter",
    "decode_created",
    "decode_envelope",
    "dumps",
    "encode_created_frame",
    "encode_envelope",
    "encode_frame",
    "encode_gap_frame",
    "format_timestamp",
    "parse_timestamp",
    "structure_params",
]

T = TypeVar("T")

#: event type names: what may follow ``event:`` (no CR/LF, nothing that could forge a field)
_TYPE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


# ``json.dumps`` with any non-default option builds a new ``JSONEncoder`` on every call; this runs
# for every event (twice per event in a relay), so the encoder is built once. It keeps no state
# between calls (``encode`` makes its own circular-reference markers), so sharing it is safe.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 friendly. It escapes CR and LF, so the result is always one SSE line."""
    return _ENCODER.encode(value)


# -- timestamps: RFC 3339, UTC, millisecond precision ----------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=16)
def _format_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def format_timestamp(ts: float) -> str:
    # Events of one stream mostly share their millisecond: each millisecond is formatted once.
    # The microseconds are rounded half-even first, as ``datetime.fromtimestamp`` rounds them,
    # so the text is the one ``fromtimestamp(ts).isoformat(timespec="milliseconds")`` gives.
    frac, whole = math.modf(ts)
    return _format_ms(int(whole) * 1000 + round(frac * 1e6) // 1000)


@functools.lru_cache(maxsize=16)
def parse_timestamp(text: str) -> float:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).timestamp()


# -- events ----------------------------------------------------------------------------------------


def _payload(event: Event) -> Any:
    if isinstance(event, Data):
        return event.payload
    if isinstance(event, Narration):
        return {
            "action": event.action,
            "message": event.message,
            "level": event.level,
            "fields": dict(event.fields),
        }
    if isinstance(event, Progress):
        return {
            "action": event.action,
            "current": event.current,
            "total": event.total,
            "unit": event.unit,
            "message": event.message,
        }
    if isinstance(event, Succeeded):
        return {"result": event.result}
    if isinstance(event, Failed):
        return {"code": event.code, "message": event.message}
    if isinstance(event, (Cancelled, Expired)):
        return {"reason": event.reason}
    return dict(event.payload)


def _origin_json(origin: Origin) -> dict[str, Any]:
    out: dict[str, Any] = {"service": origin.service, "job_id": origin.job_id, "seq": origin.seq}
    if origin.origin is not None:
        out["origin"] = _origin_json(origin.origin)
    return out


def encode_envelope(ev: JobEvent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": ev.seq,
        "job_id": ev.job_id,
        "correlation_id": ev.correlation_id,
        "type": ev.event.TYPE,
        "timestamp": format_timestamp(ev.timestamp),
        "payload": _payload(ev.event),
    }
    if ev.origin is not None:
        out["origin"] = _origin_json(ev.origin)
    return out


def encode_frame(ev: JobEvent) -> bytes:
    """The SSE block of one log entry: ``id:`` seq, ``event:`` type, ``data:`` the envelope.

    Built directly rather than through the generic SSE encoder: the JSON is one line (``dumps``
    escapes CR/LF) and the type is one of our own names, so no splitting is needed. This runs once
    per event, whatever the number of subscribers.
    """
    type_ = ev.event.TYPE
    if isinstance(ev.event, UnknownEvent) and not _TYPE_NAME.fullmatch(type_):
        raise LocalProtocolError(f"event type {type_!r} is not a valid name")
    envelope = encode_envelope(ev)
    try:
        return f"id: {ev.seq}\nevent: {type_}\ndata: {dumps(envelope)}\n\n".encode()
    except UnicodeEncodeError:
        # A lone surrogate (say, from a badly decoded file name): send it \u-escaped instead.
        data = json.dumps(envelope, separators=(",", ":"), allow_nan=False)
        return f"id: {ev.seq}\nevent: {type_}\ndata: {data}\n\n".encode()


def _unlogged_frame(
    type_: str, payload: Any, job_id: str, correlation_id: str, now: float
) -> bytes:
    """A block that is no log entry (a gap, a ``created``): no ``id:`` line, so the client's
    Last-Event-ID stays put; ``seq`` null, no ``origin``, ``timestamp`` when it is sent."""
    envelope = {
        "seq": None,
        "job_id": job_id,
        "correlation_id": correlation_id,
        "type": type_,
        "timestamp": format_timestamp(now),
        "payload": payload,
    }
    return f"event: {type_}\ndata: {dumps(envelope)}\n\n".encode()


def encode_gap_frame(gap: Gap, job_id: str, correlation_id: str, now: float) -> bytes:
    """A gap has no ``id:`` (it is no log entry), so the client's Last-Event-ID stays put."""
    payload = {"after": gap.after, "first_available": gap.first_available, "lost": gap.lost}
    return _unlogged_frame(Gap.TYPE, payload, job_id, correlation_id, now)


#: the payload of a ``created`` block: the fields of the JSON answer to a create (§2.2, §2.2.2)
CREATED_FIELDS = (
    "job_id",
    "sse_url",
    "status_url",
    "operation",
    "state",
    "correlation_id",
    "created_at",
)


def encode_created_frame(
    created: Mapping[str, Any], job_id: str, correlation_id: str, timestamp: float
) -> bytes:
    """The ``created`` block that opens the answer to a create-and-stream request (§2.2.2).

    Like a gap it is no log entry: no ``id:`` line (the client's Last-Event-ID stays put), ``seq``
    null, no ``origin``, ``timestamp`` when it is sent. ``created`` is the JSON answer's fields.
    """
    return _unlogged_frame("created", dict(created), job_id, correlation_id, timestamp)


def decode_created(data: str) -> dict[str, Any]:
    """The payload of a ``created`` block's ``data:`` (the seven fields of a create answer, and
    any a service adds, §1.2); ``RemoteProtocolError`` for anything else."""
    raw = _json_object(data, "created data")
    if _req(raw, "type", str) != "created":
        raise RemoteProtocolError(f"expected a created event, got {raw['type']!r}")
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise RemoteProtocolError("created payload is not an object")
    for key in CREATED_FIELDS:
        _req(payload, key, str)
    if payload["job_id"] != _req(raw, "job_id", str):
        raise RemoteProtocolError("created payload names another job than its envelope")
    return payload


def _decode_timestamp(text: str) -> float:
    if not (text.endswith("Z") or (text[-6:-5] in "+-" and text[-3:-2] == ":")):
        raise RemoteProtocolError(f"timestamp {text!r} has no UTC offset")
    try:
        return parse_timestamp(text)
    except ValueError:
        raise RemoteProtocolError(f"timestamp {text!r} is not RFC 3339") from None


def _req(obj: Mapping[str, Any], key: str, typ: type[T] | tuple[type, ...]) -> T:
    try:
        value = obj[key]
    except KeyError:
        raise RemoteProtocolError(f"envelope has no {key!r}") from None
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise RemoteProtocolError(f"envelope field {key!r} has the wrong type")
    return value  # type: ignore[return-value]


def _decode_origin(raw: Any) -> Origin:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("origin is not an object")
    inner = raw.get("origin")
    return Origin(
        service=_req(raw, "service", str),
        job_id=_req(raw, "job_id", str),
        seq=_req(raw, "seq", int),
        origin=None if inner is None else _decode_origin(inner),
    )


def _field(p: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in p:
        if default is ...:
            raise RemoteProtocolError(f"event payload lacks {key!r}")
        return default
    value = p[key]
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
        raise RemoteProtocolError(f"event payload field {key!r} has the wrong type")
    return value


_NUMBER = (int, float)
_OPT_NUMBER = (int, float, type(None))


def _decode_event(type_: str, p: Any) -> Event:
    if type_ == Data.TYPE:
        return Data(p)
    if not isinstance(p, dict):
        raise RemoteProtocolError(f"payload of a {type_!r} event is not an object")
    if type_ == Narration.TYPE:
        return Narration(
            _field(p, "action", str),
            _field(p, "message", str),
            _field(p, "level", str, "info"),
            _field(p, "fields", dict, {}),
        )
    if type_ == Progress.TYPE:
        return Progress(
            _field(p, "action", str),
            _field(p, "current", _NUMBER),
            _field(p, "total", _OPT_NUMBER, None),
            _field(p, "unit", str, ""),
            _field(p, "message", str, ""),
        )
    if type_ == Succeeded.TYPE:
        return Succeeded(p.get("result"))
    if type_ == Failed.TYPE:
        return Failed(_field(p, "code", str), _field(p, "message", str))
    if type_ == Cancelled.TYPE:
        return Cancelled(_field(p, "reason", str, ""))
    if type_ == Expired.TYPE:
        return Expired(_field(p, "reason", str, ""))
    if not _TYPE_NAME.fullmatch(type_):
        raise RemoteProtocolError(f"event type {type_!r} is not a valid name")
    return UnknownEvent(type_, p)


def _json_object(data: str, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or ``RemoteProtocolError`` naming ``what`` it is."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise RemoteProtocolError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError(f"{what} is nested too deeply") from None
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"{what} is not a JSON object")
    return raw


def decode_envelope(data: str) -> JobEvent | tuple[Gap, str, str]:
    """Parse the ``data:`` of one event. A gap comes back as ``(Gap, job_id, correlation_id)``."""
    raw = _json_object(data, "event data")
    type_ = _req(raw, "type", str)
    job_id = _req(raw, "job_id", str)
    correlation_id = _req(raw, "correlation_id", str)
    payload = raw.get("payload")
    if type_ == Gap.TYPE:
        if not isinstance(payload, dict):
            raise RemoteProtocolError("gap payload is not an object")
        gap = Gap(_req(payload, "after", int), _req(payload, "first_available", int))
        return gap, job_id, correlation_id
    origin = raw.get("origin")
    return JobEvent(
        seq=_req(raw, "seq", int),
        job_id=job_id,
        correlation_id=correlation_id,
        timestamp=_decode_timestamp(_req(raw, "timestamp", str)),
        event=_decode_event(type_, payload),
        origin=None if origin is None else _decode_origin(origin),
    )


# -- operation parameters --------------------------------------------------------------------------


def _strict(expected: type, accepted: tuple[type, ...]) -> Any:
    def hook(value: Any, tp: Any) -> Any:
        if tp is not expected and _is_enum(tp):  # a class hook: str- and int-valued enums too
            return _strict_enum(tp)(value, tp)
        if isinstance(value, bool) and expected is not bool:
            raise TypeError(f"expected {expected.__name__}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {expected.__name__}, got {_json_type(value)}")
        return float(cast(float, value)) if expected is float else value

    return hook


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


@functools.cache
def _strict_enum(cls: type[enum.Enum]) -> Any:
    """A member's value, of its own type: a ``StrEnum`` takes a string naming one of its values
    (cattrs would pass any string for it, and a ``str`` subclass is one)."""
    kinds = tuple({type(m.value) for m in cls})

    def hook(value: Any, _: Any) -> enum.Enum:
        if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            try:
                return cls(value)
            except ValueError:
                pass
        choices = ", ".join(str(m.value) for m in cls)
        raise ValueError(f"must be one of {choices}; got {value!r}")

    return hook


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return names.get(type(value), type(value).__name__)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, abc.Sequence, abc.MutableSequence)


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, abc.Mapping, abc.MutableMapping) or tp is dict


def _strict_list(tp: Any, conv: cattrs.Converter) -> Any:
    base = list_structure_factory(tp, conv)

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected array, got {_json_type(value)}")
        return base(value, tp)

    return hook


def _strict_object(tp: Any, conv: cattrs.Converter) -> Any:
    if not attrs.has(tp):
        mapping = conv.gen_structure_mapping(tp)

        def mapping_hook(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected object, got {_json_type(value)}")
            return mapping(value, tp)

        return mapping_hook

    base = make_dict_structure_fn(tp, conv)

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected object, got {_json_type(value)}")
        try:
            return base(value, tp)
        except ClassValidationError as exc:
            raise _name_validator_errors(exc, value, tp, conv) from None

    return hook


# -- which attribute a validator error belongs to --------------------------------------------------
#
# attrs runs validators inside ``__init__``, after cattrs has structured every field: cattrs then
# sees one exception from the constructor and knows the path of the object, not of the field.
# The field is found by what the error *is*, never by what its message says: the fields are
# structured again into a copy of the class without validators, and the validators run on it in
# attrs' own order; the first one that refuses is the one that refused in ``__init__``. This runs
# only on the error path. A ``FieldError`` names its field itself and is left as it is.
#
# The replay looks inside attrs' composite validators (``and_``, ``optional``, ``deep_iterable``,
# ``deep_mapping``), so a member validator that refuses names the member: ``stop[1]`` for the
# second element of a list, ``labels[gpu]`` for the key ``gpu`` of a mapping (whether its key or
# its value was refused; the key as it is, unquoted, as cattrs names a mapping member whose type
# is wrong). The member validator is replayed with an attribute of that name, so attrs' messages
# name the member too ("Length of 'stop[1]' must be >= 1: 0").


def _is_from_init(exc: BaseException) -> bool:
    """An error cattrs did not attach to a field: raised by ``__init__`` (validators, post-init)."""
    notes = getattr(exc, "__notes__", [])
    return isinstance(exc, (ValueError, TypeError)) and not any(
        hasattr(n, "name") or hasattr(n, "index") for n in notes
    )


def _message_of(exc: BaseException) -> str:
    # attrs' ``in_`` and ``instance_of`` raise with (message, attribute, ...) as args
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


@functools.cache
def _without_validators(cls: type) -> type:
    """A copy of the attrs class ``cls``: the same fields, defaults and converters, no checks."""
    hints = typing.get_type_hints(cls)
    fields = {
        a.name: attrs.field(
            default=a.default,
            converter=a.converter,
            alias=a.alias,
            type=hints.get(a.name, a.type),
            kw_only=True,
        )
        for a in attrs.fields(cls)
        if a.init
    }
    return attrs.make_class(f"{cls.__name__}Unchecked", fields, slots=True)


# attrs' composite validators (private classes: without them the attribute itself is named)
_AND = getattr(attr.validators, "_AndValidator", None)
_OPTIONAL = getattr(attr.validators, "_OptionalValidator", None)
_DEEP_ITERABLE = getattr(attr.validators, "_DeepIterable", None)
_DEEP_MAPPING = getattr(attr.validators, "_DeepMapping", None)


def _is(validator: Any, cls: type | None, *fields: str) -> bool:
    return (
        cls is not None
        and isinstance(validator, cls)
        and all(hasattr(validator, f) for f in fields)
    )


def _refusal(
    validator: Any, inst: Any, attribute: Any, value: Any
) -> tuple[str, BaseException] | None:
    """Where ``validator`` refuses ``value``: (the path of the refused value, the error), or None.

    Composite validators are walked in the order attrs runs them, members under their own name.
    """
    try:
        if _is(validator, _AND, "_validators"):
            for inner in validator._validators:
                if (found := _refusal(inner, inst, attribute, value)) is not None:
                    return found
            return None
        if _is(validator, _OPTIONAL, "validator"):
            return None if value is None else _refusal(validator.validator, inst, attribute, value)
        if _is(validator, _DEEP_ITERABLE, "member_validator", "iterable_validator"):
            if validator.iterable_validator is not None:
                found = _refusal(validator.iterable_validator, inst, attribute, value)
                if found is not None:
                    return found
            for i, member in enumerate(value):
                named = attribute.evolve(name=f"{attribute.name}[{i}]")
                if (found := _refusal(validator.member_validator, inst, named, member)) is not None:
                    return found
            return None
        if _is(validator, _DEEP_MAPPING, "key_validator", "value_validator", "mapping_validator"):
            if validator.mapping_validator is not None:
                found = _refusal(validator.mapping_validator, inst, attribute, value)
                if found is not None:
                    return found
            for key in value:
                named = attribute.evolve(name=f"{attribute.name}[{key}]")
                for inner, checked in (
                    (validator.key_validator, key),
                    (validator.value_validator, value[key]),
                ):
                    found = None if inner is None else _refusal(inner, inst, named, checked)
                    if found is not None:
                        return found
            return None
        validator(inst, attribute, value)
    except (ValueError, TypeError) as exc:  # a leaf refused, or a composite could not walk value
        return str(attribute.name), exc
    return None


def _validator_field(
    cls: type, raw: Mapping[str, Any], conv: cattrs.Converter
) -> tuple[str, str | None] | None:
    """The path of the first value of ``cls`` whose validator refuses ``raw``'s value: an
    attribute, or a member inside one (``stop[1]``, then with the message naming that member)."""
    try:
        values: Any = conv.structure(raw, _without_validators(cls))
    except Exception:  # it did structure once; if it does not now, name nothing
        return None
    for a in attrs.fields(cls):
        if a.validator is None or not a.init:
            continue
        try:
            found = _refusal(a.validator, values, a, getattr(values, a.name))
        except Exception:  # a validator that needs the real instance: not this one
            continue
        if found is not None:
            path, exc = found
            return path, (None if path == a.name else _message_of(exc))
    return None


def _name_validator_errors(
    exc: ClassValidationError, raw: Mapping[str, Any], cls: type, conv: cattrs.Converter
) -> ClassValidationError:
    """``exc`` with each unnamed validator error replaced by a ``FieldError`` naming its field."""
    subs: list[Exception] = []
    for sub in exc.exceptions:
        if _is_from_init(sub) and not isinstance(sub, RequestError):
            found = _validator_field(cls, raw, conv)
            if found is not None:
                name, message = found
                named = FieldError(name, message or _message_of(sub))
                named.__cause__ = sub
                sub = named
        subs.append(sub)
    return ClassValidationError(exc.message, subs, exc.cl)


def _make_converter() -> cattrs.Converter:
    """No coercion: cattrs would turn "5" into 5 and "abc" into ["a", "b", "c"]."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook_factory(_is_list, lambda tp: _strict_list(tp, conv))
    conv.register_structure_hook_factory(_is_dict, lambda tp: _strict_object(tp, conv))
    conv.register_structure_hook_factory(attrs.has, lambda tp: _strict_object(tp, conv))
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    # every enum strictly; the class hooks above hand str- and int-valued ones to it as well
    conv.register_structure_hook_factory(_is_enum, _strict_enum)
    return conv


#: The converter for operation parameters and results. Register hooks for your own types on it.
converter = _make_converter()


def _first_error(exc: BaseException, path: str) -> tuple[str, str]:
    """Walk cattrs' exception groups to the first leaf; return (field path, message)."""
    if isinstance(exc, RequestError):  # a FieldError, or raised by a parameter class itself
        field = exc.field or ""
        return (f"{path}.{field}" if path and field else path or field), exc.message
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        where = f"{path}.{extra[0]}" if path else extra[0]
        return where, f"unknown field(s): {', '.join(extra)}"
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", [])
            note = next((n for n in notes if hasattr(n, "name") or hasattr(n, "index")), None)
            step = ""
            if note is not None and hasattr(note, "name"):
                step = f".{note.name}" if path else str(note.name)
            elif note is not None and hasattr(note, "index"):
                step = f"[{note.index}]"
            return _first_error(sub, path + step)
    if isinstance(exc, KeyError):
        return path, "required field missing"
    # a structuring error of this path, or an error of ``__init__`` no validator owned up to
    # (``__attrs_post_init__``): the path of the object is all that is known
    return path, _message_of(exc)


#: how much of a refusal's message a 422 carries: validators' messages quote the value, which
#: may be as long as the body (a 900 KB string gave a 900 KB error); the field says where it is
_MESSAGE_HEAD, _MESSAGE_TAIL = 300, 60


def _refuse(field: str, message: str) -> RequestError:
    if len(message) > _MESSAGE_HEAD + _MESSAGE_TAIL:
        message = f"{message[:_MESSAGE_HEAD]}…{message[-_MESSAGE_TAIL:]}"
    return RequestError(
        422,
        "validation_error",
        # "stop: 'stop' must ..." says the name twice: the path goes first only when the
        # message does not already quote it (nested fields keep their full path)
        f"{field}: {message}" if field and f"'{field}'" not in message else message,
        field=field or None,
    )


def structure_params(raw: Mapping[str, Any], cls: type[T]) -> T:
    """Validate ``raw`` (without its ``operation`` key) into ``cls``, or raise a 422.

    First the strict converter and the class's validators (their messages, their fields), then
    the JSON Schema ``/openapi.json`` publishes for ``cls`` (``_schema``): a limit declared in a
    field's ``metadata["schema"]`` holds even where no validator checks it, and a ``pattern``
    is read as ECMA-262 (``$`` is the end of the text), as every JSON Schema validator reads it.
    """
    try:
        value = converter.structure(raw, cls)
    except Exception as exc:  # cattrs raises groups, TypeErrors, ValueErrors from validators
        field, message = _first_error(exc, "")
        if message == "required field missing":
            message = f"required field {field!r} is missing"
        raise _refuse(field, message) from None
    schema = enforced_schema(cls)
    if schema is not None and (refusal := first_error(schema, raw)) is not None:
        raise _refuse(*refusal)
    return value

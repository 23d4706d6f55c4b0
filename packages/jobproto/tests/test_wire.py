"""Tests for the wire format (jobproto._wire): envelopes, SSE frames and operation parameters."""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto._errors import FieldError, LocalProtocolError, RemoteProtocolError, RequestError
from jobproto._events import (
    TERMINAL_TYPES,
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
from jobproto._sse import SSEDecoder
from jobproto._states import JobState
from jobproto._wire import (
    decode_envelope,
    dumps,
    encode_envelope,
    encode_frame,
    encode_gap_frame,
    format_timestamp,
    parse_timestamp,
    structure_params,
)

# --- strategies -----------------------------------------------------------------------------------

# Text with the characters that break naive framing, on top of Hypothesis' general unicode.
awkward = st.sampled_from(
    ["", "\n", "\r", "\r\n", "\n\n", "data: x", ":", "\u2028", "é", "🐝", "\0"]
)
text = st.one_of(st.text(), st.lists(st.one_of(awkward, st.text()), max_size=5).map("".join))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
numbers = st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False))
# Whole milliseconds, 1970..2100: the wire keeps milliseconds.
timestamps = st.integers(0, 4_102_444_800_000).map(lambda ms: ms / 1000)
origins: st.SearchStrategy[Origin | None] = st.deferred(
    lambda: st.none() | st.builds(Origin, text, text, st.integers(0, 2**53), origins)
)
KNOWN = {"narration", "progress", "data", "gap", *TERMINAL_TYPES}
unknown_types = st.from_regex(r"[a-z][a-z0-9_.\-]{0,20}", fullmatch=True).filter(
    lambda t: t not in KNOWN
)

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Narration,
        text,
        text,
        st.sampled_from(["debug", "info", "warning", "error"]) | text,
        json_objects,
    ),
    st.builds(Progress, text, numbers, st.none() | numbers, text, text),
    st.builds(Data, json_values),
    st.builds(Succeeded, json_values),
    st.builds(Failed, text, text),
    st.builds(Cancelled, text),
    st.builds(Expired, text),
    st.builds(UnknownEvent, unknown_types, json_objects),
)
job_events = st.builds(
    JobEvent,
    seq=st.integers(1, 2**53),
    job_id=text,
    correlation_id=text,
    timestamp=timestamps,
    event=events,
    origin=origins,
)


def decode_frames(data: bytes, cut: int | None = None) -> list[JobEvent | tuple[Gap, str, str]]:
    decoder = SSEDecoder()
    chunks = [data] if cut is None else [data[:cut], data[cut:]]
    sses = [sse for chunk in chunks for sse in decoder.feed(chunk)]
    return [decode_envelope(sse.data) for sse in sses]


# --- round trips ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(ev=job_events, cut=st.floats(0, 1))
def test_every_event_round_trips_through_an_sse_frame(ev: JobEvent, cut: float) -> None:
    data = encode_frame(ev)
    # Exactly one block: id, event, data (one line), blank line.
    lines = data.decode().split("\n")
    assert len(lines) == 5
    assert lines[0] == f"id: {ev.seq}"
    assert lines[1] == f"event: {ev.event.TYPE}"
    assert lines[2].startswith("data: {")
    assert "\r" not in lines[2]
    assert lines[3:] == ["", ""]
    # Decoded from bytes cut anywhere, it is the same event.
    decoder = SSEDecoder()
    at = round(cut * len(data))
    sses = decoder.feed(data[:at]) + decoder.feed(data[at:])
    assert len(sses) == 1
    assert sses[0].id == str(ev.seq)
    assert sses[0].event == ev.event.TYPE
    assert decoder.last_event_id == str(ev.seq)
    assert decode_envelope(sses[0].data) == ev


@settings(max_examples=50, deadline=None)
@given(evs=st.lists(job_events, min_size=1, max_size=5))
def test_consecutive_frames_decode_in_order(evs: list[JobEvent]) -> None:
    assert decode_frames(b"".join(encode_frame(ev) for ev in evs)) == evs


@pytest.mark.parametrize(
    "event",
    [
        Narration("load", "line one\nline two\r\nthree\rfour", "warning", {"a": {"b": [1, "\n"]}}),
        Narration("", "", "info", {}),
        Progress("download", 3, None, "", ""),
        Progress("download", 0.5, 1.0, "GB", "half"),
        Data("token\n\r\n"),
        Data(None),
        Data([1, "two", {"three": 3.0}]),
        Succeeded(None),
        Succeeded({"text": "é🐝\n"}),
        Failed("model_not_found", "no such model"),
        Cancelled(""),
        Cancelled("user asked"),
        Expired("nobody subscribed"),
        UnknownEvent("future.event", {"x": 1}),
    ],
    ids=repr,
)
def test_examples_round_trip(event: Event) -> None:
    ev = JobEvent(7, "job_x", "corr", 1_700_000_000.123, event)
    assert decode_frames(encode_frame(ev)) == [ev]
    assert decode_envelope(dumps(encode_envelope(ev))) == ev


def test_origin_chain_round_trips() -> None:
    origin = Origin("hive", "job_h", 3, Origin("worker", "job_w", 9))
    ev = JobEvent(1, "job_q", "corr", 1.5, Data("tok"), origin)
    envelope = encode_envelope(ev)
    assert envelope["origin"] == {
        "service": "hive",
        "job_id": "job_h",
        "seq": 3,
        "origin": {"service": "worker", "job_id": "job_w", "seq": 9},
    }
    assert decode_frames(encode_frame(ev)) == [ev]


def test_envelope_shape() -> None:
    ev = JobEvent(3, "job_x", "corr", 0.25, Progress("dl", 1, None))
    assert encode_envelope(ev) == {
        "seq": 3,
        "job_id": "job_x",
        "correlation_id": "corr",
        "type": "progress",
        "timestamp": "1970-01-01T00:00:00.250Z",
        "payload": {"action": "dl", "current": 1, "total": None, "unit": "", "message": ""},
    }
    assert "origin" not in encode_envelope(ev)


@settings(max_examples=100, deadline=None)
@given(ts=timestamps)
def test_timestamps_round_trip_at_millisecond_precision(ts: float) -> None:
    text_ = format_timestamp(ts)
    assert text_.endswith("Z")
    assert len(text_) == len("2024-01-01T00:00:00.000Z")
    assert parse_timestamp(text_) == ts


def test_timestamp_with_offset_is_understood() -> None:
    assert parse_timestamp("1970-01-01T01:00:00.500+01:00") == 0.5


@settings(max_examples=100, deadline=None)
@given(
    after=st.integers(0, 2**40),
    lost=st.integers(1, 2**20),
    job_id=text,
    corr=text,
    now=timestamps,
)
def test_gap_frame_round_trips(after: int, lost: int, job_id: str, corr: str, now: float) -> None:
    gap = Gap(after, after + lost + 1)
    data = encode_gap_frame(gap, job_id, corr, now)
    lines = data.decode().split("\n")
    # No id: a gap is not a log entry, so the client's Last-Event-ID must stay put.
    assert lines[0] == "event: gap"
    assert lines[1].startswith("data: {")
    assert lines[2:] == ["", ""]
    decoder = SSEDecoder()
    decoder.feed(b"id: 41\nevent: data\ndata: {}\n\n")
    (sse,) = decoder.feed(data)
    assert sse.event == "gap"
    assert decoder.last_event_id == "41"
    decoded = decode_envelope(sse.data)
    assert decoded == (gap, job_id, corr)
    assert isinstance(decoded, tuple)
    assert decoded[0].lost == lost
    assert json.loads(sse.data)["payload"]["lost"] == lost


def test_dumps_is_one_line_and_refuses_nan() -> None:
    assert dumps({"a": "x\ny\rz"}) == '{"a":"x\\ny\\rz"}'
    assert dumps("é") == '"é"'
    with pytest.raises(ValueError):
        dumps(float("nan"))


# --- decode_envelope: what it refuses -------------------------------------------------------------

GOOD: dict[str, Any] = {
    "seq": 1,
    "job_id": "job_x",
    "correlation_id": "corr",
    "type": "data",
    "timestamp": "2024-05-01T12:00:00.000Z",
    "payload": {"x": 1},
}


def with_(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})


def without(key: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != key})


def test_the_good_envelope_decodes() -> None:
    ev = decode_envelope(json.dumps(GOOD))
    assert isinstance(ev, JobEvent)
    assert ev.event == Data({"x": 1})
    assert ev.origin is None


@pytest.mark.parametrize("data", ["", "{", "not json", "{'a': 1}", "[1,", "\x00"], ids=repr)
def test_refuses_non_json(data: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_envelope(data)


@pytest.mark.parametrize("data", ["[]", "[1]", "1", '"s"', "null", "true", "NaN"])
def test_refuses_non_objects(data: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_envelope(data)


@pytest.mark.parametrize("key", ["seq", "job_id", "correlation_id", "type", "timestamp"])
def test_refuses_missing_fields(key: str) -> None:
    with pytest.raises(RemoteProtocolError, match=key):
        decode_envelope(without(key))


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": "1"},
        {"seq": True},
        {"seq": 1.0},
        {"seq": None},
        {"job_id": 1},
        {"job_id": None},
        {"correlation_id": ["c"]},
        {"type": 5},
        {"type": None},
        {"timestamp": 1714564800},
        {"origin": "hive"},
        {"origin": {"service": "hive", "job_id": "j"}},
        {"origin": {"service": "hive", "job_id": "j", "seq": False}},
        {"origin": {"service": 1, "job_id": "j", "seq": 1}},
        {"origin": {"service": "s", "job_id": "j", "seq": 1, "origin": 7}},
        {"type": "narration", "payload": None},
        {"type": "narration", "payload": ["a", "m"]},
        {"type": "narration", "payload": {"message": "m"}},
        {"type": "narration", "payload": {"action": "a"}},
        {"type": "progress", "payload": {"action": "a"}},
        {"type": "failed", "payload": {"code": "x"}},
        {"type": "succeeded", "payload": "ok"},
        {"type": "some_future_type", "payload": [1]},
        {"type": "gap", "seq": None, "payload": None},
        {"type": "gap", "seq": None, "payload": {"after": 1}},
        {"type": "gap", "seq": None, "payload": {"after": True, "first_available": 3}},
        {"type": "gap", "seq": None, "payload": {"after": 1, "first_available": "3"}},
    ],
    ids=repr,
)
def test_refuses_wrong_typed_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_envelope(with_(**changes))


@pytest.mark.parametrize("stamp", ["not a time", "2024-13-01T00:00:00.000Z"])
def test_refuses_a_malformed_timestamp(stamp: str) -> None:
    """A peer's malformed timestamp is a RemoteProtocolError like every other malformed field:
    ``datetime``'s own ValueError must not get through (a client catching the former would
    crash)."""
    with pytest.raises(RemoteProtocolError):
        decode_envelope(with_(timestamp=stamp))


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "narration", "payload": {"action": 1, "message": "m"}},
        {"type": "narration", "payload": {"action": "a", "message": None}},
        {"type": "narration", "payload": {"action": "a", "message": "m", "fields": [1]}},
        {"type": "progress", "payload": {"action": "a", "current": "half"}},
        {"type": "progress", "payload": {"action": "a", "current": 1, "total": "2"}},
        {"type": "cancelled", "payload": {"reason": 5}},
    ],
    ids=repr,
)
def test_refuses_wrong_typed_payload_fields(changes: dict[str, Any]) -> None:
    """Payload fields are type-checked: ``Progress(current="half")`` never reaches the caller."""
    with pytest.raises(RemoteProtocolError):
        decode_envelope(with_(**changes))


def test_payload_defaults() -> None:
    ev = decode_envelope(with_(type="narration", payload={"action": "a", "message": "m"}))
    assert isinstance(ev, JobEvent)
    assert ev.event == Narration("a", "m", "info", {})
    ev = decode_envelope(with_(type="progress", payload={"action": "a", "current": 1}))
    assert isinstance(ev, JobEvent)
    assert ev.event == Progress("a", 1, None, "", "")
    ev = decode_envelope(with_(type="succeeded", payload={}))
    assert isinstance(ev, JobEvent)
    assert ev.event == Succeeded(None)
    ev = decode_envelope(without("payload"))
    assert isinstance(ev, JobEvent)
    assert ev.event == Data(None)


def test_unknown_event_type_decodes_as_unknown_event() -> None:
    ev = decode_envelope(with_(type="model.loaded", payload={"model": "m", "n": [1]}))
    assert isinstance(ev, JobEvent)
    assert ev.event == UnknownEvent("model.loaded", {"model": "m", "n": [1]})
    assert ev.type == "model.loaded"
    assert not ev.terminal


def test_extra_envelope_fields_are_ignored() -> None:
    ev = decode_envelope(with_(future_field={"x": 1}))
    assert isinstance(ev, JobEvent)
    assert ev.seq == 1


# --- frames that cannot be framed -----------------------------------------------------------------


@pytest.mark.parametrize("message", ["\ud800", "a\udcffb"], ids=repr)
def test_a_lone_surrogate_does_not_break_encoding(message: str) -> None:
    """A lone surrogate (e.g. from a surrogateescape'd file name) is sent escaped
    (``\\ud800``) and round-trips: with ``dumps(ensure_ascii=False)`` alone, ``.encode()`` would
    raise UnicodeEncodeError and one odd narration would crash the handler that narrated it.
    """
    ev = JobEvent(1, "job_x", "corr", 0.0, Narration("open", message))
    assert decode_frames(encode_frame(ev)) == [ev]


@pytest.mark.parametrize("type_", ["a\nb", "a\rb", "x\ndata: {}\n\nid: 999"], ids=repr)
def test_an_event_type_with_a_line_break_cannot_inject_frames(type_: str) -> None:
    """``encode_frame`` writes ``event: {TYPE}``. Types are ours, except ``UnknownEvent``'s,
    which come from a peer's JSON (where ``\\n`` is legal) and ``Job.emit`` accepts; a relay
    re-emitting one must not let the peer inject SSE lines. It either refuses the event or
    produces exactly one id/event/data block that decodes back to it.
    """
    ev = JobEvent(1, "job_x", "corr", 0.0, UnknownEvent(type_, {}))
    try:
        data = encode_frame(ev)
    except LocalProtocolError:  # emitting such an event is the caller's error
        return
    lines = data.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert [line.split(":", 1)[0] for line in lines] == ["id", "event", "data", "", ""]
    assert decode_frames(data) == [ev]


# --- structure_params -----------------------------------------------------------------------------


@attrs.frozen
class Message:
    role: Literal["user", "assistant"]
    content: str = attrs.field(validator=attrs.validators.min_len(1))


@attrs.frozen
class ChatParams:
    messages: list[Message]
    max_tokens: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    temperature: float = 1.0
    stream: bool = False
    stop: list[str] = attrs.field(factory=list)
    seed: int | None = None
    model: str = attrs.field(default="m", validator=attrs.validators.max_len(8))


def check_422(raw: Any, field: str | None, *fragments: str) -> RequestError:
    with pytest.raises(RequestError) as info:
        structure_params(raw, ChatParams)
    exc = info.value
    assert exc.status == 422
    assert exc.code == "validation_error"
    assert exc.field == field
    for fragment in fragments:
        assert fragment in exc.message
    assert exc.to_json()["error"].get("field") == field
    return exc


def test_valid_params() -> None:
    raw = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 1,
        "stream": True,
        "stop": ["\n"],
        "seed": 3,
    }
    params = structure_params(raw, ChatParams)
    assert params == ChatParams([Message("user", "hi")], 5, 1.0, True, ["\n"], 3)
    assert type(params.temperature) is float
    assert structure_params({"messages": []}, ChatParams) == ChatParams([])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"messages": [], "max_tokens": "5"}, "max_tokens"),
        ({"messages": [], "max_tokens": True}, "max_tokens"),
        ({"messages": [], "max_tokens": 5.0}, "max_tokens"),
        ({"messages": [], "max_tokens": None}, "max_tokens"),
        ({"messages": [], "temperature": "1.0"}, "temperature"),
        ({"messages": [], "temperature": False}, "temperature"),
        ({"messages": [], "stream": 1}, "stream"),
        ({"messages": [], "stream": "true"}, "stream"),
        ({"messages": [], "model": 5}, "model"),
        ({"messages": [], "seed": "3"}, "seed"),
        ({"messages": [], "seed": True}, "seed"),
        ({"messages": [], "stop": [1]}, "stop[0]"),
        ({"messages": [], "stop": ["a", None]}, "stop[1]"),
    ],
    ids=repr,
)
def test_strict_types(raw: dict[str, Any], field: str) -> None:
    check_422(raw, field, field)


def test_bool_message_says_boolean() -> None:
    check_422({"messages": [], "max_tokens": True}, "max_tokens", "boolean")


@attrs.frozen
class StateParams:
    state: JobState
    states: list[JobState] = attrs.field(factory=list)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"state": "bogus"}, "state"),
        ({"state": 1}, "state"),
        ({"state": "running", "states": ["queued", "bogus"]}, "states[1]"),
    ],
    ids=repr,
)
def test_an_enum_field_takes_only_its_values(raw: dict[str, Any], field: str) -> None:
    """Every enum strictly, with no hook registered for it: a ``StrEnum`` is a ``str``, and
    cattrs' ``str`` hook would pass ``"bogus"`` through as the state."""
    with pytest.raises(RequestError) as info:
        structure_params(raw, StateParams)
    assert info.value.field == field
    assert "must be one of" in info.value.message
    assert structure_params({"state": "running"}, StateParams).state is JobState.RUNNING


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"messages": [], "stop": "abc"}, "stop"),
        ({"messages": [], "stop": {"a": 1}}, "stop"),
        ({"messages": "hi"}, "messages"),
    ],
    ids=repr,
)
def test_a_list_field_refuses_strings_and_objects(raw: dict[str, Any], field: str) -> None:
    """No type coercion: left to itself cattrs structures any iterable into a list
    (``"stop": "abc"`` would become ``["a", "b", "c"]`` and ``{"a": 1}`` ``["a"]``).
    """
    check_422(raw, field)


def test_extra_keys_are_refused_naming_the_field() -> None:
    check_422({"messages": [], "temprature": 1.0}, "temprature", "temprature")
    exc = check_422({"messages": [], "b": 1, "a": 2}, "a")
    assert "a, b" in exc.message


def test_missing_required_field_is_named() -> None:
    check_422({}, "messages", "'messages'", "missing")


def test_nested_paths() -> None:
    good = {"role": "user", "content": "x"}
    check_422({"messages": [good, {"role": "system", "content": "x"}]}, "messages[1].role")
    check_422({"messages": [good, {"content": "x"}]}, "messages[1].role", "missing")
    check_422({"messages": [good, {"role": "user", "content": 5}]}, "messages[1].content")
    check_422({"messages": [good, good, {**good, "name": "n"}]}, "messages[2].name")
    check_422({"messages": [7]}, "messages[0]")


def test_validator_error_names_the_field() -> None:
    check_422({"messages": [], "max_tokens": 0}, "max_tokens", "max_tokens")


def test_length_validator_error_names_the_field() -> None:
    """attrs' ``min_len``/``max_len`` say "Length of 'model' must be <= 8": the 422 still names
    ``model`` as its field."""
    check_422({"messages": [], "model": "much-too-long"}, "model")


def test_validator_error_in_a_nested_class_names_the_nested_field() -> None:
    """A validator failing inside a nested class reports the field's whole path
    (``messages[0].content``), not the parent's (``messages[0]``).
    """
    check_422({"messages": [{"role": "user", "content": ""}]}, "messages[0].content")


# --- which field a validator error names: found by the attribute, never by the message ------------


def _quiet(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value > 3:
        raise ValueError("too big")  # names no field at all


def _misleading(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError("'other' must be positive")  # names the wrong one


@attrs.frozen
class Inner:
    low: int = attrs.field(default=0)
    high: int = attrs.field(default=0)

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise FieldError("high", "must not be below 'low'")


def _even(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value % 2:
        raise FieldError("even_one", "must be even")  # a validator may name another field


@attrs.frozen
class Checked:
    quiet: int = attrs.field(default=0, validator=_quiet)
    other: int = attrs.field(default=0)
    misleading: int = attrs.field(default=0, validator=_misleading)
    kind: str = attrs.field(default="a", validator=attrs.validators.in_(("a", "b")))
    typed: Any = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    even: int = attrs.field(default=0, validator=_even)
    inner: Inner = attrs.field(factory=Inner)
    inners: list[Inner] = attrs.field(factory=list)
    whole: int = 0

    def __attrs_post_init__(self) -> None:
        if self.whole < 0:
            raise ValueError("'quiet' must not be used with a negative 'whole'")


def checked_422(raw: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as info:
        structure_params(raw, Checked)
    assert (info.value.status, info.value.code) == (422, "validation_error")
    return info.value


def test_a_validator_message_that_names_no_field_still_names_it() -> None:
    exc = checked_422({"quiet": 4})
    assert exc.field == "quiet"
    assert exc.message == "quiet: too big"


def test_a_validator_message_naming_another_field_does_not_mislead() -> None:
    assert checked_422({"misleading": -1}).field == "misleading"


def test_attrs_in_validator_message_is_its_text_not_its_args() -> None:
    exc = checked_422({"kind": "c"})
    assert exc.field == "kind"
    assert "'kind' must be in" in exc.message
    assert "Attribute(" not in exc.message


def test_attrs_instance_of_validator_names_the_field() -> None:
    exc = checked_422({"typed": "x"})
    assert exc.field == "typed"
    assert "Attribute(" not in exc.message


def test_the_first_refusing_validator_is_named_as_attrs_runs_them() -> None:
    assert checked_422({"quiet": 9, "misleading": -1}).field == "quiet"
    assert checked_422({"misleading": -1, "kind": "c"}).field == "misleading"


def test_a_field_error_names_its_own_field() -> None:
    exc = checked_422({"even": 1})
    assert exc.field == "even_one"
    assert exc.message == "even_one: must be even"


def test_a_field_error_from_post_init_of_a_nested_class_gets_the_path() -> None:
    assert checked_422({"inner": {"low": 2, "high": 1}}).field == "inner.high"
    raw = {"inners": [{"low": 0, "high": 1}, {"low": 2, "high": 1}]}
    assert checked_422(raw).field == "inners[1].high"


def test_an_unnamed_post_init_error_names_the_object_not_a_guess() -> None:
    """No validator refused: the message's quoted name is not taken as the field."""
    exc = checked_422({"whole": -1})
    assert exc.field is None
    assert "negative" in exc.message
    assert checked_422({"inners": [{}, {}], "whole": -1}).field is None


def test_valid_values_pass_every_check() -> None:
    raw = {"quiet": 3, "kind": "b", "typed": 5, "even": 2, "inner": {"low": 1, "high": 2}}
    params = structure_params(raw, Checked)
    assert params.inner == Inner(1, 2)


# --- members of lists and mappings: the validator of a member names the member ----------------

_v = attrs.validators


@attrs.frozen
class Members:
    stop: list[str] = attrs.field(
        factory=list, validator=_v.deep_iterable(_v.min_len(1), _v.max_len(3))
    )
    grid: list[list[int]] = attrs.field(
        factory=list, validator=_v.deep_iterable(_v.deep_iterable(_v.ge(0)))
    )
    maybe: list[str] | None = attrs.field(
        default=None, validator=_v.optional(_v.deep_iterable([_v.min_len(1), _v.max_len(4)]))
    )
    labels: dict[str, int] = attrs.field(
        factory=dict,
        validator=_v.deep_mapping(_v.matches_re("[a-z]+"), _v.ge(0), _v.max_len(2)),
    )
    nested: list[Inner] = attrs.field(factory=list)


def members_422(raw: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as info:
        structure_params(raw, Members)
    return info.value


def test_a_list_member_validator_names_the_element() -> None:
    exc = members_422({"stop": ["a", ""]})
    assert exc.field == "stop[1]"
    assert exc.message == "Length of 'stop[1]' must be >= 1: 0"


def test_the_list_validator_itself_names_the_list() -> None:
    exc = members_422({"stop": ["a", "b", "c", "d"]})
    assert exc.field == "stop"
    assert exc.message == "Length of 'stop' must be <= 3: 4"


def test_members_of_nested_lists_and_composed_validators_are_named() -> None:
    assert members_422({"grid": [[0], [1, -1]]}).field == "grid[1][1]"
    exc = members_422({"maybe": ["ok", "too-long"]})
    assert exc.field == "maybe[1]"
    assert "'maybe[1]'" in exc.message
    assert structure_params({"maybe": None}, Members).maybe is None


def test_a_mapping_member_is_named_by_its_key() -> None:
    """Its key or its value: ``labels[KEY]``, the key unquoted, as for a value of a wrong type."""
    assert members_422({"labels": {"gpu": -1}}).field == "labels[gpu]"  # the value
    exc = members_422({"labels": {"a": 1, "GPU": 1}})  # the key
    assert exc.field == "labels[GPU]"
    assert "'labels[GPU]'" in exc.message
    assert members_422({"labels": {"a": 0, "b": 0, "c": 0}}).field == "labels"
    assert members_422({"labels": {"gpu": "x"}}).field == "labels[gpu]"  # cattrs' own path


def test_field_error_is_a_value_error_and_a_request_error() -> None:
    error = FieldError("max_tokens", "must be at least 1")
    assert isinstance(error, ValueError)
    assert isinstance(error, RequestError)
    assert (error.status, error.code, error.field) == (422, "validation_error", "max_tokens")
    assert str(error) == "max_tokens: must be at least 1"
    body = {"code": "validation_error", "message": "must be at least 1", "field": "max_tokens"}
    assert error.to_json() == {"error": body}
    with pytest.raises(FieldError):
        Inner(2, 1)

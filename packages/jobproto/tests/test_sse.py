"""Tests for the sans-IO SSE codec (jobproto._sse)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto._sse import ServerSentEvent, SSEDecoder, encode, encode_comment

E = ServerSentEvent


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events


def decode_text(text: str) -> list[ServerSentEvent]:
    return decode(text.encode())


# --- the WHATWG spec's own examples (section 9.2) ------------------------------------


def test_spec_intro_messages() -> None:
    stream = (
        "data: This is the first message.\n\n"
        "data: This is the second message, it\n"
        "data: has two lines.\n\n"
        "data: This is the third message.\n\n"
    )
    assert decode_text(stream) == [
        E(data="This is the first message."),
        E(data="This is the second message, it\nhas two lines."),
        E(data="This is the third message."),
    ]


def test_spec_event_types_add_remove() -> None:
    stream = (
        "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
    )
    assert decode_text(stream) == [
        E(event="add", data="73857293"),
        E(event="remove", data="2153"),
        E(event="add", data="113411"),
    ]


def test_spec_stock_yhoo_data_lines() -> None:
    assert decode_text("data: YHOO\ndata: +2\ndata: 10\n\n") == [E(data="YHOO\n+2\n10")]
    # Not yet followed by a blank line: nothing is dispatched.
    assert decode_text("data: YHOO\ndata: +2\ndata: 10\n") == []


def test_spec_four_blocks_with_comment_and_ids() -> None:
    stream = (
        ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
    )
    expected = [E(data="first event", id="1"), E(data="second event", id="")]
    # "the end of the stream is not enough to trigger the dispatch of the last event"
    assert decode_text(stream) == expected
    assert decode_text(stream + "\n") == [*expected, E(data=" third event", id="")]


def test_spec_id_sets_last_event_id_then_reset() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": test stream\n\ndata: first event\nid: 1\n\n")
    assert decoder.last_event_id == "1"
    decoder.feed(b"data:second event\nid\n\n")
    assert decoder.last_event_id == ""


def test_spec_parsing_example_two_events() -> None:
    # First block: data "", middle block: data "\n", last block discarded (no blank line).
    assert decode_text("data\n\ndata\ndata\n\ndata:") == [E(data=""), E(data="\n")]


def test_spec_space_after_colon_ignored() -> None:
    assert decode_text("data:test\n\ndata: test\n\n") == [E(data="test"), E(data="test")]


# --- field parsing ----------------------------------------------------------------------


def test_field_parsing_details() -> None:
    stream = (
        "data:  two spaces\n\n"  # only one space stripped
        "data: a:b: c\n\n"  # colons in the value are kept
        "Data: ignored\nfoo: bar\nfoo\ndata: x\n\n"  # names are case-sensitive; unknown ignored
        "data\ndata:\n\n"  # no colon -> empty value
        ":comment\n: another\ndata: y\n:\n\n"
        "data:\t tab\n\n"  # only a space is stripped, not a tab
    )
    assert decode_text(stream) == [
        E(data=" two spaces"),
        E(data="a:b: c"),
        E(data="x"),
        E(data="\n"),
        E(data="y"),
        E(data="\t tab"),
    ]


def test_event_type_defaults_and_resets() -> None:
    stream = (
        "event: foo\n\n"  # no data: nothing dispatched, event type reset
        "data: 1\n\n"
        "event: bar\ndata: 2\n\n"
        "data: 3\n\n"  # event type reset after dispatch
        "event:\ndata: 4\n\n"  # empty event type -> "message"
        "event: a\nevent: b\ndata: 5\n\n"  # last one wins
    )
    assert [(e.event, e.data) for e in decode_text(stream)] == [
        ("message", "1"),
        ("bar", "2"),
        ("message", "3"),
        ("message", "4"),
        ("b", "5"),
    ]


def test_only_cr_lf_are_line_breaks() -> None:
    odd = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i"
    assert decode_text(f"data: {odd}\n\n") == [E(data=odd)]
    assert decode(encode(data=odd)) == [E(data=odd)]


def test_line_endings_cr_lf_crlf_mixed() -> None:
    assert decode(b"data: a\rdata: b\r\ndata: c\n\r\n\rdata: d\r\r") == [
        E(data="a\nb\nc"),
        E(data="d"),
    ]


def test_id_with_nul_is_ignored() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 1\ndata: x\n\nid: a\x00b\ndata: y\n\n")
    assert events == [E(data="x", id="1"), E(data="y", id="1")]
    assert decoder.last_event_id == "1"


def test_id_persists_across_events_and_blocks_without_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\ndata: c\n\nid:\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "8"), ("d", "")]
    assert decoder.last_event_id == ""
    # Kept across close() (for the Last-Event-ID header on reconnect).
    decoder.feed(b"id: 9\n\n")
    decoder.close()
    assert decoder.last_event_id == "9"
    assert decoder.feed(b"data: e\n\n") == [E(data="e", id="9")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1500", 1500),
        ("0", 0),
        ("007", 7),
        ("99999999999999999999", 99999999999999999999),
        ("", None),
        (" 15", None),  # "retry:  15": value is " 15"
        ("15 ", None),
        ("15a", None),
        ("-1", None),
        ("+1", None),
        ("1_000", None),
        ("1.5", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not ASCII digits
        ("\u00b2", None),
    ],
)
def test_retry_parsing(value: str, expected: int | None) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(f"retry: {value}\ndata: x\n\n".encode())
    assert decoder.retry == expected
    assert events == [E(data="x", retry=expected)]


def test_retry_persists_on_decoder_but_per_block_on_event() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: 100\n\ndata: a\n\nretry: 5\nretry: x\ndata: b\n\ndata: c\n\n")
    assert events == [E(data="a"), E(data="b", retry=5), E(data="c")]
    assert decoder.retry == 5


def test_close_discards_incomplete_event_and_allows_reuse() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\ndata: partial\n") == []
    assert decoder.close() == []
    # A new stream: its BOM is stripped again and the old block is gone.
    assert decoder.feed(b"\xef\xbb\xbf\ndata: new\n\n") == [E(data="new")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\xc3\n\n") == [E(data="a\ufffdb\ufffd")]


# --- BOM ----------------------------------------------------------------------------------


def test_bom_stripped_only_at_start() -> None:
    bom = b"\xef\xbb\xbf"
    assert decode(bom + b"data: x\n\n") == [E(data="x")]
    # A second BOM becomes part of the field name "\ufeffdata", which is unknown.
    assert decode(bom + bom + b"data: x\n\ndata: y\n\n") == [E(data="y")]
    # A BOM elsewhere is ordinary text.
    assert decode(b"data: " + bom + b"x\n\n") == [E(data="\ufeffx")]
    assert decode(b"data: x\n\n" + bom + b"data: y\n\n") == [E(data="x")]


def test_bom_split_across_chunks() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbf", b"data: x\n\n") == [E(data="x")]
    assert decode(b"\xef\xbb", b"\xbfdata: x\n", b"\n") == [E(data="x")]


# --- chunking -----------------------------------------------------------------------------

STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b"retry: 3000\r\n"
    b"id: \xe2\x82\xac1\r"
    b"event: tok\xc3\xa9n\n"
    b"data: h\xc3\xa9llo \xf0\x9d\x84\x9e\r\n"
    b"data:\r\n"
    b"\r\n"
    b"data: second\r\r"
    b"id\n"
    b"data\n\n"
    b"data: third\x0b\r\n\r\n"
    b"data: incomplete"
)
STREAM_EVENTS = [
    E(event="tok\u00e9n", data="h\u00e9llo \U0001d11e\n", id="\u20ac1", retry=3000),
    E(data="second", id="\u20ac1"),
    E(data="", id=""),
    E(data="third\x0b", id=""),
]


def test_stream_fixture_whole() -> None:
    assert decode(STREAM) == STREAM_EVENTS


def test_byte_by_byte() -> None:
    assert decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == STREAM_EVENTS


def test_every_two_way_split() -> None:
    for i in range(len(STREAM) + 1):
        assert decode(STREAM[:i], STREAM[i:]) == STREAM_EVENTS, i


def test_every_three_way_split() -> None:
    n = len(STREAM)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert decode(STREAM[:i], STREAM[i:j], STREAM[j:]) == STREAM_EVENTS, (i, j)


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    # If CR + LF counted twice there would be a blank line and two events.
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [E(data="a\nb")]
    # An empty chunk (or one decoding to nothing) between CR and LF changes nothing.
    assert decode(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == [E(data="a\nb")]
    assert decode(b"data: \xc3\xa9\r", b"\ndata: \xc3", b"\xa9\r", b"\n\r\n") == [
        E(data="\u00e9\n\u00e9")
    ]
    # A lone CR followed by a non-LF is still one line break.
    assert decode(b"data: a\r", b"data: b\r", b"\r") == [E(data="a\nb")]


def test_cr_at_chunk_end_dispatches_immediately() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [E(data="a")]
    assert decoder.feed(b"\ndata: b\n\n") == [E(data="b")]  # the LF ends the 2nd CR line


def test_multibyte_utf8_split_everywhere() -> None:
    text = "data: h\u00e9llo \u20ac \U0001d11e \u4e2d\u6587\n\n"
    raw = text.encode()
    expected = [E(data="h\u00e9llo \u20ac \U0001d11e \u4e2d\u6587")]
    for i in range(len(raw) + 1):
        assert decode(raw[:i], raw[i:]) == expected
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == expected


def test_long_line_in_many_chunks() -> None:
    payload = "x" * 100_000
    raw = encode(data=payload, id="1")
    chunks = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    assert decode(*chunks) == [E(data=payload, id="1")]


# --- encode ---------------------------------------------------------------------------------


def test_encode_typical_event() -> None:
    assert encode(data='{"seq":1}', event="token", id="42") == (
        b'id: 42\nevent: token\ndata: {"seq":1}\n\n'
    )


def test_encode_field_order_and_all_fields() -> None:
    assert encode(data="d", event="e", id="i", retry=10, comment="c1\r\nc2") == (
        b": c1\n: c2\nid: i\nevent: e\nretry: 10\ndata: d\n\n"
    )


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("", [""]),
        ("a", ["a"]),
        ("a\n", ["a", ""]),
        ("\n", ["", ""]),
        ("a\r\nb\rc\nd", ["a", "b", "c", "d"]),
        ("a\r\n", ["a", ""]),
        ("\r\r\n\n", ["", "", "", ""]),
        (" lead", [" lead"]),
    ],
)
def test_encode_data_lines_and_round_trip(data: str, lines: list[str]) -> None:
    raw = encode(data=data)
    assert raw == "".join(f"data: {line}\n" for line in lines).encode() + b"\n"
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert decode(raw) == [E(data=expected)]


def test_encode_utf8_and_leading_spaces_round_trip() -> None:
    raw = encode(data=" \u20ac", event=" e", id=" i")
    assert raw == b"id:  i\nevent:  e\ndata:  \xe2\x82\xac\n\n"
    assert decode(raw) == [E(event=" e", data=" \u20ac", id=" i")]


def test_encode_comment() -> None:
    assert encode_comment() == b": \n\n"
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert decode(encode_comment("ping"), encode(data="x")) == [E(data="x")]


def test_encode_without_data_sets_id_but_dispatches_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(encode(id="5", retry=0)) == []
    assert (decoder.last_event_id, decoder.retry) == ("5", 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"id": "a\nb", "data": "x"},
        {"id": "a\rb", "data": "x"},
        {"id": "a\x00b", "data": "x"},
        {"event": "a\nb", "data": "x"},
        {"event": "a\r", "data": "x"},
        {"retry": -1, "data": "x"},
    ],
)
def test_encode_rejects_misuse(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [True, 1.5, "10"])
def test_encode_rejects_non_int_retry(retry: object) -> None:
    with pytest.raises(TypeError):
        encode(data="x", retry=retry)  # type: ignore[arg-type]


# --- property-based -----------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"))
newline_heavy = st.lists(
    st.sampled_from(["a", "\u00e9", "\U0001d11e", "\n", "\r", "\r\n", " "])
).map("".join)
datas = st.one_of(texts, newline_heavy)
single_line = st.characters(codec="utf-8", exclude_characters="\r\n")
event_names = st.text(single_line, min_size=1)
ids = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"))
retries = st.none() | st.integers(min_value=0, max_value=10**12)
comments = st.none() | texts


def _normalize(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


@given(
    data=datas, event=st.none() | event_names, id=st.none() | ids, retry=retries, comment=comments
)
def test_round_trip_single_event(
    data: str, event: str | None, id: str | None, retry: int | None, comment: str | None
) -> None:
    raw = encode(data=data, event=event, id=id, retry=retry, comment=comment)
    decoder = SSEDecoder()
    events = decoder.feed(raw)
    assert events == [E(event=event or "message", data=_normalize(data), id=id or "", retry=retry)]
    assert decoder.close() == []
    if retry is not None:
        assert decoder.retry == retry


blocks = st.lists(
    st.tuples(st.none() | datas, st.none() | event_names, st.none() | ids, retries, comments),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200)
@given(blocks=blocks, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_round_trip_concatenated_and_cut(
    blocks: list[tuple[str | None, str | None, str | None, int | None, str | None]],
    cuts: list[int],
) -> None:
    raw = b""
    expected: list[ServerSentEvent] = []
    last_id = ""
    for data, event, id, retry, comment in blocks:
        if (data, event, id, retry, comment) == (None, None, None, None, None):
            raw += encode_comment()
            continue
        raw += encode(data=data, event=event, id=id, retry=retry, comment=comment)
        if id is not None:
            last_id = id
        if data is not None:
            expected.append(E(event or "message", _normalize(data), last_id, retry))
    points = sorted({c % (len(raw) + 1) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode(*chunks) == expected
    assert decode(raw) == expected


# --- cross-check against httpx-sse ------------------------------------------------------------

_field_lines = st.one_of(
    st.builds(lambda v: f"data:{v}", st.text(single_line)),
    st.builds(lambda v: f"data: {v}", st.text(single_line)),
    st.just("data"),
    st.builds(lambda v: f"event:{v}", st.text(single_line)),
    st.builds(lambda v: f"id: {v}", st.text(single_line)),  # may contain NUL: both ignore
    st.just("id"),
    st.builds(lambda v: f"retry: {v}", st.text("0123456789", min_size=1, max_size=6)),
    st.builds(lambda v: f":{v}", st.text(single_line)),
    st.builds(
        lambda n, v: f"{n}:{v}",
        st.sampled_from(["Data", "dat", "x", "ID", "events"]),
        st.text(single_line),
    ),
)
# httpx-sse dispatches a block without data (when an event/id/retry is set), which the spec
# does not; so each generated block has at least one data line and blocks are separated by
# exactly one blank line.
_blocks = st.tuples(
    st.lists(_field_lines, max_size=4),
    st.builds(lambda v: f"data: {v}", st.text(single_line)),
    st.lists(_field_lines, max_size=4),
).map(lambda t: [*t[0], t[1], *t[2]])


@pytest.fixture(scope="module")
def httpx_decoders() -> Any:
    return pytest.importorskip("httpx_sse._decoders")


@settings(max_examples=300)
@given(
    blocks=st.lists(_blocks, min_size=1, max_size=5),
    eols=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_agrees_with_httpx_sse(
    httpx_decoders: Any, blocks: list[list[str]], eols: list[str], chunk: int
) -> None:
    lines = [line for block in blocks for line in [*block, ""]]
    parts: list[str] = []
    for i, line in enumerate(lines):
        eol = eols[i % len(eols)]
        if not line and eol == "\n" and parts and parts[-1].endswith("\r"):
            eol = "\r\n"  # a CR then a blank line's LF would be one CRLF line break
        parts.append(line + eol)
    text = "".join(parts)
    raw = text.encode()

    ours = decode(*(raw[i : i + chunk] for i in range(0, len(raw), chunk)))

    line_decoder = httpx_decoders.SSELineDecoder()
    theirs_decoder = httpx_decoders.SSEDecoder()
    theirs: list[ServerSentEvent] = []
    for line in [*line_decoder.decode(text), *line_decoder.flush()]:
        sse = theirs_decoder.decode(line)
        if sse is not None:
            theirs.append(E(sse.event, sse.data, sse.id, sse.retry))
    assert ours == theirs
    assert len(ours) == len(blocks)

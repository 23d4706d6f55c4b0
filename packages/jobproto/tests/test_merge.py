"""Coalescing data events: ``concat_data``, the log's pending entry, and ``Job.emit(merge=)``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto import concat_data
from jobproto._events import Data, JobEvent, Narration, Origin
from jobproto._log import EventLog
from jobproto._merge import MAX_MERGED_CHARS, MAX_MERGED_ITEMS
from jobproto._registry import Job, JobRegistry
from jobproto._sse import SSEDecoder
from jobproto._wire import decode_envelope


def running_job(max_events: int = 10_000) -> Job:
    job, _ = JobRegistry(max_log_events=max_events).create("echo", {}, "corr-1", 100.0)
    job.start(101.0)
    return job


def read_events(job: Job, after: int = 0) -> list[JobEvent]:
    _, frames = job.log.read(after)
    out = []
    for sse in SSEDecoder().feed(b"".join(frames)):
        ev = decode_envelope(sse.data)
        assert isinstance(ev, JobEvent)
        out.append(ev)
    return out


def tok(text: str, *ids: int) -> dict[str, Any]:
    return {"text": text, "token_ids": list(ids)}


# -- concat_data -----------------------------------------------------------------------------------


def test_concat_joins_strings_and_lists() -> None:
    assert concat_data(tok("Hel", 1), tok("lo", 2, 3)) == tok("Hello", 1, 2, 3)


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (tok("a", 1), {"text": "b"}),  # other keys
        ({"text": "a", "n": 1}, {"text": "b", "n": 2}),  # a value that is no string or list
        ({"text": "a"}, {"text": ["b"]}),  # a string and a list
        ("a", "b"),  # not objects
        (tok("a", *range(MAX_MERGED_ITEMS)), tok("b", 1)),  # a list past its bound
        ({"text": "a" * MAX_MERGED_CHARS}, {"text": "b"}),  # a string past its bound
    ],
)
def test_concat_refuses_what_it_cannot_join(earlier: Any, later: Any) -> None:
    assert concat_data(earlier, later) is None


def test_concat_leaves_its_inputs_alone() -> None:
    a, b = tok("a", 1), tok("b", 2)
    concat_data(a, b)
    assert (a, b) == (tok("a", 1), tok("b", 2))


# -- the log's pending entry -----------------------------------------------------------------------


def test_a_pending_entry_is_made_when_first_read() -> None:
    log = EventLog()
    log.append(b"one")
    made: list[int] = []

    def make() -> bytes:
        made.append(1)
        return b"two"

    assert log.append_pending(make) == 2
    assert log.pending and log.last_seq == 2 and made == []
    assert log.read(0, limit=1) == (None, [b"one"])  # not reached: still pending
    assert log.pending
    assert log.read(0) == (None, [b"one", b"two"])
    assert not log.pending and made == [1]
    assert log.read(1) == (None, [b"two"])  # made once
    assert made == [1]


def test_a_pending_entry_is_made_when_the_next_is_appended() -> None:
    log = EventLog()
    log.append_pending(lambda: b"one")
    log.append(b"two")
    assert not log.pending
    assert log.read(0) == (None, [b"one", b"two"])


def test_a_pending_entry_survives_trimming() -> None:
    log = EventLog(max_events=1)
    for i in range(5):
        log.append_pending(lambda i=i: f"{i}".encode())  # type: ignore[misc]
    gap, frames = log.read(0)
    assert frames == [b"4"] and gap is not None and gap.first_available == 5


# -- Job.emit(merge=) ------------------------------------------------------------------------------


def test_unread_data_events_merge() -> None:
    job = running_job()
    for i, piece in enumerate("Hello"):
        job.emit(Data(tok(piece, i)), 102.0 + i, merge=concat_data)
    (event,) = read_events(job)
    assert event.seq == 1
    assert event.event == Data(tok("Hello", 0, 1, 2, 3, 4))
    assert event.timestamp == 102.0  # when the first of them was emitted


def test_a_read_event_takes_no_more() -> None:
    job = running_job()
    job.emit(Data(tok("a", 1)), 102.0, merge=concat_data)
    assert [e.event for e in read_events(job)] == [Data(tok("a", 1))]
    job.emit(Data(tok("b", 2)), 103.0, merge=concat_data)
    job.emit(Data(tok("c", 3)), 104.0, merge=concat_data)
    assert [(e.seq, e.event) for e in read_events(job, after=1)] == [(2, Data(tok("bc", 2, 3)))]


def test_other_events_and_other_merges_end_a_batch() -> None:
    job = running_job()
    job.emit(Data(tok("a", 1)), 102.0, merge=concat_data)
    job.emit(Narration("step", "between"), 103.0)
    job.emit(Data(tok("b", 2)), 104.0, merge=concat_data)
    job.emit(Data(tok("c", 3)), 105.0)  # no merge: an event of its own
    job.emit(Data(tok("d", 4)), 106.0, merge=concat_data)
    job.emit(Data({"other": 1}), 107.0, merge=concat_data)  # refused by concat_data
    events = read_events(job)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.event for e in events] == [
        Data(tok("a", 1)),
        Narration("step", "between"),
        Data(tok("b", 2)),
        Data(tok("c", 3)),
        Data(tok("d", 4)),
        Data({"other": 1}),
    ]


def test_a_merged_event_keeps_the_last_origin() -> None:
    job = running_job()
    for seq in (7, 8, 9):
        job.emit(Data(tok("x", seq)), 102.0, Origin("worker", "w1", seq), merge=concat_data)
    (event,) = read_events(job)
    assert event.origin == Origin("worker", "w1", 9)


def test_finishing_seals_the_batch() -> None:
    from jobproto._events import Succeeded

    job = running_job()
    job.emit(Data(tok("a", 1)), 102.0, merge=concat_data)
    job.emit(Data(tok("b", 2)), 102.0, merge=concat_data)
    job.finish(Succeeded({"ok": True}), 103.0)
    assert [e.event for e in read_events(job)] == [Data(tok("ab", 1, 2)), Succeeded({"ok": True})]


def test_a_payload_that_is_not_json_becomes_an_error_narration() -> None:
    job = running_job()
    job.emit(Data({"text": {1, 2}}), 102.0, merge=concat_data)  # a set: not JSON
    (event,) = read_events(job)
    assert isinstance(event.event, Narration)
    assert event.event.level == "error" and "not JSON" in event.event.message


operations = st.lists(
    st.one_of(
        st.tuples(st.just("token"), st.text(max_size=3), st.lists(st.integers(0, 9), max_size=3)),
        st.tuples(st.just("read"), st.just(""), st.just([])),
        st.tuples(st.just("narrate"), st.just(""), st.just([])),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(operations)
def test_a_reader_sees_every_token_in_order(ops: list[tuple[str, str, list[int]]]) -> None:
    """Whatever the interleaving of emits and reads: seqs contiguous, no token lost or repeated,
    and nothing a reader has seen ever changes."""
    job = running_job()
    cursor = 0
    seen: list[JobEvent] = []
    texts: list[str] = []
    ids: list[int] = []
    for kind, text, token_ids in [*ops, ("read", "", [])]:
        if kind == "token":
            job.emit(Data(tok(text, *token_ids)), 102.0, merge=concat_data)
            texts.append(text)
            ids.extend(token_ids)
        elif kind == "narrate":
            job.emit(Narration("step", "x"), 102.0)
        else:
            new = read_events(job, after=cursor)
            cursor = job.last_seq
            seen.extend(new)
            assert read_events(job)[: len(seen)] == seen  # the past never changes
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    data = [e.event.payload for e in seen if isinstance(e.event, Data)]
    assert "".join(d["text"] for d in data) == "".join(texts)
    assert [i for d in data for i in d["token_ids"]] == ids

"""Tests for the bounded per-job event log (jobproto._log)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto._errors import LocalProtocolError
from jobproto._events import Gap
from jobproto._log import EventLog


def frame(seq: int) -> bytes:
    return f"frame {seq}\n\n".encode()


def filled(max_events: int, count: int) -> EventLog:
    log = EventLog(max_events)
    for seq in range(1, count + 1):
        assert log.append(frame(seq)) == seq
    return log


def upper_bound(max_events: int) -> int:
    # Trimming is batched: the log may run over by a sixteenth. Below 16 the batch is one frame
    # (``max(1, max_events // 16)``), so a tiny log can hold one frame more than max + max // 16.
    return max_events + max(1, max_events // 16)


# --- empty log and sequence numbers ---------------------------------------------------------------


def test_empty_log() -> None:
    log = EventLog(4)
    assert len(log) == 0
    assert log.first_seq == 1
    assert log.last_seq == 0
    assert log.next_seq == 1
    assert log.read(0) == (None, [])


@pytest.mark.parametrize("bad", [0, -1])
def test_max_events_must_be_positive(bad: int) -> None:
    with pytest.raises(LocalProtocolError):
        EventLog(bad)


def test_seqs_are_contiguous_from_one() -> None:
    log = EventLog(1000)
    for expected in range(1, 101):
        assert log.next_seq == expected
        assert log.append(frame(expected)) == expected
        assert log.last_seq == expected
    assert log.read(0) == (None, [frame(s) for s in range(1, 101)])


def test_seqs_stay_contiguous_across_eviction() -> None:
    log = EventLog(16)
    for expected in range(1, 500):
        assert log.append(frame(expected)) == expected
    gap, frames = log.read(log.first_seq - 1)
    assert gap is None
    assert frames == [frame(s) for s in range(log.first_seq, 500)]
    assert len(log) == log.last_seq - log.first_seq + 1


# --- the bound ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_events", [16, 32, 100, 160, 1000])
def test_bound_respected_at_every_append(max_events: int) -> None:
    log = EventLog(max_events)
    for n in range(1, 4 * max_events):
        log.append(frame(n))
        assert min(n, max_events) <= len(log) <= max_events + max_events // 16
        assert log.last_seq == n


@pytest.mark.parametrize("max_events", [1, 2, 5, 15])
def test_bound_of_a_small_log(max_events: int) -> None:
    log = EventLog(max_events)
    for n in range(1, 50):
        log.append(frame(n))
        assert min(n, max_events) <= len(log) <= upper_bound(max_events)
        # The newest max_events frames are always there.
        _, frames = log.read(n - min(n, max_events))
        assert frames == [frame(s) for s in range(n - min(n, max_events) + 1, n + 1)]


def test_nothing_is_evicted_until_over_the_bound() -> None:
    log = filled(32, 34)  # 32 + 32 // 16 = 34: still within the bound
    assert log.first_seq == 1
    assert log.read(0)[0] is None


# --- read -----------------------------------------------------------------------------------------


def test_read_from_zero_returns_everything() -> None:
    log = filled(100, 10)
    assert log.read(0) == (None, [frame(s) for s in range(1, 11)])


def test_read_from_the_middle() -> None:
    log = filled(100, 10)
    assert log.read(4) == (None, [frame(s) for s in range(5, 11)])


def test_read_from_last_is_empty_and_no_gap() -> None:
    log = filled(100, 10)
    assert log.read(10) == (None, [])


def test_read_with_limit() -> None:
    log = filled(100, 10)
    assert log.read(0, limit=3) == (None, [frame(1), frame(2), frame(3)])
    assert log.read(8, limit=3) == (None, [frame(9), frame(10)])
    assert log.read(2, limit=0) == (None, [])
    assert log.read(10, limit=5) == (None, [])


def test_read_after_eviction_gives_a_gap() -> None:
    log = filled(16, 100)
    first = log.first_seq
    assert first > 1
    gap, frames = log.read(0)
    assert gap == Gap(after=0, first_available=first)
    assert gap.lost == first - 1
    assert frames == [frame(s) for s in range(first, 101)]

    gap, frames = log.read(5, limit=2)
    assert gap == Gap(after=5, first_available=first)
    assert gap.lost == first - 6
    assert frames == [frame(first), frame(first + 1)]


def test_read_at_the_edge_of_eviction_has_no_gap() -> None:
    log = filled(16, 100)
    first = log.first_seq
    gap, frames = log.read(first - 1)
    assert gap is None
    assert frames[0] == frame(first)
    # One before the edge: exactly one event was lost.
    gap, _ = log.read(first - 2)
    assert gap is not None
    assert gap.lost == 1


@pytest.mark.parametrize("after", [11, 12, 10**9, -1])
def test_cursor_outside_the_log_raises(after: int) -> None:
    log = filled(100, 10)
    with pytest.raises(LocalProtocolError):
        log.read(after)


def test_cursor_beyond_an_empty_log_raises() -> None:
    with pytest.raises(LocalProtocolError):
        EventLog(4).read(1)


def test_read_returns_the_same_bytes_objects() -> None:
    # Encoded once, shared by every subscriber.
    log = EventLog(10)
    data = frame(1)
    log.append(data)
    assert log.read(0)[1][0] is data


# --- Hypothesis: random appends and reads against a list ------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 40)),
        st.tuples(st.just("read"), st.floats(0, 1), st.none() | st.integers(0, 30)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(max_events=st.integers(1, 48), script=ops)
def test_log_matches_a_list_model(
    max_events: int, script: list[tuple[str, int] | tuple[str, float, int | None]]
) -> None:
    log = EventLog(max_events)
    model: list[bytes] = []  # every frame ever appended; model[i] has seq i + 1
    for op in script:
        if op[0] == "append":
            for _ in range(op[1]):
                seq = log.append(frame(len(model) + 1))
                model.append(frame(len(model) + 1))
                assert seq == len(model)
        else:
            _, where, limit = op
            after = round(where * len(model))
            gap, frames = log.read(after, limit)
            first = log.first_seq
            start = max(after, first - 1)
            expected = model[start:] if limit is None else model[start : start + limit]
            assert frames == expected
            if after < first - 1:
                assert gap == Gap(after, first)
                assert gap.lost == first - 1 - after > 0
            else:
                assert gap is None
        n = len(model)
        assert log.last_seq == n
        assert log.next_seq == n + 1
        assert len(log) == n - log.first_seq + 1
        assert min(n, max_events) <= len(log) <= upper_bound(max_events)
        if max_events >= 16:
            assert len(log) <= max_events + max_events // 16
    with pytest.raises(LocalProtocolError):
        log.read(len(model) + 1)


def test_skip_to_continues_after_a_hole_in_place() -> None:
    log = EventLog(max_events=8)
    log.append(b"1")
    log.skip_to(5)  # events 2..4 are gone
    assert (log.first_seq, log.last_seq, log.next_seq) == (5, 4, 5)
    log.append(b"5")
    gap, frames = log.read(1)
    assert gap is not None and (gap.after, gap.first_available) == (1, 5)
    assert frames == [b"5"]


def test_skip_to_must_skip() -> None:
    log = EventLog()
    log.append(b"1")
    with pytest.raises(LocalProtocolError):
        log.skip_to(2)

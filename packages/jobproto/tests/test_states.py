"""Tests for the job lifecycle table (jobproto._states)."""

from __future__ import annotations

import itertools

import pytest

from jobproto import _states
from jobproto._errors import LocalProtocolError
from jobproto._states import JobState, Transition, next_state, transitions

S = JobState
T = Transition

# The table once more, written out here so a change to the code's table, or to the one in the
# module docstring (read by ``documented_rows``), is noticed.
EXPECTED = {
    (S.QUEUED, T.START): S.RUNNING,
    (S.QUEUED, T.CANCEL): S.CANCELLED,
    (S.QUEUED, T.EXPIRE): S.EXPIRED,
    (S.RUNNING, T.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, T.FAIL): S.FAILED,
    (S.RUNNING, T.CANCEL): S.CANCELLED,
}

ALL_PAIRS = list(itertools.product(JobState, Transition))
TERMINAL = {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.EXPIRED}


def documented_rows() -> dict[tuple[JobState, Transition], JobState]:
    """The rows of the table in ``jobproto._states``' docstring (between its ``===`` rules)."""
    doc = _states.__doc__ or ""
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("====")]
    assert len(rules) == 3, "the docstring's table has a header and a body"
    rows = {}
    for line in lines[rules[1] + 1 : rules[2]]:
        old, transition, new = line.split()
        rows[(S(old), T(transition))] = S(new)
    return rows


def test_table_is_exactly_the_documented_rows() -> None:
    assert transitions() == EXPECTED
    assert documented_rows() == EXPECTED


def test_transitions_returns_a_copy() -> None:
    table = transitions()
    table[(S.SUCCEEDED, T.START)] = S.RUNNING
    assert (S.SUCCEEDED, T.START) not in transitions()
    with pytest.raises(LocalProtocolError):
        next_state(S.SUCCEEDED, T.START)


@pytest.mark.parametrize(("state", "transition"), ALL_PAIRS, ids=lambda v: v.value)
def test_every_pair(state: JobState, transition: Transition) -> None:
    if (state, transition) in EXPECTED:
        assert next_state(state, transition) is EXPECTED[(state, transition)]
    else:
        with pytest.raises(LocalProtocolError) as info:
            next_state(state, transition)
        # The message names both, so a log line says what was attempted.
        assert repr(transition.value) in str(info.value)
        assert repr(state.value) in str(info.value)


def test_terminal_property() -> None:
    assert {s for s in JobState if s.terminal} == TERMINAL
    assert not S.QUEUED.terminal
    assert not S.RUNNING.terminal


@pytest.mark.parametrize("state", sorted(TERMINAL), ids=str)
def test_terminal_states_have_no_way_out(state: JobState) -> None:
    for transition in Transition:
        with pytest.raises(LocalProtocolError):
            next_state(state, transition)


def test_every_state_is_reachable_from_queued() -> None:
    table = transitions()
    reached, frontier = {S.QUEUED}, [S.QUEUED]
    while frontier:
        state = frontier.pop()
        for (old, _), new in table.items():
            if old is state and new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(JobState)


def test_wire_values() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "expired",
    ]
    assert [t.value for t in Transition] == ["start", "succeed", "fail", "cancel", "expire"]
    assert S("running") is S.RUNNING
    assert str(S.RUNNING) == "running"

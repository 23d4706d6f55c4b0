"""Tests for the job lifecycle table (jobproto._states)."""

from __future__ import annotations

import itertools

import pytest

from jobproto._errors import LocalProtocolError
from jobproto._states import JobState, Transition, next_state, transitions

S = JobState
T = Transition

# The table of the module docstring, written out again so a change to either is noticed.
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


def test_table_is_exactly_the_documented_rows() -> None:
    assert transitions() == EXPECTED


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


def test_every_terminal_state_is_reachable_and_every_target_is_a_state() -> None:
    assert set(EXPECTED.values()) == TERMINAL | {S.RUNNING}


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

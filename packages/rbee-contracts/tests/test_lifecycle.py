"""The lifecycles' tables: the documented moves pass, every other move raises."""

from __future__ import annotations

import itertools
import re

import pytest

from jobproto import LocalProtocolError
from rbee_contracts import lifecycle
from rbee_contracts.lifecycle import (
    ModelLoadState,
    WorkerState,
    model_load_transition,
    worker_transition,
    worker_transitions,
)


def documented_worker_moves() -> set[tuple[WorkerState, WorkerState]]:
    """The rows of the table in the module's theory of operation."""
    doc = lifecycle.__doc__ or ""
    rows = re.findall(r"^(\w+)\s{2,}(\w+)\s{2,}\S", doc, re.MULTILINE)
    states = {s.value for s in WorkerState}
    return {(WorkerState(a), WorkerState(b)) for a, b in rows if a in states and b in states}


def test_the_worker_table_is_the_documented_one() -> None:
    table = {(old, new) for old, news in worker_transitions().items() for new in news}
    assert len(documented_worker_moves()) == 10
    assert table == documented_worker_moves()


@pytest.mark.parametrize(("old", "new"), list(itertools.product(WorkerState, WorkerState)))
def test_worker_moves_outside_the_table_raise(old: WorkerState, new: WorkerState) -> None:
    if (old, new) in documented_worker_moves():
        assert worker_transition(old, new) is new
    else:
        with pytest.raises(LocalProtocolError, match="illegal worker transition"):
            worker_transition(old, new)


def test_stopped_is_the_end() -> None:
    assert worker_transitions()[WorkerState.STOPPED] == frozenset()


def test_pending_is_a_start_without_an_outcome() -> None:
    assert {s for s in WorkerState if s.pending} == {WorkerState.STARTING, WorkerState.RESTARTING}


def test_model_load_table() -> None:
    assert model_load_transition(ModelLoadState.LOADING, ModelLoadState.READY)
    assert model_load_transition(ModelLoadState.READY, ModelLoadState.FAILED)
    for old, new in [
        (ModelLoadState.FAILED, ModelLoadState.READY),
        (ModelLoadState.READY, ModelLoadState.LOADING),
        (ModelLoadState.FAILED, ModelLoadState.LOADING),
    ]:
        with pytest.raises(LocalProtocolError):
            model_load_transition(old, new)

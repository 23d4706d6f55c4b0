"""Lifecycles outside jobproto: one enum and one transition table each.

Theory of operation
-------------------
**A worker process, as its hive supervises it** (``WorkerState``). A worker is created
``starting``: its process runs and the hive waits for the listening line and a ready ``/ready``.
It becomes ``ready`` then. A worker that exits unasked before it was ever ready is ``failed``
(nothing restarts a model that cannot load); one that exits after it was ready is ``restarting``
(a backoff, then ``starting`` again), or ``failed`` once the restart limit is reached. A stop
asked for at any time makes it ``stopped``, the end. A ``failed`` worker stays in the hive's
table (so its error can be read) until it is stopped, which makes it ``stopped``.

===========  ===========  =============================================
from         to           when
===========  ===========  =============================================
starting     ready        ``/ready`` answered 200
starting     restarting   a restarted run exited before it was ready
starting     failed       exited (or not ready in time) and never ready
starting     stopped      stopped
ready        restarting   exited unasked; restarts left
ready        failed       exited unasked; no restarts left
ready        stopped      stopped
restarting   starting     the backoff is over: the next run starts
restarting   stopped      stopped during the backoff
failed       stopped      stopped (removed from the hive's table)
===========  ===========  =============================================

**A hive, as the queen sees it** (``HiveState``) has no table because nothing moves it: it is
*derived*, a pure function of when the hive was last heard (``HiveRegistry.state(hive, now)``).
``up`` while ``now - last_seen <= hive_timeout_beats * heartbeat_interval``, ``down`` after; so
``up`` again with its next heartbeat. Nothing is final: a hive is never removed for being down.
A hive that has not registered has no ``HiveState`` at all (the queen's ``hive_status`` shows
only its process, ``queen_ops.UnregisteredHive``).

**The model in a worker process, as the worker reports it on ``/ready``** (``ModelLoadState``):
``loading`` at start, then ``ready`` or ``failed``; a ready engine that dies is ``failed``. A
failed load is never retried in the same process (the hive restarts the process instead).

Any move not in the worker's or the model load's table raises ``jobproto.LocalProtocolError``:
the caller misused the lifecycle.
Staying in the same state is not a move; callers that may repeat a state check for it first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from jobproto import LocalProtocolError

__all__ = [
    "HiveState",
    "ModelLoadState",
    "WorkerState",
    "model_load_transition",
    "worker_transition",
    "worker_transitions",
]


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def pending(self) -> bool:
        """Its first start (or a restart) has no outcome yet."""
        return self in (WorkerState.STARTING, WorkerState.RESTARTING)


class HiveState(enum.StrEnum):
    """Derived from the time since the last heartbeat (see above): no transitions of its own."""

    UP = "up"
    DOWN = "down"


class ModelLoadState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


S = TypeVar("S", WorkerState, ModelLoadState)

_W = WorkerState
_WORKER: frozenset[tuple[WorkerState, WorkerState]] = frozenset(
    {
        (_W.STARTING, _W.READY),
        (_W.STARTING, _W.RESTARTING),
        (_W.STARTING, _W.FAILED),
        (_W.STARTING, _W.STOPPED),
        (_W.READY, _W.RESTARTING),
        (_W.READY, _W.FAILED),
        (_W.READY, _W.STOPPED),
        (_W.RESTARTING, _W.STARTING),
        (_W.RESTARTING, _W.STOPPED),
        (_W.FAILED, _W.STOPPED),
    }
)

_MODEL: frozenset[tuple[ModelLoadState, ModelLoadState]] = frozenset(
    {
        (ModelLoadState.LOADING, ModelLoadState.READY),
        (ModelLoadState.LOADING, ModelLoadState.FAILED),
        (ModelLoadState.READY, ModelLoadState.FAILED),
    }
)


def _move(table: frozenset[tuple[S, S]], what: str, old: S, new: S) -> S:
    if (old, new) not in table:
        msg = f"illegal {what} transition from {old.value!r} to {new.value!r}"
        raise LocalProtocolError(msg)
    return new


def worker_transition(old: WorkerState, new: WorkerState) -> WorkerState:
    """``new`` if the worker lifecycle allows ``old`` → ``new``; else ``LocalProtocolError``."""
    return _move(_WORKER, "worker", WorkerState(old), WorkerState(new))


def model_load_transition(old: ModelLoadState, new: ModelLoadState) -> ModelLoadState:
    return _move(_MODEL, "model load", ModelLoadState(old), ModelLoadState(new))


def worker_transitions() -> Mapping[WorkerState, frozenset[WorkerState]]:
    """The worker table as {from: {to, ...}} (for documentation and tests)."""
    table: dict[WorkerState, set[WorkerState]] = {s: set() for s in WorkerState}
    for old, new in _WORKER:
        table[old].add(new)
    return {s: frozenset(t) for s, t in table.items()}

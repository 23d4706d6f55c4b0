"""Job lifecycle: the one transition table.

Theory of operation
-------------------
A job is created ``queued``. It starts (``running``) when its first subscriber connects, or at once
when the service starts jobs eagerly. A running job ends in exactly one terminal state. A queued job
may be cancelled before it runs, or expire when nobody subscribes in time. Nothing leaves a terminal
state. Every rule is a row of ``_TRANSITIONS``; any pair not in it raises ``LocalProtocolError``.

==========  ==========  ==========
from        transition  to
==========  ==========  ==========
queued      start       running
queued      cancel      cancelled
queued      expire      expired
running     succeed     succeeded
running     fail        failed
running     cancel      cancelled
==========  ==========  ==========
"""

from __future__ import annotations

import enum

from ._errors import LocalProtocolError

__all__ = ["JobState", "Transition", "next_state"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


class Transition(enum.StrEnum):
    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    EXPIRE = "expire"


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})

_TRANSITIONS: dict[tuple[JobState, Transition], JobState] = {
    (JobState.QUEUED, Transition.START): JobState.RUNNING,
    (JobState.QUEUED, Transition.CANCEL): JobState.CANCELLED,
    (JobState.QUEUED, Transition.EXPIRE): JobState.EXPIRED,
    (JobState.RUNNING, Transition.SUCCEED): JobState.SUCCEEDED,
    (JobState.RUNNING, Transition.FAIL): JobState.FAILED,
    (JobState.RUNNING, Transition.CANCEL): JobState.CANCELLED,
}


def next_state(state: JobState, transition: Transition) -> JobState:
    """The state after ``transition`` from ``state``; raises if the table has no such row."""
    try:
        return _TRANSITIONS[(state, transition)]
    except KeyError:
        msg = f"illegal transition {transition.value!r} from state {state.value!r}"
        raise LocalProtocolError(msg) from None


def transitions() -> dict[tuple[JobState, Transition], JobState]:
    """A copy of the table (for documentation and tests)."""
    return dict(_TRANSITIONS)

"""The events of a job: small frozen value types that know nothing of their wire format.

Each event type has a ``TYPE`` (its ``event:`` name on the wire). A ``JobEvent`` is one entry of a
job's log: the event plus its sequence number, job id, correlation id, timestamp and, for events
re-emitted by a relay, the ``Origin`` they came from. ``Gap`` is not an entry of any log: a server
sends it to a subscriber whose cursor fell out of the retained log, to say what was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ._states import JobState

__all__ = [
    "TERMINAL_TYPES",
    "Cancelled",
    "Data",
    "Event",
    "Expired",
    "Failed",
    "Gap",
    "JobEvent",
    "Narration",
    "Origin",
    "Progress",
    "Succeeded",
    "TerminalEvent",
    "UnknownEvent",
]


def _empty_fields() -> Mapping[str, Any]:
    return {}


@attrs.frozen(slots=True)
class Narration:
    """A human-readable line about what the job is doing."""

    TYPE: ClassVar[str] = "narration"
    action: str
    message: str
    level: str = "info"
    fields: Mapping[str, Any] = attrs.field(factory=_empty_fields)


@attrs.frozen(slots=True)
class Progress:
    """How far a step has come: ``current`` of ``total`` ``unit`` (total unknown: ``None``)."""

    TYPE: ClassVar[str] = "progress"
    action: str
    current: float
    total: float | None = None
    unit: str = ""
    message: str = ""


@attrs.frozen(slots=True)
class Data:
    """Operation-specific output, e.g. generated tokens. ``payload`` is any JSON value."""

    TYPE: ClassVar[str] = "data"
    payload: Any


@attrs.frozen(slots=True)
class Succeeded:
    TYPE: ClassVar[str] = "succeeded"
    result: Any = None


@attrs.frozen(slots=True)
class Failed:
    TYPE: ClassVar[str] = "failed"
    code: str
    message: str


@attrs.frozen(slots=True)
class Cancelled:
    TYPE: ClassVar[str] = "cancelled"
    reason: str = ""


@attrs.frozen(slots=True)
class Expired:
    TYPE: ClassVar[str] = "expired"
    reason: str = ""


@attrs.frozen(slots=True)
class UnknownEvent:
    """An event of a type this version does not know (decoded, never produced)."""

    type: str
    payload: Mapping[str, Any]

    @property
    def TYPE(self) -> str:
        return self.type


@attrs.frozen(slots=True)
class Gap:
    """Stands for events lost from the retained log: ``after+1 .. first_available-1``."""

    TYPE: ClassVar[str] = "gap"
    after: int
    first_available: int

    @property
    def lost(self) -> int:
        return self.first_available - self.after - 1


TerminalEvent = Succeeded | Failed | Cancelled | Expired
Event = Narration | Progress | Data | Succeeded | Failed | Cancelled | Expired | UnknownEvent

#: terminal event type -> the job state it ends in
TERMINAL_TYPES: Mapping[str, JobState] = {
    Succeeded.TYPE: JobState.SUCCEEDED,
    Failed.TYPE: JobState.FAILED,
    Cancelled.TYPE: JobState.CANCELLED,
    Expired.TYPE: JobState.EXPIRED,
}


@attrs.frozen(slots=True)
class Origin:
    """Where a relayed event came from; ``origin`` chains through several relays."""

    service: str
    job_id: str
    seq: int
    origin: Origin | None = None


@attrs.frozen(slots=True)
class JobEvent:
    """One entry of a job's log, as every subscriber sees it."""

    seq: int
    job_id: str
    correlation_id: str
    timestamp: float
    event: Event
    origin: Origin | None = None

    @property
    def type(self) -> str:
        return self.event.TYPE

    @property
    def terminal(self) -> bool:
        return self.event.TYPE in TERMINAL_TYPES

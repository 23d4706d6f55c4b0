"""Jobs and the registry that holds them. Sans-IO: the caller passes the time in.

A ``Job`` owns its state (moved only through ``_states.next_state``) and its ``EventLog``. Emitting
an event appends its encoded frame; a terminal event moves the job to its final state and is the
last entry the log will ever get. The ``JobRegistry`` creates jobs (with idempotency keys), finds
them, lists them with a cursor, and says which jobs expire or are due for removal at a given time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ._correlation import new_job_id
from ._errors import IdempotencyConflict, JobNotFound, LocalProtocolError, RequestError
from ._events import (
    TERMINAL_TYPES,
    Cancelled,
    Event,
    Expired,
    Failed,
    JobEvent,
    Origin,
    Succeeded,
    TerminalEvent,
)
from ._log import EventLog
from ._states import JobState, Transition, next_state
from ._wire import encode_frame

__all__ = ["Job", "JobRegistry"]

_FINISH = {
    Succeeded.TYPE: Transition.SUCCEED,
    Failed.TYPE: Transition.FAIL,
    Cancelled.TYPE: Transition.CANCEL,
    Expired.TYPE: Transition.EXPIRE,
}


@attrs.define(eq=False, slots=True)
class Job:
    id: str
    operation: str
    params: Any
    correlation_id: str
    created_at: float
    index: int
    log: EventLog
    trace_headers: Mapping[str, str] = attrs.field(factory=dict)
    idempotency_key: str | None = None
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: Failed | None = None
    cancel_reason: str | None = None
    subscribed: bool = False

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    @property
    def finished(self) -> bool:
        return self.state.terminal

    def start(self, now: float) -> None:
        self.state = next_state(self.state, Transition.START)
        self.started_at = now

    def emit(self, event: Event, now: float, origin: Origin | None = None) -> JobEvent:
        """Append a non-terminal event; only a running job emits."""
        if event.TYPE in TERMINAL_TYPES:
            raise LocalProtocolError("terminal events end a job through finish()")
        if self.state is not JobState.RUNNING:
            raise LocalProtocolError(f"a {self.state.value} job cannot emit events")
        return self._append(event, now, origin)

    def finish(self, event: TerminalEvent, now: float) -> JobEvent:
        """End the job with its one terminal event (the transition table decides if it may).

        The frame is encoded before anything changes, so a result that is not JSON leaves the
        job as it was (and the caller can finish it ``failed`` instead).
        """
        state = next_state(self.state, _FINISH[event.TYPE])
        record = JobEvent(self.log.next_seq, self.id, self.correlation_id, now, event)
        frame = encode_frame(record)
        self.state = state
        self.finished_at = now
        if isinstance(event, Succeeded):
            self.result = event.result
        elif isinstance(event, Failed):
            self.error = event
        elif isinstance(event, (Cancelled, Expired)):
            self.cancel_reason = event.reason
        self.log.append(frame)
        return record

    def _append(self, event: Event, now: float, origin: Origin | None) -> JobEvent:
        record = JobEvent(self.log.next_seq, self.id, self.correlation_id, now, event, origin)
        self.log.append(encode_frame(record))
        return record


@attrs.define(slots=True)
class _Idempotency:
    fingerprint: str
    job_id: str


class JobRegistry:
    """All jobs of one service, newest last."""

    def __init__(self, max_log_events: int = 10_000) -> None:
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, _Idempotency] = {}
        self._counter = 0
        self._max_log_events = max_log_events

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def create(
        self,
        operation: str,
        params: Any,
        correlation_id: str,
        now: float,
        *,
        trace_headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> tuple[Job, bool]:
        """A new queued job, or with a known idempotency key the job it made (``created`` False)."""
        if idempotency_key is not None:
            seen = self._keys.get(idempotency_key)
            if seen is not None:
                if seen.fingerprint != fingerprint:
                    raise IdempotencyConflict(idempotency_key)
                return self._jobs[seen.job_id], False
        self._counter += 1
        job = Job(
            id=new_job_id(),
            operation=operation,
            params=params,
            correlation_id=correlation_id,
            created_at=now,
            index=self._counter,
            log=EventLog(self._max_log_events),
            trace_headers=dict(trace_headers or {}),
            idempotency_key=idempotency_key,
        )
        self._jobs[job.id] = job
        if idempotency_key is not None:
            self._keys[idempotency_key] = _Idempotency(fingerprint, job.id)
        return job, True

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def page(
        self, *, state: JobState | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first; ``cursor`` is the ``next_cursor`` of the page before."""
        before = self._parse_cursor(cursor)
        page: list[Job] = []
        for job in reversed(self._jobs.values()):
            if job.index >= before or (state is not None and job.state is not state):
                continue
            if len(page) == limit:
                return page, str(page[-1].index)
            page.append(job)
        return page, None

    @staticmethod
    def _parse_cursor(cursor: str | None) -> int:
        if cursor is None:
            return 1 << 62
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise RequestError(
                400, "invalid_cursor", "cursor is not one this server gave out", field="cursor"
            )
        return int(cursor)

    def due_to_expire(self, now: float, subscribe_timeout: float) -> list[Job]:
        """Queued jobs nobody subscribed to within ``subscribe_timeout`` seconds."""
        return [
            j
            for j in self._jobs.values()
            if j.state is JobState.QUEUED
            and not j.subscribed
            and now - j.created_at >= subscribe_timeout
        ]

    def remove_finished(self, now: float, ttl: float) -> list[Job]:
        """Remove (and return) jobs that finished at least ``ttl`` seconds ago."""
        gone = [
            j
            for j in self._jobs.values()
            if j.finished_at is not None and now - j.finished_at >= ttl
        ]
        for job in gone:
            del self._jobs[job.id]
            if job.idempotency_key is not None:
                self._keys.pop(job.idempotency_key, None)
        return gone

"""Jobs and the registry that holds them. Sans-IO: the caller passes the time in.

A ``Job`` owns its state (moved only through ``_states.next_state``) and its ``EventLog``. Emitting
an event appends its encoded frame; a terminal event moves the job to its final state and is the
last entry the log will ever get. The ``JobRegistry`` creates jobs (with idempotency keys), finds
them, lists them with a cursor, and says which jobs expire or are due for removal at a given time.

Coalescing: a ``data`` event emitted with a ``merge`` function joins the previous data event (if
it was emitted with the same function) as long as no subscriber has read that one yet, and
``merge`` accepts the pair. A stream that keeps up sees every event on its own; one that falls
behind, or a job nobody watches, gets fewer, larger events, each encoded once, when it is read.
So a subscriber's cost per token falls as load rises instead of its lag growing.
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
    Data,
    Event,
    Expired,
    Failed,
    JobEvent,
    Narration,
    Origin,
    Succeeded,
    TerminalEvent,
)
from ._log import EventLog
from ._merge import Merge
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
    # the newest data event while it may still take others in, and the function merging them
    _open: JobEvent | None = attrs.field(default=None, init=False, repr=False)
    _merge: Merge | None = attrs.field(default=None, init=False, repr=False)

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    @property
    def finished(self) -> bool:
        return self.state.terminal

    def start(self, now: float) -> None:
        self.state = next_state(self.state, Transition.START)
        self.started_at = now

    def emit(
        self, event: Event, now: float, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> JobEvent:
        """Append a non-terminal event; only a running job emits.

        With ``merge`` (data events only), the event may be merged into the previous one instead
        (see the module's docstring); the entry that holds it is returned either way. Its frame
        is encoded when first read: a payload that is not JSON is then replaced by an error
        narration saying so.
        """
        if event.TYPE in TERMINAL_TYPES:
            raise LocalProtocolError("terminal events end a job through finish()")
        if self.state is not JobState.RUNNING:
            raise LocalProtocolError(f"a {self.state.value} job cannot emit events")
        if merge is None or not isinstance(event, Data):
            return self._append(event, now, origin)
        previous = self._open
        if previous is not None and self._merge is merge and self.log.pending:
            assert isinstance(previous.event, Data)
            payload = merge(previous.event.payload, event.payload)
            if payload is not None:
                merged = JobEvent(
                    previous.seq, self.id, self.correlation_id, previous.timestamp,
                    Data(payload), origin,
                )  # fmt: skip
                self._open = merged
                return merged
        record = JobEvent(self.log.next_seq, self.id, self.correlation_id, now, event, origin)
        self.log.append_pending(self._seal_open)
        self._open, self._merge = record, merge
        return record

    def _seal_open(self) -> bytes:
        record, self._open, self._merge = self._open, None, None
        assert record is not None
        try:
            return encode_frame(record)
        except (TypeError, ValueError):
            message = "a data event was dropped: its payload is not JSON"
            error = Narration("event_dropped", message, "error")
            return encode_frame(attrs.evolve(record, event=error, origin=None))

    def finish(self, event: TerminalEvent, now: float) -> JobEvent:
        """End the job with its one terminal event (the transition table decides if it may).

        The frame is encoded before anything changes, so a result that is not JSON leaves the
        job as it was (and the caller can finish it ``failed`` instead).
        """
        state = next_state(self.state, _FINISH[event.TYPE])
        record = JobEvent(self.log.next_seq, self.id, self.correlation_id, now, event)
        frame = encode_frame(record)
        self.take_outcome(event, now, state)
        self.log.append(frame)
        return record

    def take_outcome(self, event: TerminalEvent, at: float, state: JobState) -> None:
        """Take the end a terminal event says (state, end time, result, error or reason),
        appending nothing: ``finish`` after its checks, and a copy of a job whose log and
        transitions are kept elsewhere (a replica's view of a job in a shared store)."""
        self.state = state
        self.finished_at = at
        if isinstance(event, Succeeded):
            self.result = event.result
        elif isinstance(event, Failed):
            self.error = event
        elif isinstance(event, (Cancelled, Expired)):
            self.cancel_reason = event.reason

    def _append(self, event: Event, now: float, origin: Origin | None) -> JobEvent:
        record = JobEvent(self.log.next_seq, self.id, self.correlation_id, now, event, origin)
        frame = encode_frame(record)  # before the log changes: an event that is not JSON raises
        self.log.append(frame)
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

    def has_key(self, idempotency_key: str) -> bool:
        """Whether ``idempotency_key`` is bound to a job (a create with it replays or conflicts)."""
        return idempotency_key in self._keys

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

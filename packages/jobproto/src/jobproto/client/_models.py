"""What the client returns and raises: response models, the client's errors, and their parsers.

The parsers are the one place where the client reads jobproto/1 JSON (``docs/protocol.md``):
a peer that sends the wrong shape gets a ``RemoteProtocolError`` naming the bad field, never a
``KeyError`` or ``TypeError`` from deep inside the client.

Errors the client adds to the jobproto tree::

    JobProtoError
     ├── RequestError
     │    └── HTTPStatusError      a 4xx/5xx with the documented error shape (.response attached)
     ├── JobFailed
     │    └── RemoteJobFailed      the job ended ``failed`` (.code, .message, .job_id)
     ├── RemoteJobCancelled        the job ended ``cancelled`` or ``expired`` (.state, .reason)
     └── StreamInterrupted         the event stream broke more often in a row than allowed

and from the core's tree it raises ``TransportFailed``/``ConnectFailed`` (a request got no answer)
and ``RemoteProtocolError`` (an answer that is not jobproto/1). No httpx error leaves the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, TypeVar

import attrs
import httpx

from .._errors import JobFailed, JobProtoError, RemoteProtocolError, RequestError
from .._events import TERMINAL_TYPES, Gap, JobEvent
from .._wire import parse_timestamp

__all__ = [
    "CreatedJob",
    "HTTPStatusError",
    "JobPage",
    "JobStatus",
    "JobStream",
    "RemoteJobCancelled",
    "RemoteJobFailed",
    "StreamInterrupted",
    "parse_created",
    "parse_page",
    "parse_status",
    "response_error",
    "response_json",
]

T = TypeVar("T")


# -- errors ----------------------------------------------------------------------------------------


class HTTPStatusError(RequestError):
    """A request answered 4xx/5xx, rebuilt from ``{"error": {"code", "message", ...}}``.

    It is a ``RequestError``, so code that catches ``RequestError`` works the same in-process and
    over HTTP. ``response`` is the ``httpx.Response`` (its body already read). ``str()`` says all
    of it, ``HTTP 422 validation_error: <message> (field max_tokens)``; ``message`` is the
    server's message alone.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: Any = None,
        response: httpx.Response,
    ) -> None:
        super().__init__(status, code, message, field=field, details=details)
        self.response = response

    def __str__(self) -> str:
        # A log line or a traceback shows str(): the status and code say what kind of refusal
        # it is, and the field which value, where the message alone often does neither.
        text = f"HTTP {self.status} {self.code}: {self.message}"
        return text if self.field is None else f"{text} (field {self.field})"


class RemoteJobFailed(JobFailed):
    """The remote job ended ``failed`` with this code and message."""

    def __init__(self, code: str, message: str, *, job_id: str) -> None:
        super().__init__(code, message)
        self.job_id = job_id


class RemoteJobCancelled(JobProtoError):
    """The remote job ended ``cancelled`` or ``expired`` (``state``) without a result."""

    def __init__(self, state: str, reason: str, *, job_id: str) -> None:
        super().__init__(f"job {job_id} {state}" + (f": {reason}" if reason else ""))
        self.state = state
        self.reason = reason
        self.job_id = job_id


class StreamInterrupted(JobProtoError):
    """The event stream of a job broke ``attempts`` times in a row; the client gave up.

    The job itself may well still be running: ``status()`` tells, and ``events(job_id,
    after=last_seq)`` resumes where this stream stopped. The last failure is ``__cause__``.
    """

    def __init__(self, job_id: str, last_seq: int, attempts: int) -> None:
        super().__init__(
            f"gave up on the event stream of job {job_id} after {attempts} consecutive failures"
            f" (last event seen: {last_seq})"
        )
        self.job_id = job_id
        self.last_seq = last_seq
        self.attempts = attempts


# -- models ----------------------------------------------------------------------------------------


@attrs.frozen
class CreatedJob:
    """The answer to ``POST /v1/jobs``; ``replayed`` when an Idempotency-Key found an old job.

    ``sse_url`` and ``status_url`` are paths relative to the server root, as sent.
    """

    job_id: str
    sse_url: str
    status_url: str
    operation: str
    state: str
    correlation_id: str
    replayed: bool
    raw: dict[str, Any] = attrs.field(repr=False)


@attrs.frozen
class JobStatus:
    """A snapshot of one job. Timestamps are epoch seconds; ``error`` is ``{"code", "message"}``."""

    job_id: str
    operation: str
    state: str
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    last_seq: int
    correlation_id: str
    result: Any
    error: dict[str, Any] | None
    raw: dict[str, Any] = attrs.field(repr=False)

    @property
    def terminal(self) -> bool:
        # A job's terminal states are named like the terminal events that end it.
        return self.state in TERMINAL_TYPES.values()


class JobStream:
    """A job ``JobClient.submit()`` created, and its events: ``created`` is the ``CreatedJob``,
    and ``async for item in stream`` yields each ``JobEvent`` once, in seq order, and a ``Gap``
    where events were lost, through the terminal event (as ``JobClient.events()`` does).

    It lives as long as ``submit()``'s context; iterating it is iterating the client's own event
    generator, with no layer between (a relay reads every token through it).
    """

    __slots__ = ("_events", "created")

    def __init__(self, created: CreatedJob, events: AsyncGenerator[JobEvent | Gap, None]) -> None:
        self.created = created
        self._events = events

    def __aiter__(self) -> AsyncGenerator[JobEvent | Gap, None]:
        return self._events

    def __repr__(self) -> str:
        return f"JobStream(job_id={self.created.job_id!r}, replayed={self.created.replayed})"


@attrs.frozen
class JobPage:
    """One page of ``GET /v1/jobs``; pass ``next_cursor`` back to get the next (None: last page)."""

    jobs: list[JobStatus]
    next_cursor: str | None


# -- parsers ---------------------------------------------------------------------------------------


def _field(raw: Mapping[str, Any], key: str, typ: type[T] | tuple[type, ...], what: str) -> T:
    try:
        value = raw[key]
    except KeyError:
        raise RemoteProtocolError(f"{what} has no {key!r}") from None
    # bool is an int in Python but never a number on the wire.
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise RemoteProtocolError(f"{what} field {key!r} has the wrong type")
    return value  # type: ignore[return-value]


def _optional(raw: Mapping[str, Any], key: str, typ: type[T], what: str) -> T | None:
    if raw.get(key) is None:
        return None
    return _field(raw, key, typ, what)


def _timestamp(raw: Mapping[str, Any], key: str) -> float | None:
    text = _optional(raw, key, str, "job status")
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise RemoteProtocolError(f"job status field {key!r} is not an RFC 3339 time") from None


def response_json(response: httpx.Response) -> dict[str, Any]:
    """The body of a 2xx answer, which jobproto/1 always makes a JSON object."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RemoteProtocolError(
            f"{response.request.method} {response.request.url.path} answered"
            f" {response.status_code} with a body that is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise RemoteProtocolError(f"{response.request.url.path} answered with a non-object JSON")
    return body


def response_error(response: httpx.Response) -> HTTPStatusError | RemoteProtocolError:
    """The error for a non-2xx answer (body already read): the documented shape, or a protocol
    error when a peer (or a proxy in front of it) sent something else."""
    status = response.status_code
    where = f"{response.request.method} {response.request.url.path} answered {status}"
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return RemoteProtocolError(f"{where} without a JSON error body")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return RemoteProtocolError(f"{where} without the jobproto error shape")
    try:
        code = _field(error, "code", str, "error")
        message = _field(error, "message", str, "error")
    except RemoteProtocolError as exc:
        return RemoteProtocolError(f"{where}: {exc}")
    field = error.get("field")
    return HTTPStatusError(
        status,
        code,
        message,
        field=field if isinstance(field, str) else None,
        details=error.get("details"),
        response=response,
    )


def parse_created(raw: dict[str, Any], *, replayed: bool) -> CreatedJob:
    what = "job creation answer"
    return CreatedJob(
        job_id=_field(raw, "job_id", str, what),
        sse_url=_field(raw, "sse_url", str, what),
        status_url=_field(raw, "status_url", str, what),
        operation=_field(raw, "operation", str, what),
        state=_field(raw, "state", str, what),
        correlation_id=_field(raw, "correlation_id", str, what),
        replayed=replayed,
        raw=raw,
    )


def parse_status(raw: Any) -> JobStatus:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("job status is not a JSON object")
    what = "job status"
    error = raw.get("error")
    if error is not None and not isinstance(error, dict):
        raise RemoteProtocolError("job status field 'error' is not an object")
    return JobStatus(
        job_id=_field(raw, "job_id", str, what),
        operation=_field(raw, "operation", str, what),
        state=_field(raw, "state", str, what),
        created_at=_timestamp(raw, "created_at"),
        started_at=_timestamp(raw, "started_at"),
        finished_at=_timestamp(raw, "finished_at"),
        last_seq=_optional(raw, "last_seq", int, what) or 0,
        correlation_id=_field(raw, "correlation_id", str, what),
        result=raw.get("result"),
        error=error,
        raw=raw,
    )


def parse_page(raw: dict[str, Any]) -> JobPage:
    jobs = _field(raw, "jobs", list, "job list")
    return JobPage(
        jobs=[parse_status(job) for job in jobs],
        next_cursor=_optional(raw, "next_cursor", str, "job list"),
    )

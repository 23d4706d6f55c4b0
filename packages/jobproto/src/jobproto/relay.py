"""The cascade relay: run a job on another jobproto service as part of the current job.

``await relay(client, "worker_spawn", {...}, service="hive")`` creates the downstream job, re-emits
each of its events on the current job's stream in order, with its ``origin`` (service, job id, seq,
and the origin it had itself) kept, and returns the downstream result. Creating the job and reading
its events is one HTTP exchange (``JobClient.submit``: the create request is answered with the
job's stream, docs/protocol.md §2.2.2; a service that predates it costs a second request). The
downstream stream resumes by itself with Last-Event-ID if the connection breaks, so nothing is lost
or repeated. When the current job is cancelled (or the relay fails for any other reason) before the
downstream job has ended, the downstream job is cancelled too. The correlation id and the trace
context travel with the create request (the client reads them from the current job's context).

With ``merge`` (``concat_data`` for streamed output), relayed data events coalesce on the current
job as ``Job.emit`` describes: a client that reads more slowly than the downstream service writes
then costs this service one event per batch instead of one per downstream event. A merged event's
``origin`` names the last downstream event in it.

A downstream terminal event is not re-emitted: the current job has its own. ``failed`` downstream
raises ``JobFailed`` with the downstream code (so the current job fails with it unless the caller
handles it); ``cancelled``/``expired`` downstream raise ``JobFailed("downstream_cancelled", ...)``.
A downstream service that refuses the job (an error answer to the create request) fails it with
the refusal's code (``validation_error``, ``unknown_operation``...); one that cannot be reached
(``TransportFailed``), breaks its stream too often (``StreamInterrupted``), does not speak
jobproto/1, or lost the job it created (``404`` on the stream: it restarted, or removed the job)
fails it with ``downstream_unavailable``: to this job the downstream service is unavailable, and
the job's own parameters were not at fault. The client's error is the ``JobFailed``'s
``__cause__``.

The events go to the current job's sink (``jobproto.current_job()``), whatever adapter bound it:
``JobSink.emit`` takes the ``origin``. Outside a job, the downstream job runs and its events are
dropped. This module imports the client adapter only, never the ASGI one.

A sink with an ``observer`` (the ASGI adapter's ``JobHandle``, when its service has metrics) is
told when each relay ends: its outcome, its duration and the delay of its first event (how long
after the downstream service logged it this service re-emitted it: the time the hop adds, exact
when both run on one machine's clock).

Checkpoints and resume: a service that can run a job on another replica after its own has died
(a shared job store) needs to know where the relay was. After the downstream job is announced,
and after each event re-emitted, in the same turn (no ``await`` between the emit and the
checkpoint, so the checkpoint always names the last event the current job has), the relay sets
the current job's checkpoint (``jobproto.set_checkpoint``; a sink without checkpoints ignores it),
here with ``context={"url": "http://10.0.0.5:4123"}``::

    {"relay": {"url": "http://10.0.0.5:4123", "service": "worker:w1", "job_id": "job_X", "seq": 7}}

``context`` is the caller's: what it needs to build the same client again (a URL, whose token).
``relay_point(checkpoint)`` reads it back as a ``RelayPoint``; ``relay(..., resume=point)`` then
creates no job: it follows the downstream job from ``point.seq`` (``Last-Event-ID``), so every
downstream event is re-emitted once across both relays. A downstream job that is gone by then
(404) fails the current job with ``downstream_lost``. A relay stopped because its job goes on
elsewhere (the sink's ``handed_over`` is true: a replica shutting down, or one that lost the
job to another) leaves the downstream job running, for the relay that resumes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, Protocol

import anyio
import attrs

from ._errors import JobFailed, RemoteProtocolError, TransportFailed
from ._events import (
    Cancelled,
    Data,
    Expired,
    Failed,
    Gap,
    JobEvent,
    Narration,
    Origin,
    Succeeded,
)
from ._merge import Merge
from ._narration import JobSink, _check_json, current_job
from .client import HTTPStatusError, JobClient, StreamInterrupted

__all__ = ["RelayPoint", "relay", "relay_point"]

#: how long cancelling the downstream job may take when the current one is torn down
CANCEL_GRACE = 5.0


@attrs.frozen
class RelayPoint:
    """Where a relay was: the downstream job and the last of its events re-emitted (0: none),
    with the service name and the caller's ``context`` its checkpoint held."""

    job_id: str
    seq: int = 0
    service: str = ""
    context: Mapping[str, Any] = attrs.field(factory=dict)


def relay_point(checkpoint: Mapping[str, Any] | None) -> RelayPoint | None:
    """The ``RelayPoint`` a relay's checkpoint names; None when it names none (the relay had
    not heard of its downstream job yet, or the checkpoint is someone else's)."""
    if not isinstance(checkpoint, Mapping):
        return None
    point = checkpoint.get("relay")
    if not isinstance(point, Mapping):
        return None
    job_id, seq, service = point.get("job_id"), point.get("seq", 0), point.get("service", "")
    if not isinstance(job_id, str) or not job_id:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    context = {k: v for k, v in point.items() if k not in ("job_id", "seq", "service")}
    return RelayPoint(job_id, seq, service if isinstance(service, str) else "", context)


class _Checkpoint:
    """Sets the current job's checkpoint after each event re-emitted (``jobproto.relay``'s
    docstring), when the sink keeps checkpoints: one small dict per event, no I/O.

    It calls the sink's ``set_checkpoint`` as ``jobproto.set_checkpoint`` would, without that
    function's JSON check of every value: the relay runs once per token, and what it sets is
    strings and an int besides ``context``, which ``relay()`` checks once.
    """

    __slots__ = ("_base", "_set")

    def __init__(self, target: JobSink | None, service: str, context: Mapping[str, Any]) -> None:
        # the bound method once, not a look-up per event: the relay's loop runs once per token.
        # A sink that says its checkpoints are never read (``keeps_checkpoints`` false: a job
        # in one process's memory, which no other replica can adopt) is spared the dicts.
        keeps = getattr(target, "keeps_checkpoints", True)
        self._set = getattr(target, "set_checkpoint", None) if keeps else None
        self._base = {**context, "service": service}

    def __call__(self, job_id: str, seq: int) -> None:
        if self._set is not None:
            self._set({"relay": {**self._base, "job_id": job_id, "seq": seq}})


class _Observer(Protocol):
    """What a relay reports to (``jobproto.asgi.JobObserver.relay_ended``)."""

    def relay_ended(
        self, service: str, operation: str, outcome: str, seconds: float, delay: float | None
    ) -> None: ...


async def relay(
    client: JobClient,
    operation: str,
    fields: Mapping[str, Any] | None = None,
    *,
    service: str,
    idempotency_key: str | None = None,
    merge: Merge | None = None,
    context: Mapping[str, Any] | None = None,
    resume: RelayPoint | None = None,
) -> Any:
    """Run ``operation`` on ``client``'s service, relaying its events; return its result.

    ``context`` goes into each checkpoint the relay sets; with ``resume``, no job is created:
    the relay follows ``resume.job_id`` after ``resume.seq`` (see the module's docstring).
    """
    if context:
        _check_json("relay()", "context", context)  # it goes into every checkpoint
    run = _Run(service, idempotency_key, merge, context or {}, resume)
    observer: _Observer | None = getattr(current_job(), "observer", None)
    if observer is None:
        return await _relay_mapped(client, operation, fields, run)
    started = time.monotonic()
    first: list[float] = []
    outcome = "cancelled"
    try:
        result = await _relay_mapped(client, operation, fields, run, first)
        outcome = "succeeded"
        return result
    except Exception:
        outcome = "failed"
        raise
    finally:
        kind = service.partition(":")[0]
        delay = first[0] if first else None
        observer.relay_ended(kind, operation, outcome, time.monotonic() - started, delay)


@attrs.frozen
class _Run:
    """The options of one ``relay()`` call."""

    service: str
    idempotency_key: str | None
    merge: Merge | None
    context: Mapping[str, Any]
    resume: RelayPoint | None


async def _relay_mapped(
    client: JobClient,
    operation: str,
    fields: Mapping[str, Any] | None,
    run: _Run,
    first: list[float] | None = None,
) -> Any:
    """``_relay`` with a refusal or an unreachable service as the current job's failure;
    ``first`` (when given) gets the delay of the first downstream event."""
    service = run.service
    try:
        return await _relay(client, operation, fields, run, first)
    except HTTPStatusError as exc:  # the downstream service refused the job
        raise JobFailed(exc.code, f"{service}: {exc.message}") from exc
    except (TransportFailed, StreamInterrupted, RemoteProtocolError) as exc:
        raise JobFailed("downstream_unavailable", f"{service}: {exc}") from exc


@contextlib.asynccontextmanager
async def _downstream(
    client: JobClient, operation: str, fields: Mapping[str, Any] | None, run: _Run
) -> AsyncIterator[tuple[str, AsyncIterable[JobEvent | Gap]]]:
    """The downstream job's id and its events: a new job in one exchange (``submit``), or the
    job ``run.resume`` names, followed after its seq."""
    if run.resume is None:
        # one exchange: the create request is answered with the job's stream (§2.2.2)
        async with client.submit(operation, fields, idempotency_key=run.idempotency_key) as events:
            yield events.created.job_id, events
        return
    follow = client.events(run.resume.job_id, after=run.resume.seq)
    async with contextlib.aclosing(follow):
        yield run.resume.job_id, follow


async def _relay(
    client: JobClient,
    operation: str,
    fields: Mapping[str, Any] | None,
    run: _Run,
    first: list[float] | None,
) -> Any:
    service, merge = run.service, run.merge
    target = current_job()  # any JobSink; None outside a job: run it, relay nothing
    checkpoint = _Checkpoint(target, service, run.context)
    job_id: str | None = None  # known once the downstream service announced the job
    finished = False
    try:
        async with _downstream(client, operation, fields, run) as (job_id, events):
            checkpoint(job_id, 0 if run.resume is None else run.resume.seq)
            async for ev in events:
                if isinstance(ev, Gap):
                    if target is not None:
                        message = f"lost {ev.lost} events of {service} job {job_id}"
                        target.emit(Narration("relay_gap", message, "warning"))
                        # a resume from here does not report the same gap again
                        checkpoint(job_id, ev.first_available - 1)
                    continue
                if first is not None and not first:
                    # the hop's delay: the downstream service logged it at ev.timestamp
                    first.append(max(0.0, time.time() - ev.timestamp))
                event = ev.event
                if isinstance(event, (Succeeded, Failed, Cancelled, Expired)):
                    finished = True
                    if isinstance(event, Succeeded):
                        return event.result
                    if isinstance(event, Failed):
                        raise JobFailed(event.code, f"{service}: {event.message}")
                    raise JobFailed(
                        "downstream_cancelled",
                        f"{service} job {job_id} ended {event.TYPE}: {event.reason}",
                    )
                if target is not None:
                    origin = Origin(service, ev.job_id, ev.seq, ev.origin)
                    if merge is not None and isinstance(event, Data):
                        target.emit(event, origin, merge=merge)
                    else:
                        target.emit(event, origin)
                    checkpoint(job_id, ev.seq)  # in the emit's turn: it names what was emitted
    except HTTPStatusError as exc:
        if exc.status != 404 or job_id is None:  # before the job: a refusal of the create
            raise
        # (a 404 on the stream is no refusal: the downstream service lost the job it created)
        finished = True  # there is no job left to cancel
        if run.resume is not None:
            message = f"{service} job {job_id} is gone: cannot resume"
            raise JobFailed("downstream_lost", message) from exc
        message = f"{service} lost job {job_id} (restarted?): {exc.message}"
        raise JobFailed("downstream_unavailable", message) from exc
    finally:
        # after the stream's connection is closed (leaving submit()'s context closed it)
        if not finished and job_id is not None and not getattr(target, "handed_over", False):
            # best effort: the downstream service may be gone already
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(CANCEL_GRACE),
                contextlib.suppress(Exception),
            ):
                await client.cancel(job_id)
    raise JobFailed("relay_incomplete", f"{service} job {job_id} ended without a terminal event")

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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Protocol

import anyio

from ._errors import JobFailed, RemoteProtocolError, TransportFailed
from ._events import Cancelled, Data, Expired, Failed, Gap, Narration, Origin, Succeeded
from ._merge import Merge
from ._narration import current_job
from .client import HTTPStatusError, JobClient, StreamInterrupted

__all__ = ["relay"]

#: how long cancelling the downstream job may take when the current one is torn down
CANCEL_GRACE = 5.0


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
) -> Any:
    """Run ``operation`` on ``client``'s service, relaying its events; return its result."""
    observer: _Observer | None = getattr(current_job(), "observer", None)
    if observer is None:
        return await _relay_mapped(client, operation, fields, service, idempotency_key, merge)
    started = time.monotonic()
    first: list[float] = []
    outcome = "cancelled"
    try:
        result = await _relay_mapped(
            client, operation, fields, service, idempotency_key, merge, first
        )
        outcome = "succeeded"
        return result
    except Exception:
        outcome = "failed"
        raise
    finally:
        kind = service.partition(":")[0]
        delay = first[0] if first else None
        observer.relay_ended(kind, operation, outcome, time.monotonic() - started, delay)


async def _relay_mapped(
    client: JobClient,
    operation: str,
    fields: Mapping[str, Any] | None,
    service: str,
    idempotency_key: str | None,
    merge: Merge | None,
    first: list[float] | None = None,
) -> Any:
    """``_relay`` with a refusal or an unreachable service as the current job's failure;
    ``first`` (when given) gets the delay of the first downstream event."""
    try:
        return await _relay(client, operation, fields, service, idempotency_key, merge, first)
    except HTTPStatusError as exc:  # the downstream service refused the job
        raise JobFailed(exc.code, f"{service}: {exc.message}") from exc
    except (TransportFailed, StreamInterrupted, RemoteProtocolError) as exc:
        raise JobFailed("downstream_unavailable", f"{service}: {exc}") from exc


async def _relay(
    client: JobClient,
    operation: str,
    fields: Mapping[str, Any] | None,
    service: str,
    idempotency_key: str | None,
    merge: Merge | None,
    first: list[float] | None,
) -> Any:
    target = current_job()  # any JobSink; None outside a job: run it, relay nothing
    job_id: str | None = None  # known once the downstream service announced the job
    finished = False
    try:
        # one exchange: the create request is answered with the job's stream (§2.2.2)
        async with client.submit(operation, fields, idempotency_key=idempotency_key) as events:
            job_id = events.created.job_id
            async for ev in events:
                if isinstance(ev, Gap):
                    if target is not None:
                        message = f"lost {ev.lost} events of {service} job {job_id}"
                        target.emit(Narration("relay_gap", message, "warning"))
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
    except HTTPStatusError as exc:
        if exc.status != 404 or job_id is None:  # before the job: a refusal of the create
            raise
        # (a 404 on the stream is no refusal: the downstream service lost the job it created)
        finished = True  # there is no job left to cancel
        message = f"{service} lost job {job_id} (restarted?): {exc.message}"
        raise JobFailed("downstream_unavailable", message) from exc
    finally:
        # after the stream's connection is closed (leaving submit()'s context closed it)
        if not finished and job_id is not None:
            # best effort: the downstream service may be gone already
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(CANCEL_GRACE),
                contextlib.suppress(Exception),
            ):
                await client.cancel(job_id)
    raise JobFailed("relay_incomplete", f"{service} job {job_id} ended without a terminal event")

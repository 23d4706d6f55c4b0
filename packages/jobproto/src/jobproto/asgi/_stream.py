"""``GET /v1/jobs/{id}/stream``: one subscriber's view of a job's log, as a plain ASGI response.

The body is written by one loop: read every frame after the cursor, send them in one write, repeat;
when nothing is new, wait for the job's change event (or the keepalive interval, then send a
comment). Disconnect is raced in the same task group, as Starlette's StreamingResponse does, so a
client that leaves is noticed at once even on a quiet stream. Each send has a timeout: a frozen
client (full TCP buffers) is dropped instead of being held forever. A subscriber that falls more
than ``max_subscriber_lag`` events behind is closed and resumes from the log with Last-Event-ID;
none of this ever slows the job or the other subscribers, which only append to / read the log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from .._sse import encode, encode_comment
from .._wire import encode_gap_frame
from ._service import JobHandle, JobService

__all__ = ["stream_job"]

logger = logging.getLogger("jobproto.stream")

KEEPALIVE = encode_comment("keepalive")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


async def stream_job(
    service: JobService,
    handle: JobHandle,
    after: int,
    scope: Scope,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Send the job's events after seq ``after``, live, until its terminal event."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra_headers}
    )
    service.subscribe(handle)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
        try:
            await _pump(service, handle, after, send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
            pass  # the client is gone or frozen; it resumes from the log when it comes back
        tg.cancel_scope.cancel()


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: dict[str, Any] = await receive()  # type: ignore[assignment]
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _pump(service: JobService, handle: JobHandle, cursor: int, send: Send) -> None:
    settings = service.settings
    job = handle.job
    log = job.log
    pending: list[bytes] = [encode(retry=settings.retry_ms)]
    while True:
        changed = handle.changed
        gap, frames = log.read(cursor, settings.max_batch_events)
        if gap is not None:
            pending.append(encode_gap_frame(gap, job.id, job.correlation_id, time.time()))
            cursor = gap.first_available - 1
        if frames:
            pending.extend(frames)
            cursor += len(frames)
        if pending:
            body = b"".join(pending)
            pending.clear()
            behind_before = log.last_seq - cursor
            with anyio.fail_after(settings.send_timeout):
                await send({"type": "http.response.body", "body": body, "more_body": True})
            # Falling behind means losing ground while sending: a backlog being replayed (a
            # finished job, a resume) is read in batches and is not lag.
            behind = log.last_seq - cursor
            if behind > settings.max_subscriber_lag and behind > behind_before:
                logger.info("job %s: closing a subscriber %d events behind", job.id, behind)
                return
            continue
        if job.finished and cursor >= log.last_seq:
            return
        if service.closing:
            return
        with anyio.move_on_after(settings.keepalive_interval) as idle:
            await changed.wait()
        if idle.cancelled_caught:
            pending.append(KEEPALIVE)

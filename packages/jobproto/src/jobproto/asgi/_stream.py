"""``GET /v1/jobs/{id}/stream``: one subscriber's view of a job's log, as a plain ASGI response.

The body is written by one loop: read every frame after the cursor, send them in one write, repeat;
when nothing is new, wait for the job's next event (or the keepalive interval, then send a
comment). Disconnect is raced by a watcher task, as Starlette's StreamingResponse does, so a
client that leaves is noticed at once even on a quiet stream (it ends the loop's wait). Each send
has a timeout: a frozen client (full TCP buffers) is dropped instead of being held forever (its
connection aborted, so what is buffered for it is freed at once). A
subscriber that falls more than ``max_subscriber_lag`` events behind is closed and resumes from the
log with Last-Event-ID; none of this ever slows the job or the other subscribers, which only
append to / read the log.

This loop runs once per event a live stream sends, so it creates nothing per turn that it can
reuse: the send timeout is the deadline of one cancel scope around the whole loop, moved before
each send and cleared after it, and the wait is ``JobHandle.wait_change`` (one future and one
timer). A new anyio scope per send and per wait cost a stream more CPU than its socket writes
(docs/benchmarks.md, section 2).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

# the ASGI scope extension a server offers to drop a connection at once: ``{"abort": callable}``
# (jobproto.server's protocol classes offer it)
from .._extensions import ABORT_EXTENSION
from .._sse import encode, encode_comment
from .._wire import encode_gap_frame
from ._service import JobHandle, JobService

__all__ = ["ABORT_EXTENSION", "stream_job"]

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
    handle.streams += 1
    sub = _Subscriber()
    # The disconnect watcher is a bare task, not an anyio task group: it never raises, it only
    # flags the subscriber and wakes its wait, and it is cancelled below whatever happens; a task
    # group (its cancel scopes, task handle and event) doubled what an idle stream costs beyond
    # the connection itself (docs/benchmarks.md, memory).
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, sub))
    try:
        await _pump(service, handle, sub, after, send)
    except TimeoutError:
        # Frozen: the client resumes from the log if it ever comes back. Closing its connection
        # would keep it, and every byte buffered for it, until the client reads them; the
        # server's abort (jobproto.server's extension) frees them now.
        if service.observer is not None:
            service.observer.subscriber_dropped("frozen")
        _abort_connection(scope)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the client is gone; it resumes from the log when it comes back
    finally:
        handle.streams -= 1
        watcher.cancel()


def _abort_connection(scope: Scope) -> None:
    """Drop the connection at once where the server offers it (the ``jobproto.abort`` scope
    extension); under another server the response just ends and the server closes it."""
    extension = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if extension is not None:
        extension["abort"]()


class _Subscriber:
    """One stream's state shared with its disconnect watcher."""

    __slots__ = ("gone", "waiter")

    def __init__(self) -> None:
        self.gone = False
        self.waiter: asyncio.Future[bool] | None = None

    def disconnected(self) -> None:
        self.gone = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)


async def _watch_disconnect(receive: Receive, sub: _Subscriber) -> None:
    try:
        while True:
            message: dict[str, Any] = await receive()  # type: ignore[assignment]
            if message["type"] == "http.disconnect":
                break
    except Exception:  # nobody awaits this task: a broken receive counts as a disconnect
        logger.debug("receive failed on a stream; treating it as a disconnect", exc_info=True)
    sub.disconnected()


async def _pump(
    service: JobService, handle: JobHandle, sub: _Subscriber, cursor: int, send: Send
) -> None:
    settings = service.settings
    observer = service.observer
    job = handle.job
    log = job.log
    loop = asyncio.get_running_loop()
    clock = loop.time  # the clock of anyio's deadlines on asyncio
    pending: list[bytes] = [encode(retry=settings.retry_ms)]
    more = True
    with anyio.CancelScope() as send_timeout:
        while not sub.gone:
            gap, frames = log.read(cursor, settings.max_batch_events)
            if gap is not None:
                pending.append(encode_gap_frame(gap, job.id, job.correlation_id, time.time()))
                cursor = gap.first_available - 1
            if frames:
                pending.extend(frames)
                cursor += len(frames)
                if observer is not None:
                    observer.events_sent(len(frames))
            if not pending:
                if (job.finished and cursor >= log.last_seq) or service.closing:
                    more = False  # the end of the body is the last send
                else:
                    # No await since the log was read: an event emitted from here on wakes this.
                    sub.waiter = loop.create_future()
                    woken = await handle.wait_change(settings.keepalive_interval, sub.waiter)
                    sub.waiter = None
                    if not woken and not sub.gone:
                        pending.append(KEEPALIVE)
                    continue
            body = b"".join(pending)
            pending.clear()
            behind_before = log.last_seq - cursor
            send_timeout.deadline = clock() + settings.send_timeout
            await send({"type": "http.response.body", "body": body, "more_body": more})
            send_timeout.deadline = math.inf
            if not more:
                return
            # Falling behind means losing ground while sending: a backlog being replayed (a
            # finished job, a resume) is read in batches and is not lag.
            behind = log.last_seq - cursor
            if behind > settings.max_subscriber_lag and behind > behind_before:
                logger.info("job %s: closing a subscriber %d events behind", job.id, behind)
                if observer is not None:
                    observer.subscriber_dropped("lag")
                # end the body cleanly: the client resumes from the log with Last-Event-ID
                send_timeout.deadline = clock() + settings.send_timeout
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        return  # the client is gone
    # Only the deadline cancels this scope: the client did not take a send in time.
    raise TimeoutError(f"a subscriber of job {job.id} took no send for {settings.send_timeout} s")

"""``GET /v1/jobs/{id}/stream``: one subscriber's view of a job's log, as a plain ASGI response.

The body is written by one loop: read every frame after the cursor, send them in one write, repeat;
when nothing is new, wait for the job's next event (or the keepalive interval, then send a
comment). A client that leaves is noticed at once even on a quiet stream (it ends the loop's
wait): the server calls the stream back where it offers that (``DISCONNECT_EXTENSION``), and
otherwise a watcher task waits in ``receive()``, as Starlette's StreamingResponse does. Each send
has a timeout: a frozen client (full TCP buffers) is dropped instead of being held forever (its
connection aborted, so what is buffered for it is freed at once). A subscriber that falls more
than ``max_subscriber_lag`` events behind is closed and resumes from the log with Last-Event-ID;
none of this ever slows the job or the other subscribers, which only append to / read the log.

This loop runs once per event a live stream sends, so it creates nothing per turn that it can
reuse. Each stream has one timer, for both of its deadlines (the keepalive while it waits, the send
timeout while it sends), and it is re-armed only when it fires early: a turn of the loop just moves
the two deadlines, and a send past its deadline is cancelled (the stream's task) and ends the
stream as frozen. The wait is one future parked on the job (``JobHandle.park``). A timer and a
cancelled timer per send and per wait, alive until the event loop's next turn, made a fan-out to
1,000 subscribers run the garbage collector seven times per event (and a full collection,
~0.1-0.2 s, every few seconds); new anyio scopes per send and per wait cost a stream more CPU
than its socket writes (docs/benchmarks.md, sections 2 and 4).
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
from .._extensions import ABORT_EXTENSION, DISCONNECT_EXTENSION
from .._sse import encode, encode_comment
from .._wire import encode_gap_frame
from ._service import JobHandle, JobObserver, JobService

__all__ = ["ABORT_EXTENSION", "DISCONNECT_EXTENSION", "stream_job"]

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
    *,
    status: int = 200,
    first: bytes = b"",
) -> None:
    """Send the job's events after seq ``after``, live, until its terminal event.

    ``status`` and ``first`` (blocks sent right after ``retry:``, before any event) serve the
    create-and-stream answer of ``POST /v1/jobs`` (docs/protocol.md §2.2.2): ``201`` and the
    ``created`` block."""
    await send(
        {"type": "http.response.start", "status": status, "headers": SSE_HEADERS + extra_headers}
    )
    service.subscribe(handle)
    handle.streams += 1
    settings = service.settings
    observer = service.observer
    job = handle.job
    log = job.log
    loop = asyncio.get_running_loop()
    clock = loop.time  # the clock of the timer's deadlines
    keepalive = settings.keepalive_interval
    send_timeout = settings.send_timeout
    task = asyncio.current_task()
    assert task is not None
    # the task's cancel requests before the timer's (as asyncio.timeout counts them): more once
    # the timer's is taken back means a cancel from outside, which must go on
    cancelling = task.cancelling()
    sub = _Subscriber(loop, keepalive, task)
    # A server that tells of a lost connection (jobproto.server's extension) calls the subscriber
    # back; under another server a watcher task waits in receive(). The watcher is a bare task,
    # not an anyio task group: it never raises, it only flags the subscriber and wakes its wait,
    # and it is cancelled below whatever happens; a task group (its cancel scopes, task handle and
    # event) doubled what an idle stream costs beyond the connection itself, and the watcher
    # itself (its task, its coroutines and uvicorn's receive) is ~1 KiB of what is left
    # (docs/benchmarks.md, memory). (One coroutine for the whole stream, for the same reason.)
    on_lost = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
    watcher: asyncio.Task[None] | None = None
    if on_lost is not None:
        on_lost["watch"](sub.disconnected)
    else:
        watcher = loop.create_task(_watch_disconnect(receive, sub))
    cursor = after
    pending: list[bytes] = [encode(retry=settings.retry_ms)]
    if first:
        pending.append(first)
    more = True
    try:
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
                    waiter = sub.waiter = loop.create_future()
                    handle.park(waiter)
                    sub.arm(sub.quiet_since + keepalive)
                    try:
                        woken = await waiter
                    finally:
                        sub.waiter = None
                        handle.unpark(waiter)  # timed out, ended early or cancelled
                    if not woken and not sub.gone:
                        pending.append(KEEPALIVE)
                    continue
            body = b"".join(pending)
            pending.clear()
            behind_before = log.last_seq - cursor
            sub.send_deadline = deadline = clock() + send_timeout
            sub.arm(deadline)
            await send({"type": "http.response.body", "body": body, "more_body": more})
            sub.send_deadline = math.inf
            if not more:
                return
            sub.quiet_since = clock()
            # Falling behind means losing ground while sending: a backlog being replayed (a
            # finished job, a resume) is read in batches and is not lag.
            behind = log.last_seq - cursor
            if behind > settings.max_subscriber_lag and behind > behind_before:
                logger.info("job %s: closing a subscriber %d events behind", job.id, behind)
                if observer is not None:
                    observer.subscriber_dropped("lag")
                # end the body cleanly: the client resumes from the log with Last-Event-ID
                sub.send_deadline = deadline = clock() + send_timeout
                sub.arm(deadline)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        # the client is gone
    except asyncio.CancelledError:
        # Only the timer's cancel, and no other (one from outside, even on the timer's own
        # turn of the loop, still cancels the task), means the client did not take a send in
        # time.
        if not sub.timed_out or task.uncancel() > cancelling:
            raise
        _drop_frozen(observer, scope)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        # The client is gone; it resumes from the log when it comes back. Unless the timer
        # cancelled the send and the send turned that into this error: then the client is
        # frozen, and the timer's cancel request is taken back as above (left counted, it
        # would break any later asyncio.timeout or task group of the task).
        if sub.timed_out:
            if task.uncancel() > cancelling:
                raise asyncio.CancelledError from exc  # a cancel from outside too: it goes on
            _drop_frozen(observer, scope)
    finally:
        handle.streams -= 1
        if watcher is not None:
            watcher.cancel()
        elif on_lost is not None:
            on_lost["watch"](None)
        sub.stop()


def _drop_frozen(observer: JobObserver | None, scope: Scope) -> None:
    """A send timed out: the client is frozen, and resumes from the log if it ever comes back.

    Closing its connection would keep it, and every byte buffered for it, until the client reads
    them; the connection is dropped at once where the server offers it (the ``jobproto.abort``
    scope extension, jobproto.server's), which frees them now; under another server the
    response just ends and the server closes it."""
    if observer is not None:
        observer.subscriber_dropped("frozen")
    extension = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if extension is not None:
        extension["abort"]()


#: a timer may run up to this much before its time (uvloop counts whole milliseconds): it then
#: counts as due, instead of being re-armed for what is left
_TIMER_SLACK = 0.001


class _Subscriber:
    """One stream's state shared with whoever tells it of a disconnect, and its one timer.

    The timer is armed for the nearest deadline it must keep (``arm``); one that fires finds what
    is due: the send under way past ``send_deadline`` is cancelled (the stream's task, which
    ``stream_job`` tells from any other cancel), a wait past ``quiet_since`` + the keepalive
    interval ends (False: time for a keepalive), and otherwise it is armed again for what is
    still ahead. So moving a deadline later costs nothing, and a stream whose events come faster
    than its keepalive interval arms it once per interval. (The task's own cancel, not an anyio
    cancel scope: the scope, its sets and the task's state in anyio took ~0.9 KiB of an idle
    stream.)
    """

    __slots__ = (
        "gone",
        "keepalive",
        "loop",
        "quiet_since",
        "send_deadline",
        "task",
        "timed_out",
        "timer",
        "timer_at",
        "waiter",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, keepalive: float, task: asyncio.Task[Any]
    ) -> None:
        self.gone = False
        #: the wait under way, if any: the watcher and the timer end it with False
        self.waiter: asyncio.Future[bool] | None = None
        self.loop = loop
        self.keepalive = keepalive
        #: when the last send ended (a wait lasts until ``quiet_since + keepalive`` at most)
        self.quiet_since = loop.time()
        #: when the send under way times out (inf: no send under way)
        self.send_deadline = math.inf
        #: the stream's task, cancelled when a send times out (``timed_out`` is then set)
        self.task = task
        self.timed_out = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def disconnected(self) -> None:
        self.gone = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)

    def arm(self, at: float) -> None:
        """Make sure the timer fires by ``at`` (loop time)."""
        if at < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(at, self._fire)
            self.timer_at = at

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = math.inf

    def _fire(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        now = self.loop.time() + _TIMER_SLACK
        if self.send_deadline != math.inf:
            if now < self.send_deadline:
                self.arm(self.send_deadline)
            elif not self.timed_out:
                self.timed_out = True
                self.task.cancel()
        elif self.waiter is not None:
            due = self.quiet_since + self.keepalive
            if now < due:
                self.arm(due)
            elif not self.waiter.done():
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

"""The job runtime of a service: runs handlers in a task group, wakes subscribers, cancels, sweeps.

``JobService`` is the only object with state (no module globals). Its ``lifespan()`` owns one task
group: every job's handler runs in it, plus the janitor that expires unsubscribed jobs and removes
finished ones after their retention time. Leaving the lifespan cancels running jobs (they end
``cancelled`` with reason "service shutting down") and ends every open stream.

A ``JobHandle`` is the live side of a ``Job``: the cancel scope of its handler, the streams
waiting for its next event, and ``emit()``, which ``narrate()`` reaches through the job bound
with ``jobproto.bind_job`` (a ``JobHandle`` is a ``JobSink``).
``emit()`` never blocks and may be called from worker threads (``anyio.to_thread``): it hands the
event to the event loop and returns.

Waking subscribers is on the path of every event, so it is kept to what it must do: a stream that
has nothing left to send parks one future on the handle (``wait_change``), and ``notify()``
resolves the futures parked there, if any; an event emitted while every stream is busy sending
costs a length check. (A fresh ``anyio.Event`` per event, which looks up the running async
library, was a quarter of ``emit()``'s time in a relaying queen: see docs/benchmarks.md.) These
are asyncio futures: jobproto serves on uvicorn's asyncio loop, as ``_threadsafe_caller`` below
also assumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from opentelemetry import trace

from .._errors import JobFailed, LocalProtocolError
from .._events import Cancelled, Event, Expired, Failed, Origin, Succeeded
from .._merge import Merge
from .._narration import bind_job
from .._operations import Operation, Operations
from .._redact import RedactingFilter, redact_text
from .._registry import Job, JobRegistry
from .._states import JobState
from .._tracing import job_span, record_outcome
from .._wire import converter
from ._settings import ServiceSettings

__all__ = ["JobHandle", "JobObserver", "JobService"]

logger = logging.getLogger("jobproto.service")
# What this logger writes about a handler's exception (message and traceback) is redacted as the
# job's failed event is, wherever the application's logging sends it: a filter on the logger
# itself sees every record logged on it, before any handler. (It keeps no state; loggers are
# process-wide whatever we do.)
if not any(isinstance(f, RedactingFilter) for f in logger.filters):
    logger.addFilter(RedactingFilter())


class JobObserver(Protocol):
    """Who is told what a service's jobs and streams do (``jobproto.metrics.JobMetrics``).

    Set as ``JobService.observer``. Called on the event loop, on the paths of jobs and streams:
    each call must be cheap (a counter's increment) and must not raise.
    """

    def job_created(self, operation: str) -> None: ...

    def job_ended(self, job: Job) -> None:
        """``job`` reached its terminal state (its ``started_at`` is None if it never ran)."""

    def events_sent(self, count: int) -> None:
        """A stream wrote ``count`` events in one send."""

    def subscriber_dropped(self, reason: str) -> None:
        """A stream was closed for its client: ``"lag"`` or ``"frozen"``."""

    def relay_ended(
        self, service: str, operation: str, outcome: str, seconds: float, delay: float | None
    ) -> None:
        """A relay (``jobproto.relay``) of ``operation`` to ``service`` (its kind: the part of
        its name before ``:``) ended; ``delay``: how long after the downstream service logged
        its first event this service re-emitted it (None: no event came)."""


class JobHandle:
    """The live side of one job. Implements ``JobSink`` for narration."""

    __slots__ = ("_service", "_waiters", "cancel_reason", "done", "job", "scope", "streams")

    def __init__(self, job: Job, service: JobService) -> None:
        self.job = job
        self._service = service
        # a dict as an ordered set: woken in the order they came, removed in O(1)
        self._waiters: dict[asyncio.Future[bool], None] = {}
        self.done = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.cancel_reason: str | None = None
        #: streams open on this job now (``GET .../stream`` and any other reader that counts
        #: itself here): who is still listening
        self.streams = 0

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def observer(self) -> JobObserver | None:
        """The service's observer (``jobproto.relay`` reports to it)."""
        return self._service.observer

    @property
    def correlation_id(self) -> str:
        return self.job.correlation_id

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        """Append an event to the job's log and wake its subscribers. Thread-safe, non-blocking.

        ``merge``: coalesce data events while unread (``Job.emit``)."""
        if threading.get_ident() != self._service._loop_thread:
            self._service._call_soon_threadsafe(self._emit_from_thread, event, origin, merge)
            return
        if self.job.state is not JobState.RUNNING:
            # A task that outlived its handler narrating late: logging has it, the stream is closed.
            return
        self.job.emit(event, time.time(), origin, merge=merge)
        self.notify()

    def _emit_from_thread(self, event: Event, origin: Origin | None, merge: Merge | None) -> None:
        # The thread that narrated has moved on: an event that cannot be encoded is logged here
        # (on the loop thread the same mistake raises into the caller).
        try:
            self.emit(event, origin, merge=merge)
        except (TypeError, ValueError):
            logger.exception("job %s: dropped an event that is not JSON", self.job.id)

    def notify(self) -> None:
        """Wake every stream waiting in ``wait_change``."""
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            for fut in waiters:
                if not fut.done():
                    fut.set_result(True)

    def park(self, waiter: asyncio.Future[bool]) -> None:
        """Have the next ``notify()`` resolve ``waiter`` with True (unless it is done by then).

        ``wait_change`` without its timer, for a reader that keeps a timer of its own: park right
        after looking at the log, with no ``await`` in between, and ``unpark`` once the wait
        ended any other way (a notified waiter is no longer parked)."""
        self._waiters[waiter] = None

    def unpark(self, waiter: asyncio.Future[bool]) -> None:
        """Forget a parked ``waiter`` (a no-op for one ``notify()`` has taken)."""
        self._waiters.pop(waiter, None)

    async def wait_change(self, within: float, waiter: asyncio.Future[bool] | None = None) -> bool:
        """Wait for the next ``notify()``; False when ``within`` seconds passed first.

        Call it right after looking at the log, with no ``await`` in between: an event emitted
        after that look then wakes this wait, and none can slip in before it is registered.
        ``waiter`` is the future to wait on (a new one by default): whoever holds it may end the
        wait early by setting its result.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future() if waiter is None else waiter
        self._waiters[fut] = None
        timer = loop.call_later(within, _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._waiters.pop(fut, None)  # timed out, ended early or cancelled: still listed


class JobService:
    """Runs the jobs of one set of operations. Serve it with ``jobproto.asgi.create_app``."""

    def __init__(
        self,
        operations: Operations,
        settings: ServiceSettings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.operations = operations
        # None: the global provider, so an SDK configured later still gets our spans.
        self.tracer = trace.get_tracer("jobproto", tracer_provider=tracer_provider)
        self.settings = settings or ServiceSettings()
        self.registry = JobRegistry(self.settings.max_log_events)
        self.handles: dict[str, JobHandle] = {}
        self.closing = False
        #: told of jobs, streams and relays (``jobproto.metrics.JobMetrics.bind`` sets it)
        self.observer: JobObserver | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop_thread = threading.get_ident()
        self._call_soon_threadsafe: Callable[..., object] = _no_loop

    # -- lifecycle ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the service (use as the Starlette app's lifespan, or directly in tests)."""
        self._loop_thread = threading.get_ident()
        self._call_soon_threadsafe = _threadsafe_caller()
        self.closing = False
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._janitor)
            try:
                yield
            finally:
                self.begin_shutdown()
                tg.cancel_scope.cancel()
        self._tg = None

    def begin_shutdown(self) -> None:
        """End every open stream (servers call this as soon as they are asked to stop)."""
        self.closing = True
        for handle in list(self.handles.values()):
            handle.notify()

    @property
    def running(self) -> bool:
        return self._tg is not None

    # -- jobs --------------------------------------------------------------------------------------

    def create(
        self,
        body: Mapping[str, Any],
        *,
        correlation_id: str,
        trace_headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JobHandle, bool]:
        """Validate ``body`` and create its job; ``(handle, created)`` (False on a replay)."""
        if self._tg is None:
            raise LocalProtocolError("the JobService is not running: serve the app with lifespan")
        op, params = self.operations.parse(body)
        fingerprint = ""
        if idempotency_key is not None:
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
        job, created = self.registry.create(
            op.name,
            params,
            correlation_id,
            time.time(),
            trace_headers=trace_headers,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        if not created:
            return self.handles[job.id], False
        handle = self.handles[job.id] = JobHandle(job, self)
        if self.observer is not None:
            self.observer.job_created(op.name)
        if self.settings.start_mode == "immediate":
            self._start(handle)
        return handle, True

    def get(self, job_id: str) -> JobHandle:
        return self.handles[self.registry.get(job_id).id]

    def subscribe(self, handle: JobHandle) -> None:
        """A stream connected: the job no longer expires, and starts if it waits for this."""
        handle.job.subscribed = True
        if handle.job.state is JobState.QUEUED and not self.closing:
            self._start(handle)

    async def cancel(self, handle: JobHandle, reason: str = "cancelled by request") -> bool:
        """Cancel a job; True when it has ended by the time this returns (idempotent)."""
        job = handle.job
        if job.state is JobState.QUEUED:
            job.finish(Cancelled(reason), time.time())
            handle.notify()
            handle.done.set()
            self._ended(handle)
        elif job.state is JobState.RUNNING:
            if handle.cancel_reason is None:
                handle.cancel_reason = reason
            if handle.scope is not None:
                handle.scope.cancel()
            with anyio.move_on_after(self.settings.cancel_wait):
                await handle.done.wait()
        return job.finished

    def _start(self, handle: JobHandle) -> None:
        assert self._tg is not None
        handle.job.start(time.time())
        self._tg.start_soon(self._run, handle, name=f"job {handle.job.id}")

    async def _run(self, handle: JobHandle) -> None:
        job = handle.job
        op = self.operations.get(job.operation)
        try:
            with bind_job(handle):
                await self._run_bound(handle, op)
        finally:
            handle.done.set()
            self._ended(handle)

    def _ended(self, handle: JobHandle) -> None:
        if self.observer is not None and handle.job.finished:
            self.observer.job_ended(handle.job)

    async def _run_bound(self, handle: JobHandle, op: Operation[Any]) -> None:
        """Run the handler to the one terminal event, with ``handle`` bound as the current job."""
        job = handle.job
        try:
            with job_span(
                self.tracer,
                job.trace_headers,
                self.settings.service_name,
                job.operation,
                job.id,
                job.correlation_id,
            ) as span:
                outcome = await self._call(handle, op, job.params)
                record_outcome(span, outcome)
            if not job.finished:
                self._finish(handle, op, outcome)
        except Exception:
            # A fault of ours (not the handler's: _call catches those) must cost this job only,
            # never the task group that runs every other job of the service.
            logger.exception(
                "job %s (%s, handler %s): internal error", job.id, job.operation, op.handler_name
            )
            if not job.finished:
                job.finish(Failed("internal_error", "internal error"), time.time())
                handle.notify()
        finally:
            if not job.finished:
                # Cancelled from outside: this job's scope, or the whole service shutting down.
                reason = handle.cancel_reason or "service shutting down"
                job.finish(Cancelled(reason), time.time())
                handle.notify()

    async def _call(
        self, handle: JobHandle, op: Operation[Any], params: Any
    ) -> Succeeded | Failed | None:
        with anyio.CancelScope() as scope:
            handle.scope = scope
            if handle.cancel_reason is not None:
                scope.cancel()
            try:
                value = await op.handler(params)
            except JobFailed as exc:
                return Failed(exc.code, redact_text(exc.message))
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # SystemExit and KeyboardInterrupt too: raised by a handler they end its job,
                # never the service.
                return self._crashed(handle, op, exc)
            except BaseException as exc:
                # A cancellation, a group holding one, or another BaseException. A real
                # cancellation (DELETE cancelled this scope, or the service is shutting down)
                # passes; one the handler raised itself while nobody cancelled it (a cancelled
                # future awaited, CancelledError raised by hand) is a crash like any other,
                # as is a BaseException subclass or a group of them: the job fails, never the
                # task group that runs every other job.
                if await _cancel_pending():
                    raise
                return self._crashed(handle, op, exc)
            try:
                return Succeeded(converter.unstructure(value))
            except Exception as exc:  # a result the converter cannot take
                return self._not_json(handle, op, exc)
        return None  # cancelled: _run's finally ends the job

    def _crashed(self, handle: JobHandle, op: Operation[Any], exc: BaseException) -> Failed:
        """The job's failure for what its handler raised, logged with its traceback."""
        job = handle.job
        logger.error(
            "job %s (%s): handler %s raised %s",
            job.id,
            job.operation,
            op.handler_name,
            type(exc).__name__,
            exc_info=exc,
        )
        message = f"handler {op.handler_name} raised {type(exc).__name__}: {exc}"
        return Failed("internal_error", redact_text(message))

    def _finish(
        self, handle: JobHandle, op: Operation[Any], outcome: Succeeded | Failed | None
    ) -> None:
        if outcome is None:
            return
        now = time.time()
        try:
            handle.job.finish(outcome, now)
        except (TypeError, ValueError, RecursionError) as exc:  # a result json cannot encode
            handle.job.finish(self._not_json(handle, op, exc), now)
        handle.notify()

    def _not_json(self, handle: JobHandle, op: Operation[Any], exc: BaseException) -> Failed:
        """The job's failure for a result that is not JSON, logged here: the client is told,
        and so is whoever reads the service's log."""
        job = handle.job
        logger.error(
            "job %s (%s): handler %s returned a result that is not JSON: %s",
            job.id,
            job.operation,
            op.handler_name,
            exc,
        )
        return Failed("internal_error", redact_text(f"result is not JSON: {exc}"))

    # -- housekeeping ------------------------------------------------------------------------------

    async def _janitor(self) -> None:
        settings = self.settings
        while True:
            await anyio.sleep(settings.sweep_interval)
            self.sweep(time.time())

    def sweep(self, now: float) -> None:
        """Expire queued jobs nobody subscribed to; drop finished jobs past their retention."""
        for job in self.registry.due_to_expire(now, self.settings.subscribe_timeout):
            timeout = self.settings.subscribe_timeout
            job.finish(Expired(f"no subscriber within {timeout:g} s"), now)
            handle = self.handles[job.id]
            handle.notify()
            handle.done.set()
            self._ended(handle)
        for job in self.registry.remove_finished(now, self.settings.retention_ttl):
            self.handles.pop(job.id, None)


async def _cancel_pending() -> bool:
    """Whether a scope around the current task has been cancelled (this job's, the service's
    task group's, or one further out): asked once a cancellation reached a handler's caller, to
    tell a real one from one the handler raised while nobody cancelled it."""
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class():
        return True
    return False


def _time_out(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _no_loop(*_: object) -> None:
    raise LocalProtocolError("the JobService is not running")


def _threadsafe_caller() -> Callable[..., object]:
    """How to run a callback on this event loop from another thread.

    jobproto serves on asyncio (uvicorn's loop); anyio's own thread portal would block the calling
    thread until the loop ran the callback, and narration must never block.
    """
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe

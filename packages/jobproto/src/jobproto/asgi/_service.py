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

Where the jobs live is the ``JobStore``'s (``jobproto.store``). With the default, a
``MemoryStore``, the service keeps every job in this process exactly as described above: its hot
path awaits nothing more. With a shared store (``store.shared``: ``jobproto.redis.RedisStore``)
it runs in shared mode (``_shared.py``): replicas share the jobs, streams send what the store
holds, and a job whose replica stops is adopted by another. The request-facing methods
(``create``, ``lookup``, ``snapshot``, ``page``, ``has_key``, ``cancel``) are async in both modes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from opentelemetry import trace

from .._errors import JobFailed, JobNotFound, LocalProtocolError, RequestError
from .._events import Cancelled, Event, Expired, Failed, Origin, Succeeded
from .._merge import Merge
from .._narration import bind_job
from .._operations import Operation, Operations
from .._redact import RedactingFilter, redact_text
from .._registry import Job, JobRegistry
from .._states import JobState
from .._tracing import job_span, record_outcome
from .._wire import converter
from ..store import JobStore, MemoryStore
from ._settings import ServiceSettings

if TYPE_CHECKING:
    from ._shared import SharedMode

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

    __slots__ = (
        "_service",
        "_waiters",
        "cancel_reason",
        "checkpoint",
        "done",
        "handed_over",
        "idle_since",
        "job",
        "keeps_checkpoints",
        "scope",
        "streams",
    )

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
        #: where the job has got to, for whoever resumes it (``set_checkpoint``; shared mode)
        self.checkpoint: Mapping[str, Any] | None = None
        #: whether anyone reads the checkpoint: only a shared-mode runner's is stored (for the
        #: replica that adopts the job); ``jobproto.relay`` builds none for any other handle
        self.keeps_checkpoints = False
        #: set when this replica gives the job up while it goes on elsewhere (its lease lost,
        #: fenced, or the replica shutting down in shared mode): ``jobproto.relay`` then leaves
        #: the downstream job running for the replica that adopts this one
        self.handed_over = False
        #: shared mode: when a view last had a reader (``time.monotonic``; the janitor drops
        #: views idle for long)
        self.idle_since = 0.0

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

    def set_checkpoint(self, value: Mapping[str, Any] | None) -> None:
        """Record where the job has got to (``jobproto.set_checkpoint``). In shared mode it is
        stored with the job's next events; from a worker thread it is handed to the event loop
        like ``emit``, so it stays in order with the events emitted before it."""
        if threading.get_ident() != self._service._loop_thread:
            # copied here: the caller may change its mapping before the loop runs this
            copy = None if value is None else dict(value)
            self._service._call_soon_threadsafe(self.set_checkpoint, copy)
            return
        self.checkpoint = None if value is None else dict(value)
        if self.keeps_checkpoints:
            self.notify()  # the persister stores it even if no event follows

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
    """Runs the jobs of one set of operations. Serve it with ``jobproto.asgi.create_app``.

    ``store``: where the jobs live (default: a ``MemoryStore``, this process). A shared store
    (``jobproto.redis.RedisStore``) makes this service one replica of several: ``replica`` is
    its id there (default: host name, process id and a random suffix).
    """

    def __init__(
        self,
        operations: Operations,
        settings: ServiceSettings | None = None,
        *,
        store: JobStore | None = None,
        replica: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.operations = operations
        # None: the global provider, so an SDK configured later still gets our spans.
        self.tracer = trace.get_tracer("jobproto", tracer_provider=tracer_provider)
        self.settings = settings or ServiceSettings()
        self.store: JobStore = (
            store if store is not None else MemoryStore(self.settings.max_log_events)
        )
        self.replica = replica or default_replica()
        self.shared = bool(self.store.shared)
        if not self.shared and not isinstance(self.store, MemoryStore):
            raise LocalProtocolError(
                f"{self.store!r}: a store of one process is a MemoryStore (its jobs are live"
                " objects the service runs); a store replicas share says shared = True"
            )
        #: memory mode: the jobs themselves (the store's registry); shared mode: an empty local
        #: registry (the jobs are the store's: ``await page(...)`` lists them)
        self.registry: JobRegistry = (
            self.store.registry
            if isinstance(self.store, MemoryStore)
            else JobRegistry(self.settings.max_log_events)
        )
        #: memory mode: every job's handle; shared mode: the views this replica holds now
        self.handles: dict[str, JobHandle] = {}
        #: shared mode: the jobs this replica runs (their runners, bound as the current job)
        self.runs: dict[str, JobHandle] = {}
        self.closing = False
        #: told of jobs, streams and relays (``jobproto.metrics.JobMetrics.bind`` sets it)
        self.observer: JobObserver | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop_thread = threading.get_ident()
        self._call_soon_threadsafe: Callable[..., object] = _no_loop
        self._shared: SharedMode | None = None
        if self.shared:
            from ._shared import SharedMode

            self._shared = SharedMode(self, self.store)

    # -- lifecycle ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the service (use as the Starlette app's lifespan, or directly in tests).

        Opens the store first and closes it last; in shared mode the replica's own tasks
        (following logs, leases, adoption, cancel requests) run in the service's task group."""
        self._loop_thread = threading.get_ident()
        self._call_soon_threadsafe = _threadsafe_caller()
        self.closing = False
        if self._shared is not None:
            await self._shared.open()
        else:
            await self.store.open()
        handed: list[str] = []
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._janitor)
                if self._shared is not None:
                    self._shared.start(tg)
                try:
                    yield
                finally:
                    self.begin_shutdown()
                    if self._shared is not None:
                        # the jobs run here go on elsewhere: another replica adopts them
                        for runner in self.runs.values():
                            runner.handed_over = True
                        handed = list(self.runs)
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                if self._shared is not None:
                    # now that nothing here writes to them any more
                    await self._shared.release(handed)
                await self.store.close()

    def begin_shutdown(self) -> None:
        """End every open stream (servers call this as soon as they are asked to stop)."""
        self.closing = True
        for handle in list(self.handles.values()):
            handle.notify()

    @property
    def running(self) -> bool:
        return self._tg is not None

    # -- jobs --------------------------------------------------------------------------------------

    async def create(
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
        if self._shared is not None:
            return await self._shared.create(
                op, body, params, correlation_id, trace_headers, idempotency_key, fingerprint
            )
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
        """The handle of a job this process holds (memory mode: every job; shared mode: the
        views held now); ``JobNotFound`` otherwise. Request handlers use ``lookup``."""
        if self._shared is not None:
            try:
                return self.handles[job_id]
            except KeyError:
                raise JobNotFound(job_id) from None
        return self.handles[self.registry.get(job_id).id]

    async def lookup(self, job_id: str) -> JobHandle:
        """The handle streams read for ``job_id`` (shared mode: this replica's view of it, made
        on demand and caught up with the store); ``JobNotFound``."""
        if self._shared is not None:
            return await self._shared.view(job_id)
        return self.handles[self.registry.get(job_id).id]

    async def snapshot(self, job_id: str) -> Job:
        """The job as its status reports it (shared mode: the store's snapshot)."""
        if self._shared is not None:
            return await self.store.get(job_id)
        return self.registry.get(job_id)

    async def page(
        self, *, state: JobState | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, as ``JobRegistry.page`` (shared mode: every replica's)."""
        if self._shared is not None:
            return await self.store.page(state=state, cursor=cursor, limit=limit)
        return self.registry.page(state=state, cursor=cursor, limit=limit)

    async def has_key(self, idempotency_key: str) -> bool:
        """Whether a create with this key names a job already made (a replay or a conflict)."""
        if self._shared is not None:
            return await self.store.has_key(idempotency_key)
        return self.registry.has_key(idempotency_key)

    def subscribe(self, handle: JobHandle) -> None:
        """A stream connected: the job no longer expires, and starts if it waits for this."""
        handle.job.subscribed = True
        if handle.job.state is JobState.QUEUED and not self.closing:
            if self._shared is not None:
                self._shared.schedule_claim(handle)
            else:
                self._start(handle)

    async def cancel(self, handle: JobHandle, reason: str = "cancelled by request") -> bool:
        """Cancel a job; True when it has ended by the time this returns (idempotent)."""
        if self._shared is not None:
            return await self._shared.cancel(handle, reason)
        job = handle.job
        if job.state is JobState.QUEUED:
            job.finish(Cancelled(reason), time.time())
            handle.notify()
            handle.done.set()
            self._ended(handle)
        elif job.state is JobState.RUNNING:
            self.cancel_locally(handle, reason)
            with anyio.move_on_after(self.settings.cancel_wait):
                await handle.done.wait()
        return job.finished

    @staticmethod
    def cancel_locally(handle: JobHandle, reason: str) -> None:
        """Cancel the handler running ``handle``'s job in this process (it ends with ``reason``)."""
        if handle.cancel_reason is None:
            handle.cancel_reason = reason
        if handle.scope is not None:
            handle.scope.cancel()

    def _start(self, handle: JobHandle) -> None:
        assert self._tg is not None
        handle.job.start(time.time())
        self._tg.start_soon(self._run, handle, name=f"job {handle.job.id}")

    async def _run(self, handle: JobHandle, resume: Mapping[str, Any] | None = None) -> None:
        """Run the job's handler (its operation's ``resume`` with ``resume``, the checkpoint of
        an adopted job) to its terminal event, with ``handle`` bound as the current job."""
        job = handle.job
        try:
            try:
                op = self.operations.get(job.operation)
            except RequestError:
                # an operation this process does not offer: a fault of ours (shared mode claims
                # and adopts only what it offers), which costs this job, never the task group
                logger.exception("job %s (%s): no such operation here", job.id, job.operation)
                if not job.finished:
                    message = f"operation {job.operation} is not offered here"
                    job.finish(Failed("internal_error", message), time.time())
                    handle.notify()
                return
            with bind_job(handle):
                await self._run_bound(handle, op, resume)
        finally:
            handle.done.set()
            self._ended(handle)

    def _ended(self, handle: JobHandle) -> None:
        if self.observer is not None and handle.job.finished:
            self.observer.job_ended(handle.job)

    async def _run_bound(
        self, handle: JobHandle, op: Operation[Any], resume: Mapping[str, Any] | None = None
    ) -> None:
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
                outcome = await self._call(handle, op, job.params, resume)
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
        self,
        handle: JobHandle,
        op: Operation[Any],
        params: Any,
        resume: Mapping[str, Any] | None = None,
    ) -> Succeeded | Failed | None:
        with anyio.CancelScope() as scope:
            handle.scope = scope
            if handle.cancel_reason is not None:
                scope.cancel()
            try:
                if resume is None:
                    value = await op.handler(params)
                else:
                    assert op.resume is not None  # adoption runs only operations that have one
                    value = await op.resume(params, resume)
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
            if self._shared is not None:
                await self._shared.sweep(time.time())
            else:
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


def default_replica() -> str:
    """This process's id among a shared store's replicas: host name, process id, 6 random hex."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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

"""Shared mode: one replica of a service whose jobs live in a shared store (Redis).

Theory of operation. Each job has up to two handles on a replica:

* a **view** (``service.handles``): what streams, status and the OpenAI routes read. Its ``Job``
  is a snapshot from the store, and its ``EventLog`` holds only frames already in the store: the
  replica's one **follower** task reads the logs of every view it holds (``store.follow``, one
  blocking read over all of them) and appends what is new, then wakes the view's streams as the
  job itself would in one process. Views are made on demand (``view``) and dropped by the
  janitor once finished, or idle, with no stream. So a stream only ever sends what is durable:
  after a failover nothing it sent is lost, and nothing is sent twice.
* a **runner** (``service.runs``), on the one replica that owns the job: the handle bound as the
  current job, into whose private log the handler emits as it would in one process. Its
  **persister** (one task per running job) reads everything after its cursor and appends the
  batch to the store with the runner's checkpoint, fenced by owner and last seq; events emitted
  while a write is under way wait for the next batch (data events coalesce meanwhile). Fenced:
  another replica owns the job now, and this runner is cancelled, writing nothing more.

Ownership is a lease the replica renews (every ``lease_ttl / 3``, one round trip for all of its
jobs). Every ``lease_ttl / 2`` each replica looks for running jobs whose lease lapsed and
adopts them (atomically: one winner): the winner's runner continues the job's log after the last
stored seq, running the operation's ``resume`` with the stored checkpoint, or, for an operation
without one, ending it ``failed`` with code ``owner_lost``.

A queued job is claimed (atomically) by the replica its first stream opens on, or at create in
start mode ``immediate``. A cancel on any replica ends a queued job in the store, cancels a job
run here, and asks the owner through the store (``request_cancel``) for one run elsewhere.

When the store cannot be reached, requests answer 503 (``StoreUnavailable``) and the replica's
tasks retry with a bounded backoff, logging one warning per outage (and one line when it ends).
A runner's private log is bounded like any log (more loosely: ``RUNNER_LOG_FACTOR``): when a
burst or an outage outlasts it, the events the store never got are gone, as from any trimmed
log; the store gets the rest after a hole (``append(skip=)``), and its readers a gap there. The
job goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import anyio
import anyio.abc

from .._errors import JobNotFound, RequestError
from .._events import TERMINAL_TYPES, Cancelled, Expired, Failed, Succeeded, TerminalEvent
from .._log import EventLog
from .._operations import Operation
from .._registry import Job
from .._states import JobState
from .._wire import decode_envelope
from ..store import JobStore, StoreUnavailable

if TYPE_CHECKING:
    from ._service import JobHandle, JobService

__all__ = ["SharedMode", "SharedStore"]

logger = logging.getLogger("jobproto.shared")

T = TypeVar("T")

#: how long one blocking read of the follower waits for news (it also returns when nudged)
FOLLOW_BLOCK = 5.0
#: a view nobody streams from for this long is dropped (made again when asked for)
VIEW_IDLE = 30.0
#: the backoff between tries while the store is unreachable: doubling from the first to the last
BACKOFF = (0.05, 2.0)
#: a runner's private log holds this many times the stored log's bound (at least the minimum):
#: what a handler emits between two turns of its persister, or during a short outage
RUNNER_LOG_FACTOR = 4
RUNNER_LOG_MIN = 4096
#: reads of a view's catch-up, each up to the next hole in the stored log
_MAX_READS = 64
#: a persister with nothing to write looks again after this long (an emit also wakes it)
PERSIST_IDLE = 5.0

_STATES = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
    "expired": JobState.EXPIRED,
}
_TERMINAL_NAMES = frozenset(_STATES) | frozenset(TERMINAL_TYPES)


class SharedStore(JobStore, Protocol):
    """What shared mode needs of a store beyond ``JobStore`` (``jobproto.redis.RedisStore``)."""

    lease_ttl: float
    retention: float
    max_log_events: int

    async def body(self, job_id: str) -> dict[str, Any]: ...

    async def renew(self, owner: str, job_ids: Sequence[str]) -> set[str]: ...

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str]
    ) -> tuple[set[str], dict[str, str]]: ...

    async def release(self, owner: str, job_ids: Sequence[str]) -> int: ...

    async def orphans(self, now: float) -> list[str]: ...

    async def adopt(
        self, job_id: str, owner: str, now: float
    ) -> tuple[Job, Mapping[str, Any] | None] | None: ...

    async def request_cancel(self, job_id: str, reason: str) -> None: ...

    def cancel_requests(self) -> AsyncGenerator[tuple[str, str]]: ...

    async def follow(
        self, cursors: Mapping[str, int], block: float, *, replica: str
    ) -> dict[str, list[bytes]]: ...

    async def nudge(self, replica: str) -> None: ...

    async def mark_subscribed(self, job_id: str) -> None: ...


def frame_seq(frame: bytes) -> int:
    """The seq of an encoded log frame (its first line is ``id: N``)."""
    return int(frame[4 : frame.index(b"\n")])


def frame_type(frame: bytes) -> bytes:
    """The event type of an encoded log frame (its second line is ``event: TYPE``)."""
    start = frame.index(b"\n") + 8
    return frame[start : frame.index(b"\n", start)]


class SharedMode:
    """The shared-mode half of one ``JobService`` (see the module docstring)."""

    def __init__(self, service: JobService, store: JobStore) -> None:
        self.service = service
        self.store = cast(SharedStore, store)
        self.replica = service.replica
        self.lease_ttl = float(getattr(store, "lease_ttl", 5.0))
        self._outage = False
        self._claiming: set[str] = set()
        # set when a view is added, so a follower with nothing to follow wakes up
        self._views_changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        # The store keeps finished jobs and events as long as the service says: a view of a
        # job (an EventLog with the same bound, fed from the store) then retains at least
        # what the store does, and a gap means the same on every replica.
        settings = self.service.settings
        if hasattr(self.store, "retention"):
            self.store.retention = settings.retention_ttl
        if hasattr(self.store, "max_log_events"):
            self.store.max_log_events = settings.max_log_events
        try:
            await self.store.open()
        except StoreUnavailable as exc:
            # The replica starts anyway: requests answer 503 and its tasks retry until the
            # store is back, as they do in any later outage.
            self._unavailable(exc)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._views_changed = asyncio.Event()
        tg.start_soon(self._follow, name="jobproto follower")
        tg.start_soon(self._renew, name="jobproto lease renewal")
        tg.start_soon(self._adopt_orphans, name="jobproto adoption")
        tg.start_soon(self._listen_for_cancels, name="jobproto cancel requests")

    async def release(self, job_ids: Sequence[str]) -> None:
        """Give up the leases of the jobs this replica ran until it stopped (its runners have
        ended): another replica adopts them at its next look, not a lease TTL later. Best
        effort and bounded: a lease left behind lapses by itself."""
        if not job_ids:
            return
        with anyio.move_on_after(min(2.0, self.lease_ttl)):
            try:
                given = await self.store.release(self.replica, job_ids)
            except StoreUnavailable as exc:
                self._unavailable(exc)
                return
            logger.info("handed %d running jobs over to the other replicas", given)

    # -- outages -----------------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            # the detail (the store's redacted address and its error) is for the log only
            detail = getattr(exc, "detail", None) or exc
            logger.warning("replica %s: %s; retrying", self.replica, detail)

    def _reachable(self) -> None:
        if self._outage:
            self._outage = False
            logger.warning("replica %s: the job store is reachable again", self.replica)

    async def _backoff(self, exc: BaseException, attempt: int) -> None:
        self._unavailable(exc)
        await anyio.sleep(min(BACKOFF[0] * 2**attempt, BACKOFF[1]))

    async def _fault(self, what: str) -> None:
        """A fault of ours (or a store answering what it should not): logged with its
        traceback, and the task goes on after a pause; it must never end the service."""
        logger.exception("replica %s: internal error %s", self.replica, what)
        await anyio.sleep(BACKOFF[1])

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, until: Callable[[], bool]) -> T:
        """``call()`` until it reaches the store (backing off meanwhile), or raise
        ``StoreUnavailable`` once ``until()`` says the result is not wanted any more."""
        attempt = 0
        while True:
            try:
                result = await call()
            except StoreUnavailable as exc:
                if until():
                    raise
                await self._backoff(exc, attempt)
                attempt += 1
                continue
            self._reachable()
            return result

    # -- views -------------------------------------------------------------------------------------

    async def create(
        self,
        op: Operation[Any],
        body: Mapping[str, Any],
        params: Any,
        correlation_id: str,
        trace_headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[JobHandle, bool]:
        service = self.service
        job, created = await self.store.create(
            op.name,
            body,
            params,
            correlation_id,
            time.time(),
            trace_headers=dict(trace_headers or {}),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        if not created:
            return await self.view(job.id), False
        if service.observer is not None:
            service.observer.job_created(op.name)
        job.params = params
        view = self._add_view(job, [])
        await self._nudge()
        if service.settings.start_mode == "immediate":
            try:
                claimed = await self.store.claim(job.id, self.replica, time.time())
            except StoreUnavailable as exc:
                # the job exists: answer for it, and claim it once the store is back
                self._unavailable(exc)
                self.schedule_claim(view)
            else:
                if claimed is not None:
                    claimed.params = params
                    self._claimed(view, claimed)
        return view, True

    async def view(self, job_id: str) -> JobHandle:
        """This replica's view of ``job_id``, made if need be, and caught up with the store."""
        view = self.service.handles.get(job_id)
        if view is None:
            job = await self.store.get(job_id)
            job.params = await self._params(job)
            # read after the snapshot: every frame up to its state is there (and maybe more)
            frames = await self._stored_after(job_id, 0)
            view = self.service.handles.get(job_id)  # made meanwhile by another request?
            if view is None:
                view = self._add_view(job, frames)
                if not view.job.finished:
                    await self._nudge()  # the follower reads this view's log from now on
        elif not view.job.finished:
            await self._catch_up(view)
        view.idle_since = time.monotonic()
        return view

    def _add_view(self, job: Job, frames: list[bytes]) -> JobHandle:
        from ._service import JobHandle

        # The snapshot's log is positioned after the stored events; a view's holds them.
        job.log = EventLog(self.service.settings.max_log_events)
        view = JobHandle(job, self.service)
        view.idle_since = time.monotonic()
        if frames:
            self._apply(view, frames)
        self.service.handles[job.id] = view
        if job.finished:
            view.done.set()
        else:
            self._views_changed.set()
        return view

    async def _stored_after(self, job_id: str, after: int) -> list[bytes]:
        """Every frame the store holds after seq ``after``, across holes (a read stops at one:
        events an owner lost before it could store them); ``_apply`` spots each hole by the
        seqs of the frames. Bounded: a job that keeps writing is left to the follower."""
        out: list[bytes] = []
        for _ in range(_MAX_READS):
            _, frames = await self.store.read(job_id, after)
            if not frames:
                break
            out.extend(frames)
            after = frame_seq(frames[-1])
        return out

    async def _catch_up(self, view: JobHandle) -> None:
        """Read what the store holds after the view's last frame (one round trip)."""
        frames = await self._stored_after(view.job_id, view.job.log.last_seq)
        if frames:
            self._apply(view, frames)

    async def _nudge(self) -> None:
        try:
            await self.store.nudge(self.replica)
        except StoreUnavailable as exc:
            self._unavailable(exc)

    def _apply(self, view: JobHandle, frames: list[bytes]) -> None:
        """Append the frames the view does not have yet; a terminal one ends the view's job."""
        job = view.job
        log = job.log
        added = False
        for frame in frames:
            seq = frame_seq(frame)
            if seq <= log.last_seq:
                continue  # read twice (a catch-up and the follower): the first one counts
            if seq > log.last_seq + 1:
                # The store trimmed frames before this replica read them: its readers get a gap.
                if len(log):
                    logger.info("job %s: frames before %d were trimmed unread", job.id, seq)
                log.skip_to(seq)
            log.append(frame)
            added = True
            kind = frame_type(frame).decode()
            if kind in _TERMINAL_NAMES:
                self._ended(view, frame)
            elif job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
        if added:
            view.notify()

    def _ended(self, view: JobHandle, frame: bytes) -> None:
        """The view's job ended: its state, outcome and end time, from its terminal frame."""
        job = view.job
        data = frame.split(b"\ndata: ", 1)[1].rstrip(b"\n").decode()
        record = decode_envelope(data)
        if isinstance(record, tuple):  # a gap block never has an id: not a log frame
            return
        event = record.event
        assert isinstance(event, (Succeeded, Failed, Cancelled, Expired))  # a terminal frame
        job.take_outcome(event, record.timestamp, _STATES[event.TYPE])
        view.done.set()

    async def _params(self, job: Job) -> Any:
        """The job's parameters, parsed from the body the store keeps (None if unknown here)."""
        if job.params is not None:
            return job.params
        body = await self.store.body(job.id)  # JobNotFound, StoreUnavailable: the caller's
        try:
            return self.service.operations.parse(body)[1]
        except RequestError:
            return None  # an operation this replica does not offer (or no longer accepts)

    # -- the follower ------------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Feed every unfinished view from the store: one blocking read over all of them."""
        handles = self.service.handles
        attempt = 0
        while True:
            cursors = {jid: h.job.log.last_seq for jid, h in handles.items() if not h.job.finished}
            if not cursors:
                self._views_changed.clear()
                await self._views_changed.wait()
                continue
            try:
                news = await self.store.follow(cursors, FOLLOW_BLOCK, replica=self.replica)
            except StoreUnavailable as exc:
                await self._backoff(exc, attempt)
                attempt += 1
                continue
            except Exception:
                await self._fault("following the jobs' logs")
                continue
            attempt = 0
            self._reachable()
            for job_id, frames in news.items():
                view = handles.get(job_id)
                if view is not None and frames:
                    try:
                        self._apply(view, frames)
                    except Exception:
                        # one view's fault never ends the follower (nor the service): drop
                        # the view, and the next lookup makes it afresh from the store
                        logger.exception(
                            "replica %s: job %s: frames read from the store do not apply;"
                            " view dropped",
                            self.replica,
                            job_id,
                        )
                        if handles.get(job_id) is view:
                            del handles[job_id]
                        view.notify()

    # -- claims and runners ------------------------------------------------------------------------

    def schedule_claim(self, view: JobHandle) -> None:
        """A stream opened on a queued job: claim it (the replica that wins runs it)."""
        job_id = view.job_id
        tg = self.service._tg
        if tg is None or job_id in self._claiming or job_id in self.service.runs:
            return
        if view.job.operation not in self.service.operations or view.job.params is None:
            # an operation this replica does not offer (or a body it no longer accepts): a
            # replica that offers it claims the job when a stream opens there; meanwhile the
            # job has a stream, so it does not expire
            tg.start_soon(self._mark_subscribed, job_id, name=f"subscribed {job_id}")
            return
        self._claiming.add(job_id)
        tg.start_soon(self._claim, view, name=f"claim {job_id}")

    async def _mark_subscribed(self, job_id: str) -> None:
        try:
            await self.store.mark_subscribed(job_id)
        except StoreUnavailable as exc:
            self._unavailable(exc)
        except Exception:
            await self._fault(f"marking job {job_id} subscribed")

    async def _claim(self, view: JobHandle) -> None:
        job_id = view.job_id

        def unwanted() -> bool:
            # ended, shutting down, or nobody waits for it here any more (its stream went
            # away and the janitor dropped the view): a claim now would run it for nobody
            dropped = not view.streams and self.service.handles.get(job_id) is not view
            return view.job.finished or self.service.closing or dropped

        try:
            claimed = await self._retrying(
                lambda: self.store.claim(job_id, self.replica, time.time()), until=unwanted
            )
            if claimed is None:
                return  # another replica claimed it, or it ended
            claimed.params = view.job.params or await self._params(claimed)
            if claimed.params is None:
                return  # not runnable here after all: the lease lapses and an adopter takes it
            self._claimed(view, claimed)
        except RequestError:
            return  # the store is down for good, or the job is gone (an adopter takes it)
        except Exception:
            await self._fault(f"claiming job {job_id}")
            return
        finally:
            # held until the runner is registered: a second stream opening meanwhile must not
            # claim (and, the claim being idempotent for its owner, run) the job twice
            self._claiming.discard(job_id)

    def _claimed(self, view: JobHandle | None, job: Job) -> None:
        if job.id in self.service.runs:
            return  # run here already (a claim answered twice)
        if view is not None and view.job.state is JobState.QUEUED:
            view.job.state = JobState.RUNNING
            view.job.started_at = job.started_at
        self._start_runner(job, None)

    def _start_runner(self, job: Job, resume: Mapping[str, Any] | None) -> JobHandle:
        """Run ``job`` here (claimed or adopted): its handler, or ``resume`` with a checkpoint."""
        from ._service import JobHandle

        service = self.service
        tg = service._tg
        assert tg is not None
        # The private log holds what the store does not have yet: a handler may emit a burst
        # of more than the stored log keeps before its persister gets a turn (readers of the
        # store then see a gap, as they would in one process), so it is bounded more loosely.
        bound = max(RUNNER_LOG_FACTOR * service.settings.max_log_events, RUNNER_LOG_MIN)
        job.log = EventLog(bound, first_seq=job.log.first_seq)
        # a cancel asked for while the job was not run here (kept by the store) is honoured now
        asked, job.cancel_reason = job.cancel_reason, None
        runner = JobHandle(job, service)
        runner.keeps_checkpoints = True
        # adopted: the stored checkpoint holds until the handler sets another (events emitted
        # before that are stored with it, as they were on the replica that stopped)
        runner.checkpoint = resume
        service.runs[job.id] = runner
        tg.start_soon(self._persist, runner, name=f"persist {job.id}")
        tg.start_soon(service._run, runner, resume, name=f"job {job.id}")
        if asked is not None:
            service.cancel_locally(runner, asked)
        return runner

    def _lose(self, runner: JobHandle, why: str) -> None:
        """This replica does not own the runner's job any more: stop running it here."""
        if self.service.runs.get(runner.job_id) is runner:
            del self.service.runs[runner.job_id]
        if not runner.job.finished:
            logger.warning("job %s: %s; stopped here", runner.job_id, why)
        # the job goes on elsewhere: a relay leaves its downstream job to the adopter
        runner.handed_over = True
        self.service.cancel_locally(runner, why)

    async def _persist(self, runner: JobHandle) -> None:
        """Append the runner's events to the store in batches until its terminal one is stored.

        A checkpoint set with no event after it is stored too (a batch of no frames). A batch
        that did not reach the store is sent again as it was (more events wait for the next
        one): the store takes a batch it already holds from the same owner as written, so a
        reply lost on the way back costs nothing."""
        job = runner.job
        log = job.log
        cursor = log.first_seq - 1  # the last seq the store holds
        stored = runner.checkpoint  # the checkpoint the store holds (adopted: the one resumed)
        attempt = 0
        batch: tuple[int, list[bytes], Mapping[str, Any] | None, Job | None] | None = None
        try:
            while True:
                if batch is None:
                    gap, frames = log.read(cursor)  # seals a merged entry: it is written now
                    # Events came faster than the store took them (a burst, or an outage) for
                    # longer than the log holds: the oldest unstored ones are gone, as from any
                    # trimmed log. The store gets the rest after a hole, and its readers a gap
                    # there, as a reader of the log here would.
                    skip = 0 if gap is None else gap.first_available - 1 - cursor
                    if skip:
                        logger.warning(
                            "job %s: %d events were lost before they could be stored",
                            job.id,
                            skip,
                        )
                    if not frames and not skip:
                        if job.finished and cursor >= log.last_seq:
                            return
                        if runner.checkpoint is stored:
                            await runner.wait_change(PERSIST_IDLE)
                            continue
                    last = cursor + skip + len(frames)
                    end = job if job.finished and last == log.last_seq else None
                    batch = (skip, frames, runner.checkpoint, end)
                skip, frames, checkpoint, end = batch
                # a cleared checkpoint is stored empty (what an adopter resumes with either way)
                ckpt = {} if checkpoint is None and stored is not None else checkpoint
                try:
                    ok = await self.store.append(
                        job.id, self.replica, cursor, frames, checkpoint=ckpt, end=end, skip=skip
                    )
                except StoreUnavailable as exc:
                    await self._backoff(exc, attempt)
                    attempt += 1
                    continue
                except Exception:
                    await self._fault(f"storing the events of job {job.id}")
                    self._lose(runner, "its events could not be stored")
                    return
                batch = None
                attempt = 0
                self._reachable()
                if not ok:
                    self._lose(runner, "another replica owns this job now")
                    return
                cursor += skip + len(frames)
                stored = checkpoint
                if end is not None:
                    return
        finally:
            if self.service.runs.get(job.id) is runner:
                del self.service.runs[job.id]

    # -- leases and adoption -----------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the leases of the jobs run here every ``lease_ttl / 3`` (a failed round is
        tried again soon, not a whole interval later); stop what another replica owns now, and
        cancel what any replica was asked to cancel (the request is kept in the store, so one
        made while this replica could not hear it still counts)."""
        runs = self.service.runs
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            interval = self.lease_ttl / 3
            if not runs:
                continue
            try:
                lost, cancels = await self.store.renew_leases(self.replica, list(runs))
            except StoreUnavailable as exc:
                self._unavailable(exc)
                interval = min(BACKOFF[0] * 2, self.lease_ttl / 10)
                continue
            except Exception:
                await self._fault("renewing leases")
                continue
            self._reachable()
            for job_id in lost:
                runner = runs.get(job_id)
                if runner is not None and not runner.job.finished:
                    self._lose(runner, "this replica's lease on the job lapsed")
            for job_id, reason in cancels.items():
                runner = runs.get(job_id)
                if runner is not None:
                    self.service.cancel_locally(runner, reason)

    async def _adopt_orphans(self) -> None:
        while True:
            await anyio.sleep(self.lease_ttl / 2)
            if self.service.closing:
                continue
            try:
                orphans = await self.store.orphans(time.time())
            except StoreUnavailable as exc:
                self._unavailable(exc)
                continue
            except Exception:
                await self._fault("looking for jobs to adopt")
                continue
            self._reachable()
            for job_id in orphans:
                if job_id in self.service.runs or self.service.closing:
                    continue
                # one job's trouble never holds up the others (nor ends the service)
                try:
                    await self._adopt(job_id)
                except StoreUnavailable as exc:
                    self._unavailable(exc)
                    break  # the next pass looks again
                except JobNotFound:
                    continue  # it expired meanwhile
                except Exception:
                    await self._fault(f"adopting job {job_id}")

    async def _adopt(self, job_id: str) -> None:
        snapshot = await self.store.get(job_id)
        if snapshot.operation not in self.service.operations:
            return  # a replica that offers the operation adopts it
        adopted = await self.store.adopt(job_id, self.replica, time.time())
        if adopted is None:
            return  # another replica was first, or the job ended
        job, checkpoint = adopted
        if job.cancel_reason is not None:
            # a cancel was asked for while its owner could not act on it: honoured here
            logger.warning("job %s (%s): adopted and cancelled as asked", job_id, job.operation)
            reason = job.cancel_reason
            job.cancel_reason = None
            self._end_here(job, Cancelled(reason))
            return
        op = self.service.operations.get(job.operation)
        # StoreUnavailable goes up: unrenewed, the lease lapses and the job is adopted again
        job.params = await self._params(job)
        if op.resume is not None and job.params is not None:
            logger.warning(
                "job %s (%s): adopted from a replica that stopped; resuming at seq %d",
                job_id,
                job.operation,
                job.last_seq,
            )
            self._start_runner(job, dict(checkpoint or {}))
            return
        logger.warning(
            "job %s (%s): adopted from a replica that stopped; it cannot resume",
            job_id,
            job.operation,
        )
        message = f"the replica running this job stopped, and {job.operation} jobs cannot resume"
        self._end_here(job, Failed("owner_lost", message))

    def _end_here(self, job: Job, event: TerminalEvent) -> None:
        """End an owned job at once with ``event`` (its persister stores it)."""
        from ._service import JobHandle

        service = self.service
        tg = service._tg
        assert tg is not None
        runner = JobHandle(job, service)
        service.runs[job.id] = runner
        job.finish(event, time.time())
        runner.done.set()
        service._ended(runner)
        tg.start_soon(self._persist, runner, name=f"persist {job.id}")

    # -- cancel ------------------------------------------------------------------------------------

    async def cancel(self, view: JobHandle, reason: str) -> bool:
        service = self.service
        job_id = view.job_id
        if view.job.finished:
            return True
        snapshot = await self.store.get(job_id)
        if snapshot.state is JobState.QUEUED:
            ended = await self.store.end_queued(job_id, Cancelled(reason), time.time())
            if ended is not None:
                await self._catch_up(view)
                return view.job.finished
            snapshot = await self.store.get(job_id)
        if snapshot.state is JobState.RUNNING:
            runner = service.runs.get(job_id)
            if runner is not None:
                service.cancel_locally(runner, reason)
            else:
                await self.store.request_cancel(job_id, reason)
            if service.handles.get(job_id) is not view:
                service.handles[job_id] = view  # followed again (the janitor had dropped it)
                await self._nudge()
            with anyio.move_on_after(service.settings.cancel_wait):
                await view.done.wait()
        if not view.job.finished:
            await self._catch_up(view)
        return view.job.finished

    async def _listen_for_cancels(self) -> None:
        """Cancel what this replica runs when any replica is asked to."""
        attempt = 0
        while True:
            try:
                async with contextlib.aclosing(self.store.cancel_requests()) as requests:
                    async for job_id, reason in requests:
                        attempt = 0
                        self._cancel_request(job_id, reason)
            except StoreUnavailable as exc:
                await self._backoff(exc, attempt)
                attempt += 1
                continue
            except Exception:
                await self._fault("listening for cancel requests")
                continue
            await anyio.sleep(BACKOFF[0])  # the subscription ended: subscribe again

    def _cancel_request(self, job_id: str, reason: str) -> None:
        runner = self.service.runs.get(job_id)
        if runner is not None:
            self.service.cancel_locally(runner, reason)

    # -- housekeeping ------------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """Expire and drop jobs through the store; drop views nobody reads."""
        settings = self.service.settings
        try:
            await self.store.sweep(now, settings.subscribe_timeout, settings.retention_ttl)
        except StoreUnavailable as exc:
            self._unavailable(exc)
        except Exception:
            await self._fault("sweeping the store")
        else:
            self._reachable()
        handles = self.service.handles
        clock = time.monotonic()
        for job_id, view in list(handles.items()):
            if view.streams:
                view.idle_since = clock
            elif clock - view.idle_since >= (1.0 if view.job.finished else VIEW_IDLE):
                del handles[job_id]

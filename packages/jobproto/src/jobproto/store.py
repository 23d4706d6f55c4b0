"""The job store: where a service keeps its jobs and their event logs, behind one small interface.

``JobStore`` is what a service needs from the place its jobs live: create (with an idempotency
key), look up and list, claim a queued job, append a batch of encoded frames (fenced by owner and
last seq, with the terminal transition in the same step), end a queued job, read from a cursor,
wait for more, and sweep what expired. Two stores implement it:

- ``MemoryStore`` (this module): the ``JobRegistry`` of one process, the embedded default. Its jobs
  are the live ``Job`` objects: the service emits into their logs directly, so the store adds no
  work to the path of an event.
- ``jobproto.redis.RedisStore`` (extra ``redis``): jobs shared by every replica of a service
  (``shared`` is True), each job's log a Redis stream.

Every change that must happen once (one claim, one terminal event, ever) is atomic in both: in
memory because one event loop runs it without awaiting, in Redis because it is one script.

``wait`` takes a ``timeout`` (ruff's ASYNC109 would have a cancel scope around it instead): a
shared store hands it to Redis (``XREAD BLOCK``), which is cheaper than cancelling a read.

Sans-IO like the registry: nothing here imports an I/O library, except ``MemoryStore.wait``,
which needs the event loop the service runs on (anyio, imported when first waited on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._errors import RequestError
from ._events import Expired, Gap, TerminalEvent
from ._registry import Job, JobRegistry
from ._states import JobState

__all__ = ["JobStore", "MemoryStore", "StoreUnavailable", "expired_reason"]


class StoreUnavailable(RequestError):
    """The job store cannot be reached (or answered with an error): HTTP 503, retry soon.

    ``why`` says what failed; it must never hold a secret (a store redacts its URL's password
    before it builds one). ``headers`` are what a response carrying this error should add.
    """

    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}

    def __init__(self, why: str, detail: str | None = None) -> None:
        super().__init__(503, "store_unavailable", f"the job store is unavailable: {why}")
        #: for the service's log, not its clients: ``why`` with what the store said (its
        #: address, redacted), which a client must not learn
        self.detail = f"the job store is unavailable: {detail or why}"


def expired_reason(subscribe_timeout: float) -> str:
    """The reason of the ``expired`` event of a queued job nobody subscribed to in time."""
    return f"no subscriber within {subscribe_timeout:g} s"


@runtime_checkable
class JobStore(Protocol):
    """Jobs and their logs, in one process (``MemoryStore``) or shared by replicas (Redis).

    Jobs come back as ``Job`` objects: the live job from a ``MemoryStore``; a snapshot from a
    shared store, whose ``log`` is empty and positioned after the stored events (so
    ``last_seq`` is right) and whose ``params`` is None (the service parses the stored body).
    """

    #: False: one process holds the jobs; True: replicas share them (the service's shared mode)
    shared: bool

    async def open(self) -> None:
        """Connect (and check that the store answers)."""

    async def close(self) -> None:
        """Release every connection."""

    async def create(
        self,
        operation: str,
        body: Mapping[str, Any],
        params: Any,
        correlation_id: str,
        now: float,
        *,
        trace_headers: Mapping[str, str],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Job, bool]:
        """A new queued job, or the one a known idempotency key made (``created`` False);
        ``IdempotencyConflict`` when the key was used with another fingerprint."""
        ...

    async def get(self, job_id: str) -> Job:
        """The job, or ``JobNotFound``."""
        ...

    async def has_key(self, idempotency_key: str) -> bool:
        """Whether the key is bound to a job (a create with it replays or conflicts)."""
        ...

    async def page(
        self, *, state: JobState | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, as ``JobRegistry.page`` (400 ``invalid_cursor`` likewise)."""
        ...

    async def claim(self, job_id: str, owner: str, now: float) -> Job | None:
        """QUEUED -> RUNNING, owned by ``owner``; None when the job is not queued any more
        (a job ``owner`` claimed already comes back again: a claim retried is no loss)."""
        ...

    async def append(
        self,
        job_id: str,
        owner: str,
        after: int,
        frames: Sequence[bytes],
        *,
        checkpoint: Mapping[str, Any] | None = None,
        end: Job | None = None,
        skip: int = 0,
    ) -> bool:
        """Store the frames of seqs ``after + skip + 1 ..`` if ``owner`` still owns the running
        job and its last stored seq is ``after``; False (nothing written) otherwise. ``skip``:
        events the owner lost before it could store them (its own log trimmed them), so readers
        get a gap there, as from a trimmed log. With ``end`` (the job as it ended; its terminal
        frame is the last of ``frames``) the job's state moves to ``end``'s in the same step."""
        ...

    async def end_queued(self, job_id: str, event: TerminalEvent, now: float) -> Job | None:
        """End a QUEUED job with ``event`` as its seq 1; None when it was not queued."""
        ...

    async def read(
        self, job_id: str, after: int, limit: int | None = None
    ) -> tuple[Gap | None, list[bytes]]:
        """Frames after seq ``after`` (at most ``limit``), with a gap if some were trimmed."""
        ...

    async def wait(self, job_id: str, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once the job has an event after ``after`` (at once if it has); False on timeout."""
        ...

    async def sweep(self, now: float, subscribe_timeout: float, retention: float) -> list[str]:
        """Expire queued jobs nobody claimed within ``subscribe_timeout``; drop finished jobs
        past ``retention``. Returns the ids it expired."""
        ...


class MemoryStore:
    """The jobs of one process: a ``JobRegistry`` (``registry``) behind the ``JobStore`` interface.

    The service in memory mode uses the registry's live jobs as it always has (``Job.emit``
    appends to the log a stream reads); ``append`` of frames the live log already holds is a
    no-op, since in one process the log *is* the store. Owners are remembered only for jobs
    claimed through the store (a job started directly has none, and any owner may append).
    """

    shared = False

    def __init__(self, max_log_events: int = 10_000) -> None:
        self.registry = JobRegistry(max_log_events)
        self._owners: dict[str, str] = {}
        # job id -> wake-up functions of the waiters on it (``wait``), removed as they return
        self._waiters: dict[str, set[Callable[[], None]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(
        self,
        operation: str,
        body: Mapping[str, Any],
        params: Any,
        correlation_id: str,
        now: float,
        *,
        trace_headers: Mapping[str, str],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Job, bool]:
        return self.registry.create(
            operation,
            params,
            correlation_id,
            now,
            trace_headers=trace_headers,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    async def get(self, job_id: str) -> Job:
        return self.registry.get(job_id)

    async def has_key(self, idempotency_key: str) -> bool:
        return self.registry.has_key(idempotency_key)

    async def page(
        self, *, state: JobState | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]:
        return self.registry.page(state=state, cursor=cursor, limit=limit)

    async def claim(self, job_id: str, owner: str, now: float) -> Job | None:
        job = self.registry.get(job_id)
        if job.state is JobState.RUNNING and self._owners.get(job_id) == owner:
            return job  # claimed by this owner already: the same answer again
        if job.state is not JobState.QUEUED:
            return None
        job.start(now)
        job.subscribed = True
        self._owners[job_id] = owner
        return job

    async def append(
        self,
        job_id: str,
        owner: str,
        after: int,
        frames: Sequence[bytes],
        *,
        checkpoint: Mapping[str, Any] | None = None,
        end: Job | None = None,
        skip: int = 0,
    ) -> bool:
        # (``skip`` never happens here: the live log is the store, nothing is lost before it)
        try:
            job = self.registry.get(job_id)
        except KeyError:
            return False
        if self._owners.get(job_id, owner) != owner:
            return False
        if job.last_seq >= after + len(frames) and (end is None or job.finished):
            return True  # the live log already holds them (Job.emit put them there)
        if job.state is not JobState.RUNNING or job.last_seq != after:
            return False
        for frame in frames:
            job.log.append(frame)
        if end is not None:
            job.state = end.state
            job.finished_at = end.finished_at
            job.result = end.result
            job.error = end.error
            job.cancel_reason = end.cancel_reason
            self._owners.pop(job_id, None)
        self.notify(job_id)
        return True

    async def end_queued(self, job_id: str, event: TerminalEvent, now: float) -> Job | None:
        job = self.registry.get(job_id)
        if job.state is not JobState.QUEUED:
            return None
        job.finish(event, now)
        self.notify(job_id)
        return job

    async def read(
        self, job_id: str, after: int, limit: int | None = None
    ) -> tuple[Gap | None, list[bytes]]:
        return self.registry.get(job_id).log.read(after, limit)

    async def wait(self, job_id: str, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """As ``JobStore.wait``, woken by what goes through this store (``append``,
        ``end_queued``, ``sweep``) and by ``notify(job_id)``. Not by a memory-mode service's own
        emits: those go to the live job, on the path of every event, and wake the readers
        waiting on its ``JobHandle`` (``wait_change``), which is where such a reader waits."""
        job = self.registry.get(job_id)
        if job.last_seq > after:
            return True
        import anyio  # the one place the store needs the event loop (see the module docstring)

        waiters = self._waiters.setdefault(job_id, set())
        with anyio.move_on_after(timeout):
            while job.last_seq <= after:
                woken = anyio.Event()
                waiters.add(woken.set)
                try:
                    await woken.wait()
                finally:
                    waiters.discard(woken.set)
        if not waiters:
            self._waiters.pop(job_id, None)
        return job.last_seq > after

    def notify(self, job_id: str) -> None:
        """Wake the waiters on ``job_id`` (appends through the store call it themselves)."""
        for wake in list(self._waiters.get(job_id, ())):
            wake()

    async def sweep(self, now: float, subscribe_timeout: float, retention: float) -> list[str]:
        expired = []
        for job in self.registry.due_to_expire(now, subscribe_timeout):
            job.finish(Expired(expired_reason(subscribe_timeout)), now)
            self.notify(job.id)
            expired.append(job.id)
        for job in self.registry.remove_finished(now, retention):
            self._owners.pop(job.id, None)
        return expired

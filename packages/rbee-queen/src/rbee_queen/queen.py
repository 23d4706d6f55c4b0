"""``Queen``: the state of one queen process, shared by its operations and its HTTP routes.

Everything with state hangs off this one object (no module globals): the hive registry, the
scheduler, the local hive processes and the connection pool to hives and workers. ``running()``
is its part of the app's lifespan. With replicas (``--redis-url``), ``replicas`` shares hives and
in-flight counts with the other queens (``rbee_queen.replicas``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from jobproto import JobFailed, JobState, RequestError, current_job, narrate
from jobproto.asgi import JobService
from jobproto.core import Job
from rbee_contracts.auth import is_wildcard
from rbee_contracts.hive_ops import ModelList, WorkerList
from rbee_contracts.lifecycle import HiveState
from rbee_contracts.queen_ops import forward_fields
from rbee_contracts.queen_results import (
    HiveListResult,
    HiveModelInfo,
    HiveStatusResult,
    JobSummary,
    QueenModelList,
    QueenWorkerList,
    StatusResult,
    UnregisteredHive,
)
from rbee_contracts.records import parse_worker_record

from .hives import LocalHives
from .registry import HiveRecord, HiveRegistry
from .remote import UNAVAILABLE, Remote
from .replicas import ReplicaSync
from .scheduler import Scheduler, read_hive_result
from .settings import QueenSettings

__all__ = ["Queen"]

#: with replicas, ``status`` lists this many running (and as many queued) jobs at most
STATUS_JOBS = 200


class Queen:
    def __init__(
        self, settings: QueenSettings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or QueenSettings()
        self.clock = clock
        self.registry = HiveRegistry(self.settings.hive_timeout_beats)
        self.remote = Remote(
            secret=self.settings.secret,
            tls_ca=self.settings.tls_ca,
            tls_cert=self.settings.tls_cert,
        )
        self.scheduler = Scheduler(self.registry, self.remote, self.settings, clock)
        self.local_hives = LocalHives(self.settings, self.registry, clock)
        #: the job service running the queen's operations (set by ``create_app``)
        self.jobs: JobService | None = None
        #: the port the queen is bound to, once known (``main`` sets it; port 0 = any)
        self.bound_port: int | None = None
        #: hives and in-flight counts shared with the other replicas (set by ``create_app``
        #: with ``redis_url``); None: this queen alone
        self.replicas: ReplicaSync | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.remote.running())
            if self.replicas is not None:
                await stack.enter_async_context(self.replicas.running())
            yield

    @property
    def url(self) -> str:
        """The URL hives on this machine reach the queen at (https when it serves TLS)."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = self.settings.host
        if is_wildcard(host):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "http" if self.settings.tls_cert is None else "https"
        return f"{scheme}://{host}:{self.bound_port or self.settings.port}"

    # -- hives -------------------------------------------------------------------------------------

    def resolve_hive(self, name: str | None) -> HiveRecord:
        """The hive named, else the only one (the only one up, when several are registered)."""
        now = self.clock()
        hives = self.registry.hives()
        if name is not None:
            if name not in self.registry:
                known = ", ".join(h.hive_id for h in hives) or "none"
                raise JobFailed(
                    "unknown_hive", f"hive {name!r} is not registered (registered: {known})"
                )
            hive = self.registry.get(name)
        elif not hives:
            raise JobFailed(
                "no_hive",
                "no hive is registered with this queen (start one with `rbee hive start`)",
            )
        else:
            up = [h for h in hives if self.registry.state(h, now) == HiveState.UP]
            if len(hives) == 1:
                hive = hives[0]
            elif len(up) == 1:
                hive = up[0]
            else:
                listing = ", ".join(f"{h.hive_id} ({self.registry.state(h, now)})" for h in hives)
                raise JobFailed(
                    "hive_required",
                    f"{len(hives)} hives are registered ({listing}): name one with `hive`",
                )
        if self.registry.state(hive, now) == HiveState.DOWN:
            silent = now - hive.last_seen
            raise JobFailed(
                "hive_down",
                f"hive {hive.hive_id} is down: no heartbeat for {silent:.0f} s"
                f" (expected every {hive.heartbeat.heartbeat_interval:g} s)",
            )
        return hive

    async def forward(self, hive: HiveRecord, operation: str, params: Any) -> Any:
        """Relay ``operation`` to ``hive`` on the current job (origin ``hive:ID``)."""
        narrate("forward", f"{operation} on hive {hive.hive_id}", hive_id=hive.hive_id)
        return await self.remote.relay(
            hive.url,
            f"hive:{hive.hive_id}",
            operation,
            forward_fields(params),
            hive=hive.hive_id,
        )

    # -- listings across hives ---------------------------------------------------------------------

    def lists_every_hive(self, name: str | None) -> bool:
        """A listing names no hive while several are registered: it answers for every hive
        (``resolve_hive`` would make the user name one, and a list has no reason to)."""
        return name is None and len(self.registry.hives()) > 1

    async def each_hive(
        self, operation: str, params: Any
    ) -> tuple[list[tuple[str, Any]], list[str]]:
        """Relay ``operation`` to every hive that is up, one after the other: the results by
        hive, and the hives skipped (down, or unreachable when asked), each skip narrated."""
        results: list[tuple[str, Any]] = []
        skipped: list[str] = []
        for hive in self.registry.hives():
            now = self.clock()
            if self.registry.state(hive, now) == HiveState.DOWN:
                silent = now - hive.last_seen
                narrate(
                    "hive_skipped",
                    f"hive {hive.hive_id} is down (no heartbeat for {silent:.0f} s): skipped",
                    level="warning",
                    hive_id=hive.hive_id,
                )
                skipped.append(hive.hive_id)
                continue
            try:
                results.append((hive.hive_id, await self.forward(hive, operation, params)))
            except JobFailed as exc:
                if exc.code != UNAVAILABLE:
                    raise
                narrate(
                    "hive_skipped",
                    f"hive {hive.hive_id} did not answer: skipped ({exc.message})",
                    level="warning",
                    hive_id=hive.hive_id,
                )
                skipped.append(hive.hive_id)
        return results, skipped

    async def worker_list_all(self, params: Any) -> QueenWorkerList:
        """``worker_list`` of every hive, each row naming its hive."""
        results, skipped = await self.each_hive("worker_list", params)
        now = self.clock()
        workers = [
            self.registry.reported_worker(hive_id, record, now)
            for hive_id, raw in results
            for record in read_hive_result(raw, WorkerList, hive_id, "worker_list").workers
        ]
        return QueenWorkerList(workers, skipped=skipped)

    async def model_list_all(self, params: Any) -> QueenModelList:
        """``model_list`` of every hive, each row naming its hive; their sizes are learnt."""
        results, skipped = await self.each_hive("model_list", params)
        models = []
        for hive_id, raw in results:
            listing = read_hive_result(raw, ModelList, hive_id, "model_list")
            self.registry.learn_models(hive_id, listing)
            models += [
                HiveModelInfo(**attrs.asdict(info, recurse=False), hive_id=hive_id)
                for info in listing.models
            ]
        return QueenModelList(models, skipped=skipped)

    def note_worker(self, hive_id: str, raw: Any) -> None:
        """A worker started through the queen is routable before the hive's next heartbeat."""
        with contextlib.suppress(RequestError):  # an odd record: the heartbeat will tell
            self.registry.note_worker(hive_id, parse_worker_record(raw), self.clock())

    def hive_of_worker(self, worker_id: str) -> str | None:
        hives = {w.hive_id for w in self.registry.workers(self.clock()) if w.worker_id == worker_id}
        return hives.pop() if len(hives) == 1 else None

    # -- views -------------------------------------------------------------------------------------

    def hive_list(self) -> HiveListResult:
        return HiveListResult(self.registry.snapshot(self.clock()))

    def hive_status(self, hive_id: str) -> HiveStatusResult | UnregisteredHive:
        local = self.local_hives.status(hive_id)
        if hive_id not in self.registry:
            if local is None:
                raise JobFailed("unknown_hive", f"hive {hive_id!r} is not registered")
            # runs here but has not registered (yet): no heartbeat, so no HiveState
            return UnregisteredHive(hive_id, local)
        now = self.clock()
        detail = self.registry.hive_detail(
            self.registry.get(hive_id), now, self.registry.workers(now)
        )
        return HiveStatusResult(**attrs.asdict(detail, recurse=False), process=local)

    async def status(self) -> StatusResult:
        now = self.clock()
        workers = self.registry.workers(now)
        models: dict[str, list[str]] = {}
        for hive in self.registry.hives():
            for model in hive.heartbeat.models:
                models.setdefault(model, []).append(hive.hive_id)
        jobs = await self._active_jobs()
        asking = current_job()
        own = None if asking is None else asking.job_id  # the status job itself is not news
        active = [j for j in jobs if j.state in (JobState.QUEUED, JobState.RUNNING) and j.id != own]
        return StatusResult(
            hives=[self.registry.hive_view(h, now) for h in self.registry.hives()],
            workers=[self.registry.worker_record(w) for w in workers],
            models=models,
            in_flight=self.registry.in_flight(),
            jobs=[JobSummary(j.id, j.operation, j.state) for j in active],
        )

    async def _active_jobs(self) -> list[Job]:
        """The jobs queued or running: this queen's, or with replicas every replica's."""
        if self.jobs is None:
            return []
        if not self.jobs.shared:
            return list(self.jobs.registry)
        jobs: list[Job] = []
        for state in (JobState.RUNNING, JobState.QUEUED):
            page, _ = await self.jobs.page(state=state, limit=STATUS_JOBS)
            jobs += page
        return jobs

"""Where an inference request runs: the I/O that makes the pure choices happen.

``rbee_queen.decisions`` holds the choices (``pick_worker``: which ready worker; ``place``: where
to start one). ``Scheduler`` does the I/O around them. Starting a worker is single-flight per
model: the first request for a model with no worker leads (relays ``worker_spawn`` to the chosen
hive, narrated on its own job); concurrent requests for the model wait for that flight and then
route again, so a burst of N requests starts one worker, not N. A flight that fails shares its
failure with the requests that waited for it; a flight whose leader was cancelled lets the next
request lead. Every worker incarnation is probed on ``/health`` before its first use. The
in-flight count is taken in the same step as the choice (no ``await`` between them), so
concurrent requests see each other's counts.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs

from jobproto import JobFailed, RequestError, concat_data, narrate, set_checkpoint
from jobproto.relay import RelayPoint
from rbee_contracts.hive_ops import ModelDownloadParams, ModelInfo, ModelList, WorkerSpawnParams
from rbee_contracts.lifecycle import HiveState, WorkerState
from rbee_contracts.queen_ops import forward_fields
from rbee_contracts.reading import read_result
from rbee_contracts.records import WorkerRecord

from .decisions import HiveInfo, NoCapacity, pick_worker, place
from .registry import HiveRegistry, WorkerView, url_host
from .remote import UNAVAILABLE, WORKER_RECONNECTS, Remote
from .settings import QueenSettings

__all__ = ["Scheduler"]

#: rounds of route -> (start a worker) -> probe before a request gives up
MAX_ROUNDS = 3
RESTART_POLL = 0.1

T = TypeVar("T")


def read_hive_result(raw: Any, cls: type[T], hive_id: str, operation: str) -> T:
    """A hive's result of ``operation`` as ``cls`` (``read_result``); one it should not have
    sent fails the job with ``bad_gateway``."""
    try:
        return read_result(raw, cls)
    except RequestError as exc:
        raise JobFailed(
            "bad_gateway", f"hive {hive_id} answered {operation} with {exc.message}"
        ) from None


@attrs.define
class _Flight:
    """One worker being started for a model; the requests that wait for it share its outcome."""

    hive: str | None
    done: anyio.Event = attrs.field(factory=anyio.Event)
    hive_id: str | None = None
    error: JobFailed | None = None


class Scheduler:
    def __init__(
        self,
        registry: HiveRegistry,
        remote: Remote,
        settings: QueenSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.remote = remote
        self.settings = settings
        self.clock = clock
        self._flights: dict[str, _Flight] = {}
        # What routing did, in plain counts (the queen's metrics read them: rbee_queen.metrics)
        #: requests routed to a worker, by hive id
        self.routed: collections.Counter[str] = collections.Counter()
        #: times a request found no ready worker and waited for one to start (or restart)
        self.waits = 0
        #: requests being routed now (waiting for a worker, when none is ready)
        self.routing = 0
        #: told how many seconds each routed request took to get its worker
        self.on_routed: Callable[[float], None] | None = None

    async def infer(self, model: str, hive: str | None, fields: Mapping[str, Any]) -> Any:
        """Run ``infer`` on the best worker for ``model`` (starting one if needed), relayed.

        The relay's checkpoints name the worker (its URL, hive and id: ``context``), so that
        another queen replica can follow the same worker job if this one stops
        (``resume_infer``)."""
        async with self.worker_for(model, hive) as worker:
            assert worker.url is not None  # routable workers have one
            try:
                return await self.remote.relay(
                    worker.url,
                    f"worker:{worker.worker_id}",
                    "infer",
                    fields,
                    hive=worker.hive_id,  # the worker's hive reported it
                    worker=worker.worker_id,  # its token, derived from its hive's
                    max_reconnects=WORKER_RECONNECTS,
                    merge=concat_data,  # token deltas the client has not read yet coalesce
                    context={"url": worker.url, "hive": worker.hive_id, "worker": worker.worker_id},
                )
            except JobFailed as exc:
                if exc.code in ("engine_dead", UNAVAILABLE):  # no new requests for it
                    self.registry.set_health(worker.incarnation, False)
                raise

    async def resume_infer(self, point: RelayPoint) -> Any:
        """Go on relaying the worker job ``point`` names, after the last event the job stored
        (an ``infer`` adopted from a replica that stopped): no routing, no new worker job, so
        the worker's generation goes on where it was and no token is sent twice.

        The worker is contacted only when the checkpoint names a hive this queen knows and a
        URL on that hive's host, as a heartbeat would have to (``rbee_queen.registry``); it is
        counted in flight while the relay lasts.
        """
        url, hive_id, worker_id = (point.context.get(k) for k in ("url", "hive", "worker"))
        if not (isinstance(url, str) and isinstance(hive_id, str) and isinstance(worker_id, str)):
            raise JobFailed(
                "downstream_lost", f"worker job {point.job_id}: its checkpoint names no worker"
            )
        if hive_id not in self.registry or url_host(url) != url_host(
            self.registry.get(hive_id).url
        ):
            raise JobFailed(
                "downstream_lost",
                f"worker {worker_id} of hive {hive_id} is not known here: cannot resume its job"
                f" {point.job_id}",
            )
        # the checkpoint again first: what this replica stores before the relay sets its own
        again = {**point.context, "service": point.service, "job_id": point.job_id}
        set_checkpoint({"relay": {**again, "seq": point.seq}})
        narrate(
            "resumed",
            f"following worker {worker_id}'s job {point.job_id} on from event {point.seq}",
            worker_id=worker_id,
            hive_id=hive_id,
        )
        key = (hive_id, worker_id)
        self.registry.acquire(key)
        try:
            return await self.remote.relay(
                url,
                point.service or f"worker:{worker_id}",
                "infer",
                {},
                hive=hive_id,
                worker=worker_id,
                max_reconnects=WORKER_RECONNECTS,
                merge=concat_data,
                context={"url": url, "hive": hive_id, "worker": worker_id},
                resume=point,
            )
        finally:
            self.registry.release(key)

    @asynccontextmanager
    async def worker_for(self, model: str, hive: str | None = None) -> AsyncIterator[WorkerView]:
        """A healthy worker for ``model``, counted in flight for the duration of the block."""
        started = time.monotonic()
        self.routing += 1
        try:
            worker = await self._acquire(model, hive)
        finally:
            self.routing -= 1
        self.routed[worker.hive_id] += 1
        if self.on_routed is not None:
            self.on_routed(time.monotonic() - started)
        try:
            yield worker
        finally:
            self.registry.release(worker.key)

    async def _acquire(self, model: str, hive: str | None) -> WorkerView:
        where = f" on hive {hive}" if hive else ""
        narrate("routing", f"routing a request for model {model}{where}", model=model)
        for _ in range(MAX_ROUNDS):
            worker = pick_worker(
                self.registry.workers(self.clock()),
                model,
                hive=hive,
                local_name=self.registry.local_name,
            )
            if worker is None:
                self.waits += 1
                if not await self._await_restart(model, hive):
                    await self._start_worker(model, hive)
                continue
            self.registry.acquire(worker.key)  # in the same step as the choice
            try:
                healthy = worker.healthy or await self._probe(worker)
            except BaseException:
                self.registry.release(worker.key)
                raise
            if healthy:
                narrate(
                    "routed",
                    f"worker {worker.worker_id} on hive {worker.hive_id}"
                    f" ({worker.in_flight} other requests in flight)",
                    worker_id=worker.worker_id,
                    hive_id=worker.hive_id,
                )
                return worker
            self.registry.release(worker.key)
        raise JobFailed(
            "no_capacity", f"no healthy worker for model {model!r} after {MAX_ROUNDS} attempts"
        )

    async def _await_restart(self, model: str, hive: str | None) -> bool:
        """Wait for a worker of ``model`` the hive is restarting, rather than start a second one.

        A worker that just failed its probe but that its hive still reports ``ready`` is waited
        for too, for two of that hive's heartbeats: the hive reports a crash at once, and a
        restart should not race a second spawn. False at once when there is none; True once one
        is ready (or gone: route again).
        """

        def restarting() -> list[WorkerView]:
            return [
                w
                for w in self.registry.workers(self.clock())
                if w.hive_state == HiveState.UP
                and (
                    w.record.state.pending  # the hive brings it (back) up: spawn no second one
                    or (w.record.state == WorkerState.READY and w.healthy is False)
                )
                and (hive is None or w.hive_id == hive)
                and w.record.model in (model, self.registry.local_name(w.hive_id, model))
            ]

        pending = restarting()
        if not pending:
            return False
        names = ", ".join(f"{w.worker_id} ({w.record.state.value})" for w in pending)
        narrate("waiting", f"waiting for worker {names} of model {model} to be ready again")
        if any(w.record.state.pending for w in pending):
            bound = self.settings.worker_ready_timeout
        else:
            bound = 2 * max(
                self.registry.get(w.hive_id).heartbeat.heartbeat_interval for w in pending
            )
        with anyio.move_on_after(bound):
            # bounded by the timeout; the hive reports the new state with its next heartbeat
            while (
                restarting()
                and pick_worker(
                    self.registry.workers(self.clock()),
                    model,
                    hive=hive,
                    local_name=self.registry.local_name,
                )
                is None
            ):
                await anyio.sleep(RESTART_POLL)
        return True

    async def _probe(self, worker: WorkerView) -> bool:
        assert worker.url is not None
        problem = await self.remote.health(worker.url, self.settings.health_timeout)
        self.registry.set_health(worker.incarnation, problem is None)
        if problem is not None:
            narrate(
                "worker_unhealthy",
                f"worker {worker.worker_id} on hive {worker.hive_id} {problem}; routing elsewhere",
                level="warning",
            )
        return problem is None

    # -- starting a worker, single-flight per model ----------------------------------------------

    async def _start_worker(self, model: str, hive: str | None) -> None:
        flight = self._flights.get(model)
        if flight is not None:
            narrate(
                "waiting",
                f"a worker for model {model} is already starting"
                + (f" on hive {flight.hive_id}" if flight.hive_id else "")
                + "; waiting for it",
            )
            await flight.done.wait()
            if flight.error is not None and flight.hive == hive:
                raise JobFailed(flight.error.code, flight.error.message)
            return  # route again: the new worker, or lead the next flight
        flight = self._flights[model] = _Flight(hive)
        try:
            await self._spawn(model, hive, flight)
        except JobFailed as exc:
            flight.error = exc
            raise
        finally:
            if self._flights.get(model) is flight:
                del self._flights[model]
            flight.done.set()

    async def _spawn(self, model: str, hive: str | None, flight: _Flight) -> None:
        await self._learn_sizes(model, hive)
        decision = place(self.hive_infos(model), model, hive=hive)
        if isinstance(decision, NoCapacity):
            raise JobFailed("no_capacity", decision.reason)
        flight.hive_id = decision.hive_id
        url = self.registry.get(decision.hive_id).url
        service = f"hive:{decision.hive_id}"
        timeout = self.settings.worker_ready_timeout
        with anyio.move_on_after(timeout) as scope:
            name = decision.model
            if decision.download:
                narrate(
                    "downloading",
                    f"no hive has model {model}; downloading it on hive {decision.hive_id}",
                    hive_id=decision.hive_id,
                )
                download = forward_fields(ModelDownloadParams(repo_id=model))
                done = await self.remote.relay(
                    url, service, "model_download", download, hive=decision.hive_id
                )
                name = read_hive_result(done, ModelInfo, decision.hive_id, "model_download").name
                self.registry.set_alias(decision.hive_id, model, name)
            narrate(
                "spawning",
                f"spawning a worker for model {name} on hive {decision.hive_id}",
                hive_id=decision.hive_id,
                model=name,
            )
            spawn = forward_fields(WorkerSpawnParams(model=name))
            raw = await self.remote.relay(
                url, service, "worker_spawn", spawn, hive=decision.hive_id
            )
        if scope.cancelled_caught:
            raise JobFailed(
                "worker_start_timeout",
                f"no worker for model {model} was ready on hive {decision.hive_id}"
                f" within {timeout:g} s",
            )
        record = self._spawned_record(raw, decision.hive_id)
        self.registry.note_worker(decision.hive_id, record, self.clock())
        narrate(
            "worker_ready",
            f"worker {record.worker_id} ready on hive {decision.hive_id} at {record.url}",
            worker_id=record.worker_id,
            hive_id=decision.hive_id,
        )

    @staticmethod
    def _spawned_record(raw: Any, hive_id: str) -> WorkerRecord:
        record = read_hive_result(raw, WorkerRecord, hive_id, "worker_spawn")
        # worker_spawn answers once the worker is ready (docs/tiers.md §hive).
        if record.state != WorkerState.READY or record.url is None:
            raise JobFailed(
                "worker_not_ready",
                f"hive {hive_id} started worker {record.worker_id} but it is {record.state}",
            )
        return record

    async def _learn_sizes(self, model: str, hive: str | None) -> None:
        """Ask the hives that have ``model`` but have not said its size (best effort, quick)."""
        now = self.clock()
        for h in self.registry.hives():
            name = self.registry.local_name(h.hive_id, model)
            if (
                (hive is None or h.hive_id == hive)
                and self.registry.state(h, now) == HiveState.UP
                and name in h.heartbeat.models
                and self.registry.model_size(h.hive_id, model) is None
            ):
                with anyio.move_on_after(self.settings.health_timeout):
                    try:
                        listing = await self.remote.run(h.url, "model_list", {}, hive=h.hive_id)
                    except Exception:  # an old or busy hive: place without the size
                        continue
                    try:
                        models = read_result(listing, ModelList)
                    except RequestError:
                        continue
                    self.registry.learn_models(h.hive_id, models)

    def hive_infos(self, model: str) -> list[HiveInfo]:
        now = self.clock()
        out = []
        for h in self.registry.hives():
            reg = h.heartbeat
            free = reg.free_memory_bytes
            if free is None:
                ram = reg.capabilities.get("ram_free_bytes")
                free = ram if isinstance(ram, int) and not isinstance(ram, bool) else None
            out.append(
                HiveInfo(
                    hive_id=h.hive_id,
                    state=self.registry.state(h, now),
                    seconds_since_seen=max(0.0, now - h.last_seen),
                    models=frozenset(reg.models),
                    local_name=self.registry.local_name(h.hive_id, model),
                    free_memory_bytes=free,
                    model_size=self.registry.model_size(h.hive_id, model),
                    can_download=reg.capabilities.get("can_download", True) is not False,
                )
            )
        return out

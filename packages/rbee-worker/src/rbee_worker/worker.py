"""The worker's runtime state: the engine, its loading, and admission of requests to it.

``WorkerRuntime`` is the one object with state in a worker process (``create_app`` builds it;
nothing is global). Its model's life is ``rbee_contracts.lifecycle.ModelLoadState``, what
``/ready`` reports; every change goes through that module's one table
(``model_load_transition``: any other move raises):

    loading ──load ok──▶ ready ──engine died──▶ failed
       └────load error──────────────────────────▶ failed

``running()`` is part of the app's lifespan: it loads the engine in a background task (the load
itself runs in a thread inside the engine, so the event loop keeps serving ``/health`` and
``/ready`` meanwhile) and closes the engine at shutdown, after the jobs have been cancelled.

Once ready, a watchdog task polls ``engine.health()`` every ``health_interval`` seconds (vLLM's
engine core can die with no request running). A dead engine (found by the watchdog, by
``/health``, or by a generation that failed ``EngineDead``) marks the worker ``failed``; the jobs
in flight fail ``engine_dead``; and after ``exit_delay`` seconds (their terminal events reach
their subscribers first) ``on_engine_dead(reason)`` is called: the ``rbee-worker`` command then
exits non-zero, so that its supervisor (the hive) starts a fresh worker. Without the callback
(an app in a test) the worker stays up and answers 503.

``Admission`` is the bounded queue in front of the engine: ``max_concurrency`` generations run,
up to ``max_queue`` wait in FIFO order, and any more are refused at once (``Busy``), so a client
is told to go elsewhere instead of waiting behind an unbounded line. An engine that queues requests
itself (``queues_requests``: vLLM, whose scheduler runs ``max_num_seqs`` sequences and keeps the
rest waiting in arrival order) is handed the waiting requests at once: it starts one in the very
step a sequence finishes, where a queue in front of it would leave the slot empty until the next
request had come through the worker, been tokenized and reached the engine (a gap at every
hand-over). The bounds, the ``queue`` narration and the counts stay the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from rbee_contracts.lifecycle import ModelLoadState, model_load_transition

from .engines import Engine, EngineDead
from .metrics import WorkerMetrics
from .settings import WorkerSettings

__all__ = ["Admission", "Busy", "WorkerRuntime"]

logger = logging.getLogger("rbee_worker")


class Busy(Exception):
    """Every slot is taken and the queue is full."""


class Admission:
    """At most ``max_concurrency`` holders of a slot; at most ``max_queue`` waiting for one.

    With ``engine_queues`` the waiting requests go to the engine too (it holds them in its own
    FIFO queue and runs ``max_concurrency`` at a time): a slot is taken without waiting, and the
    holders beyond ``max_concurrency`` are the queued ones.
    """

    def __init__(
        self, max_concurrency: int, max_queue: int, *, engine_queues: bool = False
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.engine_queues = engine_queues
        #: holders of a slot (running, or queued in the engine) and waiters for one
        self._held = 0
        self._waiting = 0
        # anyio's Semaphore wakes waiters in FIFO order: first queued, first served.
        self._slots = anyio.Semaphore(max_concurrency)

    @property
    def in_flight(self) -> int:
        return min(self._held, self.max_concurrency)

    @property
    def queued(self) -> int:
        return self._waiting + max(0, self._held - self.max_concurrency)

    @asynccontextmanager
    async def slot(self, on_wait: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """Hold one slot for the block. When it must queue, ``on_wait(ahead)`` says so first."""
        if self.engine_queues:
            ahead = self.queued
            if self._held >= self.max_concurrency:
                if ahead >= self.max_queue:
                    raise self._busy()
                if on_wait is not None:
                    on_wait(ahead)
        else:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                if self._waiting >= self.max_queue:
                    raise self._busy() from None
                if on_wait is not None:
                    on_wait(self._waiting)
                self._waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self.engine_queues:
                self._slots.release()

    def _busy(self) -> Busy:
        return Busy(
            f"all {self.max_concurrency} slots are busy and {self.queued} requests"
            f" are queued (max_queue {self.max_queue})"
        )


class WorkerRuntime:
    """One engine serving one model, its load state and its admission queue."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        *,
        health_interval: float = 1.0,
        exit_delay: float = 1.0,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.health_interval = health_interval
        self.exit_delay = exit_delay
        #: called once, ``exit_delay`` after the engine died (the command exits non-zero)
        self.on_engine_dead: Callable[[str], None] | None = None
        self._died = anyio.Event()
        self._state = ModelLoadState.LOADING
        #: why the model is failed (the load's error, or the engine's death); None otherwise
        self.error: str | None = None
        self.load_seconds: float | None = None
        # The engine was built with settings.max_concurrency (or its own default): its number is
        # the one that holds, also for an engine handed to create_app directly.
        self.admission = Admission(
            engine.max_concurrency,
            settings.max_queue,
            engine_queues=getattr(engine, "queues_requests", False),
        )
        #: its Prometheus metrics (``/metrics`` serves this registry, jobproto's metrics too)
        self.metrics = WorkerMetrics(engine.model_name, self.admission)
        self._may_load = anyio.Event()
        self._load_ended = anyio.Event()

    @property
    def state(self) -> ModelLoadState:
        return self._state

    def _move(self, new: ModelLoadState, error: str | None = None) -> None:
        self._state = model_load_transition(self._state, new)
        self.error = error

    def begin_loading(self) -> None:
        """Let the load start (the CLI calls this once the server listens)."""
        self._may_load.set()

    @asynccontextmanager
    async def running(self, *, load_now: bool = True) -> AsyncIterator[None]:
        """Load the engine in the background for the duration of the block; close it after."""
        if load_now:
            self.begin_loading()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._load)
                tg.start_soon(self._watch)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.engine.close()
            logger.info("engine closed; worker stopped")

    async def _load(self) -> None:
        await self._may_load.wait()
        logger.info("loading %s with the %s engine", self.engine.model_name, self.engine.name)
        started = time.perf_counter()
        try:
            await self.engine.load()
        except Exception as exc:
            self._move(ModelLoadState.FAILED, f"{type(exc).__name__}: {exc}")
            logger.error("loading the model failed: %s", self.error, exc_info=True)
        else:
            self.load_seconds = round(time.perf_counter() - started, 3)
            self._move(ModelLoadState.READY)
            logger.info("model %s ready in %.2f s", self.engine.model_name, self.load_seconds)
        self._load_ended.set()

    async def _watch(self) -> None:
        """Poll the engine's health once loaded; when it died, tell ``on_engine_dead``."""
        await self._load_ended.wait()
        if self.load_seconds is None:
            return  # the load failed: /ready says so, and the hive stops this worker
        while not self._died.is_set():
            with anyio.move_on_after(self.health_interval):
                await self._died.wait()
            await self.dead_reason()
        await anyio.sleep(self.exit_delay)
        if self.on_engine_dead is not None and self.error is not None:
            self.on_engine_dead(self.error)

    async def dead_reason(self) -> str | None:
        """Why the engine can no longer serve, if it cannot (also marks the worker failed)."""
        if self.load_seconds is None:
            return None  # not loaded (yet, or ever): not ready, but nothing has died
        try:
            await self.engine.health()
        except EngineDead as exc:
            self.mark_dead(str(exc))
            return str(exc)
        return None

    def mark_dead(self, reason: str) -> None:
        """The engine died: the model is failed. The first reason stands (later ones, from
        jobs that were in flight, are its consequences)."""
        if self._died.is_set():
            return
        logger.error("the engine died: %s", reason)
        self._move(ModelLoadState.FAILED, reason)
        self._died.set()

    def info(self) -> dict[str, Any]:
        # Engines may report numbers of their own (vLLM: requests it holds).
        stats = getattr(self.engine, "stats", None)
        extra = stats() if callable(stats) else {}
        return {
            **extra,
            "worker_id": self.settings.worker_id,
            "model": self.engine.model_name,
            "engine": self.engine.name,
            "state": self.state.value,
            "in_flight": self.admission.in_flight,
            "queued": self.admission.queued,
            "max_concurrency": self.admission.max_concurrency,
            "max_queue": self.admission.max_queue,
        }

"""The hive's Prometheus metrics, beside jobproto's in the hive app's registry.

=======================================  =========  ===========================================
``rbee_hive_workers``                    gauge      workers by ``state`` (every state, 0 too)
``rbee_hive_worker_restarts_total``      counter    restarts of ready workers that died, by
                                                    ``cause`` (``engine_dead``, ``signal``,
                                                    ``exit``, ``not_ready``, ``error``:
                                                    ``rbee_hive.supervisor.restart_cause``)
``rbee_hive_model_download_bytes_total`` counter    bytes of models downloaded from the hub
=======================================  =========  ===========================================

The worker gauges and restart counts are read from the supervisor when scraped (it keeps plain
counts: nothing on its path knows of Prometheus). Downloaded bytes are counted as they arrive:
each request to the hive runs with ``rbee_hive.downloads.byte_sink`` set to this counter
(``middleware``), so a download started by a job counts its bytes here, from huggingface_hub's
threads (the counter is thread-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee_contracts.lifecycle import WorkerState

from .downloads import byte_sink
from .supervisor import Supervisor

__all__ = ["HiveMetrics"]


class HiveMetrics:
    """The metrics of one hive's ``supervisor``, in ``registry`` (a new one by default)."""

    def __init__(self, supervisor: Supervisor, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.download_bytes = Counter(
            "rbee_hive_model_download_bytes",
            "Bytes of models downloaded from the hub.",
            registry=self.registry,
        )
        self.registry.register(_Workers(supervisor))

    def middleware(self) -> Middleware:
        """Counts the bytes of downloads that the requests it wraps start."""
        return Middleware(_CountDownloads, sink=self.download_bytes.inc)


class _CountDownloads:
    """Pure ASGI: runs each request with ``byte_sink`` set (jobs it starts inherit it)."""

    def __init__(self, app: ASGIApp, sink: Callable[[int], None]) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = byte_sink.set(self.sink)
        try:
            await self.app(scope, receive, send)
        finally:
            byte_sink.reset(token)


class _Workers(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(WorkerState, 0)
        for worker in self._supervisor.list_workers():
            counts[worker.state] += 1
        workers = GaugeMetricFamily("rbee_hive_workers", "Workers by state.", labels=["state"])
        for state, count in counts.items():
            workers.add_metric([state.value], count)
        yield workers
        restarts = CounterMetricFamily(
            "rbee_hive_worker_restarts",
            "Restarts of ready workers that died, by cause.",
            labels=["cause"],
        )
        for cause, count in sorted(self._supervisor.restart_causes.items()):
            restarts.add_metric([cause], count)
        yield restarts

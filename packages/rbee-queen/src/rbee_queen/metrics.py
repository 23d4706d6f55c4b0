"""The queen's Prometheus metrics, and ``GET /metrics/all``: the whole cluster in one scrape.

The queen's own, beside jobproto's (whose ``jobproto_relay_*`` series time the relays to hives
and workers) in the queen app's registry:

======================================  =========  ============================================
``rbee_queen_hives``                    gauge      hives by ``state`` (up, down)
``rbee_queen_hive_missed_heartbeats``   gauge      heartbeats a hive has missed now, by
                                                   ``hive_id`` (its own interval; 3 = down)
``rbee_queen_requests_routed_total``    counter    requests routed to a worker, by ``hive_id``
``rbee_queen_requests_queued_total``    counter    times a request found no ready worker and
                                                   waited for one to start
``rbee_queen_requests_routing``         gauge      requests waiting for a worker now
``rbee_queen_requests_in_flight``       gauge      requests relayed to workers now
``rbee_queen_routing_seconds``          histogram  from routing a request to its worker (a
                                                   worker start included, when it waited)
======================================  =========  ============================================

They are read from the registry and the scheduler when scraped (plain counts there), except the
routing histogram, which the scheduler feeds through ``Scheduler.on_routed``.

Federation (``/metrics/all``, the queen's token rules, the jobs scope): the queen's metrics and
those of every ``up`` hive and every worker such a hive reports with a URL, fetched concurrently
(each within ``FEDERATE_TIMEOUT`` seconds and ``MAX_SOURCE_BYTES``, with the token the queen
uses for that hive or worker), each sample labelled ``rbee_source`` (``queen``, ``hive:ID``,
``worker:ID``), plus ``rbee_scrape_up{rbee_source}``: 1 when that source answered in time with
metrics, else 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import httpx
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.requests import Request

from jobproto.metrics import DURATION_BUCKETS, JobMetrics
from rbee_contracts.lifecycle import HiveState

if TYPE_CHECKING:
    from .queen import Queen

__all__ = ["FEDERATE_TIMEOUT", "MAX_SOURCE_BYTES", "QueenMetrics"]

#: seconds one source may take to answer a federated scrape
FEDERATE_TIMEOUT = 5.0
#: the most a source's metrics may weigh (a larger answer counts as down)
MAX_SOURCE_BYTES = 4 << 20
SOURCE_LABEL = "rbee_source"


class QueenMetrics:
    """The metrics of ``queen`` and the cluster view built on them.

    ``jobs`` is the queen's ``JobMetrics`` (their registry is shared)."""

    def __init__(self, queen: Queen, jobs: JobMetrics) -> None:
        self.queen = queen
        self.jobs = jobs
        self.registry = jobs.registry
        routing = Histogram(
            "rbee_queen_routing_seconds",
            "Seconds from routing a request to its worker.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        queen.scheduler.on_routed = routing.observe
        self.registry.register(_Cluster(queen))

    async def federate(self, request: Request | None = None) -> bytes:
        """Every source's metrics with its ``rbee_source`` label, and ``rbee_scrape_up``."""
        sources = self._sources()
        texts: dict[str, str | None] = {"queen": self.jobs.render().decode()}
        async with anyio.create_task_group() as tg:
            for name, url, token in sources:
                tg.start_soon(self._fetch, texts, name, url, token)
        return _merge(texts)

    def _sources(self) -> list[tuple[str, str, str | None]]:
        queen = self.queen
        registry = queen.registry
        now = queen.clock()
        out: list[tuple[str, str, str | None]] = []
        for hive in registry.hives():
            if registry.state(hive, now) is HiveState.UP:
                out.append((f"hive:{hive.hive_id}", hive.url, queen.remote.token(hive.hive_id)))
        for worker in registry.workers(now):
            if worker.hive_state is HiveState.UP and worker.url is not None:
                token = queen.remote.token(worker.hive_id, worker.worker_id)
                out.append((f"worker:{worker.worker_id}", worker.url, token))
        return out

    async def _fetch(
        self, texts: dict[str, str | None], name: str, url: str, token: str | None
    ) -> None:
        texts[name] = None
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        body = bytearray()
        with anyio.move_on_after(FEDERATE_TIMEOUT):
            try:
                async with self.queen.remote.http.stream(
                    "GET", url.rstrip("/") + "/metrics", headers=headers, timeout=FEDERATE_TIMEOUT
                ) as response:
                    if response.status_code != 200:
                        return
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_SOURCE_BYTES:
                            return
            except httpx.HTTPError:
                return
            texts[name] = body.decode("utf-8", "replace")


def _merge(texts: dict[str, str | None]) -> bytes:
    """One exposition of every source's families (one family per name), each sample labelled
    with its source, plus whether each source could be read."""
    families: dict[tuple[str, str], Metric] = {}
    up = GaugeMetricFamily(
        "rbee_scrape_up", "1 when the source's metrics were read, else 0.", labels=[SOURCE_LABEL]
    )
    for source, text in sorted(texts.items()):
        parsed: list[Metric] = []
        if text is not None:
            try:
                parsed = list(text_string_to_metric_families(text))
            except ValueError:  # not the text format: the source counts as down
                text = None
        up.add_metric([source], 0 if text is None else 1)
        for family in parsed:
            merged = families.get((family.name, family.type))
            if merged is None:
                merged = families[(family.name, family.type)] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                s._replace(labels={**s.labels, SOURCE_LABEL: source}) for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families.values(), up]))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


class _Cluster(Collector):
    """The queen's picture of the cluster, read when scraped."""

    def __init__(self, queen: Queen) -> None:
        self._queen = queen

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        queen = self._queen
        registry, scheduler = queen.registry, queen.scheduler
        now = queen.clock()
        states = dict.fromkeys(HiveState, 0)
        missed = GaugeMetricFamily(
            "rbee_queen_hive_missed_heartbeats",
            "Heartbeats a hive has missed now.",
            labels=["hive_id"],
        )
        for hive in registry.hives():
            states[registry.state(hive, now)] += 1
            interval = hive.heartbeat.heartbeat_interval
            silent = max(0.0, now - hive.last_seen)
            missed.add_metric([hive.hive_id], int(silent // interval) if interval > 0 else 0)
        hives = GaugeMetricFamily("rbee_queen_hives", "Hives by state.", labels=["state"])
        for state, count in states.items():
            hives.add_metric([state.value], count)
        yield hives
        yield missed
        routed = CounterMetricFamily(
            "rbee_queen_requests_routed",
            "Requests routed to a worker, by hive.",
            labels=["hive_id"],
        )
        for hive_id, count in sorted(scheduler.routed.items()):
            routed.add_metric([hive_id], count)
        yield routed
        yield CounterMetricFamily(
            "rbee_queen_requests_queued",
            "Times a request found no ready worker and waited for one to start.",
            value=scheduler.waits,
        )
        yield GaugeMetricFamily(
            "rbee_queen_requests_routing",
            "Requests waiting for a worker now.",
            value=scheduler.routing,
        )
        yield GaugeMetricFamily(
            "rbee_queen_requests_in_flight",
            "Requests relayed to workers now.",
            value=registry.in_flight(),
        )

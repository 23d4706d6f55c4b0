"""Prometheus metrics of a jobproto service: ``/metrics`` in Prometheus's text format 0.0.4.

    from jobproto.asgi import create_app
    from jobproto.conformance import conformance_operations
    from jobproto.metrics import JobMetrics

    metrics = JobMetrics()  # metrics.registry: add a service's own metrics there
    app = create_app(conformance_operations(), metrics=metrics)  # serves GET /metrics

Every ``JobMetrics`` has a ``CollectorRegistry`` of its own (never prometheus_client's global
``REGISTRY``): many apps may live in one process (tests; an engine that registers its metrics
globally), and each serves only its own. ``/metrics`` is behind the service's own token rules:
outside ``Security.public_paths`` it needs a token (401 without one), and the route asks for the
jobs scope as the job routes do (403 without it).

What a service counts (``bind`` makes the metrics the service's ``JobObserver``):

======================================  =========  ==========================================
``jobproto_jobs_created_total``         counter    jobs created, by ``operation``
``jobproto_jobs_finished_total``        counter    jobs ended, by ``operation`` and ``outcome``
                                                   (succeeded, failed, cancelled, expired)
``jobproto_job_duration_seconds``       histogram  from start to the terminal event (jobs that
                                                   ran), by ``operation`` and ``outcome``
``jobproto_jobs_active``                gauge      jobs queued or running now, by ``state``
``jobproto_streams_open``               gauge      streams open now (every reader counted in
                                                   ``JobHandle.streams``)
``jobproto_events_sent_total``          counter    events written to streams
``jobproto_subscribers_dropped_total``  counter    streams closed for their client, by
                                                   ``reason``: ``lag`` (it fell behind),
                                                   ``frozen`` (it took no send in time)
``jobproto_relays_total``               counter    relayed jobs (``jobproto.relay``), by the
                                                   downstream ``service`` kind (``worker`` for
                                                   ``worker:ID``), ``operation``, ``outcome``
``jobproto_relay_duration_seconds``     histogram  how long relays took, by ``service`` kind
``jobproto_relay_delay_seconds``        histogram  the time a hop adds: from the downstream
                                                   service logging a relayed job's first event
                                                   to this service re-emitting it
======================================  =========  ==========================================

The hooks on the path of every event are one counter increment per send of a stream (not per
token); nothing here runs in the sans-IO core, which never imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from ._extras import missing_extra

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "metrics", "jobproto.metrics") from exc

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._correlation import CORRELATION_HEADER
from ._errors import RequestError
from ._registry import Job
from ._states import JobState
from .asgi._routes import correlation_of
from .asgi._security import require_scope

if TYPE_CHECKING:
    from .asgi._service import JobService

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "JobMetrics",
    "metrics_route",
]

#: the media type of ``/metrics`` (Prometheus's text format 0.0.4)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: seconds, for jobs and relays: a health probe's milliseconds to a long generation's minutes
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    float("inf"),
)
#: seconds a hop adds (same machine: well under a millisecond to a few)
DELAY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    float("inf"),
)


class JobMetrics:
    """The Prometheus metrics of one jobproto service, in ``registry`` (a new one by default).

    A ``JobObserver``: ``bind(service)`` makes it the service's observer (``create_app``'s
    ``metrics=`` does). Add a tier's own metrics to ``registry``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._created = Counter("jobproto_jobs_created", "Jobs created.", ["operation"], registry=r)
        self._ended = Counter(
            "jobproto_jobs_finished",
            "Jobs ended, by outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self._duration = Histogram(
            "jobproto_job_duration_seconds",
            "Seconds from a job's start to its terminal event.",
            ["operation", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._events = Counter("jobproto_events_sent", "Events written to streams.", registry=r)
        self._dropped = Counter(
            "jobproto_subscribers_dropped",
            "Streams closed for their client: lag (fell behind) or frozen (took no send).",
            ["reason"],
            registry=r,
        )
        self._relays = Counter(
            "jobproto_relays",
            "Relayed jobs, by downstream service kind, operation and outcome.",
            ["service", "operation", "outcome"],
            registry=r,
        )
        self._relay_duration = Histogram(
            "jobproto_relay_duration_seconds",
            "Seconds a relay took, from creating the downstream job to its end.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._relay_delay = Histogram(
            "jobproto_relay_delay_seconds",
            "Seconds from a downstream service logging a relayed job's first event to its"
            " re-emission here (the time the hop adds).",
            ["service"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self._events_inc = self._events.inc  # the per-send hook: one bound method call
        self._services: list[JobService] = []
        r.register(_LiveJobs(self._services))

    def bind(self, service: JobService) -> None:
        """Count ``service``'s jobs, streams and relays here."""
        service.observer = self
        self._services.append(service)

    # -- JobObserver ------------------------------------------------------------------------------

    def job_created(self, operation: str) -> None:
        self._created.labels(operation).inc()

    def job_ended(self, job: Job) -> None:
        outcome = job.state.value
        self._ended.labels(job.operation, outcome).inc()
        if job.started_at is not None and job.finished_at is not None:
            seconds = max(0.0, job.finished_at - job.started_at)
            self._duration.labels(job.operation, outcome).observe(seconds)

    def events_sent(self, count: int) -> None:
        self._events_inc(count)

    def subscriber_dropped(self, reason: str) -> None:
        self._dropped.labels(reason).inc()

    def relay_ended(
        self, service: str, operation: str, outcome: str, seconds: float, delay: float | None
    ) -> None:
        self._relays.labels(service, operation, outcome).inc()
        self._relay_duration.labels(service).observe(seconds)
        if delay is not None:
            self._relay_delay.labels(service).observe(delay)

    # -- exposition -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the text format 0.0.4."""
        return generate_latest(self.registry)


class _LiveJobs(Collector):
    """Gauges read when scraped: jobs queued and running, streams open."""

    def __init__(self, services: list[JobService]) -> None:
        self._services = services

    def describe(self) -> list[Metric]:
        return []  # known only when collected: registering checks no names against them

    def collect(self) -> Iterator[Metric]:
        queued = running = streams = 0
        for service in self._services:
            for handle in list(service.handles.values()):
                state = handle.job.state
                if state is JobState.RUNNING:
                    running += 1
                elif state is JobState.QUEUED:
                    queued += 1
                streams += handle.streams
        jobs = GaugeMetricFamily(
            "jobproto_jobs_active", "Jobs queued or running now.", labels=["state"]
        )
        jobs.add_metric(["queued"], queued)
        jobs.add_metric(["running"], running)
        yield jobs
        yield GaugeMetricFamily("jobproto_streams_open", "Streams reading jobs now.", value=streams)


Render = Callable[[Request], Awaitable[bytes]]


def metrics_route(
    source: JobMetrics | Render, *, scope: str = "jobs", path: str = "/metrics"
) -> Route:
    """``GET /metrics``: ``source``'s registry (or what the async ``source(request)`` renders),
    for callers holding ``scope`` (the service's jobs scope), in the text format 0.0.4."""

    async def endpoint(request: Request) -> Response:
        headers = {CORRELATION_HEADER: correlation_of(request.scope), "Cache-Control": "no-store"}
        try:
            require_scope(request, scope)
        except RequestError as exc:
            return JSONResponse(exc.to_json(), exc.status, headers=headers)
        body = source.render() if isinstance(source, JobMetrics) else await source(request)
        return Response(body, media_type=CONTENT_TYPE, headers=headers)

    return Route(path, endpoint, methods=["GET"])

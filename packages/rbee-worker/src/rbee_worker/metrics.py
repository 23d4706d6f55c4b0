"""The worker's Prometheus metrics, named as vLLM names them where they measure the same thing.

A dashboard made for vLLM's own ``/metrics`` then reads an rbee worker of any engine. Every
series has the ``model_name`` label (the name clients use, ``Engine.model_name``):

==========================================  =========  ========================================
``vllm:time_to_first_token_seconds``        histogram  from the job's start (queueing included)
                                                       to the first token
``vllm:inter_token_latency_seconds``        histogram  between two deltas of tokens of one
                                                       generation (one engine step each)
``vllm:e2e_request_latency_seconds``        histogram  from the job's start to the generation's
                                                       end (finished generations)
``vllm:prompt_tokens_total``                counter    prompt tokens of generations that began
``vllm:generation_tokens_total``            counter    tokens generated, as they arrive
``vllm:num_requests_running``               gauge      generations running now
``vllm:num_requests_waiting``               gauge      requests queued for a slot now
``vllm:request_success_total``              counter    generations ended, by ``finished_reason``
                                                       (stop, length, abort)
``rbee_worker_requests_refused_total``      counter    requests refused at once, by ``reason``
                                                       (``busy``: every slot and the queue full)
==========================================  =========  ========================================

The buckets are vLLM's. These live in the worker app's own registry, beside jobproto's metrics
(``jobproto.metrics``), never in prometheus_client's global one, where vLLM keeps its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .worker import Admission

__all__ = ["GenerationMeter", "WorkerMetrics"]

# vLLM's buckets (vllm/v1/metrics/loggers.py), so the same dashboard reads either
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class WorkerMetrics:
    """The worker's metrics for ``model_name``, in ``registry`` (a new one by default)."""

    def __init__(
        self, model_name: str, admission: Admission, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_name = model_name
        r = self.registry
        labels = ["model_name"]
        # children bound once: the per-token calls look nothing up
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Seconds from the job's start to its first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Seconds between two deltas of tokens of one generation.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Seconds from the job's start to the end of its generation.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens of generations.", labels, registry=r
        ).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=r
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success",
            "Generations ended, by finish reason.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self._refused = Counter(
            "rbee_worker_requests_refused",
            "Requests refused at once, by reason.",
            ["model_name", "reason"],
            registry=r,
        )
        r.register(_Admission(model_name, admission))

    def generation(self, started: float) -> GenerationMeter:
        """A meter for one generation of a job that started at ``started``
        (``time.perf_counter()``)."""
        return GenerationMeter(self, started)

    def refused(self, reason: str) -> None:
        self._refused.labels(self.model_name, reason).inc()

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()


class GenerationMeter:
    """Times one generation: call ``tokens`` for each delta with tokens, ``finished`` at its end."""

    __slots__ = ("_last", "_metrics", "_started")

    def __init__(self, metrics: WorkerMetrics, started: float) -> None:
        self._metrics = metrics
        self._started = started
        self._last: float | None = None

    def tokens(self, count: int, prompt_tokens: int) -> None:
        metrics = self._metrics
        now = time.perf_counter()
        if self._last is None:
            metrics.ttft.observe(now - self._started)
            metrics.prompt_tokens.inc(prompt_tokens)
        else:
            metrics.itl.observe(now - self._last)
        self._last = now
        metrics.generation_tokens.inc(count)

    def finished(self, reason: str) -> None:
        self._metrics.e2e.observe(time.perf_counter() - self._started)
        self._metrics.finished(reason)


class _Admission(Collector):
    """Requests running and waiting, read from the admission queue when scraped."""

    def __init__(self, model_name: str, admission: Admission) -> None:
        self._model_name = model_name
        self._admission = admission

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name"]
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Generations running now.", labels=labels
        )
        running.add_metric([self._model_name], self._admission.in_flight)
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests queued for a slot now.", labels=labels
        )
        waiting.add_metric([self._model_name], self._admission.queued)
        yield running
        yield waiting

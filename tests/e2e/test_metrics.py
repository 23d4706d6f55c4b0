"""Prometheus metrics across real processes: ``rbee infer`` through queen -> worker moves the
worker's vLLM-named metrics, the queen's routing and relay metrics, and the queen's federated
``/metrics/all`` shows all of them, each sample labelled with its source.

The worker is a synthetic one (fixed text, exact token counts; named as such) so that the counts
are known; every check is a delta between a scrape before and one after.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL = "synth-metrics"
TOKENS = 7
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_an_infer_moves_worker_queen_and_federated_metrics(cluster: Any) -> None:
    cluster.register(MODEL)
    try:
        worker = cluster.spawn_synthetic(MODEL)
        worker_id, worker_url = worker["worker_id"], worker["url"]

        def scrape(url: str, path: str = "/metrics") -> str:
            headers = cluster.headers(url, worker=worker_id if url == worker_url else None)
            response = httpx.get(url + path, headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            return response.text

        before = {
            "worker": scrape(worker_url),
            "queen": scrape(cluster.queen_url),
            "all": scrape(cluster.queen_url, "/metrics/all"),
        }
        result = cluster.rbee.result(
            "infer", "hello", "--model", MODEL, "--max-tokens", str(TOKENS), "--raw"
        )
        assert result["completion_tokens"] == TOKENS and result["engine"] == "synthetic"
        after = {
            "worker": scrape(worker_url),
            "queen": scrape(cluster.queen_url),
            "all": scrape(cluster.queen_url, "/metrics/all"),
        }

        def delta(where: str, name: str, **labels: str) -> float:
            return sample(after[where], name, **labels) - sample(before[where], name, **labels)

        model = {"model_name": result["model"]}
        # the worker: vLLM's names
        assert delta("worker", "vllm:generation_tokens_total", **model) == TOKENS
        assert delta("worker", "vllm:prompt_tokens_total", **model) == result["prompt_tokens"]
        assert delta("worker", "vllm:time_to_first_token_seconds_count", **model) == 1
        assert delta("worker", "vllm:e2e_request_latency_seconds_count", **model) == 1
        assert delta("worker", "vllm:inter_token_latency_seconds_count", **model) == TOKENS - 1
        assert delta("worker", "vllm:request_success_total", finished_reason="length", **model) == 1
        infer = {"operation": "infer", "outcome": "succeeded"}
        assert delta("worker", "jobproto_jobs_finished_total", **infer) == 1
        # the queen: routed once to the local hive's worker, one relay timed
        assert delta("queen", "rbee_queen_requests_routed_total", hive_id="localhost") == 1
        relayed = {"service": "worker", "operation": "infer", "outcome": "succeeded"}
        assert delta("queen", "jobproto_relays_total", **relayed) == 1
        assert delta("queen", "jobproto_relay_delay_seconds_count", service="worker") == 1
        assert delta("queen", "jobproto_jobs_finished_total", **infer) == 1
        # federated: every source answered, and the worker's counts are there under its name
        source = f"worker:{worker_id}"
        for name in ("queen", "hive:localhost", source):
            assert sample(after["all"], "rbee_scrape_up", rbee_source=name) == 1, name
        tokens = {"rbee_source": source, **model}
        assert delta("all", "vllm:generation_tokens_total", **tokens) == TOKENS
        assert (
            sample(after["all"], "rbee_hive_workers", state="ready", rbee_source="hive:localhost")
            >= 1
        )
        assert sample(after["all"], "rbee_queen_hives", state="up", rbee_source="queen") >= 1
        # docs/metrics.md lists exactly what the cluster serves
        served = {
            f.name
            for f in text_string_to_metric_families(after["all"])
            # not prometheus_client's creation times of counters and histograms
            if not (f.type == "gauge" and f.name.endswith("_created"))
        }
        assert documented() == served
        # each behind its service's tokens
        for url, path in ((worker_url, "/metrics"), (cluster.queen_url, "/metrics/all")):
            assert httpx.get(url + path, timeout=10).status_code == 401
        assert httpx.get(cluster.hive_url + "/metrics", timeout=10).status_code == 401
    finally:
        cluster.cleanup(MODEL)


def documented() -> set[str]:
    """The metric names in docs/metrics.md's tables (counters without ``_total``, as parsed)."""
    names = re.findall(r"^\| `([a-z0-9_:]+)` \|", DOCS.read_text(), re.MULTILINE)
    return {name.removesuffix("_total") for name in names}

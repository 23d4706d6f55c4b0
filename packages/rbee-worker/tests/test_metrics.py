"""The worker's ``/metrics``: vLLM's names move as generations run, beside jobproto's.

The synthetic engine (fixed text at a set rate) makes the counts exact; every check compares a
scrape before with one after.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobproto.client import JobClient, RemoteJobFailed
from jobproto.metrics import CONTENT_TYPE
from jobproto.testing import serving
from rbee_worker.app import create_app
from rbee_worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio

MODEL = "synthetic"


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def scrape(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


async def wait_ready(http: httpx.AsyncClient) -> None:
    with anyio.fail_after(20):
        while (await http.get("/ready")).status_code != 200:
            await anyio.sleep(0.02)


def settings(**kwargs: Any) -> WorkerSettings:
    return WorkerSettings(engine="synthetic", worker_id="w-metrics", **kwargs)


async def test_a_generation_moves_vllms_metrics() -> None:
    app = create_app(settings())
    async with serving(app) as url, JobClient(url) as client:
        async with httpx.AsyncClient(base_url=url) as http:
            await wait_ready(http)
            before = await scrape(http)
            results = [
                await client.run("infer", prompt="one two three", max_tokens=n) for n in (5, 3)
            ]
            stopped = await client.run("infer", prompt="p", max_tokens=20, stop=[" fox"])
            after = await scrape(http)

    def delta(name: str, **labels: str) -> float:
        labels.setdefault("model_name", MODEL)
        return sample(after, name, **labels) - sample(before, name, **labels)

    generated = sum(r["completion_tokens"] for r in [*results, stopped])
    assert [r["completion_tokens"] for r in results] == [5, 3]
    assert delta("vllm:generation_tokens_total") == generated
    prompt = sum(r["prompt_tokens"] for r in [*results, stopped])
    assert prompt > 0 and delta("vllm:prompt_tokens_total") == prompt
    assert delta("vllm:time_to_first_token_seconds_count") == 3
    assert delta("vllm:e2e_request_latency_seconds_count") == 3
    assert delta("vllm:e2e_request_latency_seconds_sum") > 0
    # one interval between each two deltas of tokens (the synthetic engine: one token each)
    assert delta("vllm:inter_token_latency_seconds_count") == generated - 3
    assert delta("vllm:request_success_total", finished_reason="length") == 2
    assert delta("vllm:request_success_total", finished_reason="stop") == 1
    assert stopped["finish_reason"] == "stop"
    # and jobproto's, in the same registry
    jobs = {"operation": "infer", "outcome": "succeeded"}
    assert (
        sample(after, "jobproto_jobs_finished_total", **jobs)
        - sample(before, "jobproto_jobs_finished_total", **jobs)
        == 3
    )
    assert sample(after, "vllm:num_requests_running", model_name=MODEL) == 0


async def test_requests_running_waiting_and_refused_busy() -> None:
    # one slot, one place in the queue, tokens slow enough to hold them
    app = create_app(
        settings(max_concurrency=1, max_queue=1, engine_args={"tokens_per_second": "20"})
    )
    async with serving(app) as url, JobClient(url) as client:
        async with httpx.AsyncClient(base_url=url) as http:
            await wait_ready(http)
            before = await scrape(http)
            running = await client.create("infer", prompt="a", max_tokens=200)
            waiting = await client.create("infer", prompt="b", max_tokens=200)
            async with anyio.create_task_group() as tg:
                for job in (running, waiting):
                    tg.start_soon(_drain, client, job.job_id)
                with anyio.fail_after(10):
                    while True:
                        during = await scrape(http)
                        if sample(during, "vllm:num_requests_waiting", model_name=MODEL) == 1:
                            break
                        await anyio.sleep(0.02)
                assert sample(during, "vllm:num_requests_running", model_name=MODEL) == 1
                with pytest.raises(RemoteJobFailed) as refused:
                    await client.run("infer", prompt="c", max_tokens=1)
                assert refused.value.code == "busy"
                for job in (running, waiting):
                    await client.cancel(job.job_id)
            after = await scrape(http)
    busy = {"model_name": MODEL, "reason": "busy"}
    name = "rbee_worker_requests_refused_total"
    assert sample(after, name, **busy) - sample(before, name, **busy) == 1
    assert sample(after, "vllm:num_requests_running", model_name=MODEL) == 0
    assert sample(after, "vllm:num_requests_waiting", model_name=MODEL) == 0
    # a cancelled generation is no success
    success = "vllm:request_success_total"
    assert sample(after, success, model_name=MODEL, finished_reason="length") == sample(
        before, success, model_name=MODEL, finished_reason="length"
    )


async def test_metrics_need_the_workers_token() -> None:
    app = create_app(settings(token="worker-secret-token"))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer other"})
        ok = await http.get("/metrics", headers={"Authorization": "Bearer worker-secret-token"})
    assert refused.status_code == 401 and wrong.status_code == 401
    assert ok.status_code == 200 and "vllm:num_requests_running" in ok.text


async def _drain(client: JobClient, job_id: str) -> None:
    async for _ in client.events(job_id):
        pass

"""``jobproto.metrics``: ``/metrics`` of a served app moves as its jobs, streams and relays do.

Every check compares a scrape before with one after (deltas, never absolute values), against
real uvicorn on a loopback port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobproto import Operations
from jobproto.asgi import Principal, Security, ServiceSettings, TokenAuth, create_app
from jobproto.client import JobClient, RemoteJobFailed
from jobproto.conformance import conformance_operations
from jobproto.metrics import CONTENT_TYPE, JobMetrics
from jobproto.relay import relay
from jobproto.testing import serving

pytestmark = pytest.mark.anyio

TOKEN = "metrics-test-token"
NO_JOBS = "a-token-without-the-jobs-scope"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` (0 when it is not there yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


class Scraper:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    async def __call__(self) -> str:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.url}/metrics", headers=self.headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CONTENT_TYPE
        return response.text


@asynccontextmanager
async def served(
    ops: Operations | None = None, **kwargs: Any
) -> AsyncIterator[tuple[str, JobMetrics]]:
    metrics = JobMetrics()
    app = create_app(ops or conformance_operations(), metrics=metrics, **kwargs)
    async with serving(app) as url:
        yield url, metrics


async def test_jobs_by_operation_and_outcome_and_their_durations() -> None:
    async with served() as (url, _), JobClient(url) as client:
        scrape = Scraper(url)
        before = await scrape()
        assert await client.run("echo", messages=["a", "b", "c"], result=1) == 1
        with pytest.raises(RemoteJobFailed):
            await client.run("fail", code="nope")
        waiting = await client.create("wait", seconds=30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, client, waiting.job_id)
            await _until_running(client, waiting.job_id)
            await client.cancel(waiting.job_id)
        after = await scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("jobproto_jobs_created_total", operation="echo") == 1
    assert delta("jobproto_jobs_finished_total", operation="echo", outcome="succeeded") == 1
    assert delta("jobproto_jobs_finished_total", operation="fail", outcome="failed") == 1
    assert delta("jobproto_jobs_finished_total", operation="wait", outcome="cancelled") == 1
    assert delta("jobproto_jobs_finished_total", operation="echo", outcome="failed") == 0
    assert delta("jobproto_job_duration_seconds_count", operation="echo", outcome="succeeded") == 1
    assert delta("jobproto_job_duration_seconds_count", operation="wait", outcome="cancelled") == 1
    # 3 narrations + 3 data + 3 progress + the result, at least (each stream's own counts)
    assert delta("jobproto_events_sent_total") >= 10
    assert sample(after, "jobproto_jobs_active", state="running") == 0


async def test_open_streams_are_counted_while_open() -> None:
    async with served() as (url, _), JobClient(url) as client:
        scrape = Scraper(url)
        before = sample(await scrape(), "jobproto_streams_open")
        job = await client.create("wait", seconds=30, tick=0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, client, job.job_id)
            await _until_running(client, job.job_id)
            during = await scrape()
            assert sample(during, "jobproto_streams_open") == before + 1
            assert sample(during, "jobproto_jobs_active", state="running") == 1
            await client.cancel(job.job_id)
        after = await scrape()
    assert sample(after, "jobproto_streams_open") == before


async def test_a_lagging_subscriber_is_counted_when_dropped() -> None:
    settings = ServiceSettings(max_subscriber_lag=4, max_batch_events=4, retry_ms=20)
    async with served(settings=settings) as (url, _), JobClient(url) as client:
        scrape = Scraper(url)
        before = sample(await scrape(), "jobproto_subscribers_dropped_total", reason="lag")
        job = await client.create("burst", count=20_000, size=1024)
        paused = False
        async for _event in client.events(job.job_id):
            if not paused:  # read nothing for a while: the job runs ahead of this stream
                paused = True
                await anyio.sleep(0.5)
        # the client resumed by itself after each drop, up to the job's end
        assert (await client.status(job.job_id)).state == "succeeded"
        after = sample(await scrape(), "jobproto_subscribers_dropped_total", reason="lag")
    assert after > before


@attrs.frozen
class ForwardParams:
    fail: bool = False


async def test_a_relay_is_counted_by_downstream_kind_with_the_delay_it_adds() -> None:
    async with served() as (down_url, _):
        ops = Operations()

        @ops.operation("forward")
        async def forward(params: ForwardParams) -> Any:
            async with JobClient(down_url) as down:
                operation = "fail" if params.fail else "echo"
                fields = {} if params.fail else {"messages": ["x"], "result": 7}
                return await relay(down, operation, fields, service="hive:h1")

        async with served(ops) as (url, _), JobClient(url) as client:
            scrape = Scraper(url)
            before = await scrape()
            assert await client.run("forward") == 7
            with pytest.raises(RemoteJobFailed):
                await client.run("forward", fail=True)
            after = await scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    ok = {"service": "hive", "operation": "echo", "outcome": "succeeded"}
    assert delta("jobproto_relays_total", **ok) == 1
    assert delta("jobproto_relays_total", service="hive", operation="fail", outcome="failed") == 1
    assert delta("jobproto_relay_duration_seconds_count", service="hive") == 2
    # both downstream jobs had events (a narration, then the terminal one): one delay each
    assert delta("jobproto_relay_delay_seconds_count", service="hive") == 2
    assert delta("jobproto_relay_delay_seconds_sum", service="hive") >= 0


async def test_metrics_need_a_token_and_the_jobs_scope() -> None:
    auth = TokenAuth(
        {TOKEN: Principal("keeper", {"jobs"}), NO_JOBS: Principal("hive:h1", {"hive:h1"})}
    )
    async with served(security=Security(auth=auth)) as (url, _):
        async with httpx.AsyncClient() as http:
            anonymous = await http.get(f"{url}/metrics")
            wrong = await http.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
            scoped = await http.get(
                f"{url}/metrics", headers={"Authorization": f"Bearer {NO_JOBS}"}
            )
            ok = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert scoped.status_code == 403 and scoped.json()["error"]["code"] == "forbidden"
    assert ok.status_code == 200 and "jobproto_jobs_active" in ok.text
    assert TOKEN not in ok.text


async def test_without_metrics_there_is_no_route_and_no_observer() -> None:
    app = create_app(conformance_operations())
    assert app.state.jobs.observer is None
    async with serving(app) as url, httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/metrics")).status_code == 404


async def test_each_app_has_a_registry_of_its_own() -> None:
    async with served() as (one, _), served() as (two, _), JobClient(one) as client:
        before = sample(await Scraper(two)(), "jobproto_jobs_created_total", operation="echo")
        await client.run("echo", messages=["x"])
        assert sample(await Scraper(one)(), "jobproto_jobs_created_total", operation="echo") >= 1
        after = sample(await Scraper(two)(), "jobproto_jobs_created_total", operation="echo")
    assert after == before


async def _drain(client: JobClient, job_id: str) -> None:
    async for _ in client.events(job_id):
        pass


async def _until_running(client: JobClient, job_id: str) -> None:
    with anyio.fail_after(10):
        while (await client.status(job_id)).state != "running":
            await anyio.sleep(0.01)


#: imports argv[1] with prometheus_client hidden; prints what was raised
HIDDEN = r"""
import importlib.abc, json, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] == "prometheus_client":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, Hide())
try:
    exec(sys.argv[1], {})
except ModuleNotFoundError as exc:
    print(json.dumps({"name": exc.name, "message": str(exc)}))
else:
    print(json.dumps(None))
"""


def test_metrics_need_their_extra_and_nothing_else_does() -> None:
    def without_prometheus(code: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-c", HIDDEN, code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    refused = without_prometheus("import jobproto.metrics")
    assert refused is not None and refused["name"] == "prometheus_client"
    assert "pip install 'jobproto[metrics]'" in refused["message"]
    # a service without metrics, and one given none, never import prometheus_client
    code = (
        "from jobproto.asgi import create_app\n"
        "from jobproto.conformance import conformance_operations\n"
        "create_app(conformance_operations())\n"
        "import sys; assert 'prometheus_client' not in sys.modules\n"
    )
    assert without_prometheus(code) is None


async def test_a_frozen_subscriber_is_counted_when_dropped() -> None:
    settings = ServiceSettings(send_timeout=0.3)
    async with served(settings=settings) as (url, _), JobClient(url) as client:
        scrape = Scraper(url)
        before = sample(await scrape(), "jobproto_subscribers_dropped_total", reason="frozen")
        job = await client.create("burst", count=20_000, size=1024)
        host, port = url.removeprefix("http://").split(":")
        # a client that asks for the stream and then reads nothing: its buffers fill up
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            path = f"/v1/jobs/{job.job_id}/stream"
            await stream.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            with anyio.fail_after(20):
                while True:
                    text = await scrape()
                    if sample(text, "jobproto_subscribers_dropped_total", reason="frozen") > before:
                        break
                    await anyio.sleep(0.05)

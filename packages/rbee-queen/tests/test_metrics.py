"""The queen's ``/metrics`` and ``/metrics/all`` with FAKE hives and workers (conftest).

Routing counts move with real requests through the queen; hive liveness follows heartbeats; the
federated scrape labels every sample with its source, says which sources answered, and uses the
token the queen holds for each. Every count is a delta between two scrapes.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobproto.asgi import Principal, Security, ServiceSettings, TokenAuth, create_app
from jobproto.metrics import CONTENT_TYPE, JobMetrics
from rbee_contracts.auth import join_token, keeper_token

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))
KEEPER = {"Authorization": f"Bearer {keeper_token(SECRET)}"}


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def sources(text: str, name: str) -> set[str]:
    return {
        s.labels["rbee_source"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def scrape(url: str, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(url + path, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


def with_metrics(hive: Any) -> Any:
    """A FAKE hive whose app serves ``/metrics`` (behind its hive token, as a real hive's)."""
    security = None
    if hive.accepts is not None:
        security = Security(TokenAuth({hive.accepts: Principal("queen", frozenset({"jobs"}))}))
    hive.app = create_app(
        hive._operations(),
        ServiceSettings(service_name=f"fake-hive-{hive.hive_id}"),
        security=security,
        metrics=JobMetrics(),
    )
    return hive


async def test_requests_routed_and_queued_and_relays_timed(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", spawn_delay=0.05)
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        before = await scrape(c.queen_url)
        await c.client.run("infer", model="tiny", prompt="a")  # no worker yet: one starts
        await c.client.run("infer", model="tiny", prompt="b")  # routed at once
        after = await scrape(c.queen_url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("rbee_queen_requests_routed_total", hive_id="h1") == 2
    assert delta("rbee_queen_requests_queued_total") == 1
    assert delta("rbee_queen_routing_seconds_count") == 2
    assert sample(after, "rbee_queen_requests_routing") == 0
    assert sample(after, "rbee_queen_requests_in_flight") == 0
    # the relays behind them, by the kind of service: one spawn on the hive, two infers
    ok = {"outcome": "succeeded"}
    assert delta("jobproto_relays_total", service="worker", operation="infer", **ok) == 2
    assert delta("jobproto_relays_total", service="hive", operation="worker_spawn", **ok) == 1
    assert delta("jobproto_relay_delay_seconds_count", service="worker") == 2
    assert delta("jobproto_jobs_finished_total", operation="infer", outcome="succeeded") == 2


async def test_requests_in_flight_and_hives_by_state(cluster: Any, fakes: Any) -> None:
    busy = fakes.Hive("busy")
    quiet = fakes.Hive("quiet", heartbeat=0.1)
    async with cluster([busy, quiet]) as c:
        worker = await busy.add_worker("w1")
        await busy.register(c.queen_url)
        await quiet.register(c.queen_url)
        assert sample(await scrape(c.queen_url), "rbee_queen_hives", state="up") == 2
        worker.gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: c.client.run("infer", model="tiny", prompt="held"))
            with anyio.fail_after(10):
                await worker.started.wait()
            assert sample(await scrape(c.queen_url), "rbee_queen_requests_in_flight") == 1
            worker.gate.set()
        # the quiet hive beats every 0.1 s and has stopped: three missed beats make it down
        with anyio.fail_after(10):
            while sample(text := await scrape(c.queen_url), "rbee_queen_hives", state="down") < 1:
                await anyio.sleep(0.05)
    assert sample(text, "rbee_queen_hives", state="up") == 1
    assert sample(text, "rbee_queen_hive_missed_heartbeats", hive_id="quiet") >= 3
    assert sample(text, "rbee_queen_hive_missed_heartbeats", hive_id="busy") == 0
    assert sample(text, "rbee_queen_requests_in_flight") == 0


async def test_federation_labels_every_source_and_says_which_answered(
    cluster: Any, fakes: Any
) -> None:
    hive = with_metrics(fakes.Hive("h1", secret=SECRET))
    async with cluster([hive], secret=SECRET) as c:
        await hive.add_worker("w1")  # a FAKE worker: no /metrics (404)
        await hive.register(c.queen_url)
        await c.client.run("infer", model="tiny", prompt="hi")
        text = await scrape(c.queen_url, "/metrics/all", KEEPER)
    assert sample(text, "rbee_scrape_up", rbee_source="queen") == 1
    # the queen presented the hive's token: the hive answered
    assert sample(text, "rbee_scrape_up", rbee_source="hive:h1") == 1
    assert sample(text, "rbee_scrape_up", rbee_source="worker:w1") == 0
    # every sample carries its source; the same family from two sources is one family
    assert sources(text, "jobproto_streams_open") == {"queen", "hive:h1"}
    assert sources(text, "rbee_queen_hives") == {"queen"}
    infer = {"operation": "infer", "outcome": "succeeded", "rbee_source": "queen"}
    assert sample(text, "jobproto_jobs_finished_total", **infer) == 1
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))


async def test_metrics_follow_the_queens_token_rules(cluster: Any, fakes: Any) -> None:
    async with cluster([], secret=SECRET) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        hive = {"Authorization": f"Bearer {join_token(SECRET, 'h1')}"}
        for path in ("/metrics", "/metrics/all"):
            anonymous = await http.get(path)
            assert anonymous.status_code == 401
            assert anonymous.json()["error"]["code"] == "unauthorized"
            # a hive's join token opens its own heartbeat only
            assert (await http.get(path, headers=hive)).status_code in (401, 403)
            assert (await http.get(path, headers=KEEPER)).status_code == 200


async def test_a_source_too_large_or_too_slow_counts_as_down(
    cluster: Any, fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rbee_queen import metrics as queen_metrics

    big = with_metrics(fakes.Hive("big"))
    slow = fakes.Hive("slow")
    never = anyio.Event()

    async def stalled(request: Request) -> Response:
        await never.wait()  # never answers: the queen's bound ends the wait
        return Response()

    slow.app = create_app(slow._operations(), routes=[Route("/metrics", stalled, methods=["GET"])])
    monkeypatch.setattr(queen_metrics, "MAX_SOURCE_BYTES", 200)
    monkeypatch.setattr(queen_metrics, "FEDERATE_TIMEOUT", 0.3)
    async with cluster([big, slow]) as c:
        await big.register(c.queen_url)
        await slow.register(c.queen_url)
        with anyio.fail_after(10):
            text = await scrape(c.queen_url, "/metrics/all")
        never.set()
    assert sample(text, "rbee_scrape_up", rbee_source="queen") == 1
    assert sample(text, "rbee_scrape_up", rbee_source="hive:big") == 0
    assert sample(text, "rbee_scrape_up", rbee_source="hive:slow") == 0
    assert sources(text, "jobproto_streams_open") == {"queen"}

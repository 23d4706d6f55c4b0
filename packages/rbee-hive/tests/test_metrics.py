"""The hive's ``/metrics``: workers by state, restarts by cause, downloaded bytes; its token.

FAKE workers (``fake_worker.py``) and the FAKE hub; every count is a delta between two scrapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobproto.metrics import CONTENT_TYPE
from rbee_hive.settings import HiveSettings

pytestmark = pytest.mark.anyio

Settings = Callable[..., HiveSettings]
REPO = "rbee-test/metrics-model"
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(200_000),
}


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def scrape(url: str, token: str | None = None) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


async def test_workers_by_state_and_restarts_by_cause(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(
        worker_command=kit.fake_worker("--fake-ready-after", "0.05", "--fake-crash-after", "0.3"),
        restart_limit=1,
        backoff_initial=0.05,
    )
    async with start_hive(settings) as h:
        before = await scrape(h.url)
        await kit.run_job(h.client, "model_register", name="tiny", path=str(model_dir))
        record, _ = await kit.run_job(h.client, "worker_spawn", model="tiny")
        ready = await scrape(h.url)
        worker = h.hive.supervisor.get(record["worker_id"])
        await kit.wait_for(lambda: worker.finished.is_set())  # crashed, restarted, gave up
        after = await scrape(h.url)
    assert sample(ready, "rbee_hive_workers", state="ready") == 1
    assert sample(after, "rbee_hive_workers", state="ready") == 0
    assert sample(after, "rbee_hive_workers", state="failed") == 1
    assert sample(after, "rbee_hive_workers", state="starting") == 0  # every state is listed
    # the fake exits with the worker's engine-dead status: one restart, then the limit
    name = "rbee_hive_worker_restarts_total"
    cause = {"cause": "engine_dead"}
    assert sample(after, name, **cause) - sample(before, name, **cause) == 1
    assert sample(after, name, cause="signal") == 0
    # and jobproto's, in the same registry
    spawned = {"operation": "worker_spawn", "outcome": "succeeded"}
    assert sample(after, "jobproto_jobs_finished_total", **spawned) == 1


async def test_downloaded_bytes_are_counted(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    total = sum(len(data) for data in FILES.values())
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        async with start_hive(make_settings(hf_endpoint=hub_url)) as h:
            before = await scrape(h.url)
            await kit.run_job(h.client, "model_download", repo_id=REPO)
            after = await scrape(h.url)
            # done already: nothing is fetched again, nothing counted
            await kit.run_job(h.client, "model_download", repo_id=REPO)
            again = await scrape(h.url)
    name = "rbee_hive_model_download_bytes_total"
    assert sample(after, name) - sample(before, name) == total
    assert sample(again, name) == sample(after, name)


async def test_metrics_need_the_hive_token(start_hive: Any, make_settings: Settings) -> None:
    async with start_hive(make_settings(token="hive-secret-token")) as h:
        async with httpx.AsyncClient() as http:
            refused = await http.get(f"{h.url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "rbee_hive_workers" in await scrape(h.url, "hive-secret-token")

"""``PUT /v1/hives/{id}`` and ``GET /v1/hives`` on a served queen, liveness and re-registration."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from jobproto.testing import serving
from rbee_queen.app import create_app
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio


def registration(hive_id: str = "h1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hive_id": hive_id,
        "url": "http://127.0.0.1:9000",
        "capabilities": {},
        "workers": [],
        "models": ["tiny"],
        "free_memory_bytes": 1 << 30,
        "heartbeat_interval": 5,
    }
    body.update(over)
    return body


async def test_register_then_heartbeat_is_idempotent(cluster: Any) -> None:
    async with cluster() as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        first = await http.put("/v1/hives/h1", json=registration())
        again = await http.put("/v1/hives/h1", json=registration(models=["tiny", "big"]))
        listing = (await http.get("/v1/hives")).json()
        one = await http.get("/v1/hives/h1")
        missing = await http.get("/v1/hives/nope")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["registered"] is True and again.json()["registered"] is False
    (hive,) = listing["hives"]
    assert hive["hive_id"] == "h1" and hive["state"] == "up"
    assert hive["models"] == ["tiny", "big"]
    assert one.json()["workers"] == []
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "hive_not_found"
    assert first.headers["x-correlation-id"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "field"),
    [
        (b'{"url": 5}', {}, 422, "validation_error", "url"),
        (b'{"url": "http://x", "workers": [{}]}', {}, 422, "validation_error", "workers[0]"),
        (b"[]", {}, 422, "validation_error", None),
        (b"{not json", {}, 400, "invalid_json", None),
        (b"{}", {"content-type": "text/plain"}, 415, "unsupported_media_type", "Content-Type"),
    ],
)
async def test_bad_registration_gets_the_jobproto_error_shape(
    cluster: Any,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    async with cluster() as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        sent = {"content-type": "application/json", **headers}
        response = await http.put("/v1/hives/h1", content=content, headers=sent)
        assert (await http.get("/v1/hives")).json()["hives"] == []
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert error["field"].startswith(field)


async def test_silent_hive_goes_down_and_its_workers_get_no_requests(
    cluster: Any, fakes: Any
) -> None:
    quiet = fakes.Hive("quiet", heartbeat=0.1)
    loud = fakes.Hive("loud", heartbeat=0.1)
    async with cluster([quiet, loud], hive_timeout_beats=2) as c:
        quiet_worker = await quiet.add_worker("qw")
        loud_worker = await loud.add_worker("lw")
        async with anyio.create_task_group() as tg:
            await tg.start(loud.beat, c.queen_url)
            await quiet.register(c.queen_url)  # ... and never again
            await anyio.sleep(0.5)  # > 2 beats of 0.1 s
            listing = c.queen.hive_list().hives
            results = [await c.client.run("infer", model="tiny", prompt="hi") for _ in range(3)]
            tg.cancel_scope.cancel()
    states = {h.hive_id: h.state for h in listing}
    assert states == {"quiet": "down", "loud": "up"}
    assert quiet_worker.jobs == []
    assert len(loud_worker.jobs) == 3
    assert {r["engine"] for r in results} == {"fake:lw"}


async def test_hives_register_again_with_a_restarted_queen(tmp_path: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    settings = QueenSettings(state_dir=tmp_path)
    async with hive.running():
        async with serving(create_app(settings)) as url:
            await hive.register(url)
            async with httpx.AsyncClient() as http:
                assert len((await http.get(f"{url}/v1/hives")).json()["hives"]) == 1
        # a new queen process knows nothing until the hive's next heartbeat
        restarted = create_app(settings)
        async with serving(restarted) as url, httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/v1/hives")).json()["hives"] == []
            response = await hive.register(url)
            assert response.status_code == 201
            (listed,) = (await http.get(f"{url}/v1/hives")).json()["hives"]
    assert listed["hive_id"] == "h1" and listed["state"] == "up"

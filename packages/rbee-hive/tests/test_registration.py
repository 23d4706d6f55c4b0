"""Registration and heartbeat against a FAKE queen (a Starlette app on a loopback port)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee_contracts.records import MAX_HEARTBEAT_INTERVAL
from rbee_hive.registration import HeartbeatSender
from rbee_hive.settings import HiveSettings

Settings = Callable[..., HiveSettings]


@pytest.mark.anyio
async def test_registers_and_keeps_beating(
    start_hive: Any, fake_queen: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    async with fake_queen() as (queen_url, queen):
        settings = make_settings(queen_url=queen_url, hive_id="gpu-box", heartbeat_interval=0.2)
        async with start_hive(settings) as h:
            await kit.wait_for(lambda: len(queen.beats) >= 3)
            await kit.run_job(h.client, "model_register", name="tiny", path=str(model_dir))
            await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w")
            await kit.wait_for(lambda: any(b[2]["workers"] for b in queen.beats))
            await kit.run_job(h.client, "worker_stop", worker_id="w")

    _, hive_id, first = queen.beats[0]
    assert hive_id == "gpu-box"
    assert set(first) == {
        "hive_id", "url", "capabilities", "workers", "models", "free_memory_bytes",
        "heartbeat_interval",
    }  # fmt: skip
    assert first["hive_id"] == "gpu-box"
    assert first["url"] == h.url
    assert first["heartbeat_interval"] == 0.2
    assert set(first["capabilities"]) == {"cpu_cores", "ram_total_bytes", "ram_free_bytes", "gpus"}
    assert first["free_memory_bytes"] > 0
    with_worker = next(b for _, _, b in queen.beats if b["workers"])
    assert with_worker["models"] == ["tiny"]
    assert with_worker["workers"][0]["worker_id"] == "w"
    # Beats keep coming (three arrived before any change), never faster than about the interval:
    # a loaded machine may delay one, so there is no upper bound.
    times = [t for t, _, _ in queen.beats[:3]]
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(times))


@pytest.mark.anyio
async def test_a_state_change_is_reported_without_waiting_for_the_interval(
    start_hive: Any, fake_queen: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    async with fake_queen() as (queen_url, queen):
        # An interval no test outlives: a beat that reports the worker ready can only be the
        # one a worker change sends at once.
        settings = make_settings(queen_url=queen_url, heartbeat_interval=MAX_HEARTBEAT_INTERVAL)
        async with start_hive(settings) as h:
            await kit.wait_for(lambda: len(queen.beats) >= 1)
            await kit.run_job(h.client, "model_register", name="tiny", path=str(model_dir))
            await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w")

            def ready_reported() -> bool:
                return any(w["state"] == "ready" for _, _, b in queen.beats for w in b["workers"])

            await kit.wait_for(ready_reported)
            await kit.run_job(h.client, "worker_stop", worker_id="w")


@pytest.mark.anyio
async def test_failed_beats_are_retried(
    start_hive: Any, fake_queen: Any, make_settings: Settings, kit: Any
) -> None:
    # The queen answers 503 three times (restarting): the hive just beats again.
    async with fake_queen(fail_first=3) as (queen_url, queen):
        settings = make_settings(queen_url=queen_url, heartbeat_interval=0.1)
        async with start_hive(settings) as h:
            await kit.wait_for(lambda: len(queen.beats) >= 2)
            assert queen.attempts >= 5
            assert h.hive.heartbeat is not None and h.hive.heartbeat.failed == 0


@pytest.mark.anyio
async def test_an_unreachable_queen_is_not_an_error() -> None:
    async def snapshot() -> dict[str, Any]:
        return {"hive_id": "x"}

    beat = HeartbeatSender("http://127.0.0.1:9", "x", 5.0, snapshot)  # port 9: nothing listens
    async with httpx.AsyncClient() as http:
        assert await beat.beat(http, httpx.Timeout(1.0)) is False
        assert await beat.beat(http, httpx.Timeout(1.0)) is False
    assert beat.failed == 2 and beat.sent == 0


@pytest.mark.anyio
async def test_no_queen_no_registration(start_hive: Any, make_settings: Settings) -> None:
    async with start_hive(make_settings()) as h:
        assert h.hive.heartbeat is None
        async with httpx.AsyncClient() as http:
            info = (await http.get(h.url + "/v1/hive")).json()
            health = (await http.get(h.url + "/health")).json()
    assert info["url"] == h.url and info["workers"] == []
    assert health["status"] == "ok"

"""``infer``: routing to the least busy worker, single-flight spawning, capacity, cancel, ids."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
import pytest

from jobproto import Data, Failed, JobEvent, Narration, Succeeded
from jobproto.client import JobClient, RemoteJobFailed

pytestmark = pytest.mark.anyio


def narrations(events: list[JobEvent]) -> list[tuple[str, str]]:
    return [
        (e.event.action, e.event.message)
        for e in events
        if isinstance(e.event, Narration) and e.origin is None
    ]


async def test_infer_streams_the_worker_job_and_returns_its_result(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        job = await c.client.create(
            "infer",
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            temperature=0.0,
        )
        events = await fakes.collect(c.client, job.job_id)
    data = [e for e in events if isinstance(e.event, Data)]
    # the deltas in order; the queen may merge those its client has not read yet
    assert "".join(e.event.payload["text"] for e in data) == "w0 w1 "
    assert {e.origin.service for e in data if e.origin} == {"worker:w1"}
    assert all(e.origin is not None for e in data)
    result = events[-1].event
    assert isinstance(result, Succeeded)
    assert result.result["text"] == "w0 w1 " and result.result["engine"] == "fake:w1"
    # the worker got its own parameters only: no model, no hive
    (params,) = worker.params
    assert params.messages is not None and params.messages[0].content == "hi"
    assert params.prompt is None and params.max_tokens == 2 and params.temperature == 0.0
    actions = [action for action, _ in narrations(events)]
    assert actions[:2] == ["routing", "routed"]
    assert hive.calls["worker_spawn"] == 0


async def test_infer_goes_to_the_worker_with_fewest_in_flight(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        busy = await hive.add_worker("a")  # 'a' wins ties: it gets the first request
        idle = await hive.add_worker("b")
        await hive.register(c.queen_url)
        busy.gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            held: list[Any] = []

            async def hold() -> None:
                held.append(await c.client.run("infer", model="tiny", prompt="long"))

            tg.start_soon(hold)
            with anyio.fail_after(10):
                await busy.started.wait()
            assert c.queen.registry.in_flight(("h1", "a")) == 1
            quick = [await c.client.run("infer", model="tiny", prompt="q") for _ in range(3)]
            busy.gate.set()
        assert c.queen.registry.in_flight() == 0
    assert {r["engine"] for r in quick} == {"fake:b"}
    assert len(busy.jobs) == 1 and len(idle.jobs) == 3
    assert held[0]["engine"] == "fake:a"


async def test_concurrent_requests_start_one_worker(cluster: Any, fakes: Any) -> None:
    # heartbeats while the worker starts report it ``starting``, as the real hive does; the
    # last of them reaches the queen after the spawn's answer (which says ``ready``)
    hive = fakes.Hive("h1", spawn_delay=0.5, heartbeat=0.1)
    async with cluster([hive]) as c, anyio.create_task_group() as beats:
        await beats.start(hive.beat, c.queen_url)
        results: list[Any] = []
        logs: list[list[JobEvent]] = []

        async def one(i: int) -> None:
            job = await c.client.create("infer", model="tiny", prompt=f"p{i}")
            events = await fakes.collect(c.client, job.job_id)
            logs.append(events)
            final = events[-1].event
            assert isinstance(final, Succeeded), final
            results.append(final.result)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
        beats.cancel_scope.cancel()
    assert hive.calls["worker_spawn"] == 1
    assert len(results) == 5
    (worker,) = hive.workers.values()
    assert len(worker.jobs) == 5
    steps = [narrations(events) for events in logs]
    leaders = [s for s in steps if any(a == "spawning" for a, _ in s)]
    assert len(leaders) == 1
    (leader,) = leaders
    assert [a for a, _ in leader][:4] == ["routing", "spawning", "worker_ready", "routed"]
    assert ("spawning", "spawning a worker for model tiny on hive h1") in leader
    # the hive's spawn narration is relayed onto the leader's job, under the hive's origin
    (leader_log,) = [e for e in logs if narrations(e) == leader]
    assert any(e.origin and e.origin.service == "hive:h1" for e in leader_log)
    waiting = [s for s in steps if s not in leaders]
    assert all(any(a == "waiting" for a, _ in s) for s in waiting)


async def test_a_repo_id_nobody_has_is_downloaded_then_served(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", models=(), spawn_delay=0.0)
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        first = await c.client.run("infer", model="org/tiny", prompt="a")
        second = await c.client.run("infer", model="org/tiny", prompt="b")
    assert hive.calls["model_download"] == 1 and hive.calls["worker_spawn"] == 1
    assert hive.spawned[0].model == "org--tiny"  # the name the hive gave the download
    assert first["text"] == second["text"]


@pytest.mark.parametrize("case", ["no_hives", "all_down", "unknown_model"])
async def test_no_capacity_says_why(cluster: Any, fakes: Any, case: str) -> None:
    hive = fakes.Hive("h1", heartbeat=0.1)
    async with cluster([hive], hive_timeout_beats=1) as c:
        if case != "no_hives":
            await hive.register(c.queen_url)
        if case == "all_down":
            await anyio.sleep(0.2)
        model = "llama" if case == "unknown_model" else "tiny"
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("infer", model=model, prompt="x")
    assert info.value.code == "no_capacity"
    expected = {
        "no_hives": "cannot serve model 'tiny': no hive is registered with this queen",
        "all_down": "cannot serve model 'tiny': all 1 registered hives are down (h1: last heard",
        "unknown_model": "cannot serve model 'llama': no hive that is up has it (h1: tiny)",
    }[case]
    assert info.value.message.startswith(expected), info.value.message
    assert hive.calls["worker_spawn"] == 0


async def test_cancelling_the_queen_job_cancels_the_worker_job(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        worker.gate = anyio.Event()  # never set: the worker job runs until cancelled
        job = await c.client.create("infer", model="tiny", prompt="forever")
        async with anyio.create_task_group() as tg:
            seen: list[JobEvent] = []

            async def follow() -> None:
                async with aclosing(c.client.events(job.job_id)) as events:
                    async for ev in events:
                        assert isinstance(ev, JobEvent)
                        seen.append(ev)

            tg.start_soon(follow)
            with anyio.fail_after(10):
                await worker.started.wait()
            await c.client.cancel(job.job_id)
        queen_status = await c.client.status(job.job_id)
        (worker_job_id, _) = worker.jobs[0]
        async with JobClient(worker.url) as worker_client:
            with anyio.fail_after(10):
                while (await worker_client.status(worker_job_id)).state != "cancelled":
                    await anyio.sleep(0.02)
        assert c.queen.registry.in_flight() == 0
    assert queen_status.state == "cancelled"
    assert seen[-1].type == "cancelled"


async def test_the_client_correlation_id_reaches_the_worker_job(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        await c.client.run("infer", model="tiny", prompt="x", correlation_id="corr-abc-123")
        (worker_job_id, seen_correlation) = worker.jobs[0]
        async with JobClient(worker.url) as worker_client:
            worker_job = await worker_client.status(worker_job_id)
    assert seen_correlation == "corr-abc-123"
    assert worker_job.correlation_id == "corr-abc-123"


async def test_an_unhealthy_worker_is_probed_and_skipped(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        sick = await hive.add_worker("a")
        well = await hive.add_worker("b")
        sick.healthy = False
        await hive.register(c.queen_url)
        job = await c.client.create("infer", model="tiny", prompt="x")
        events = await fakes.collect(c.client, job.job_id)
        again = await c.client.run("infer", model="tiny", prompt="y")
    assert sick.jobs == [] and len(well.jobs) == 2
    assert again["engine"] == "fake:b"
    notes = narrations(events)
    assert (
        "worker_unhealthy",
        "worker a on hive h1 answered 503: engine dead (fake); routing elsewhere",
    ) in notes


async def test_a_dead_engine_fails_the_job_and_the_worker_is_avoided(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        dying = await hive.add_worker("a")
        other = await hive.add_worker("b")
        await hive.register(c.queen_url)
        dying.fail_with = "engine_dead"
        job = await c.client.create("infer", model="tiny", prompt="x")
        events = await fakes.collect(c.client, job.job_id)
        after = await c.client.run("infer", model="tiny", prompt="y")
    failed = events[-1].event
    assert isinstance(failed, Failed)
    assert failed.code == "engine_dead"
    assert failed.message.startswith("worker:a: the engine died")
    assert after["engine"] == "fake:b" and len(other.jobs) == 1


async def test_an_unreachable_worker_is_avoided(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", models=())
    async with cluster([hive]) as c:
        worker = await hive.add_worker("gone")
        await worker.shut_down()
        await hive.register(c.queen_url)  # the hive still reports it (no heartbeat since)
        job = await c.client.create("infer", model="tiny", prompt="x")
        events = await fakes.collect(c.client, job.job_id)
    failed = events[-1].event
    assert isinstance(failed, Failed) and failed.code == "no_capacity"
    assert any(a == "worker_unhealthy" and "unreachable" in m for a, m in narrations(events))


async def test_a_worker_that_died_since_its_probe_fails_clearly_and_is_avoided(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        doomed = await hive.add_worker("a")
        await hive.register(c.queen_url)
        assert (await c.client.run("infer", model="tiny", prompt="x"))["engine"] == "fake:a"
        await doomed.shut_down()  # its server goes away; the hive has not noticed yet
        await hive.add_worker("b")
        await hive.register(c.queen_url)
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("infer", model="tiny", prompt="y")
        after = await c.client.run("infer", model="tiny", prompt="z")
    assert info.value.code == "downstream_unavailable"
    assert info.value.message.startswith(f"worker:a at {doomed.url} is unavailable: ")
    assert "ConnectError" in info.value.message
    assert after["engine"] == "fake:b"


async def test_a_worker_that_dies_mid_stream_fails_the_request_quickly(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("a")
        await hive.register(c.queen_url)
        worker.gate = anyio.Event()  # the request stays open after its first token
        job = await c.client.create("infer", model="tiny", prompt="x")
        async with anyio.create_task_group() as tg:
            seen: list[JobEvent] = []

            async def follow() -> None:
                seen.extend(await fakes.collect(c.client, job.job_id))

            tg.start_soon(follow)
            with anyio.fail_after(10):
                await worker.started.wait()
            began = anyio.current_time()
            await worker.shut_down()  # the process "dies" with the request in flight
        took = anyio.current_time() - began
        assert c.queen.registry.in_flight() == 0
    failed = seen[-1].event
    assert isinstance(failed, Failed) and failed.code == "downstream_unavailable"
    assert failed.message.startswith(f"worker:a at {worker.url} is unavailable")
    assert any(isinstance(e.event, Data) for e in seen)  # the first token did arrive
    assert took < 8, took

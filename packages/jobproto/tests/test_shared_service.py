"""Two replicas of one service on one real redis-server: shared jobs, streams, cancel, failover.

Each replica is a ``JobService`` with a ``RedisStore`` (its own replica id, one namespace per
test), served by real uvicorn on loopback. A replica "dies" by leaving its ``serving`` block: its
task group is cancelled, so its runners stop where they are and write nothing more, and their
leases lapse as a killed process's would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest

from jobproto import Operations, current_job, emit_data, narrate, set_checkpoint
from jobproto.asgi import JobService, ServiceSettings, create_app
from jobproto.redis import RedisStore
from jobproto.testing import redis_server, serving

pytestmark = pytest.mark.anyio

LEASE_TTL = 1.0
SETTINGS = ServiceSettings(keepalive_interval=60.0, cancel_wait=5.0)


@attrs.frozen
class Steps:
    n: int
    #: the handler stops after emitting this step until the test's gate opens (0: never stops)
    hold_at: int = 0


@attrs.frozen
class Empty:
    pass


@attrs.frozen
class Count:
    n: int
    pause_at: int


def operations(
    gates: dict[str, anyio.Event], only: str | None = None, relay_to: str | None = None
) -> Operations:
    ops = Operations()

    async def resume_steps(params: Steps, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
        return await run_steps(params, int(checkpoint.get("i", 0)) + 1, resumed=True)

    async def run_steps(params: Steps, start: int, *, resumed: bool) -> dict[str, Any]:
        for i in range(start, params.n + 1):
            emit_data({"i": i})
            set_checkpoint({"i": i})
            if i == params.hold_at and not resumed:
                await gates.setdefault("hold", anyio.Event()).wait()
            await anyio.lowlevel.checkpoint()
        return {"steps": params.n, "resumed": resumed, "replica": where()}

    @ops.operation("steps", resume=resume_steps)
    async def steps(params: Steps) -> dict[str, Any]:
        return await run_steps(params, 1, resumed=False)

    @ops.operation("burst")
    async def burst(params: Steps) -> int:
        for i in range(1, params.n + 1):  # no await: more than a log holds, in one turn
            emit_data({"i": i})
        return params.n

    @ops.operation("hang")
    async def hang(params: Empty) -> None:
        narrate("hang", "waiting for ever")
        await anyio.sleep_forever()

    @ops.operation("where")
    async def where_op(params: Empty) -> str:
        return where()

    @ops.operation("handover")
    async def handover(params: Empty) -> None:
        # what a relay reads when it stops: whether the job goes on elsewhere
        handle = current_job()
        narrate("handover", "running")
        try:
            await anyio.sleep_forever()
        finally:
            flag = "handed_over" if handle.handed_over else "kept"  # type: ignore[union-attr]
            gates.setdefault(flag, anyio.Event()).set()

    async def resume_announce(params: Empty, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
        return dict(checkpoint)

    @ops.operation("announce", resume=resume_announce)
    async def announce(params: Empty) -> None:
        # a checkpoint with no event after it (a relay's downstream job announced, no token yet)
        set_checkpoint({"at": "announced"})
        await anyio.sleep_forever()

    @ops.operation("phases", resume=resume_announce)
    async def phases(params: Empty) -> None:
        emit_data({"phase": 1})
        set_checkpoint({"phase": 1})
        await gates.setdefault("phase 2", anyio.Event()).wait()
        set_checkpoint(None)  # the first phase is over: nothing to resume from
        emit_data({"phase": 2})
        await anyio.sleep_forever()

    if relay_to is not None:
        from jobproto.client import JobClient
        from jobproto.relay import relay, relay_point

        async def resume_relayed(params: Empty, checkpoint: Mapping[str, Any]) -> Any:
            point = relay_point(checkpoint)
            assert point is not None
            async with JobClient(relay_to, max_reconnects=0) as client:
                return await relay(client, "count", None, service="down", resume=point)

        @ops.operation("relayed", resume=resume_relayed)
        async def relayed(params: Empty) -> Any:
            async with JobClient(relay_to, max_reconnects=0) as client:
                return await relay(client, "count", {"n": 10, "pause_at": 4}, service="down")

    if only is not None:

        @ops.operation(only)
        async def only_here(params: Empty) -> str:
            return where()

    return ops


def where() -> str:
    """The replica running the current job (its service's id)."""
    handle = current_job()
    return str(handle._service.replica)  # type: ignore[union-attr]


@attrs.define
class Replica:
    service: JobService
    url: str
    client: httpx.AsyncClient


@asynccontextmanager
async def replica(
    redis_url: str,
    namespace: str,
    name: str,
    gates: dict[str, anyio.Event],
    settings: ServiceSettings = SETTINGS,
    *,
    only: str | None = None,
    lease_ttl: float = LEASE_TTL,
    relay_to: str | None = None,
) -> AsyncIterator[Replica]:
    store = RedisStore(
        redis_url, namespace, lease_ttl=lease_ttl, max_log_events=settings.max_log_events
    )
    service = JobService(operations(gates, only, relay_to), settings, store=store, replica=name)
    async with serving(create_app(service)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Replica(service, url, client)


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    """A plain redis-py client, to look at the keys the store wrote."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def create(r: Replica, operation: str, **fields: Any) -> str:
    response = await r.client.post("/v1/jobs", json={"operation": operation, **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def stream_body(r: Replica, job_id: str, after: int = 0) -> bytes:
    headers = {"Last-Event-ID": str(after)} if after else {}
    response = await r.client.get(f"/v1/jobs/{job_id}/stream", headers=headers)
    assert response.status_code == 200, response.text
    return response.content


def frames(body: bytes) -> list[bytes]:
    """The log frames of a stream body (blocks with an ``id:``), in order."""
    return [b + b"\n\n" for b in body.split(b"\n\n") if b.startswith(b"id: ")]


def events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in frames(body):
        data = frame.split(b"\ndata: ", 1)[1].strip()
        out.append(json.loads(data))
    return out


async def read_until(
    r: Replica,
    job_id: str,
    seq: int = 0,
    *,
    until: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Open the stream and read until event ``seq`` has come (or ``until`` holds for what came),
    then hang up."""
    done = until or (lambda got: bool(got) and got[-1]["seq"] >= seq)
    got: list[dict[str, Any]] = []
    async with r.client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                got.extend(events(block + b"\n\n"))
            if done(got):
                return got
    raise AssertionError(f"the stream ended before event {seq}: {got}")


async def test_a_job_created_on_one_replica_streams_the_same_bytes_from_another(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        job_id = await create(a, "steps", n=20)
        from_b = await stream_body(b, job_id)  # the first stream: B claims and runs it
        from_a = await stream_body(a, job_id)
        assert from_a == from_b
        got = events(from_b)
        assert [e["seq"] for e in got] == list(range(1, 22))
        assert got[-1]["type"] == "succeeded"
        assert got[-1]["payload"]["result"]["replica"] == "b"
        status = (await a.client.get(f"/v1/jobs/{job_id}")).json()
        assert (status["state"], status["last_seq"]) == ("succeeded", 21)


async def test_a_queued_job_runs_where_its_first_stream_opens(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        first = await create(a, "where")
        second = await create(b, "where")
        assert (await a.client.get(f"/v1/jobs/{first}")).json()["state"] == "queued"
        assert events(await stream_body(b, first))[-1]["payload"]["result"] == "b"
        assert events(await stream_body(a, second))[-1]["payload"]["result"] == "a"


async def test_streams_open_on_both_replicas_get_a_gap_and_the_end_of_a_trimmed_burst(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    small = attrs.evolve(SETTINGS, max_log_events=50)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates, small))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates, small))
        job_id = await create(a, "burst", n=300)
        bodies: dict[str, bytes] = {}

        async def watch(r: Replica, name: str) -> None:
            bodies[name] = await stream_body(r, job_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, b, "b")
            tg.start_soon(watch, a, "a")
    for body in bodies.values():
        got = events(body)
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(set(seqs))
        assert got[-1]["type"] == "succeeded"
        assert got[-1]["seq"] == 301
        # the burst is stored in one batch and trimmed to the last 50: every stream starts
        # with a gap, before its first frame
        assert seqs[0] > 1
        gap = body.index(b"event: gap")
        assert gap < body.index(b"id: ")
        payload = json.loads(body[gap:].split(b"data: ", 1)[1].split(b"\n", 1)[0])["payload"]
        assert (payload["after"], payload["first_available"]) == (0, seqs[0])


async def test_a_burst_beyond_the_runners_own_log_leaves_a_gap_and_the_job_goes_on(
    redis_url: str, redis_namespace: str
) -> None:
    # More events in one turn than the runner's private log holds (RUNNER_LOG_MIN, 4096): the
    # oldest are gone before the store could take them. The job still succeeds, the store has
    # the rest after a hole, and a stream gets a gap there, as from any trimmed log.
    from jobproto.asgi._shared import RUNNER_LOG_MIN

    gates: dict[str, anyio.Event] = {}
    small = attrs.evolve(SETTINGS, max_log_events=50)
    n = RUNNER_LOG_MIN * 2
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates, small))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates, small))
        job_id = await create(a, "burst", n=n)
        body = await stream_body(a, job_id)
        status = (await b.client.get(f"/v1/jobs/{job_id}")).json()
        later = await stream_body(b, job_id)
    got = events(body)
    assert got[-1]["type"] == "succeeded" and got[-1]["payload"]["result"] == n
    assert got[-1]["seq"] == n + 1
    assert (status["state"], status["last_seq"]) == ("succeeded", n + 1)
    assert b"event: gap" in body
    assert events(later)[-1] == got[-1]


async def test_either_replica_lists_every_job(redis_url: str, redis_namespace: str) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        on_a = await create(a, "where")
        on_b = await create(b, "where")
        for r in (a, b):
            listed = (await r.client.get("/v1/jobs")).json()
            assert [j["job_id"] for j in listed["jobs"]] == [on_b, on_a]  # newest first
            assert {j["state"] for j in listed["jobs"]} == {"queued"}
        await stream_body(a, on_a)
        listed = (await b.client.get("/v1/jobs", params={"state": "succeeded"})).json()
        assert [j["job_id"] for j in listed["jobs"]] == [on_a]


async def test_cancel_on_one_replica_ends_a_job_running_on_another(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        job_id = await create(a, "hang")
        body: list[bytes] = []

        async def watch() -> None:
            body.append(await stream_body(a, job_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(10):
                while job_id not in a.service.runs:
                    await anyio.sleep(0.02)
            response = await b.client.delete(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "cancelled"
        last = events(body[0])[-1]
        assert (last["type"], last["payload"]["reason"]) == ("cancelled", "cancelled by request")
        assert job_id not in a.service.runs


async def test_last_event_id_resumes_on_the_other_replica(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        job_id = await create(a, "steps", n=30, hold_at=10)
        head = await read_until(a, job_id, 10)
        gates.setdefault("hold", anyio.Event()).set()
        tail = events(await stream_body(b, job_id, after=head[-1]["seq"]))
        whole = head + tail
        assert [e["seq"] for e in whole] == list(range(1, 32))
        assert [e["payload"]["i"] for e in whole[:-1]] == list(range(1, 31))


async def test_a_resumable_job_survives_its_replica_and_every_event_arrives_once(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}  # never opened: the first run stops at step 7
    async with replica(redis_url, redis_namespace, "b", gates) as b:
        async with replica(redis_url, redis_namespace, "a", gates) as a:
            job_id = await create(a, "steps", n=15, hold_at=7)
            head = await read_until(a, job_id, 7)
            assert a.service.runs[job_id].job.last_seq == 7
        # A is gone without ending the job: B adopts it once A's lease lapses
        tail = events(await stream_body(b, job_id, after=head[-1]["seq"]))
    whole = head + tail
    assert [e["seq"] for e in whole] == list(range(1, 17))
    assert [e["payload"]["i"] for e in whole[:-1]] == list(range(1, 16))
    assert whole[-1]["type"] == "succeeded"
    assert whole[-1]["payload"]["result"] == {"steps": 15, "resumed": True, "replica": "b"}


async def test_a_job_without_resume_fails_owner_lost_when_its_replica_dies(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "b", gates) as b:
        async with replica(redis_url, redis_namespace, "a", gates) as a:
            job_id = await create(a, "hang")
            head = await read_until(a, job_id, 1)
        tail = events(await stream_body(b, job_id, after=1))
        status = (await b.client.get(f"/v1/jobs/{job_id}")).json()
    assert [e["seq"] for e in head + tail] == [1, 2]
    assert tail[-1]["type"] == "failed"
    assert tail[-1]["payload"]["code"] == "owner_lost"
    assert status["state"] == "failed"
    assert status["error"]["code"] == "owner_lost"


async def test_a_store_that_is_down_answers_503_and_the_service_recovers(
    redis_namespace: str,
) -> None:
    gates: dict[str, anyio.Event] = {}
    with redis_server(persist=True) as server:
        async with replica(server.url, redis_namespace, "a", gates) as a:
            before = await create(a, "where")
            await anyio.to_thread.run_sync(server.stop)
            try:
                response = await a.client.post("/v1/jobs", json={"operation": "where"})
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "store_unavailable"
                assert response.headers["retry-after"] == "1"
                # the client learns the kind of error, never where the store is
                message = response.json()["error"]["message"]
                assert message == "the job store is unavailable: ConnectionError"
                assert str(server.port) not in message
                status = await a.client.get(f"/v1/jobs/{before}")
                assert status.status_code == 503
            finally:
                await anyio.to_thread.run_sync(server.start)
            await _until_created(a)
            # the job made before the outage is still there, and runs
            assert events(await stream_body(a, before))[-1]["payload"]["result"] == "a"


async def _until_created(a: Replica) -> None:
    for _ in range(100):
        response = await a.client.post("/v1/jobs", json={"operation": "where"})
        if response.status_code == 201:
            job_id = response.json()["job_id"]
            assert events(await stream_body(a, job_id))[-1]["type"] == "succeeded"
            return
        await anyio.sleep(0.1)
    raise AssertionError("the service did not recover once the store was back")


async def raw_redis(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url)


async def until_running(r: Replica, job_id: str) -> None:
    with anyio.fail_after(10):
        while job_id not in r.service.runs:
            await anyio.sleep(0.02)


async def test_a_replica_shutting_down_hands_its_jobs_over(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "a", gates) as a:
        job_id = await create(a, "handover")
        await read_until(a, job_id, 1)
        await until_running(a, job_id)
        # only a shared-mode runner keeps checkpoints (a relay builds none for anything else)
        assert a.service.runs[job_id].keeps_checkpoints
        assert not (await a.service.lookup(job_id)).keeps_checkpoints
        lease = f"{redis_namespace}:lease:{job_id}"
        async with redis_client(redis_url) as r:
            assert await r.get(lease) == b"a"
    # its relay would leave the downstream job running for the replica that adopts the job
    assert "handed_over" in gates and "kept" not in gates
    # and its lease is given up as it stops: another replica adopts the job at its next look
    # for lapsed leases, not a lease TTL later; the job itself is still running
    async with redis_client(redis_url) as r:
        assert await r.get(lease) is None
        assert await r.hget(f"{redis_namespace}:job:{job_id}", "state") == b"running"


async def test_a_replica_that_loses_a_job_hands_it_over(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "a", gates) as a:
        job_id = await create(a, "handover")
        await read_until(a, job_id, 1)
        await until_running(a, job_id)
        client = await raw_redis(redis_url)
        try:  # another replica owns the job now: A's next renew finds it lost
            await client.hset(f"{redis_namespace}:job:{job_id}", "owner", "someone-else")
        finally:
            await client.aclose()
        with anyio.fail_after(10):
            await gates.setdefault("handed_over", anyio.Event()).wait()
        assert "kept" not in gates


async def test_a_job_cancelled_by_request_is_not_handed_over(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "a", gates) as a:
        job_id = await create(a, "handover")
        await read_until(a, job_id, 1)
        await until_running(a, job_id)
        response = await a.client.delete(f"/v1/jobs/{job_id}")
        assert response.json()["state"] == "cancelled"
        assert "kept" in gates and "handed_over" not in gates


def test_a_memory_mode_handle_keeps_no_checkpoints() -> None:
    service = JobService(operations({}))
    job = service.registry.create("where", Empty(), "corr", 0.0)[0]
    from jobproto.asgi._service import JobHandle

    assert not JobHandle(job, service).keeps_checkpoints
    assert not JobHandle(job, service).handed_over


async def test_a_replica_claims_only_the_operations_it_offers(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            replica(redis_url, redis_namespace, "a", gates, only="only_a")
        )
        b = await stack.enter_async_context(
            replica(redis_url, redis_namespace, "b", gates, only="only_b")
        )
        job_id = await create(a, "only_a")
        bodies: list[bytes] = []

        async def watch_on_b() -> None:
            bodies.append(await stream_body(b, job_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_on_b)  # B cannot run it: it leaves the job queued
            with anyio.fail_after(10):
                while job_id not in b.service.handles or not b.service.handles[job_id].streams:
                    await anyio.sleep(0.02)
            assert (await b.client.get(f"/v1/jobs/{job_id}")).json()["state"] == "queued"
            # A can: its stream claims the job, and B's stream sees it end
            assert events(await stream_body(a, job_id))[-1]["payload"]["result"] == "a"
        assert events(bodies[0])[-1]["payload"]["result"] == "a"
        # B's own tasks are alive: what only B offers runs there
        other = await create(b, "only_b")
        assert events(await stream_body(b, other))[-1]["payload"]["result"] == "b"
        assert b.service.running


async def test_a_checkpoint_with_no_event_after_it_is_stored_and_resumed_from(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "b", gates) as b:
        async with replica(redis_url, redis_namespace, "a", gates) as a:
            job_id = await create(a, "announce")
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream_body, a, job_id)  # its stream makes A claim and run it
                await until_running(a, job_id)
                client = await raw_redis(redis_url)
                try:
                    for _ in range(200):
                        stored = await client.hget(f"{redis_namespace}:job:{job_id}", "ckpt")
                        if stored is not None:
                            break
                        await anyio.sleep(0.02)
                finally:
                    await client.aclose()
                assert stored is not None and json.loads(stored) == {"at": "announced"}
                tg.cancel_scope.cancel()
        # A is gone: B adopts the job and resumes it from the checkpoint A stored
        got = events(await stream_body(b, job_id))
    assert got[-1]["type"] == "succeeded"
    assert got[-1]["payload"]["result"] == {"at": "announced"}


async def test_a_cancel_asked_while_the_owner_is_gone_ends_the_job_on_adoption(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}  # never opened: A's run stops at step 3
    async with replica(redis_url, redis_namespace, "b", gates) as b:
        # A's lease is long: the cancel below is asked while nobody can act on it at once
        async with replica(redis_url, redis_namespace, "a", gates, lease_ttl=3.0) as a:
            job_id = await create(a, "steps", n=10, hold_at=3)
            await read_until(a, job_id, 3)
        response = await b.client.delete(f"/v1/jobs/{job_id}")
        assert response.status_code in (200, 202), response.text
        got = events(await stream_body(b, job_id))
    assert got[-1]["type"] == "cancelled"
    assert got[-1]["payload"]["reason"] == "cancelled by request"
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))


def test_a_view_fed_twice_keeps_each_frame_once() -> None:
    """A catch-up read and the follower may bring the same frames: the view keeps the first."""
    from jobproto._log import EventLog
    from jobproto._registry import Job

    service = JobService(operations({}), SETTINGS, store=RedisStore("redis://127.0.0.1:1/0"))
    shared = service._shared
    assert shared is not None

    def frame(seq: int) -> bytes:
        return f"id: {seq}\nevent: data\ndata: {{}}\n\n".encode()

    job = Job(
        id="job_x",
        operation="where",
        params=Empty(),
        correlation_id="corr",
        created_at=0.0,
        index=1,
        log=EventLog(100),
    )
    view = shared._add_view(job, [frame(1), frame(2)])
    shared._apply(view, [frame(2), frame(3)])
    shared._apply(view, [frame(1), frame(3), frame(4)])
    assert view.job.log.read(0) == (None, [frame(1), frame(2), frame(3), frame(4)])


async def test_a_frame_the_follower_cannot_read_costs_its_view_only(
    redis_url: str, redis_namespace: str
) -> None:
    gates: dict[str, anyio.Event] = {}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(redis_url, redis_namespace, "a", gates))
        b = await stack.enter_async_context(replica(redis_url, redis_namespace, "b", gates))
        job_id = await create(a, "hang")
        await read_until(a, job_id, 1)
        await read_until(b, job_id, 1)  # B follows the job's log now
        client = await raw_redis(redis_url)
        try:  # what no replica wrote: B's follower reads it and cannot parse it
            await client.xadd(f"{redis_namespace}:log:{job_id}", {"f": b"garbage"}, id="2-1")
        finally:
            await client.aclose()
        with anyio.fail_after(10):
            while job_id in b.service.handles:
                await anyio.sleep(0.02)
        # B's own tasks are alive: a job streamed there runs and ends
        other = await create(b, "where")
        assert events(await stream_body(b, other))[-1]["payload"]["result"] == "b"


async def test_a_cleared_checkpoint_is_stored_cleared(redis_url: str, redis_namespace: str) -> None:
    gates: dict[str, anyio.Event] = {}
    async with replica(redis_url, redis_namespace, "b", gates) as b:
        async with replica(redis_url, redis_namespace, "a", gates) as a:
            job_id = await create(a, "phases")
            await read_until(a, job_id, 1)  # stored, with the checkpoint of phase 1
            gates.setdefault("phase 2", anyio.Event()).set()
            await read_until(a, job_id, 2)  # stored, with the checkpoint cleared
        got = events(await stream_body(b, job_id, after=2))
    assert got[-1]["type"] == "succeeded"
    assert got[-1]["payload"]["result"] == {}


async def test_a_relay_handed_over_at_shutdown_leaves_its_downstream_job_to_the_adopter(
    redis_url: str, redis_namespace: str
) -> None:
    go = anyio.Event()
    made: list[int] = []
    down = Operations()

    @down.operation("count")
    async def count(params: Count) -> dict[str, int]:
        made.append(1)
        for i in range(1, params.n + 1):
            emit_data({"i": i})
            if i == params.pause_at:
                await go.wait()
            await anyio.lowlevel.checkpoint()
        return {"count": params.n}

    gates: dict[str, anyio.Event] = {}
    async with serving(create_app(down)) as down_url, httpx.AsyncClient(base_url=down_url) as dc:
        async with replica(redis_url, redis_namespace, "b", gates, relay_to=down_url) as b:
            async with replica(redis_url, redis_namespace, "a", gates, relay_to=down_url) as a:
                job_id = await create(a, "relayed")
                head = await read_until(
                    a,
                    job_id,
                    until=lambda got: any(
                        e["payload"].get("i") == 4 for e in got if e["type"] == "data"
                    ),
                )
            # A shut down and handed the job over: its relay left the downstream job running
            listed = (await dc.get("/v1/jobs")).json()["jobs"]
            assert [j["state"] for j in listed] == ["running"]
            go.set()
            tail = events(await stream_body(b, job_id, after=head[-1]["seq"]))
    whole = head + tail
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
    assert [e["payload"]["i"] for e in whole if e["type"] == "data"] == list(range(1, 11))
    assert whole[-1]["type"] == "succeeded"
    assert whole[-1]["payload"]["result"] == {"count": 10}
    assert len(made) == 1  # the downstream generation was never restarted

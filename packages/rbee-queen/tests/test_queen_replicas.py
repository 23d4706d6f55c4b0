"""Queen replicas on one real Redis: jobs, hives and in-flight counts shared.

Two queens served in this process (``jobproto.testing.serving``) with one ``redis_url``, and a
``redis-server`` started for each test (``jobproto.testing.redis_server``; no stand-in for
Redis). The hives and workers are the FAKES of ``conftest.py``. A fake hive heartbeats to one
queen only; the other learns of it through Redis (``rbee_queen.replicas``).

The failover of a relayed ``infer`` (a replica killed mid-generation) needs processes that can be
killed: ``test_an_infer_adopted_from_a_killed_replica_goes_on_with_the_same_worker_job`` runs
the queens as ``python -m rbee_queen.app`` subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from jobproto import Cancelled, Data, JobEvent, Succeeded
from jobproto.client import JobClient
from jobproto.testing import RedisServer, redis_server, serving
from rbee_contracts.auth import keeper_token, load_or_create_secret
from rbee_queen.app import LISTENING, create_app
from rbee_queen.registry import HiveRegistry
from rbee_queen.replicas import ReplicaSync
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio

REDIS_PASSWORD = "pw-of-the-shared-redis"
#: bounded polls: this many turns of 20 ms at most (20 s)
POLLS = 1000


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def eventually(condition: Callable[[], Any], what: str) -> None:
    for _ in range(POLLS):
        if condition():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"not within {POLLS * 0.02:g} s: {what}")


@attrs.define
class Replica:
    name: str
    url: str
    app: Any
    client: JobClient

    @property
    def queen(self) -> Any:
        return self.app.state.queen

    def knows(self, hive_id: str) -> bool:
        return hive_id in self.queen.registry

    def in_flight(self, hive_id: str, worker_id: str) -> int:
        views = self.queen.registry.workers(self.queen.clock())
        return sum(w.in_flight for w in views if w.key == (hive_id, worker_id))


@asynccontextmanager
async def replicas(
    redis_url: str, tmp_path: Path, *names: str, **settings: Any
) -> AsyncIterator[list[Replica]]:
    async with AsyncExitStack() as stack:
        out = []
        for name in names:
            queen_settings = QueenSettings(
                state_dir=tmp_path / name,
                redis_url=redis_url,
                replica_id=f"queen-{name}",
                **settings,
            )
            app = create_app(queen_settings)
            url = await stack.enter_async_context(serving(app))
            client = await stack.enter_async_context(JobClient(url))
            out.append(Replica(name, url, app, client))
        yield out


async def collect(
    client: JobClient, job_id: str, after: int = 0, into: list[JobEvent] | None = None
) -> list[JobEvent]:
    """The job's events after ``after`` to its end, each also put into ``into`` as it comes."""
    out: list[JobEvent] = [] if into is None else into
    async with aclosing(client.events(job_id, after=after)) as events:
        async for ev in events:
            assert isinstance(ev, JobEvent)
            out.append(ev)
    return out


def text(events: list[JobEvent]) -> str:
    return "".join(e.event.payload["text"] for e in events if isinstance(e.event, Data))


INFER = {"model": "tiny", "prompt": "hi", "max_tokens": 64, "temperature": 0.0}


async def test_the_replica_sync_runs_only_with_a_redis_url(tmp_path: Path) -> None:
    app = create_app(QueenSettings(state_dir=tmp_path / "alone"))
    assert app.state.queen.replicas is None
    assert app.state.jobs.shared is False  # the jobs in this process, as before


async def test_a_redis_url_with_a_password_is_never_shown(tmp_path: Path) -> None:
    url = "redis://user:s3cret-pw@127.0.0.1:1/0"
    settings = QueenSettings(state_dir=tmp_path / "a", redis_url=url)
    assert "s3cret-pw" not in repr(settings)
    assert "redis://127.0.0.1:1/0" in repr(settings)
    app = create_app(settings)
    assert isinstance(app.state.queen.replicas, ReplicaSync)
    assert "s3cret-pw" not in repr(app.state.queen.replicas)


# -- applying another replica's records (no Redis: the sync's rules alone) ------------------------


class NoStore:
    """Never reached: these tests call ``apply_hive``/``apply_counts`` directly."""

    async def open(self) -> None:
        raise AssertionError("not used")

    async def close(self) -> None:
        raise AssertionError("not used")

    async def put_record(self, kind: str, key: str, value: Any, ttl: float) -> None:
        raise AssertionError("not used")

    async def records(self, kind: str) -> dict[str, Any]:
        raise AssertionError("not used")

    async def publish(self, channel: str, message: str) -> None:
        raise AssertionError("not used")

    def subscribe(self, channel: str) -> AsyncIterator[str]:
        raise AssertionError("not used")


def hive_record(
    heard: float, *, url: str = "http://127.0.0.1:9000", owner: str | None = None, **more: Any
) -> dict[str, Any]:
    beat = {"url": url, "heartbeat_interval": 5.0, "models": ["tiny"], **more}
    return {"replica": "queen-a", "heard": heard, "owner": owner, "heartbeat": beat}


def sync_at(now: list[float]) -> ReplicaSync:
    return ReplicaSync(HiveRegistry(3), NoStore(), "queen-b", clock=lambda: now[0])


def test_a_record_is_applied_only_when_newer_than_what_is_known() -> None:
    now = [1000.0]
    sync = sync_at(now)
    sync.apply_hive("h1", hive_record(990.0, models=["old"]))
    assert sync.registry.get("h1").last_seen == 990.0
    sync.apply_hive("h1", hive_record(980.0, models=["older"]))  # late: ignored
    assert sync.registry.get("h1").heartbeat.models == ["old"]
    sync.apply_hive("h1", hive_record(5000.0, models=["new"]))  # a clock ahead: taken as now
    assert sync.registry.get("h1").heartbeat.models == ["new"]
    assert sync.registry.get("h1").last_seen == 1000.0
    sync.apply_hive("h1", {**hive_record(1000.0), "replica": "queen-b"})  # its own: ignored
    sync.apply_hive("h2", {**hive_record(1000.0), "heard": "soon"})  # no valid time
    assert "h2" not in sync.registry


def test_a_record_keeps_the_hive_ids_binding_and_its_address_pin() -> None:
    now = [1000.0]
    sync = sync_at(now)
    sync.apply_hive("h1", hive_record(990.0, owner="hive:h1"))
    sync.apply_hive("h1", hive_record(995.0, owner="hive:intruder", models=["x"]))
    sync.apply_hive("h1", hive_record(996.0, owner="hive:h1", url="http://10.9.9.9:9000"))
    hive = sync.registry.get("h1")
    assert (hive.owner, hive.heartbeat.models, hive.url) == (
        "hive:h1",
        ["tiny"],
        "http://127.0.0.1:9000",
    )
    sync.apply_hive("h2", hive_record(996.0, url="ftp://nowhere"))  # parsed as a heartbeat is
    assert "h2" not in sync.registry


def test_a_removal_is_applied_and_older_records_do_not_bring_the_hive_back() -> None:
    now = [1000.0]
    sync = sync_at(now)
    sync.apply_hive("h1", hive_record(990.0))
    sync.apply_hive("h1", {"replica": "queen-a", "heard": 995.0, "removed": True})
    assert "h1" not in sync.registry
    sync.apply_hive("h1", hive_record(993.0))  # heard before it was stopped
    assert "h1" not in sync.registry
    now[0] = 1010.0
    sync.apply_hive("h1", hive_record(1005.0))  # started again since
    assert "h1" in sync.registry


def test_the_other_replicas_counts_add_up_and_bad_rows_are_skipped() -> None:
    sync = sync_at([1000.0])
    sync.apply_counts("queen-a", {"counts": [["h1", "w1", 2], ["h1", "w2", "3"], ["h1"]]})
    sync.apply_counts("queen-c", {"counts": [["h1", "w1", 1], ["h1", "w2", True]]})
    sync.apply_counts("queen-b", {"counts": [["h1", "w1", 7]]})  # its own: ignored
    assert sync.registry._shared_in_flight == {("h1", "w1"): 3}


async def test_a_hive_that_beats_to_one_replica_is_routable_from_the_other(
    redis: RedisServer, tmp_path: Path, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with hive.running(), replicas(redis.url, tmp_path, "a", "b") as (a, b):
        await hive.add_worker("w1")
        await hive.register(a.url)  # to A only
        await eventually(lambda: b.knows("h1"), "B knows the hive A heard")
        (listed,) = b.queen.hive_list().hives
        assert listed.hive_id == "h1" and listed.state == "up" and listed.url == hive.url
        # B routes to it, and B runs the job: the stream opens there
        job = await b.client.create("infer", **INFER)
        events = await collect(b.client, job.job_id)
        assert isinstance(events[-1].event, Succeeded)
        assert text(events) == "w0 w1 w2 "
        assert {e.origin.service for e in events if e.origin} == {"worker:w1"}
        # a heartbeat B hears goes to A too
        hive.models.append("other")
        await hive.register(b.url)
        await eventually(
            lambda: "other" in a.queen.registry.get("h1").heartbeat.models, "A hears B's beat"
        )


async def test_a_heartbeat_heard_while_redis_is_away_reaches_the_others_once_it_is_back(
    tmp_path: Path, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    with redis_server(persist=True) as redis:
        async with hive.running(), replicas(redis.url, tmp_path, "a", "b") as (a, b):
            redis.stop()
            response = await hive.register(a.url)  # A accepts it: Redis is A's to share
            assert response.status_code == 201 and a.knows("h1")
            await anyio.sleep(0.5)
            assert not b.knows("h1")
            redis.start()
            await eventually(lambda: b.knows("h1"), "B hears of it once Redis is back")


async def test_a_stopped_hive_is_forgotten_by_every_replica(
    redis: RedisServer, tmp_path: Path, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with hive.running(), replicas(redis.url, tmp_path, "a", "b") as (a, b):
        await hive.register(a.url)
        await eventually(lambda: b.knows("h1"), "B knows the hive")
        a.queen.registry.remove("h1")  # what hive_stop does on A
        await eventually(lambda: not b.knows("h1"), "B forgets it")
        for _ in range(3):  # and no replica brings it back from an older record
            await anyio.sleep(1.0)
            assert not a.knows("h1") and not b.knows("h1")


async def test_in_flight_counts_on_one_replica_steer_the_others_routing(
    redis: RedisServer, tmp_path: Path, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with hive.running(), replicas(redis.url, tmp_path, "a", "b") as (a, b):
        first = await hive.add_worker("a")  # 'a' wins ties
        second = await hive.add_worker("b")
        gate = anyio.Event()
        first.gate = gate
        await hive.register(a.url)
        await eventually(lambda: b.knows("h1"), "B knows the hive")
        async with anyio.create_task_group() as tg:
            held = await a.client.create("infer", **INFER)
            tg.start_soon(collect, a.client, held.job_id)
            with anyio.fail_after(20):
                await first.started.wait()  # A relays to worker a now
            assert a.in_flight("h1", "a") == 1
            await eventually(lambda: b.in_flight("h1", "a") == 1, "B sees A's request")
            assert b.queen.registry.in_flight(("h1", "a")) == 0  # not B's own
            job = await b.client.create("infer", **INFER)
            events = await collect(b.client, job.job_id)
            assert {e.origin.service for e in events if e.origin} == {"worker:b"}
            assert len(second.jobs) == 1
            gate.set()
        await eventually(lambda: b.in_flight("h1", "a") == 0, "A's request ended, for B too")


async def test_a_job_created_on_one_replica_is_listed_streamed_and_cancelled_on_the_other(
    redis: RedisServer, tmp_path: Path, fakes: Any
) -> None:
    hive = fakes.Hive("h1")
    async with hive.running(), replicas(redis.url, tmp_path, "a", "b") as (a, b):
        worker = await hive.add_worker("w1")
        worker.gate = anyio.Event()  # holds the generation after its first token
        await hive.register(a.url)
        on_a = await a.client.create("infer", **INFER)
        on_b = await b.client.create("status")
        for replica in (a, b):  # list on either shows both
            page = await replica.client.list(limit=10)
            assert {on_a.job_id, on_b.job_id} <= {j.job_id for j in page.jobs}
        seen_on_a: list[JobEvent] = []
        seen_on_b: list[JobEvent] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, a.client, on_a.job_id, 0, seen_on_a)  # A claims it: A runs it
            with anyio.fail_after(20):
                await worker.started.wait()
            # B streams it: the first token, relayed by A, comes from Redis
            tg.start_soon(collect, b.client, on_a.job_id, 0, seen_on_b)
            await eventually(lambda: text(seen_on_b) == "w0 ", "B streams A's job")
            assert on_a.job_id not in b.app.state.jobs.runs  # B only reads it
            status = await b.client.run("status")  # B's status names the job A runs
            assert on_a.job_id in {j["job_id"] for j in status["jobs"]}
            status = await b.client.cancel(on_a.job_id)  # cancel on B
            assert status.state == "cancelled"
        for events in (seen_on_a, seen_on_b):
            assert isinstance(events[-1].event, Cancelled)
            assert text(events) == "w0 "
        # A's relay ended, and cancelled the worker's job with it
        (worker_job_id, _) = worker.jobs[0]
        async with JobClient(worker.url) as direct:
            await eventually_async(
                lambda: direct.status(worker_job_id), lambda s: s.state == "cancelled"
            )


async def eventually_async(fetch: Callable[[], Any], check: Callable[[Any], bool]) -> None:
    for _ in range(POLLS):
        if check(await fetch()):
            return
        await anyio.sleep(0.02)
    raise AssertionError("not within time")


async def test_a_replica_shut_down_mid_generation_hands_its_infer_over(
    redis: RedisServer, tmp_path: Path, fakes: Any
) -> None:
    """A queen stopped on purpose (SIGTERM: its lifespan ends) leaves the worker job running,
    and the replica that adopts the job goes on relaying it."""
    hive = fakes.Hive("h1")
    async with hive.running(), replicas(redis.url, tmp_path, "b", lease_ttl=1.0) as (b,):
        worker = await hive.add_worker("w1")
        worker.words = 20
        worker.gate = anyio.Event()
        seen: list[JobEvent] = []
        async with replicas(redis.url, tmp_path, "a", lease_ttl=1.0) as (a,):
            await hive.register(a.url)
            job = await a.client.create("infer", **INFER)
            async with anyio.create_task_group() as tg:  # the client leaves A, A stops
                tg.start_soon(collect, a.client, job.job_id, 0, seen)
                await eventually(lambda: text(seen) == "w0 ", "A relays the first token")
                tg.cancel_scope.cancel()
        # A has stopped: its lifespan ended while it relayed the job
        worker.gate.set()
        rest = await collect(b.client, job.job_id, after=seen[-1].seq)
    assert isinstance(rest[-1].event, Succeeded), rest[-1].event
    assert text(seen) + text(rest) == "".join(f"w{i} " for i in range(20))
    assert len(worker.jobs) == 1


# -- a replica killed mid-generation ---------------------------------------------------------------


@asynccontextmanager
async def queen_process(
    name: str, tmp_path: Path, redis_url: str, secret_file: Path
) -> AsyncIterator[tuple[str, Process]]:
    """``rbee-queen`` on a free port, its own process group; the Redis URL by environment."""
    argv = [sys.executable, "-m", "rbee_queen.app", "--port", "0", "--replica-id", name]
    argv += ["--lease-ttl", "2"]  # a failover sooner than the default 5 s
    argv += ["--state-dir", str(tmp_path / name), "--secret-file", str(secret_file)]
    env = {**os.environ, "RBEE_QUEEN_REDIS_URL": redis_url}
    with (tmp_path / f"queen-{name}.log").open("wb") as log:
        process = await anyio.open_process(argv, stderr=log, env=env, start_new_session=True)
    async with process:
        try:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(30):
                line = (await lines.receive_until(b"\n", 65536)).decode()
            assert line.startswith(LISTENING), line
            yield json.loads(line.split(" ", 1)[1])["url"], process
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
            with anyio.fail_after(10):
                await process.wait()


async def test_an_infer_adopted_from_a_killed_replica_goes_on_with_the_same_worker_job(
    tmp_path: Path, fakes: Any
) -> None:
    secret_file = tmp_path / "secret"
    secret = load_or_create_secret(secret_file)  # one secret for both replicas
    hive = fakes.Hive("h1", secret=secret)
    token = keeper_token(secret)
    with redis_server(password=REDIS_PASSWORD) as redis:  # the replicas get it by environment
        await _failover(tmp_path, redis.url, secret_file, hive, token)
    for name in ("a", "b"):  # the Redis password is in no log
        assert REDIS_PASSWORD not in (tmp_path / f"queen-{name}.log").read_text()


async def _failover(
    tmp_path: Path, redis_url: str, secret_file: Path, hive: Any, token: str
) -> None:
    async with (
        hive.running(),
        queen_process("a", tmp_path, redis_url, secret_file) as (a_url, a_process),
        queen_process("b", tmp_path, redis_url, secret_file) as (b_url, _),
        JobClient(a_url, token=token, max_reconnects=0) as a,
        JobClient(b_url, token=token) as b,
    ):
        worker = await hive.add_worker("w1")
        worker.words = 40
        worker.gate = anyio.Event()
        await hive.register(a_url)
        job = await a.create("infer", **INFER)
        seen: list[JobEvent] = []
        with pytest.raises(Exception):  # noqa: B017 - A dies under the stream
            async with aclosing(a.events(job.job_id)) as events:
                async for ev in events:
                    assert isinstance(ev, JobEvent)
                    seen.append(ev)
                    if text(seen):
                        os.killpg(a_process.pid, signal.SIGKILL)  # A dies mid-generation
        assert text(seen) == "w0 "
        worker.gate.set()  # the worker's job goes on, with no queen reading it
        rest = await collect(b, job.job_id, after=seen[-1].seq)  # the client reconnects to B
        assert isinstance(rest[-1].event, Succeeded)
        whole = "".join(f"w{i} " for i in range(40))
        assert text(seen) + text(rest) == whole  # every token once
        assert len(worker.jobs) == 1  # the same worker job: the generation never restarted
        seqs = [e.seq for e in seen + rest]
        assert seqs == sorted(set(seqs))

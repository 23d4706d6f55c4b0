"""The job store seam: the same tests against ``MemoryStore`` and ``RedisStore`` (a real
``redis-server``, started by ``jobproto.testing.redis_server``), then what only Redis does."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    rule,
    run_state_machine_as_test,
)

from jobproto._errors import IdempotencyConflict, JobNotFound, LocalProtocolError, RequestError
from jobproto._events import Cancelled, Expired, Gap
from jobproto._log import EventLog
from jobproto._registry import Job
from jobproto._states import JobState
from jobproto.redis import RedisStore, _secrets, redacted_url
from jobproto.store import JobStore, MemoryStore, StoreUnavailable
from jobproto.testing import redis_server

pytestmark = pytest.mark.anyio

NOW = 1_000.0


def frame(seq: int, text: str = "x") -> bytes:
    return f"id: {seq}\nevent: data\ndata: {text}\n\n".encode()


def seq_of(data: bytes) -> int:
    return int(data.split(b"\n", 1)[0].removeprefix(b"id: "))


def ended(job: Job, now: float = NOW + 5, result: Any = 42) -> Job:
    """``job`` as it ended ``succeeded`` (what the service passes to ``append(end=...)``)."""
    return attrs.evolve(job, state=JobState.SUCCEEDED, finished_at=now, result=result)


async def create(store: JobStore, key: str | None = None, fingerprint: str = "fp") -> Job:
    job, _ = await store.create(
        "echo",
        {"operation": "echo", "n": 1},
        None,
        "corr-1",
        NOW,
        trace_headers={},
        idempotency_key=key,
        fingerprint=fingerprint,
    )
    return job


def make_store(kind: str, url: str, namespace: str, max_log_events: int = 10_000) -> JobStore:
    if kind == "memory":
        return MemoryStore(max_log_events)
    return RedisStore(url, namespace, max_log_events=max_log_events)


@contextlib.asynccontextmanager
async def opened(store: JobStore) -> AsyncIterator[JobStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_url: str, redis_namespace: str
) -> AsyncIterator[JobStore]:
    async with opened(make_store(request.param, redis_url, redis_namespace)) as opened_store:
        yield opened_store


@pytest.fixture
async def redis_store(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, redis_namespace, lease_ttl=0.2)
    async with opened(store):
        yield store


def test_an_event_log_may_start_after_stored_events() -> None:
    log = EventLog(4, first_seq=11)
    assert (log.first_seq, log.last_seq, log.next_seq, len(log)) == (11, 10, 11, 0)
    assert log.read(10) == (None, [])
    assert log.append(frame(11)) == 11
    assert log.read(10) == (None, [frame(11)])
    assert log.read(5) == (Gap(after=5, first_available=11), [frame(11)])
    with pytest.raises(LocalProtocolError):
        EventLog(4, first_seq=0)


# --- the protocol, against both stores ------------------------------------------------------------


async def test_create_with_an_idempotency_key_replays_or_conflicts(store: JobStore) -> None:
    first, created = await store.create(
        "echo", {"n": 1}, None, "c", NOW, trace_headers={"traceparent": "t"},
        idempotency_key="k", fingerprint="a",
    )  # fmt: skip
    assert created and first.state is JobState.QUEUED and first.last_seq == 0
    again, created = await store.create(
        "echo", {"n": 1}, None, "c2", NOW + 1, trace_headers={},
        idempotency_key="k", fingerprint="a",
    )  # fmt: skip
    assert not created and again.id == first.id and again.correlation_id == "c"
    assert again.trace_headers == {"traceparent": "t"} and again.idempotency_key == "k"
    with pytest.raises(IdempotencyConflict):
        await create(store, key="k", fingerprint="b")
    assert await store.has_key("k") and not await store.has_key("other")


async def test_get_and_job_not_found(store: JobStore) -> None:
    job = await create(store)
    got = await store.get(job.id)
    assert (got.id, got.operation, got.correlation_id, got.created_at, got.index) == (
        job.id, "echo", "corr-1", NOW, job.index,
    )  # fmt: skip
    with pytest.raises(JobNotFound):
        await store.get("job_nope")
    with pytest.raises(JobNotFound):
        await store.claim("job_nope", "a", NOW)


async def test_page_newest_first_with_cursor_and_state(store: JobStore) -> None:
    jobs = [await create(store) for _ in range(5)]
    for job in jobs[1:3]:
        assert await store.claim(job.id, "a", NOW) is not None
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = await store.page(state=None, cursor=cursor, limit=2)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == [j.id for j in reversed(jobs)]
    running, cursor = await store.page(state=JobState.RUNNING, cursor=None, limit=10)
    assert [j.id for j in running] == [jobs[2].id, jobs[1].id] and cursor is None
    with pytest.raises(RequestError) as info:
        await store.page(state=None, cursor="nope", limit=2)
    assert info.value.code == "invalid_cursor"


async def test_a_job_is_claimed_once(store: JobStore) -> None:
    job = await create(store)
    claimed = await store.claim(job.id, "a", NOW + 1)
    assert claimed is not None and claimed.state is JobState.RUNNING
    assert claimed.started_at == NOW + 1
    assert await store.claim(job.id, "b", NOW + 2) is None
    assert (await store.get(job.id)).state is JobState.RUNNING


async def test_append_and_read_from_a_cursor(store: JobStore) -> None:
    job = await create(store)
    await store.claim(job.id, "a", NOW)
    assert await store.append(job.id, "a", 0, [frame(1), frame(2), frame(3)])
    assert await store.read(job.id, 0) == (None, [frame(1), frame(2), frame(3)])
    assert await store.read(job.id, 1) == (None, [frame(2), frame(3)])
    assert await store.read(job.id, 1, 1) == (None, [frame(2)])
    assert await store.read(job.id, 3) == (None, [])
    assert (await store.get(job.id)).last_seq == 3
    # frames the log already has: in one process a no-op (Job.emit wrote them), else fenced
    assert await store.append(job.id, "a", 1, [frame(9)]) is (not store.shared)
    assert not await store.append(job.id, "a", 5, [frame(9)])
    assert await store.read(job.id, 0) == (None, [frame(1), frame(2), frame(3)])


async def test_a_body_with_a_lone_surrogate_is_stored_as_it_came(redis_store: RedisStore) -> None:
    # legal JSON ("\udb3e"), not encodable as UTF-8: stored as its escape, read back the same
    body = {"operation": "echo", "messages": ["\udb3e", "caf\u00e9"]}
    job, created = await redis_store.create(
        "echo", body, None, "corr-1", NOW, trace_headers={}, idempotency_key=None, fingerprint=""
    )
    assert created
    assert await redis_store.body(job.id) == body


async def test_append_after_a_hole_reads_with_a_gap(redis_store: RedisStore) -> None:
    # events 3..5 never reached the store (the owner's own log trimmed them): a hole, then the rest
    job = await create(redis_store)
    await redis_store.claim(job.id, "a", NOW)
    assert await redis_store.append(job.id, "a", 0, [frame(1), frame(2)])
    assert await redis_store.append(job.id, "a", 2, [frame(6), frame(7)], skip=3)
    assert (await redis_store.get(job.id)).last_seq == 7
    gap, frames = await redis_store.read(job.id, 2)
    assert gap is not None and (gap.after, gap.first_available) == (2, 6)
    assert frames == [frame(6), frame(7)]
    # frames in a row, as from an EventLog: the hole is the next read's gap
    assert await redis_store.read(job.id, 0) == (None, [frame(1), frame(2)])
    # the same batch again (a reply lost on the way back): taken as written
    assert await redis_store.append(job.id, "a", 2, [frame(6), frame(7)], skip=3)
    assert not await redis_store.append(job.id, "a", 2, [frame(8)], skip=3)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_trimmed_log_reads_with_a_gap(
    kind: str, redis_url: str, redis_namespace: str
) -> None:
    async with opened(make_store(kind, redis_url, redis_namespace, max_log_events=10)) as store:
        job = await create(store)
        await store.claim(job.id, "a", NOW)
        for start in range(0, 300, 50):
            batch = [frame(seq) for seq in range(start + 1, start + 51)]
            assert await store.append(job.id, "a", start, batch)
        gap, frames = await store.read(job.id, 0)
        assert gap is not None and gap.after == 0
        assert 10 <= len(frames) < 300
        assert [seq_of(f) for f in frames] == list(range(gap.first_available, 301))
        assert await store.read(job.id, 299) == (None, [frame(300)])


async def test_wait_wakes_on_append_and_times_out(store: JobStore) -> None:
    job = await create(store)
    await store.claim(job.id, "a", NOW)
    assert not await store.wait(job.id, 0, 0.05)
    woke: list[bool] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                woke.append(await store.wait(job.id, 0, 30))

            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert await store.append(job.id, "a", 0, [frame(1)])
    assert woke == [True]
    assert await store.wait(job.id, 0, 0)  # it has one already: at once
    with pytest.raises(JobNotFound):
        await store.wait("job_nope", 0, 0.01)


async def test_one_terminal_event_ever(store: JobStore) -> None:
    job = await create(store)
    running = await store.claim(job.id, "a", NOW)
    assert running is not None
    assert await store.append(job.id, "a", 0, [frame(1), frame(2, "end")], end=ended(running))
    assert not await store.append(job.id, "a", 2, [frame(3, "end")], end=ended(running))
    assert await store.end_queued(job.id, Cancelled("late"), NOW) is None
    done = await store.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.result == 42 and done.finished_at == NOW + 5
    assert await store.read(job.id, 0) == (None, [frame(1), frame(2, "end")])

    claimed = await create(store)
    await store.claim(claimed.id, "a", NOW)
    assert await store.end_queued(claimed.id, Cancelled("no"), NOW) is None

    queued = await create(store)
    cancelled = await store.end_queued(queued.id, Cancelled("by you"), NOW + 1)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert cancelled.cancel_reason == "by you" and cancelled.last_seq == 1
    _, frames = await store.read(queued.id, 0)
    assert len(frames) == 1 and b"event: cancelled" in frames[0] and b"by you" in frames[0]
    assert await store.claim(queued.id, "a", NOW) is None
    assert await store.end_queued(queued.id, Expired("again"), NOW) is None


async def test_a_non_owner_is_fenced(store: JobStore) -> None:
    job = await create(store)
    assert not await store.append(job.id, "a", 0, [frame(1)])  # queued: nobody owns it yet
    await store.claim(job.id, "a", NOW)
    assert not await store.append(job.id, "b", 0, [frame(1)])
    assert await store.read(job.id, 0) == (None, [])
    assert not await store.append("job_nope", "a", 0, [frame(1)])


async def test_sweep_expires_queued_jobs(store: JobStore) -> None:
    job = await create(store)
    claimed = await create(store)
    await store.claim(claimed.id, "a", NOW)
    assert await store.sweep(NOW + 5, 10, 3600) == []
    assert await store.sweep(NOW + 11, 10, 3600) == [job.id]
    expired = await store.get(job.id)
    assert expired.state is JobState.EXPIRED
    assert expired.cancel_reason == "no subscriber within 10 s"
    assert (await store.get(claimed.id)).state is JobState.RUNNING
    assert await store.sweep(NOW + 12, 10, 3600) == []


async def test_sweep_forgets_jobs_past_their_retention(store: JobStore) -> None:
    job = await create(store)
    running = await store.claim(job.id, "a", NOW)
    assert running is not None
    assert await store.append(job.id, "a", 0, [frame(1)], end=ended(running, now=NOW + 1))
    await store.sweep(NOW + 50, 10, 100)
    assert [j.id for j in (await store.page(state=None, cursor=None, limit=5))[0]] == [job.id]
    await store.sweep(NOW + 101, 10, 100)
    assert (await store.page(state=None, cursor=None, limit=5))[0] == []


def test_the_store_module_imports_no_io_library() -> None:
    probe = (
        "import sys, jobproto.store; "
        "print(sorted({n.partition('.')[0] for n in sys.modules} & "
        "{'anyio', 'redis', 'starlette', 'httpx', 'uvicorn'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_redis_py_the_error_names_the_extra() -> None:
    probe = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import jobproto.redis\n"
        "except ModuleNotFoundError as exc:\n    print(exc.name, '|', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'jobproto[redis]'" in done.stdout and done.stdout.startswith("redis")


# --- Redis only -----------------------------------------------------------------------------------


def test_redacted_url() -> None:
    assert redacted_url("redis://user:pw@host:6379/0") == "redis://host:6379/0"
    assert redacted_url("rediss://:pw@[::1]:6380") == "rediss://[::1]:6380"
    assert redacted_url("redis://host/0?password=pw&db=1") == "redis://host/0?db=1"
    assert redacted_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


@pytest.mark.parametrize("password", ["xq/zk", "xq#zk", "xq?zk", "xq@zk", "xq/zk#jv?wy@vv"])
def test_redacted_url_never_shows_a_password_a_parser_would_misread(password: str) -> None:
    url = f"redis://user:{password}@host:6379/0"
    assert redacted_url(url) == "redis://host:6379/0"
    assert _secrets(url)[0] == password  # the whole of it, replaced first in errors
    try:
        RedisStore(url)
    except LocalProtocolError as exc:  # a URL redis-py misreads is refused, naming none of it
        fragments = password.replace("#", "/").replace("?", "/").replace("@", "/").split("/")
        assert "user" not in str(exc) and not any(f in str(exc) for f in fragments)
        assert exc.__cause__ is None and exc.__suppress_context__


async def orphaned(store: RedisStore, job_id: str) -> None:
    with anyio.fail_after(10):
        while job_id not in await store.orphans(NOW):
            await anyio.sleep(0.05)


async def test_adopt_after_the_lease_lapses(redis_store: RedisStore, redis_url: str) -> None:
    store = redis_store
    job = await create(store)
    # claimed through a store with a long lease: the lease holds for as long as the test asks
    long = RedisStore(redis_url, store.namespace, lease_ttl=60.0)
    async with opened(long):
        await long.claim(job.id, "a", NOW)
        assert await long.append(job.id, "a", 0, [frame(1)], checkpoint={"relay": {"seq": 7}})
        assert await long.adopt(job.id, "b", NOW) is None  # the lease still holds
    assert await store.renew("a", [job.id]) == set()  # renewed with the short lease now
    await orphaned(store, job.id)
    adopted = await store.adopt(job.id, "b", NOW)
    assert adopted is not None
    taken, checkpoint = adopted
    assert taken.state is JobState.RUNNING and taken.last_seq == 1
    assert checkpoint == {"relay": {"seq": 7}}
    assert await store.adopt(job.id, "c", NOW) is None
    assert not await store.append(job.id, "a", 1, [frame(2)])  # the old owner is fenced
    assert await store.append(job.id, "b", 1, [frame(2)])
    assert await store.renew("a", [job.id]) == {job.id}
    assert job.id not in await store.orphans(NOW)
    assert await store.body(job.id) == {"operation": "echo", "n": 1}


async def test_finished_jobs_expire_in_redis(redis_url: str, redis_namespace: str) -> None:
    async with opened(RedisStore(redis_url, redis_namespace, retention=0.2)) as store:
        job = await create(store, key="once")
        running = await store.claim(job.id, "a", NOW)
        assert running is not None
        assert await store.append(job.id, "a", 0, [frame(1)], end=ended(running))
        with anyio.fail_after(10):
            while await store.has_key("once"):
                await anyio.sleep(0.05)
        with pytest.raises(JobNotFound):
            await store.get(job.id)
        assert (await store.page(state=None, cursor=None, limit=5))[0] == []


async def test_renew_keeps_jobs_and_returns_the_lost(redis_store: RedisStore) -> None:
    store = redis_store
    kept, done = await create(store), await create(store)
    for job in (kept, done):
        await store.claim(job.id, "a", NOW)
    running = await store.get(done.id)
    assert await store.append(done.id, "a", 0, [frame(1)], end=ended(running))
    assert await store.renew("a", [kept.id, done.id, "job_nope"]) == {done.id, "job_nope"}
    assert await store.renew("b", [kept.id]) == {kept.id}
    assert await store.renew("a", []) == set()
    await orphaned(store, kept.id)  # nobody renewed: it lapses...
    assert await store.renew("a", [kept.id]) == set()  # ...but nobody adopted it: still a's
    assert kept.id not in await store.orphans(NOW)


async def test_cancel_requests_reach_every_subscriber(redis_store: RedisStore) -> None:
    store = redis_store
    got: list[tuple[str, str]] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                async with contextlib.aclosing(store.cancel_requests()) as requests:
                    async for request in requests:
                        got.append(request)
                        tg.cancel_scope.cancel()

            tg.start_soon(listen)
            channel = f"{store.namespace}:chan:cancel"
            while not (await store._redis.pubsub_numsub(channel))[0][1]:
                await anyio.sleep(0.01)
            await store.request_cancel("job_1", "the user asked")
    assert got == [("job_1", "the user asked")]


async def test_follow_returns_new_frames_and_wakes_on_nudge(redis_store: RedisStore) -> None:
    store = redis_store
    job = await create(store)
    await store.claim(job.id, "a", NOW)
    assert await store.append(job.id, "a", 0, [frame(1), frame(2)])
    assert await store.follow({job.id: 0}, 1, replica="r1") == {job.id: [frame(1), frame(2)]}
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            found: list[dict[str, list[bytes]]] = []

            async def follow() -> None:
                found.append(await store.follow({job.id: 2}, 30, replica="r1"))

            tg.start_soon(follow)
            await anyio.sleep(0.05)
            await store.nudge("r1")
    assert found == [{}]
    await store.nudge("r1")  # a nudge between two follows is not lost either
    with anyio.fail_after(10):
        assert await store.follow({job.id: 2}, 30, replica="r1") == {}
    assert await store.append(job.id, "a", 2, [frame(3)])
    assert await store.follow({job.id: 2}, 30, replica="r1") == {job.id: [frame(3)]}


async def test_records_and_messages(redis_store: RedisStore) -> None:
    store = redis_store
    await store.put_record("hive", "h1", {"url": "http://h1"}, 30)
    await store.put_record("hive", "h2", {"url": "http://h2"}, 0.001)
    with anyio.fail_after(10):
        while "h2" in await store.records("hive"):
            await anyio.sleep(0.01)
    assert await store.records("hive") == {"h1": {"url": "http://h1"}}
    got: list[str] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                async with contextlib.aclosing(store.subscribe("hives")) as messages:
                    async for message in messages:
                        got.append(message)
                        tg.cancel_scope.cancel()

            tg.start_soon(listen)
            while not (await store._redis.pubsub_numsub(f"{store.namespace}:chan:hives"))[0][1]:
                await anyio.sleep(0.01)
            await store.publish("hives", "changed")
    assert got == ["changed"]


async def test_store_unavailable_then_recovered_and_no_password_shown() -> None:
    secret = "s3cret-Pa55"
    with redis_server(persist=True, password=secret) as server:
        store = RedisStore(server.url, "t")
        assert secret not in repr(store)
        async with opened(store):
            job = await create(store)
            server.stop()
            with pytest.raises(StoreUnavailable) as info:
                await store.get(job.id)
            error = info.value
            assert error.status == 503 and error.code == "store_unavailable"
            # the client learns the kind of error, never where the store is; the log does
            assert error.message == "the job store is unavailable: ConnectionError"
            assert error.detail.startswith("the job store is unavailable: redis://127.0.0.1:")
            assert dict(error.headers) == {"Retry-After": "1"}
            shown = "".join(traceback.format_exception(error)) + repr(error) + str(error.to_json())
            shown += error.detail
            assert secret not in shown
            with pytest.raises(StoreUnavailable):
                await store.wait(job.id, 0, 0.01)
            server.start()  # Redis restarted, with its append-only file
            assert (await store.get(job.id)).id == job.id
            assert await store.claim(job.id, "a", NOW) is not None


async def test_a_wrong_password_is_unavailable_without_the_password() -> None:
    with redis_server(password="right-one") as server:
        store = RedisStore(server.url.replace("right-one", "wrong-one"), "t")
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        await store.close()
    shown = "".join(traceback.format_exception(info.value))
    assert "wrong-one" not in shown and "right-one" not in shown


# --- a state machine: both stores against one model -----------------------------------------------


@attrs.define
class Model:
    state: JobState = JobState.QUEUED
    frames: list[bytes] = attrs.field(factory=list)
    owner: str | None = None


class StoreMachine(RuleBasedStateMachine):
    """Every step on both stores and on a model; their answers must agree."""

    url = ""
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        namespace = f"machine-{uuid.uuid4().hex[:12]}"
        self.stores: list[JobStore] = [MemoryStore(), RedisStore(self.url, namespace)]
        for store in self.stores:
            self.runner.run(store.open())
        self.models: list[Model] = []
        self.ids: list[list[str]] = []  # per model job: its id in each store
        self.keys: dict[str, tuple[str, int]] = {}

    def both(self, call: Any) -> list[Any]:
        async def run() -> list[Any]:
            out = []
            for store in self.stores:
                try:
                    out.append(await call(store, self.stores.index(store)))
                except Exception as exc:  # compared as their type
                    out.append(type(exc))
            return out

        return self.runner.run(run())

    @rule(target=jobs, key=st.sampled_from([None, "k1", "k2"]), fp=st.sampled_from(["a", "b"]))
    def create(self, key: str | None, fp: str) -> int:
        results = self.both(lambda s, i: create(s, key, fp))
        if key is not None and key in self.keys:
            seen_fp, index = self.keys[key]
            if seen_fp != fp:
                assert results == [IdempotencyConflict, IdempotencyConflict]
            else:
                assert [j.id for j in results] == self.ids[index]
            return index
        assert all(isinstance(j, Job) for j in results)
        self.models.append(Model())
        self.ids.append([j.id for j in results])
        if key is not None:
            self.keys[key] = (fp, len(self.models) - 1)
        return len(self.models) - 1

    @rule(job=jobs, owner=st.sampled_from(["a", "b"]))
    def claim(self, job: int, owner: str) -> None:
        model = self.models[job]
        results = self.both(lambda s, i: s.claim(self.ids[job][i], owner, NOW))
        if model.state is JobState.QUEUED:
            assert all(r is not None and r.state is JobState.RUNNING for r in results)
            model.state, model.owner = JobState.RUNNING, owner
        elif model.state is JobState.RUNNING and model.owner == owner:
            # a claim retried by its owner: the same answer again, nothing changed
            assert all(r is not None and r.state is JobState.RUNNING for r in results)
        else:
            assert results == [None, None]

    @rule(
        job=jobs,
        owner=st.sampled_from(["a", "b"]),
        count=st.integers(1, 3),
        end=st.booleans(),
        skew=st.sampled_from([0, 0, 0, 1]),
    )
    def append(self, job: int, owner: str, count: int, end: bool, skew: int) -> None:
        model = self.models[job]
        after = len(model.frames) + skew
        frames = [frame(after + n, f"{job}") for n in range(1, count + 1)]

        async def call(store: JobStore, i: int) -> bool:
            finished = ended(await store.get(self.ids[job][i])) if end else None
            return await store.append(self.ids[job][i], owner, after, frames, end=finished)

        results = self.both(call)
        ok = model.state is JobState.RUNNING and model.owner == owner and skew == 0
        assert results == [ok, ok]
        if ok:
            model.frames += frames
            if end:
                model.state = JobState.SUCCEEDED

    @rule(job=jobs)
    def end_queued(self, job: int) -> None:
        model = self.models[job]
        results = self.both(lambda s, i: s.end_queued(self.ids[job][i], Cancelled("x"), NOW))
        if model.state is JobState.QUEUED:
            assert all(r is not None and r.state is JobState.CANCELLED for r in results)
            model.state = JobState.CANCELLED
            model.frames.append(b"")  # its terminal frame (bytes differ: the job ids do)
        else:
            assert results == [None, None]

    @rule(job=jobs, data=st.data())
    def read(self, job: int, data: st.DataObject) -> None:
        model = self.models[job]
        after = data.draw(st.integers(0, len(model.frames)))
        results = self.both(lambda s, i: s.read(self.ids[job][i], after))
        expected = model.frames[after:]
        for gap, frames in results:
            assert gap is None
            if model.state is JobState.CANCELLED:
                assert len(frames) == len(expected)
            else:
                assert frames == expected
        states = self.both(lambda s, i: s.get(self.ids[job][i]))
        assert [j.state for j in states] == [model.state, model.state]
        assert [j.last_seq for j in states] == [len(model.frames)] * 2

    def teardown(self) -> None:
        for store in self.stores:
            self.runner.run(store.close())
        self.runner.close()


def test_both_stores_follow_one_model(redis_url: str) -> None:
    class Machine(StoreMachine):
        url = redis_url

    run_state_machine_as_test(
        Machine, settings=settings(max_examples=15, stateful_step_count=15, deadline=None)
    )


async def test_a_script_run_twice_by_its_caller_answers_the_same(redis_store: RedisStore) -> None:
    """A reply lost on the way back makes its caller run the script again: claim, append and
    adopt answer a second run from the same owner as the first, and write nothing twice."""
    store = redis_store
    job = await create(store)
    assert await store.claim(job.id, "a", NOW) is not None
    again = await store.claim(job.id, "a", NOW)
    assert again is not None and again.state is JobState.RUNNING
    assert await store.claim(job.id, "b", NOW) is None
    batch = [frame(1), frame(2)]
    assert await store.append(job.id, "a", 0, batch, checkpoint={"i": 2})
    assert await store.append(job.id, "a", 0, batch, checkpoint={"i": 2})
    assert not await store.append(job.id, "b", 0, batch)  # another owner: fenced
    assert await store.read(job.id, 0) == (None, batch)
    await orphaned(store, job.id)
    assert await store.adopt(job.id, "b", NOW) is not None
    again_adopted = await store.adopt(job.id, "b", NOW)
    assert again_adopted is not None and again_adopted[1] == {"i": 2}
    assert await store.adopt(job.id, "c", NOW) is None


async def test_many_concurrent_commands_wait_for_a_connection(redis_store: RedisStore) -> None:
    """More commands at once than the pool has connections queue for one, none fails."""
    store = redis_store
    job = await create(store)
    results: list[Job] = []

    async def get() -> None:
        results.append(await store.get(job.id))

    async with anyio.create_task_group() as tg:
        for _ in range(400):
            tg.start_soon(get)
    assert len(results) == 400


async def test_a_cancel_request_is_kept_for_the_owner_and_the_adopter(
    redis_store: RedisStore,
) -> None:
    store = redis_store
    job = await create(store)
    await store.request_cancel(job.id, "too late")  # queued: nothing to keep
    await store.claim(job.id, "a", NOW)
    assert await store.renew_leases("a", [job.id]) == (set(), {})
    await store.request_cancel(job.id, "stop")
    assert await store.renew_leases("a", [job.id]) == (set(), {job.id: "stop"})
    assert (await store.get(job.id)).cancel_reason == "stop"
    await orphaned(store, job.id)
    adopted = await store.adopt(job.id, "b", NOW)
    assert adopted is not None and adopted[0].cancel_reason == "stop"


async def test_every_error_redis_answers_is_unavailable() -> None:
    """Out of memory (or busy, or any other refusal) is the store being unavailable: 503."""
    with redis_server() as server:
        store = RedisStore(server.url, "t")
        async with opened(store):
            await store._redis.config_set("maxmemory", "1")
            await store._redis.config_set("maxmemory-policy", "noeviction")
            with pytest.raises(StoreUnavailable) as info:
                await create(store)
    assert info.value.message == "the job store is unavailable: OutOfMemoryError"
    assert "maxmemory" in info.value.detail


async def test_orphans_forget_a_running_job_whose_hash_is_gone(redis_store: RedisStore) -> None:
    store = redis_store
    gone, kept = await create(store), await create(store)
    for job in (gone, kept):
        await store.claim(job.id, "a", NOW)
    await store._redis.delete(f"{store.namespace}:job:{gone.id}")
    await orphaned(store, kept.id)
    assert await store.orphans(NOW) == [kept.id]
    running = await store._redis.zrange(f"{store.namespace}:running", 0, -1)
    assert running == [kept.id.encode()]


async def test_a_subscribed_queued_job_does_not_expire(redis_store: RedisStore) -> None:
    store = redis_store
    waited, unwatched = await create(store), await create(store)
    await store.mark_subscribed(waited.id)
    assert await store.sweep(NOW + 100, 10.0, 3600.0) == [unwatched.id]
    assert (await store.get(waited.id)).state is JobState.QUEUED

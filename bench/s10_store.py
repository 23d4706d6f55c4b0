"""10. The shared job store: jobproto on Redis beside the in-memory store.

One ``redis-server`` (Debian's, on a loopback port, a private directory; append-only file on,
fsync once a second, as a store meant to survive a restart runs) serves every Redis figure;
the baseline is the same jobproto service with its default in-memory store, measured in the
same rounds (runs alternate between the two servers, so each ratio compares runs made seconds
apart). The Redis server's own CPU is not in the service's CPU figures.

* Store alone: ``JobStore.append`` of one job's frames in batches of 32 (what a service's
  persister writes when events come faster than one round trip), read back with ``read`` by a
  reader waiting with ``wait``, both in this process: frames/s through the store, no HTTP.
* Stream throughput: section 1's ``flood`` job (one stream x N events, and 100 streams at once)
  on a service per store, read with the same client: events/s.
* Create + first event: section 3's ``first`` job, ``POST /v1/jobs`` then its stream until the
  first ``data`` event.
* Fan-out: section 4's ``tick`` job to 1,000 subscribers: delivery latency p50/p99.
* Memory per retained finished job: section 5's ``burst`` jobs of 100 events, retention 1 h. In
  memory, the service's RSS growth per job; on Redis, Redis's own ``used_memory`` growth per job
  (``INFO memory``: the hash, the stream, the list entries), and the service's RSS growth beside
  it (what a replica keeps of jobs it no longer streams).
* Failover: two ``rbee-queen`` replicas on the Redis server, a synthetic worker at a fixed token
  rate registered with them as a hive would; an ``infer`` created on replica A, its stream read
  for a few tokens, then A's process group gets SIGKILL. The client reconnects to replica B with
  ``Last-Event-ID``; the figure is the time from the kill until the first event A had not
  stored arrives through B (what A had stored, B sends at once; the rest comes once B has
  adopted the job, after A's lease lapsed), with the default lease TTL (5 s) and a short one
  (``--lease-ttl 2``). Every token must arrive exactly once (counted), or the round fails.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from rbee_contracts import auth
from rbee_contracts.records import MAX_HEARTBEAT_INTERVAL

from ._client import ClientPool, StreamResult, count_stream, http_client, read_events
from ._ctx import Ctx, create_job
from ._procs import Proc, free_port
from ._rbee import infer_body, start_worker, wait_ready
from ._report import MICRO, Row, Section
from ._stats import Stat, ratio_stat, stat
from .s3_create import _create
from .s4_fanout import _round as _fanout_round
from .s4_fanout import _summary as _fanout_summary
from .s5_memory import _create_many, _settled_rss

__all__ = ["run"]

KINDS = ("redis", "memory")
KIB = 1024
#: the namespace of the bench services' keys
NAMESPACE = "bench"
#: frames per ``append`` in the store-alone figure
BATCH = 32
#: failover: tokens/s of the worker, tokens asked for, tokens read from A before the kill
FAILOVER_RATE = 100.0
FAILOVER_TOKENS = 1000
FAILOVER_BEFORE = 20
#: the lease TTLs of the replicas (rbee-queen --lease-ttl): the default first
FAILOVER_LEASES = (5.0, 2.0)
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
HIVE_ID = "bench"


@contextmanager
def _redis(ctx: Ctx) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port, as a job store would run in
    production: append-only file on, fsync once a second (``jobproto.testing.redis_server``'s
    ``persist`` syncs every write, which measures the disk). Its URL."""
    import shutil

    import redis as redis_py

    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rbee-bench-redis-") as directory:
        argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        proc = ctx.procs.start("s10-redis-server", argv, prefix=None, port=port)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis_py.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {port}") from None
                time.sleep(0.05)
        client.close()
        try:
            yield url
        finally:
            ctx.procs.stop(proc)


# -- the store alone -------------------------------------------------------------------------------


def _frames(n: int) -> list[bytes]:
    from .servers import frame, token_payload

    return [frame(i + 1, "j", "c", token_payload(i)) for i in range(n)]


async def _store_round(store: Any, frames: list[bytes]) -> float:
    """One job's ``frames`` appended in batches and read back by a waiting reader: frames/s."""
    from jobproto._correlation import new_correlation_id

    now = time.time()
    job, _ = await store.create(
        "flood",
        {"operation": "flood", "n": len(frames)},
        None,
        new_correlation_id(),
        now,
        trace_headers={},
        idempotency_key=None,
        fingerprint="",
    )
    claimed = await store.claim(job.id, "bench", now)
    if claimed is None:
        raise RuntimeError(f"store {store!r}: the job was not claimed")
    got = 0

    async def reader() -> None:
        nonlocal got
        cursor = 0
        while cursor < len(frames):
            await store.wait(job.id, cursor, 10.0)
            gap, read = await store.read(job.id, cursor)
            if gap is not None:
                raise RuntimeError(f"store {store!r}: a gap after {cursor}")
            cursor += len(read)
            got += len(read)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        after = 0
        for i in range(0, len(frames), BATCH):
            batch = frames[i : i + BATCH]
            if not await store.append(job.id, "bench", after, batch):
                raise RuntimeError(f"store {store!r}: append fenced at {after}")
            after += len(batch)
    elapsed = time.perf_counter() - started
    if got != len(frames):
        raise RuntimeError(f"store {store!r}: {got} of {len(frames)} frames read")
    return len(frames) / elapsed


async def _store_alone(ctx: Ctx, sec: Section, url: str) -> None:
    from jobproto.redis import RedisStore
    from jobproto.store import MemoryStore

    n = ctx.size(20_000, 5_000)
    frames = _frames(n)
    stores: dict[str, Any] = {
        "redis": RedisStore(url, f"{NAMESPACE}-store", max_log_events=n),
        "memory": MemoryStore(max_log_events=n),
    }
    for store in stores.values():
        await store.open()
    try:
        for store in stores.values():  # warm up: connections, scripts
            await _store_round(store, frames[:500])
        rate: dict[str, list[float]] = {k: [] for k in KINDS}
        for rep in range(ctx.repeats):
            for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
                rate[kind].append(await _store_round(stores[kind], frames))
    finally:
        for store in stores.values():
            await store.close()
    ctx.log(
        "store alone: " + ", ".join(f"{k} {stat(v).median:,.0f} frames/s" for k, v in rate.items())
    )
    sec.rows.append(
        Row(
            f"store alone: append (batches of {BATCH}) + read, frames/s, {n:,} frames",
            "frames/s",
            stat(rate["redis"]),
            stat(rate["memory"]),
            ratio_stat(rate["redis"], rate["memory"]),
        )
    )


# -- the service on each store ---------------------------------------------------------------------


async def _flood(
    http: httpx.AsyncClient, server: Proc, streams: int, n: int
) -> tuple[float, float]:
    """``streams`` flood jobs of ``n`` events read at once: (events/s, server CPU us per event)."""
    body = {"operation": "flood", "n": n}
    ids = [await create_job(http, server.url, body) for _ in range(streams)]
    results: list[StreamResult] = []

    async def one(client: httpx.AsyncClient, url: str) -> None:
        results.append(await count_stream(client, url, end_mark=b"event: succeeded"))

    async with ClientPool(streams) as pool:
        cpu0 = server.cpu_seconds()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(one, pool.next(), f"{server.url}/v1/jobs/{job_id}/stream")
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu0
    total = sum(r.data_events for r in results)
    if total != streams * n or not all(r.ended_ok for r in results):
        raise RuntimeError(f"{server.name}: {total} of {streams * n} events arrived")
    return total / elapsed, cpu / total * 1e6


async def _throughput(ctx: Ctx, sec: Section, servers: dict[str, Proc]) -> None:
    cases = [(1, ctx.size(20_000, 5_000)), (100, ctx.size(500, 200))]
    async with http_client() as http:
        for kind in KINDS:  # warm up
            await _flood(http, servers[kind], 4, 200)
        for streams, n in cases:
            rate: dict[str, list[float]] = {k: [] for k in KINDS}
            cpu: dict[str, list[float]] = {k: [] for k in KINDS}
            for rep in range(ctx.repeats):
                for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
                    r, c = await _flood(http, servers[kind], streams, n)
                    rate[kind].append(r)
                    cpu[kind].append(c)
            ctx.log(
                f"store throughput {streams} stream(s): "
                + ", ".join(f"{k} {stat(v).median:,.0f} ev/s" for k, v in rate.items())
            )
            label = f"{streams} stream{'s' if streams > 1 else ''} x {n:,} events"
            sec.rows.append(
                Row(
                    f"events/s, {label}",
                    "events/s",
                    stat(rate["redis"]),
                    stat(rate["memory"]),
                    ratio_stat(rate["redis"], rate["memory"]),
                )
            )
            sec.rows.append(
                Row(
                    f"service CPU per event, {label}",
                    MICRO + "s",
                    stat(cpu["redis"]),
                    stat(cpu["memory"]),
                    ratio_stat(cpu["redis"], cpu["memory"]),
                    note="the Redis server's own CPU is not counted",
                )
            )


async def _create_first(ctx: Ctx, sec: Section, servers: dict[str, Proc]) -> None:
    per_round = ctx.size(100, 40)
    first: dict[str, list[float]] = {k: [] for k in KINDS}
    post: dict[str, list[float]] = {k: [] for k in KINDS}
    async with http_client() as http:
        for kind in KINDS:  # warm up
            for _ in range(20):
                await _create(http, servers[kind])
        for rep in range(ctx.repeats):
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
            for i in range(per_round):
                for kind in KINDS if (i + rep) % 2 == 0 else KINDS[::-1]:
                    samples[kind].append(await _create(http, servers[kind]))
            for kind, got in samples.items():
                post[kind].append(stat([p for p, _ in got]).median * 1e3)
                first[kind].append(stat([f for _, f in got]).median * 1e3)
    ctx.log(
        "store create+first event: "
        + ", ".join(f"{k} {stat(v).median:.2f} ms" for k, v in first.items())
    )
    sec.rows += [
        Row(
            f"POST /v1/jobs + first event, p50 of {per_round}",
            "ms",
            stat(first["redis"]),
            stat(first["memory"]),
            ratio_stat(first["redis"], first["memory"]),
        ),
        Row(
            f"POST /v1/jobs alone, p50 of {per_round}",
            "ms",
            stat(post["redis"]),
            stat(post["memory"]),
            ratio_stat(post["redis"], post["memory"]),
        ),
    ]


async def _fanout(ctx: Ctx, sec: Section, servers: dict[str, Proc]) -> None:
    subscribers = 1000
    events = ctx.size(21, 11)
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    for rep in range(min(ctx.repeats, 3)):
        for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
            latency = await _fanout_round(ctx, "jobproto", servers[kind], subscribers, events)
            results[kind].append(_fanout_summary(latency))
    ctx.log(
        "store fan-out: "
        + ", ".join(f"{k} p99 {stat([r[1] for r in v]).median:.1f} ms" for k, v in results.items())
    )
    for idx, name in enumerate(("delivery latency p50", "delivery latency p99")):
        ours = [r[idx] for r in results["redis"]]
        base = [r[idx] for r in results["memory"]]
        sec.rows.append(
            Row(
                f"fan-out to {subscribers:,} subscribers, {name}, {events - 1} events",
                "ms",
                stat(ours),
                stat(base),
                ratio_stat(ours, base),
            )
        )


async def _wait_done(http: httpx.AsyncClient, server: Proc, job_id: str) -> None:
    with anyio.fail_after(120):
        while (await http.get(f"{server.url}/v1/jobs/{job_id}")).json()["state"] != "succeeded":
            await anyio.sleep(0.1)


async def _used_memory(url: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


def _one(value: float) -> Stat:
    return Stat(value, value, value, 1)


async def _retained(ctx: Ctx, sec: Section, url: str) -> None:
    n = ctx.size(1000, 300)
    body: dict[str, object] = {"operation": "burst", "n": 100}
    flags = ("--start-mode", "immediate", "--retention", "3600")
    out: dict[str, float] = {}
    async with http_client() as http:
        mem = ctx.server("s10-retained-memory", "jobproto", *flags)
        await _create_many(http, mem.url, body, 50)
        rss0 = await _settled_rss(mem)
        ids = await _create_many(http, mem.url, body, n)
        await _wait_done(http, mem, ids[-1])
        out["memory"] = (await _settled_rss(mem) - rss0) / n / KIB
        ctx.procs.stop(mem)

        red = ctx.server("s10-retained-redis", "jobproto", *flags, "--store", url)
        await _create_many(http, red.url, body, 50)
        rss0 = await _settled_rss(red)
        used0 = await _used_memory(url)
        ids = await _create_many(http, red.url, body, n)
        await _wait_done(http, red, ids[-1])
        for job_id in ids[-50:]:  # every job ended, not just the last one created
            await _wait_done(http, red, job_id)
        out["redis"] = (await _used_memory(url) - used0) / n / KIB
        out["redis_service"] = (await _settled_rss(red) - rss0) / n / KIB
        ctx.procs.stop(red)
    sec.rows += [
        Row(
            f"memory per retained finished job of 100 events, {n:,} jobs",
            "KiB",
            _one(out["redis"]),
            _one(out["memory"]),
            _one(out["redis"] / out["memory"]),
            note="Redis: its used_memory growth per job; in memory: the service's RSS growth",
        ),
        Row(
            f"service RSS per retained finished job on Redis, {n:,} jobs",
            "KiB",
            _one(out["redis_service"]),
            base_name="none: what a replica keeps of jobs it no longer streams",
        ),
    ]
    sec.extra["retained_kib_per_job"] = out
    ctx.log("store retained job: " + ", ".join(f"{k} {v:.1f} KiB" for k, v in out.items()))


# -- failover --------------------------------------------------------------------------------------


def _start_replica(
    ctx: Ctx, name: str, url: str, secret_file: Path, state: Path, lease: float
) -> Proc:
    args = [
        sys.executable,
        "-m",
        "rbee_queen.app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--secret-file",
        str(secret_file),
        "--redis-url",
        url,
        "--replica-id",
        name,
        "--lease-ttl",
        f"{lease:g}",
        "--log-level",
        "warning",
    ]
    return ctx.procs.start(f"s10-queen-{name}", args, prefix="RBEE_QUEEN_LISTENING")


async def _register(http: httpx.AsyncClient, queen: Proc, secret: bytes, worker: Proc) -> None:
    body: dict[str, Any] = {
        "hive_id": HIVE_ID,
        "url": "http://127.0.0.1:9",  # never called: the model has its ready worker
        "heartbeat_interval": MAX_HEARTBEAT_INTERVAL,
        "models": ["synth"],
        "workers": [
            {
                "worker_id": worker.name,
                "model": "synth",
                "state": "ready",
                "url": worker.url,
                "pid": worker.pid,
                "engine": "synthetic",
            }
        ],
    }
    headers = auth.bearer(auth.join_token(secret, HIVE_ID))
    response = await http.put(f"{queen.url}/v1/hives/{HIVE_ID}", json=body, headers=headers)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"registering the bench hive: {response.status_code} {response.text}")


async def _failover_round(
    ctx: Ctx, http: httpx.AsyncClient, a: Proc, b: Proc, headers: dict[str, str]
) -> float:
    """One infer on ``a``, ``a`` killed, the stream picked up on ``b``: seconds from the kill to
    the first token through ``b``."""
    job_id = await create_job(http, a.url, infer_body(FAILOVER_TOKENS, "synth"))
    seen: list[int] = []  # the worker job's seqs of the data events
    tokens: list[int] = []
    last = 0

    def before(type_: str, env: dict[str, Any], at: float, chunk: int) -> bool:
        nonlocal last
        last = int(env["seq"])
        if type_ == "data":
            seen.append(int(env["origin"]["seq"]))
            tokens.extend(env["payload"]["token_ids"])
        return len(tokens) >= FAILOVER_BEFORE or type_ in TERMINAL

    await read_events(http, f"{a.url}/v1/jobs/{job_id}/stream", before, headers=headers)
    os.killpg(a.pid, signal.SIGKILL)
    killed = time.perf_counter()
    ctx.procs.stop(a)
    # What ``a`` had stored before it died: ``b`` sends that at once; the stream moves again when
    # the first event after it arrives, which ``b`` relays itself.
    status = await http.get(f"{b.url}/v1/jobs/{job_id}")
    stored = int(status.json()["last_seq"])
    moved: float | None = None
    ended = ""

    def after(type_: str, env: dict[str, Any], at: float, chunk: int) -> bool:
        nonlocal moved, ended
        if type_ == "data":
            seen.append(int(env["origin"]["seq"]))
            tokens.extend(env["payload"]["token_ids"])
            if moved is None and int(env["seq"]) > stored:
                moved = at
        if type_ in TERMINAL:
            ended = type_
            return True
        return False

    url = f"{b.url}/v1/jobs/{job_id}/stream"
    await read_events(http, url, after, headers={**headers, "Last-Event-ID": str(last)})
    if moved is None or ended != "succeeded":
        raise RuntimeError(f"failover: the job ended {ended or 'without a terminal event'}")
    if len(tokens) != FAILOVER_TOKENS or seen != sorted(set(seen)):
        raise RuntimeError(
            f"failover: {len(tokens)} tokens of {FAILOVER_TOKENS}; worker events"
            f" {len(seen)}, {len(set(seen))} distinct"
        )
    return moved - killed


async def _failover(ctx: Ctx, sec: Section, url: str) -> None:
    rounds = min(ctx.repeats, 3)
    times: dict[float, list[float]] = {lease: [] for lease in FAILOVER_LEASES}
    with tempfile.TemporaryDirectory(prefix="rbee-bench-failover-") as tmp:
        root = Path(tmp)
        secret_file = root / "secret"
        secret = auth.load_or_create_secret(secret_file)
        headers = auth.bearer(auth.keeper_token(secret))
        worker = start_worker(
            ctx, "s10-worker", model_name="synth", tokens_per_second=FAILOVER_RATE
        )
        async with http_client(headers=headers) as http:
            await wait_ready(http, worker)
            for lease in FAILOVER_LEASES:
                name = f"b-{lease:g}"
                b = _start_replica(ctx, name, url, secret_file, root / name, lease)
                await _register(http, b, secret, worker)
                for i in range(rounds):
                    name = f"a{i}-{lease:g}"
                    a = _start_replica(ctx, name, url, secret_file, root / name, lease)
                    await _register(http, a, secret, worker)
                    times[lease].append(await _failover_round(ctx, http, a, b, headers))
                    ctx.log(f"failover, lease {lease:g} s, round {i + 1}: {times[lease][-1]:.2f} s")
                ctx.procs.stop(b)
        ctx.procs.stop(worker)
    for lease, got in times.items():
        default = " (the default)" if lease == FAILOVER_LEASES[0] else ""
        sec.rows.append(
            Row(
                f"failover: SIGKILL of the owning replica until the reconnected stream moves,"
                f" lease {lease:g} s{default}, {FAILOVER_RATE:g} tokens/s",
                "s",
                stat(got),
                base_name="none: a figure of its own (set by the lease's TTL, how often it is"
                " renewed and how often replicas look for lapsed ones)",
                note="every token arrived exactly once in every round",
            )
        )
    sec.extra["failover_s"] = {f"lease_{lease:g}": got for lease, got in times.items()}


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="store",
        title="10. The shared job store: Redis beside memory",
        ours_name="jobproto on Redis (jobproto.redis.RedisStore)",
        base_name="jobproto in memory (the default store)",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    with _redis(ctx) as url:
        await _part(ctx, sec, "store alone", _store_alone(ctx, sec, url))
        servers = {
            "memory": ctx.server("s10-memory", "jobproto"),
            "redis": ctx.server("s10-redis", "jobproto", "--store", url),
        }
        await _part(ctx, sec, "stream throughput", _throughput(ctx, sec, servers))
        await _part(ctx, sec, "create + first event", _create_first(ctx, sec, servers))
        await _part(ctx, sec, "fan-out", _fanout(ctx, sec, servers))
        for proc in servers.values():
            ctx.procs.stop(proc)
        await _part(ctx, sec, "memory per retained job", _retained(ctx, sec, url))
        await _part(ctx, sec, "failover", _failover(ctx, sec, url))
    return sec


async def _part(ctx: Ctx, sec: Section, name: str, measured: Awaitable[None]) -> None:
    """One part of the section; one that fails is reported as such and the others still run
    (a store that drops events or refuses streams fails its part, never silently)."""
    try:
        await measured
    except RuntimeError as exc:
        ctx.log(f"store: {name} FAILED: {exc}")
        sec.notes.append(f"{name}: not measured, the run failed: {exc}")

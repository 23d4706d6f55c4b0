"""3. Job creation: ``POST /v1/jobs``, then the stream until its first event, against bare
Starlette.

jobproto: the job (``first``: one data event, then success) is created, its stream opened, and the
clock stops when the first ``data`` event arrives. The baseline is a bare Starlette app doing the
same two requests with none of the machinery: ``POST /v1/jobs`` answers the same JSON (fresh ids,
a timestamp, the same headers) and the stream endpoint sends the same frames. Same client (httpx,
one kept-alive connection pool), requests alternating between the two servers. Also: the ``POST``
alone, and jobs/s with 16 clients creating and following jobs at once.

Create-and-stream in one request (docs/protocol.md §2.2.2): the same job, but one ``POST`` with
``Accept: text/event-stream`` whose answer is the stream (its ``created`` block, then the events),
against the bare app answering that ``POST`` with the same bytes; and against jobproto's own
two-request path, measured in the same rounds, which gives what the round trip saved, in ms.
"""

from __future__ import annotations

import time

import anyio
import httpx

from ._client import DATA_MARK, count_stream, http_client
from ._ctx import Ctx
from ._procs import Proc
from ._report import Row, Section
from ._stats import ratio_stat, stat

__all__ = ["run"]

BODY = {"operation": "first"}
CONCURRENCY = 16
ACCEPT = {"Accept": "text/event-stream, application/json;q=0.9"}


async def _create(http: httpx.AsyncClient, server: Proc) -> tuple[float, float]:
    """(POST latency, POST + first event latency), seconds."""
    started = time.perf_counter()
    response = await http.post(f"{server.url}/v1/jobs", json=BODY)
    posted = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST {server.url}/v1/jobs: {response.status_code} {response.text}")
    url = f"{server.url}{response.json()['sse_url']}"
    res = await count_stream(http, url, end_mark=b"event: succeeded")
    if res.first_data_at is None or not res.ended_ok:
        raise RuntimeError(f"{url}: no first event")
    return posted - started, res.first_data_at - started


async def _create_stream(http: httpx.AsyncClient, server: Proc) -> float:
    """Create-and-stream in one request: seconds from the POST to the first data event."""
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    async with http.stream("POST", f"{server.url}/v1/jobs", json=BODY, headers=ACCEPT) as r:
        if r.status_code != 201 or not r.headers["content-type"].startswith("text/event-stream"):
            await r.aread()
            raise RuntimeError(f"POST {server.url}/v1/jobs: {r.status_code} {r.text[:200]}")
        async for chunk in r.aiter_raw():
            tail = tail[-64:] + chunk
            if first is None and DATA_MARK in tail:
                first = time.perf_counter()
    if first is None or b"event: succeeded" not in tail:
        raise RuntimeError(f"{server.url}: the one-request stream had no first event or no end")
    return first - started


async def _jobs_per_s(http: httpx.AsyncClient, server: Proc, total: int) -> float:
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _create(http, server)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)
    return total / (time.perf_counter() - started)


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="create",
        title="3. Job creation",
        ours_name="jobproto",
        base_name="a bare Starlette endpoint returning the same JSON (and a bare stream)",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    servers = {
        "jobproto": ctx.server("s3-jobproto", "jobproto"),
        "bare": ctx.server("s3-bare", "bare-jobs"),
    }
    per_round = ctx.size(100, 40)
    post: dict[str, list[float]] = {"jobproto": [], "bare": []}
    first: dict[str, list[float]] = {"jobproto": [], "bare": []}
    one: dict[str, list[float]] = {"jobproto": [], "bare": []}
    rate: dict[str, list[float]] = {"jobproto": [], "bare": []}
    async with http_client() as http:
        for kind in servers:  # warm up
            for _ in range(20):
                await _create(http, servers[kind])
                await _create_stream(http, servers[kind])
        for rep in range(ctx.repeats):
            samples: dict[str, list[tuple[float, float]]] = {"jobproto": [], "bare": []}
            single: dict[str, list[float]] = {"jobproto": [], "bare": []}
            for i in range(per_round):
                order = ("jobproto", "bare") if (i + rep) % 2 == 0 else ("bare", "jobproto")
                for kind in order:
                    samples[kind].append(await _create(http, servers[kind]))
                    single[kind].append(await _create_stream(http, servers[kind]))
            for kind, got in samples.items():
                post[kind].append(stat([p for p, _ in got]).median * 1e3)
                first[kind].append(stat([f for _, f in got]).median * 1e3)
                one[kind].append(stat(single[kind]).median * 1e3)
            for kind in ("jobproto", "bare") if rep % 2 == 0 else ("bare", "jobproto"):
                rate[kind].append(await _jobs_per_s(http, servers[kind], ctx.size(600, 200)))
        ctx.log(
            f"create+first event: jobproto {stat(first['jobproto']).median:.2f} ms, "
            f"bare {stat(first['bare']).median:.2f} ms; jobs/s {stat(rate['jobproto']).median:.0f}"
            f" vs {stat(rate['bare']).median:.0f}; in one request: jobproto "
            f"{stat(one['jobproto']).median:.2f} ms, bare {stat(one['bare']).median:.2f} ms"
        )
    sec.rows += [
        Row(
            f"POST /v1/jobs + first event, p50 of {per_round}",
            "ms",
            stat(first["jobproto"]),
            stat(first["bare"]),
            ratio_stat(first["jobproto"], first["bare"]),
        ),
        Row(
            f"create-and-stream in one request + first event, p50 of {per_round}",
            "ms",
            stat(one["jobproto"]),
            stat(one["bare"]),
            ratio_stat(one["jobproto"], one["bare"]),
            base_name="a bare Starlette endpoint answering the POST with the same SSE bytes",
        ),
        Row(
            f"create-and-stream in one request vs POST then GET stream, first event, p50 of "
            f"{per_round}",
            "ms",
            stat(one["jobproto"]),
            stat(first["jobproto"]),
            ratio_stat(one["jobproto"], first["jobproto"]),
            base_name="jobproto, two requests",
        ),
        Row(
            "time to first event saved by one request (POST then GET stream minus one request)",
            "ms",
            stat([a - b for a, b in zip(first["jobproto"], one["jobproto"], strict=True)]),
        ),
        Row(
            f"POST /v1/jobs alone, p50 of {per_round}",
            "ms",
            stat(post["jobproto"]),
            stat(post["bare"]),
            ratio_stat(post["jobproto"], post["bare"]),
        ),
        Row(
            f"jobs/s (create + follow to the end, {CONCURRENCY} at once)",
            "jobs/s",
            stat(rate["jobproto"]),
            stat(rate["bare"]),
            ratio_stat(rate["jobproto"], rate["bare"]),
        ),
    ]
    return sec

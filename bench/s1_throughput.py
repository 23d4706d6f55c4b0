"""1. Stream throughput: events/s through jobproto streams beside bare SSE endpoints.

Three servers, each in its own process, send the same bytes (the envelope of a jobproto ``data``
event, built per event): jobproto (a job emitting N events flat out, yielding to the loop every
32 as the synthetic engine does), a bare sse-starlette ``EventSourceResponse`` and a bare
Starlette ``StreamingResponse``, each over an async generator. The client (this process) reads
with httpx and counts events without parsing. Runs alternate between the servers (the order
rotates every round), so each ratio compares runs made seconds apart. The jobproto job is
created before the clock starts (creation is section 3); it starts when its stream connects.
"""

from __future__ import annotations

import time

import anyio
import httpx

from ._client import ClientPool, StreamResult, count_stream, http_client
from ._ctx import Ctx, create_job
from ._procs import Proc
from ._report import MICRO, Row, Section
from ._stats import ratio_stat, stat

__all__ = ["run"]

KINDS = ("jobproto", "sse", "streaming")


async def _one_round(
    http: httpx.AsyncClient, kind: str, server: Proc, streams: int, n: int
) -> tuple[float, float]:
    """Open ``streams`` streams of ``n`` events at once; (events/s, server CPU us per event)."""
    if kind == "jobproto":
        body = {"operation": "flood", "n": n}
        ids = [await create_job(http, server.url, body) for _ in range(streams)]
        urls = [f"{server.url}/v1/jobs/{job_id}/stream" for job_id in ids]
        end: bytes | None = b"event: succeeded"
    else:
        urls = [f"{server.url}/stream?n={n}"] * streams
        end = None
    results: list[StreamResult] = []

    async def one(client: httpx.AsyncClient, url: str) -> None:
        results.append(await count_stream(client, url, end_mark=end))

    async with ClientPool(streams) as pool:
        cpu0 = server.cpu_seconds()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(one, pool.next(), url)
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu0
    total = sum(r.data_events for r in results)
    if total != streams * n or not all(r.ended_ok for r in results):
        raise RuntimeError(f"{kind}: {total} of {streams * n} events arrived")
    return total / elapsed, cpu / total * 1e6


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="throughput",
        title="1. Stream throughput",
        ours_name="jobproto",
        base_name="bare sse-starlette `EventSourceResponse` (and bare `StreamingResponse`)",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    servers = {kind: ctx.server(f"s1-{kind}", kind) for kind in KINDS}
    cases = [
        (1, ctx.size(20_000, 5_000)),
        (100, ctx.size(500, 200)),
    ]
    async with http_client() as http:
        for kind in KINDS:  # warm up: imports, first connections, code paths
            await _one_round(http, kind, servers[kind], 4, 200)
        for streams, n in cases:
            rate: dict[str, list[float]] = {k: [] for k in KINDS}
            cpu: dict[str, list[float]] = {k: [] for k in KINDS}
            for rep in range(ctx.repeats):
                order = KINDS[rep % 3 :] + KINDS[: rep % 3]
                for kind in order:
                    r, c = await _one_round(http, kind, servers[kind], streams, n)
                    rate[kind].append(r)
                    cpu[kind].append(c)
            ctx.log(
                f"throughput {streams} stream(s): "
                + ", ".join(f"{k} {stat(v).median:,.0f} ev/s" for k, v in rate.items())
            )
            label = f"{streams} stream{'s' if streams > 1 else ''} x {n:,} events"
            sec.rows.append(
                Row(
                    f"events/s, {label}",
                    "events/s",
                    stat(rate["jobproto"]),
                    stat(rate["sse"]),
                    ratio_stat(rate["jobproto"], rate["sse"]),
                )
            )
            sec.rows.append(
                Row(
                    f"events/s, {label}",
                    "events/s",
                    stat(rate["jobproto"]),
                    stat(rate["streaming"]),
                    ratio_stat(rate["jobproto"], rate["streaming"]),
                    base_name="StreamingResponse",
                )
            )
            sec.rows.append(
                Row(
                    f"server CPU per event, {label}",
                    MICRO + "s",
                    stat(cpu["jobproto"]),
                    stat(cpu["sse"]),
                    ratio_stat(cpu["jobproto"], cpu["sse"]),
                )
            )
            sec.extra[f"streams_{streams}"] = {
                "events_per_stream": n,
                "events_per_s": {k: stat(v).to_json() for k, v in rate.items()},
                "server_cpu_us_per_event": {k: stat(v).to_json() for k, v in cpu.items()},
            }
    for proc in servers.values():
        ctx.procs.stop(proc)
    return sec

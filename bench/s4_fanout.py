"""4. Fan-out: one job, 1,000 subscribers; how long an event takes to reach all of them.

One jobproto job (``tick``) emits an event ``{"i": I, "t": time.time()}`` every 200 ms once all
subscribers are connected; a client process (``bench/_sockclient.py``: one ``asyncio.Protocol``
per stream, a regex over the raw bytes) holds the 1,000 streams and notes, for each event and
each stream, arrival time - ``t`` (one machine, one clock). The baseline is the usual fan-out of
a bare sse-starlette app: a bounded ``asyncio.Queue`` per subscriber, filled by one task with the
same envelope. Latency is taken over every (event, subscriber) pair; "to all" is, per event, the
time until the last subscriber had it.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import anyio

from ._client import http_client
from ._ctx import Ctx, create_job
from ._procs import Proc, python
from ._report import Row, Section
from ._stats import percentile, ratio_stat, stat

__all__ = ["run"]

INTERVAL = 0.2


async def _round(
    ctx: Ctx, kind: str, server: Proc, subscribers: int, events: int
) -> list[list[float]]:
    async with http_client() as http:
        if kind == "jobproto":
            await http.post(f"{server.url}/bench/reset")
            job = await create_job(
                http, server.url, {"operation": "tick", "n": events, "interval": INTERVAL}
            )
            path = f"/v1/jobs/{job}/stream"
        else:
            path = "/fan"
        with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as f:
            f.write((path + "\n") * subscribers)
            paths = Path(f.name)
        try:
            client = ctx.procs.client(
                f"fan-{kind}",
                python("-m", "bench._sockclient", "fan", str(server.port), str(paths), str(events)),
            )
            await anyio.to_thread.run_sync(client.expect, "READY", 120.0)
            if kind == "jobproto":
                await http.post(f"{server.url}/bench/go")
            else:
                await http.post(f"{server.url}/fan/go", json={"n": events, "interval": INTERVAL})
            result = await anyio.to_thread.run_sync(client.expect, "RESULT", 120.0)
            ctx.procs.stop(client)
        finally:
            paths.unlink()  # noqa: ASYNC240 (a small local file)
    latency: list[list[float]] = result["latency"]
    for i, per_event in enumerate(latency):
        if len(per_event) != subscribers:
            raise RuntimeError(f"{kind}: event {i} reached {len(per_event)} of {subscribers}")
    return latency


def _summary(latency: list[list[float]]) -> tuple[float, float, float]:
    """(p50, p99 over all pairs, median over events of the last arrival), in ms."""
    pairs = [x for per_event in latency[1:] for x in per_event]  # event 0: warm-up
    to_all = [max(per_event) for per_event in latency[1:]]
    return (
        percentile(pairs, 50) * 1e3,
        percentile(pairs, 99) * 1e3,
        percentile(to_all, 50) * 1e3,
    )


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="fanout",
        title="4. Fan-out: one job, 1,000 subscribers",
        ours_name="jobproto",
        base_name="bare sse-starlette, a queue per subscriber",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    subscribers = 1000
    events = ctx.size(21, 11)
    servers = {
        "jobproto": ctx.server("s4-jobproto", "jobproto"),
        "sse": ctx.server("s4-sse", "sse"),
    }
    results: dict[str, list[tuple[float, float, float]]] = {"jobproto": [], "sse": []}
    for rep in range(min(ctx.repeats, 3)):
        for kind in ("jobproto", "sse") if rep % 2 == 0 else ("sse", "jobproto"):
            results[kind].append(
                _summary(await _round(ctx, kind, servers[kind], subscribers, events))
            )
        ctx.log(
            "fan-out: "
            + ", ".join(
                f"{k} p50 {v[-1][0]:.1f} ms p99 {v[-1][1]:.1f} ms" for k, v in results.items()
            )
        )
    for idx, name in enumerate(
        (
            "delivery latency p50",
            "delivery latency p99",
            "time until all 1,000 have it (median event)",
        )
    ):
        ours = [r[idx] for r in results["jobproto"]]
        base = [r[idx] for r in results["sse"]]
        sec.rows.append(
            Row(
                f"{name}, {events - 1} events", "ms", stat(ours), stat(base), ratio_stat(ours, base)
            )
        )
    sec.extra = {
        k: [dict(zip(("p50_ms", "p99_ms", "all_ms"), r, strict=True)) for r in v]
        for k, v in results.items()
    }
    if any(math.isnan(r[0]) for r in results["jobproto"]):
        sec.notes.append("Some rounds had no samples.")
    return sec

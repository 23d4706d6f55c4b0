"""5. Memory: what idle streams, retained jobs and abandoned streams cost a server process.

The server's resident set (RSS, psutil) is read from outside, after it has settled (two readings
half a second apart within 64 KiB); the streams are held by a client process of their own
(``bench/_sockclient.py``). Each server process is fresh and warmed up first (100 streams opened
and closed), so one-time allocations do not count.

* Idle streams: jobproto runs N jobs that wait forever (``idle``, started at creation), then N
  streams subscribe to them, one each: the RSS after the streams minus before them, / N, is one
  stream (its job is reported on its own row). Baselines: N idle sse-starlette and
  StreamingResponse streams (a generator that sent its first frame and waits forever).
* Retained finished job: N jobs of 100 data events each run to the end and stay in the registry
  (retention 1 h): RSS growth / N.
* Abandoned streams: 10,000 streams are opened against 100 running jobs (100 at a time) and each
  is dropped by the client right after its first bytes; RSS after, against RSS before.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import httpx

from ._client import count_stream, http_client
from ._ctx import Ctx, create_job
from ._procs import Proc, python
from ._report import TIMES, Row, Section
from ._stats import Stat

__all__ = ["run"]

KIB = 1024


async def _settled_rss(proc: Proc, limit: float = 10.0) -> int:
    deadline = time.monotonic() + limit
    last = proc.rss()
    while time.monotonic() < deadline:
        await anyio.sleep(0.5)
        now = proc.rss()
        if abs(now - last) < 64 * KIB:
            return now
        last = now
    return last


async def _create_many(
    http: httpx.AsyncClient, base: str, body: dict[str, object], n: int
) -> list[str]:
    ids: list[str] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            ids.append(await create_job(http, base, body))

    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(worker)
    return ids


def _paths_file(paths: list[str]) -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as f:
        f.write("\n".join(paths) + "\n")
        return Path(f.name)


async def _hold(ctx: Ctx, name: str, server: Proc, paths: list[str]) -> int:
    """Hold one stream per path; the settled server RSS while they are open. Then close them."""
    file = _paths_file(paths)
    try:
        client = ctx.procs.client(
            name, python("-m", "bench._sockclient", "hold", str(server.port), str(file))
        )
        await anyio.to_thread.run_sync(client.expect, "READY", 180.0)
        rss = await _settled_rss(server)
        client.send("close")
        await anyio.to_thread.run_sync(client.expect, "CLOSED", 120.0)
        ctx.procs.stop(client)
    finally:
        file.unlink()
    return rss


async def _churn(ctx: Ctx, name: str, server: Proc, paths: list[str], total: int) -> None:
    file = _paths_file(paths)
    try:
        client = ctx.procs.client(
            name,
            python(
                "-m", "bench._sockclient", "churn", str(server.port), str(file), str(total), "100"
            ),
        )
        await anyio.to_thread.run_sync(client.expect, "DONE", 300.0)
        ctx.procs.stop(client)
    finally:
        file.unlink()


def _one(value: float) -> Stat:
    return Stat(value, value, value, 1)


async def _idle_streams(ctx: Ctx, sec: Section, n: int) -> float:
    """Rows for N idle streams; jobproto's KiB per stream."""
    out: dict[str, float] = {}
    async with http_client() as http:
        # The jobs run from their creation: the streams below only subscribe to them.
        jp = ctx.server(f"s5-jobproto-{n}", "jobproto", "--start-mode", "immediate")
        warm = await _create_many(http, jp.url, {"operation": "idle"}, 100)
        await _hold(ctx, f"s5-warm-jobproto-{n}", jp, [f"/v1/jobs/{j}/stream" for j in warm])
        rss0 = await _settled_rss(jp)
        ids = await _create_many(http, jp.url, {"operation": "idle"}, n)
        rss1 = await _settled_rss(jp)
        rss2 = await _hold(ctx, f"s5-hold-jobproto-{n}", jp, [f"/v1/jobs/{j}/stream" for j in ids])
        out["stream"] = (rss2 - rss1) / n / KIB
        out["job"] = (rss1 - rss0) / n / KIB
        ctx.procs.stop(jp)
        for kind, server_kind, path in (
            ("sse", "sse", "/idle"),
            ("streaming", "streaming", "/idle"),
            ("floor", "streaming", "/floor"),
        ):
            srv = ctx.server(f"s5-{kind}-{n}", server_kind)
            await _hold(ctx, f"s5-warm-{kind}-{n}", srv, [path] * 100)
            base0 = await _settled_rss(srv)
            base1 = await _hold(ctx, f"s5-hold-{kind}-{n}", srv, [path] * n)
            out[kind] = (base1 - base0) / n / KIB
            ctx.procs.stop(srv)
    sec.rows.append(
        Row(
            f"RSS per idle open stream, {n:,} streams",
            "KiB",
            _one(out["stream"]),
            _one(out["sse"]),
            _one(out["stream"] / out["sse"]),
        )
    )
    sec.rows.append(
        Row(
            f"RSS per idle open stream, {n:,} streams",
            "KiB",
            _one(out["stream"]),
            _one(out["streaming"]),
            _one(out["stream"] / out["streaming"]),
            base_name="StreamingResponse",
        )
    )
    sec.rows.append(
        Row(
            f"RSS per idle open stream, {n:,} streams",
            "KiB",
            _one(out["stream"]),
            _one(out["floor"]),
            _one(out["stream"] / out["floor"]),
            base_name="raw ASGI endpoint in Starlette, no task (the floor)",
        )
    )
    sec.rows.append(
        Row(
            f"RSS per running idle job (no stream), {n:,} jobs",
            "KiB",
            _one(out["job"]),
            base_name="no jobs in the baseline",
        )
    )
    sec.extra[f"idle_{n}"] = out
    ctx.log(f"memory {n} idle streams: " + ", ".join(f"{k} {v:.1f} KiB" for k, v in out.items()))
    return out["stream"]


async def _retained(ctx: Ctx, sec: Section, n: int) -> None:
    async with http_client() as http:
        srv = ctx.server(
            "s5-retained", "jobproto", "--start-mode", "immediate", "--retention", "3600"
        )
        await _create_many(http, srv.url, {"operation": "burst", "n": 100}, 50)
        rss0 = await _settled_rss(srv)
        ids = await _create_many(http, srv.url, {"operation": "burst", "n": 100}, n)
        with anyio.fail_after(60):
            while (await http.get(f"{srv.url}/v1/jobs/{ids[-1]}")).json()["state"] != "succeeded":
                await anyio.sleep(0.1)
        rss1 = await _settled_rss(srv)
        res = await count_stream(
            http, f"{srv.url}/v1/jobs/{ids[0]}/stream", end_mark=b"event: succeeded"
        )
        ctx.procs.stop(srv)
    per_job = (rss1 - rss0) / n / KIB
    sec.rows.append(
        Row(
            f"RSS per retained finished job of 100 events, {n:,} jobs",
            "KiB",
            _one(per_job),
            _one(res.bytes / KIB),
            _one(per_job / (res.bytes / KIB)),
            base_name="the bytes of its stream (the frames it must keep)",
        )
    )
    sec.extra["retained"] = {"jobs": n, "kib_per_job": per_job, "stream_kib": res.bytes / KIB}
    ctx.log(f"memory retained job: {per_job:.1f} KiB (its stream is {res.bytes / KIB:.1f} KiB)")


async def _abandoned(ctx: Ctx, sec: Section, total: int) -> float:
    out: dict[str, tuple[int, int]] = {}
    async with http_client() as http:
        jp = ctx.server("s5-abandon-jobproto", "jobproto")
        ids = await _create_many(http, jp.url, {"operation": "idle"}, 100)
        paths = [f"/v1/jobs/{j}/stream" for j in ids]
        await _churn(ctx, "s5-churn-warm-jobproto", jp, paths, 1000)
        before = await _settled_rss(jp)
        await _churn(ctx, "s5-churn-jobproto", jp, paths, total)
        after = await _settled_rss(jp)
        out["jobproto"] = (before, after)
        ctx.procs.stop(jp)
        srv = ctx.server("s5-abandon-sse", "sse")
        await _churn(ctx, "s5-churn-warm-sse", srv, ["/idle"], 1000)
        before = await _settled_rss(srv)
        await _churn(ctx, "s5-churn-sse", srv, ["/idle"], total)
        out["sse"] = (before, await _settled_rss(srv))
        ctx.procs.stop(srv)
    (b, a), (sb, sa) = out["jobproto"], out["sse"]
    sec.rows.append(
        Row(
            f"RSS after {total:,} abandoned streams / before",
            TIMES,
            _one(a / b),
            _one(sa / sb),
            note=f"jobproto {b / KIB / KIB:.1f} → {a / KIB / KIB:.1f} MiB, sse-starlette"
            f" {sb / KIB / KIB:.1f} → {sa / KIB / KIB:.1f} MiB",
        )
    )
    sec.extra["abandoned"] = {k: {"before": v[0], "after": v[1]} for k, v in out.items()}
    ctx.log(f"memory abandoned: jobproto {b} -> {a}, sse {sb} -> {sa}")
    return a / b


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="memory",
        title="5. Memory",
        ours_name="jobproto",
        base_name="bare sse-starlette (and StreamingResponse) idle streams",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    for n in (1000, ctx.size(5000, 2000)):
        await _idle_streams(ctx, sec, n)
    await _retained(ctx, sec, ctx.size(1000, 300))
    await _abandoned(ctx, sec, ctx.size(10_000, 3000))
    sec.notes.append(
        "Single measurements (one server process each): RSS moves in pages and arenas, so these"
        " are not repeated; the idle-stream figure at two sizes shows how stable it is."
    )
    return sec

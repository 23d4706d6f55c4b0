"""2. Relay overhead: tokens read through the queen against the same tokens read from the worker.

Real processes: two ``rbee-worker``s on the synthetic engine (one flat out, one at 50 tok/s per
stream), one ``rbee-queen`` relaying ``infer`` to them (the benchmark registers the workers as a
hive would), and the client (this process). Direct means the client creates the ``infer`` job on
the worker itself; through the queen means the client creates it on the queen, which routes it
and relays the worker's job (``jobproto.relay``).

* Added latency per token: each token is read on both paths at once, by the same client, on the
  same clock. The client follows the queen's job; as soon as the first token names the worker's
  job (its ``origin``), it also subscribes to that job on the worker directly, twice, one after
  the other. For every later token, added latency = arrival through the queen - arrival on the
  first direct stream + (second direct - first direct): the worker writes to its subscribers one
  after the other (the queen's first), and that last term, the worker's time for one more
  subscriber, puts the direct path back where it would be on its own. Tokens replayed when a
  direct stream connected are not counted.
* Time to first token: ``POST /v1/jobs`` until the first ``data`` event arrives, direct and
  through the queen, one after the other.
* Throughput: S streams at once of N tokens each, flat out; tokens/s = S x N / wall time (from
  the first create to the last terminal event), direct and through the queen, alternating.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from ._client import ClientPool, StreamResult, count_stream, http_client, read_events
from ._ctx import Ctx, create_job
from ._procs import Proc
from ._profile import GROUPS, profiled, summary
from ._rbee import (
    infer_body,
    keeper_headers,
    register_hive,
    start_queen,
    start_worker,
    wait_ready,
)
from ._report import MICRO, Row, Section
from ._stats import Stat, percentile, ratio_stat, stat

__all__ = ["run"]

END = b"event: succeeded"
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
#: tokens/s per stream of the paced worker
PACED_RATE = 50


async def _run_one(
    http: httpx.AsyncClient, base: str, body: dict[str, Any], results: list[StreamResult]
) -> None:
    job_id = await create_job(http, base, body)
    res = await count_stream(http, f"{base}/v1/jobs/{job_id}/stream", end_mark=END)
    if not res.ended_ok:
        raise RuntimeError(f"job {job_id} at {base} did not succeed")
    results.append(res)


async def _throughput(
    base: str,
    body: dict[str, Any],
    streams: int,
    procs: list[Proc],
    headers: dict[str, str] | None = None,
) -> tuple[float, float]:
    """(tokens/s, CPU us per token of ``procs`` together)."""
    results: list[StreamResult] = []
    async with ClientPool(streams, headers=headers) as pool:
        cpu0 = sum(p.cpu_seconds() for p in procs)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(streams):
                tg.start_soon(_run_one, pool.next(), base, body, results)
        elapsed = time.perf_counter() - started
    tokens = streams * body["max_tokens"]
    cpu = sum(p.cpu_seconds() for p in procs) - cpu0
    return tokens / elapsed, cpu / tokens * 1e6


async def _ttft(http: httpx.AsyncClient, base: str, body: dict[str, Any]) -> float:
    """Seconds from the create request to the first data event."""
    started = time.perf_counter()
    job_id = await create_job(http, base, body)
    res = await count_stream(http, f"{base}/v1/jobs/{job_id}/stream", end_mark=END)
    if res.first_data_at is None or not res.ended_ok:
        status = (await http.get(f"{base}/v1/jobs/{job_id}")).text
        raise RuntimeError(f"job {job_id} at {base} sent no token: {status}")
    return res.first_data_at - started


class _Window:
    """The steady part of a run: from the moment every stream has its first token to the moment
    the first one ends; the queen's CPU time over it, per token relayed in it."""

    def __init__(self, queen: Proc, streams: int) -> None:
        self.queen = queen
        self.streams = streams
        self.started = 0
        self.t1 = self.t2 = self.cpu1 = self.cpu2 = 0.0

    def first_token(self) -> None:
        self.started += 1
        if self.started == self.streams:
            self.t1, self.cpu1 = time.perf_counter(), self.queen.cpu_seconds()

    def ended(self) -> None:
        if self.t1 and not self.t2:
            self.t2, self.cpu2 = time.perf_counter(), self.queen.cpu_seconds()

    def cpu_per_token(self, rate: float) -> float | None:
        """Queen CPU seconds per token, the streams running at ``rate`` tokens/s each."""
        tokens = self.streams * rate * (self.t2 - self.t1)
        return (self.cpu2 - self.cpu1) / tokens if self.t2 and tokens >= 1000 else None


class _Trace:
    """Arrival times of one queen job's tokens on the queen's stream and on direct ones."""

    def __init__(self, directs: int, window: _Window) -> None:
        self.window = window
        self.queen: dict[int, float] = {}
        self.direct: list[dict[int, float]] = [{} for _ in range(directs)]
        #: the last worker seq each direct stream got in a replay (first chunk) on connecting
        self.replayed: list[int] = [0] * directs
        self.worker_job: str | None = None
        self.first_seq = 0
        self.found = anyio.Event()

    def samples(self) -> tuple[list[float], list[float]]:
        """(queen - direct 1, direct 2 - direct 1) in seconds, over tokens live on all streams."""
        if not self.direct:
            return [], []
        after = max([self.first_seq, *self.replayed]) + 1
        added, extra = [], []
        for seq, tq in self.queen.items():
            if seq <= after or not all(seq in d for d in self.direct):
                continue
            added.append(tq - self.direct[0][seq])
            if len(self.direct) > 1:
                extra.append(self.direct[1][seq] - self.direct[0][seq])
        return added, extra


async def _traced_job(
    http: httpx.AsyncClient, queen: Proc, worker: Proc, body: dict[str, Any], trace: _Trace
) -> None:
    job_id = await create_job(http, queen.url, body)

    def on_queen(type_: str, env: dict[str, Any], at: float, _chunk: int) -> bool:
        if type_ == "data":
            origin = env["origin"]
            trace.queen[origin["seq"]] = at
            if trace.worker_job is None:
                trace.worker_job, trace.first_seq = origin["job_id"], origin["seq"]
                trace.found.set()
                trace.window.first_token()
        if type_ in TERMINAL:
            trace.window.ended()
            return True
        return False

    async def direct(i: int, connected: anyio.Event | None, ready: anyio.Event) -> None:
        if connected is not None:
            await connected.wait()
        store = trace.direct[i]

        def on_direct(type_: str, env: dict[str, Any], at: float, chunk: int) -> bool:
            if type_ == "data":
                store[env["seq"]] = at
                if chunk == 1:
                    trace.replayed[i] = env["seq"]
            return type_ in TERMINAL

        url = f"{worker.url}/v1/jobs/{trace.worker_job}/stream"
        headers = {"Last-Event-ID": str(trace.first_seq)}
        await read_events(http, url, on_direct, headers=headers, connected=ready)

    async def directs() -> None:
        await trace.found.wait()
        async with anyio.create_task_group() as tg:
            previous: anyio.Event | None = None
            for i in range(len(trace.direct)):
                ready = anyio.Event()
                tg.start_soon(direct, i, previous, ready)
                previous = ready

    async with anyio.create_task_group() as tg:
        if trace.direct:
            tg.start_soon(directs)
        await read_events(http, f"{queen.url}/v1/jobs/{job_id}/stream", on_queen)
        # The direct streams end with the same job; a job that sent no token never starts them.
        with anyio.move_on_after(10 if trace.found.is_set() else 0):
            while not all(len(d) and max(d) >= max(trace.queen, default=0) for d in trace.direct):
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def _added_latency(
    http: httpx.AsyncClient,
    queen: Proc,
    worker: Proc,
    streams: int,
    tokens: int,
    model: str,
    observe_every: int,
) -> tuple[list[float], list[float], float | None]:
    """Run ``streams`` queen jobs at once, every ``observe_every``-th one also read directly;
    pooled (added, extra) samples in seconds, and the queen's CPU seconds per token."""
    window = _Window(queen, streams)
    traces = [_Trace(2 if i % observe_every == 0 else 0, window) for i in range(streams)]
    body = infer_body(tokens, model)
    async with anyio.create_task_group() as tg:
        for trace in traces:
            tg.start_soon(_traced_job, http, queen, worker, body, trace)
    added: list[float] = []
    extra: list[float] = []
    for trace in traces:
        a, e = trace.samples()
        added += a
        extra += e
    return added, extra, window.cpu_per_token(PACED_RATE)


def _one(value: float) -> Stat:
    return Stat(value, value, value, 1)


def _latency_rows(
    label: str, runs: list[tuple[list[float], list[float]]]
) -> tuple[list[Row], dict[str, Any]]:
    """Rows for per-token added latency; every run's p50/p99 (ms), corrected by its own extra."""
    p50s: list[float] = []
    p99s: list[float] = []
    raw50: list[float] = []
    extra50: list[float] = []
    for added, one_more in runs:
        bias = percentile(one_more, 50) if one_more else 0.0
        corrected = [a + bias for a in added]
        p50s.append(percentile(corrected, 50) * 1e3)
        p99s.append(percentile(corrected, 99) * 1e3)
        raw50.append(percentile(added, 50) * 1e3)
        extra50.append(bias * 1e3)
    samples = sum(len(a) for a, _ in runs)
    rows = [
        Row(
            f"added latency per token, p50, {label}", "ms", stat(p50s), base_name="0 by definition"
        ),
        Row(
            f"added latency per token, p99, {label}", "ms", stat(p99s), base_name="0 by definition"
        ),
    ]
    extra = {
        "p50_ms": stat(p50s).to_json(),
        "p99_ms": stat(p99s).to_json(),
        "uncorrected_p50_ms": stat(raw50).to_json(),
        "one_more_subscriber_ms": stat(extra50).to_json(),
        "tokens_sampled": samples,
    }
    return rows, extra


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="relay",
        title="2. Relay overhead (client → queen → worker against client → worker)",
        ours_name="through the queen",
        base_name="the same client reading the worker directly",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    flat = start_worker(ctx, "worker-flat", model_name="flat")
    paced = start_worker(ctx, "worker-paced", model_name="paced", tokens_per_second=PACED_RATE)
    state = Path(ctx.procs.log_dir) / "queen-state"
    queen = start_queen(ctx, state)
    # The queen's token on every request, to the workers too (they need none and ignore it), so
    # both paths carry the same header.
    token = keeper_headers(state)
    async with http_client(headers=token) as http:
        await wait_ready(http, flat)
        await wait_ready(http, paced)
        await register_hive(http, queen, state, {"flat": flat, "paced": paced})
        # Warm up both paths (the queen probes each worker's /health before its first use).
        for _ in range(3):
            await _ttft(http, queen.url, infer_body(16, "flat"))
            await _ttft(http, flat.url, infer_body(16))
            await _ttft(http, queen.url, infer_body(4, "paced"))

        profiles: dict[int, dict[str, float] | None] = {}

        # -- time to first token ---------------------------------------------------------------
        direct_t, queen_t = [], []
        for _ in range(ctx.size(40, 15)):
            direct_t.append(await _ttft(http, flat.url, infer_body(4)) * 1e3)
            queen_t.append(await _ttft(http, queen.url, infer_body(4, "flat")) * 1e3)
        added_ttft = stat([q - d for q, d in zip(queen_t, direct_t, strict=True)])
        sec.rows.append(
            Row(
                "time to first token (create → first data event)",
                "ms",
                stat(queen_t),
                stat(direct_t),
                ratio_stat(queen_t, direct_t),
            )
        )
        sec.rows.append(
            Row(
                "time to first token added by the queen (pairwise)",
                "ms",
                added_ttft,
                base_name="0 by definition",
            )
        )
        sec.extra["ttft_ms"] = {
            "direct": stat(direct_t).to_json(),
            "queen": stat(queen_t).to_json(),
            "added": added_ttft.to_json(),
        }
        ctx.log(
            f"relay TTFT direct {stat(direct_t).median:.2f} ms, queen {stat(queen_t).median:.2f} ms"
        )

        # -- added latency per token -----------------------------------------------------------
        tokens = ctx.size(150, 80)
        for streams, runs_n, every in ((1, ctx.repeats, 1), (100, max(2, ctx.repeats - 2), 10)):
            results = [
                await _added_latency(http, queen, paced, streams, tokens, "paced", every)
                for _ in range(runs_n)
            ]
            runs = [(added, more) for added, more, _ in results]
            steady = [c * 1e6 for _, _, c in results if c is not None]
            label = "1 stream at 50 tok/s" if streams == 1 else f"{streams} streams x 50 tok/s"
            rows, extra = _latency_rows(label, runs)
            sec.rows += rows
            if steady:
                sec.rows.append(
                    Row(
                        f"queen CPU per relayed token, {label}",
                        MICRO + "s",
                        stat(steady),
                        note="steady part of each run: all streams started, none ended",
                    )
                )
                extra["queen_cpu_us_per_token"] = stat(steady).to_json()
            sec.extra[f"added_latency_{streams}"] = extra
            ctx.log(
                f"relay added latency {label}: p50 {extra['p50_ms']['median']:.3f} ms, "
                f"p99 {extra['p99_ms']['median']:.3f} ms"
            )

        # -- throughput ------------------------------------------------------------------------
        for streams, n, reps in (
            (1, ctx.size(20_000, 5_000), ctx.repeats),
            (100, ctx.size(600, 200), 3),
            (500, 100, 3),
        ):
            d_rate: list[float] = []
            q_rate: list[float] = []
            d_cpu: list[float] = []
            q_cpu: list[float] = []
            queen_only: list[float] = []
            for rep in range(reps):
                pair = [("d", flat.url, infer_body(n)), ("q", queen.url, infer_body(n, "flat"))]
                for which, base, body in pair if rep % 2 == 0 else pair[::-1]:
                    queen_cpu0 = queen.cpu_seconds()
                    rate, cpu = await _throughput(base, body, streams, [flat, queen], token)
                    if which == "q":
                        queen_s = queen.cpu_seconds() - queen_cpu0
                        queen_only.append(queen_s / (streams * n) * 1e6)
                    (d_rate if which == "d" else q_rate).append(rate)
                    (d_cpu if which == "d" else q_cpu).append(cpu)
            label = f"{streams} stream{'s' if streams > 1 else ''} x {n:,} tokens, flat out"
            sec.rows.append(
                Row(
                    f"tokens/s, {label}",
                    "tokens/s",
                    stat(q_rate),
                    stat(d_rate),
                    ratio_stat(q_rate, d_rate),
                )
            )
            sec.rows.append(
                Row(
                    f"CPU per token (worker + queen), {label}",
                    MICRO + "s",
                    stat(q_cpu),
                    stat(d_cpu),
                    ratio_stat(q_cpu, d_cpu),
                )
            )
            sec.rows.append(
                Row(
                    f"queen CPU per relayed token, {label}",
                    MICRO + "s",
                    stat(queen_only),
                    note="the queen's share of the row above",
                )
            )
            sec.extra[f"throughput_{streams}"] = {
                "tokens_per_stream": n,
                "direct_tokens_per_s": stat(d_rate).to_json(),
                "queen_tokens_per_s": stat(q_rate).to_json(),
                "ratio": ratio_stat(q_rate, d_rate).to_json(),
            }
            ctx.log(
                f"relay throughput {streams}: direct {stat(d_rate).median:,.0f} tok/s, "
                f"queen {stat(q_rate).median:,.0f} tok/s"
            )
            if streams > 1:
                # One more round through the queen, not counted, with a profiler on the queen.
                out = ctx.procs.log_dir / f"queen-profile-{streams}.txt"
                async with profiled(queen, out) as raw:
                    body = infer_body(min(n, 30_000 // streams), "flat")
                    await _throughput(queen.url, body, streams, [flat, queen], token)
                profiles[streams] = summary(raw)
    sec.notes.append(_profile_note(profiles))
    return sec


def _profile_note(profiles: dict[int, dict[str, float] | None]) -> str:
    if not any(profiles.values()):
        return (
            "No profile of the queen: py-spy is not installed here (`uv pip install py-spy` into"
            " the environment that runs the benchmark adds one to this section)."
        )
    cols = sorted(k for k, v in profiles.items() if v)
    lines = [
        "Where the queen's CPU goes, sampled with py-spy during one extra round through it (not"
        " counted above; at most 30,000 tokens, so it is mostly job set-up at 500 streams); a"
        " sample counts for every group with a frame on its stack, so the groups overlap:",
        "",
        "| the queen's samples with ... on the stack | "
        + " | ".join(f"{c} streams" for c in cols)
        + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label, _ in GROUPS:
        cells = []
        for c in cols:
            prof = profiles[c]
            cells.append(f"{prof[label] * 100:.0f} %" if prof else "\u2013")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    samples = ", ".join(f"{c} streams: {int((profiles[c] or {}).get('samples', 0))}" for c in cols)
    lines += ["", f"Samples: {samples}."]
    return "\n".join(lines)

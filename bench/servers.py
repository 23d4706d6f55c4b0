"""The servers the benchmark measures, one process each: ``python -m bench.servers KIND``.

    jobproto    a jobproto service with the benchmark's operations (below)
    sse         bare sse-starlette ``EventSourceResponse`` endpoints
    streaming   bare Starlette ``StreamingResponse`` endpoints
    bare-jobs   bare Starlette: ``POST /v1/jobs`` answering the same JSON as jobproto, and a
                stream sending the same first frames

Every kind serves on 127.0.0.1 under the same uvicorn configuration (the one
``jobproto.server.serve`` uses: asyncio loop, h11, lifespan on) and prints one line,
``BENCH_LISTENING {"port": N}``, once it listens. The baselines write exactly the bytes a
jobproto stream carries (the same envelope, built per event as jobproto builds it), so that only
the machinery around the bytes differs.

The jobproto operations:

    flood(n)            n token-like data events as fast as the loop allows, then succeed
    idle()              nothing, until cancelled (an idle open stream)
    first()             one data event, then succeed (job creation + first event)
    burst(n)            n data events and succeed (a retained finished job)
    tick(n, interval)   after POST /bench/go: n events ``{"i", "t": time.time()}``, ``interval`` s
                        apart (fan-out delivery latency)
    blobs(n, size)      n data events ``{"blob": "x" * size}`` and succeed (frozen subscribers)

``--stock-http`` serves with uvicorn's own protocol classes instead of ``jobproto.server``'s (no
HTTP limits, no abort extension: how a frozen subscriber was dropped before).

``--store URL`` (jobproto only) keeps the jobs in the Redis server at URL (``jobproto.redis``,
namespace ``bench``) instead of the service's memory: section 10 measures one beside the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import attrs
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobproto import Operations, emit_data
from jobproto._correlation import new_correlation_id, new_job_id
from jobproto._wire import dumps, encode_created_frame, format_timestamp
from jobproto.asgi import JobService, ServiceSettings, create_app
from jobproto.server import Server, config, run

__all__ = ["LISTENING", "frame", "token_payload"]

LISTENING = "BENCH_LISTENING"

#: the synthetic engine's words (rbee_worker.engines.synthetic), one per event
WORDS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
#: yield to the loop every so many events when flooding (what the synthetic engine does)
CHECKPOINT_EVERY = 32


def token_payload(i: int) -> dict[str, Any]:
    return {"text": WORDS[i % len(WORDS)], "token_ids": [i % len(WORDS) + 4]}


def envelope(seq: int, job_id: str, correlation_id: str, payload: Any) -> str:
    """The JSON of a jobproto ``data`` event, key for key (``_wire.encode_envelope``)."""
    return dumps(
        {
            "seq": seq,
            "job_id": job_id,
            "correlation_id": correlation_id,
            "type": "data",
            "timestamp": format_timestamp(time.time()),
            "payload": payload,
        }
    )


def frame(seq: int, job_id: str, correlation_id: str, payload: Any) -> bytes:
    data = envelope(seq, job_id, correlation_id, payload)
    return f"id: {seq}\nevent: data\ndata: {data}\n\n".encode()


RETRY_FRAME = b"retry: 2000\n\n"


# -- jobproto --------------------------------------------------------------------------------------


@attrs.frozen
class CountParams:
    n: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class BlobParams:
    n: int = attrs.field(validator=attrs.validators.ge(0))
    size: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class TickParams:
    n: int
    interval: float


def jobproto_app(settings: ServiceSettings, store_url: str | None = None) -> Starlette:
    ops = Operations()
    go = anyio.Event()
    gate: dict[str, anyio.Event] = {"go": go}

    @ops.operation("flood")
    async def flood(params: CountParams) -> dict[str, int]:
        for i in range(params.n):
            emit_data(token_payload(i))
            if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                await anyio.lowlevel.checkpoint()
        return {"n": params.n}

    @ops.operation("idle")
    async def idle(params: NoParams) -> None:
        await anyio.sleep_forever()

    @ops.operation("first")
    async def first(params: NoParams) -> dict[str, int]:
        emit_data(token_payload(0))
        return {"n": 1}

    @ops.operation("burst")
    async def burst(params: CountParams) -> dict[str, int]:
        for i in range(params.n):
            emit_data(token_payload(i))
        return {"n": params.n}

    @ops.operation("blobs")
    async def blobs(params: BlobParams) -> dict[str, int]:
        blob = "x" * params.size
        for _ in range(params.n):
            emit_data({"blob": blob})
        return {"n": params.n}

    @ops.operation("tick")
    async def tick(params: TickParams) -> dict[str, int]:
        await gate["go"].wait()
        for i in range(params.n):
            emit_data({"i": i, "t": time.time()})
            await anyio.sleep(params.interval)
        return {"n": params.n}

    async def go_route(request: Request) -> Response:
        gate["go"].set()
        return JSONResponse({"go": True})

    async def reset_route(request: Request) -> Response:
        gate["go"] = anyio.Event()
        return JSONResponse({"reset": True})

    store = None
    if store_url is not None:
        from jobproto.redis import RedisStore  # the redis extra: only when asked for

        store = RedisStore(store_url, "bench", max_log_events=settings.max_log_events)
    return create_app(
        JobService(ops, settings, store=store),
        routes=[
            Route("/bench/go", go_route, methods=["POST"]),
            Route("/bench/reset", reset_route, methods=["POST"]),
        ],
    )


# -- baselines -------------------------------------------------------------------------------------


def _ids() -> tuple[str, str]:
    return new_job_id(), new_correlation_id()


def _n(request: Request) -> int:
    return int(request.query_params.get("n", "1"))


class _Broadcast:
    """The usual fan-out of a bare SSE app: a bounded queue per subscriber, filled by one task."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()
        self.job_id, self.correlation_id = _ids()

    async def run(self, n: int, interval: float) -> None:
        for i in range(n):
            data = envelope(i + 1, self.job_id, self.correlation_id, {"i": i, "t": time.time()})
            for q in list(self.queues):
                try:
                    q.put_nowait(data)
                except asyncio.QueueFull:  # a slow subscriber is dropped
                    self.queues.discard(q)
            await asyncio.sleep(interval)
        for q in list(self.queues):
            if not q.full():
                q.put_nowait(None)


def sse_app() -> Starlette:
    """sse-starlette, used the way its README shows: an async generator per stream."""
    broadcast = _Broadcast()

    async def stream(request: Request) -> Response:
        n = _n(request)
        job_id, correlation_id = _ids()

        async def events() -> AsyncIterator[ServerSentEvent]:
            for i in range(n):
                data = envelope(i + 1, job_id, correlation_id, token_payload(i))
                yield ServerSentEvent(data=data, id=str(i + 1), event="data", sep="\n")

        return EventSourceResponse(events(), sep="\n")

    async def idle(request: Request) -> Response:
        async def events() -> AsyncIterator[ServerSentEvent]:
            yield ServerSentEvent(retry=2000, sep="\n")
            await anyio.sleep_forever()

        return EventSourceResponse(events(), sep="\n")

    async def fan(request: Request) -> Response:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1024)
        broadcast.queues.add(queue)

        async def events() -> AsyncIterator[ServerSentEvent]:
            seq = 0
            try:
                yield ServerSentEvent(retry=2000, sep="\n")
                while True:
                    data = await queue.get()
                    if data is None:
                        return
                    seq += 1
                    yield ServerSentEvent(data=data, id=str(seq), event="data", sep="\n")
            finally:
                broadcast.queues.discard(queue)

        return EventSourceResponse(events(), sep="\n")

    async def fan_count(request: Request) -> Response:
        return JSONResponse({"subscribers": len(broadcast.queues)})

    async def fan_go(request: Request) -> Response:
        body = await request.json()
        # Kept by the loop until it ends; the endpoint answers at once.
        task = asyncio.get_running_loop().create_task(broadcast.run(body["n"], body["interval"]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({"go": True})

    tasks: set[asyncio.Task[None]] = set()
    return Starlette(
        routes=[
            Route("/stream", stream),
            Route("/idle", idle),
            Route("/fan", fan),
            Route("/fan/count", fan_count),
            Route("/fan/go", fan_go, methods=["POST"]),
        ]
    )


def streaming_app() -> Starlette:
    """Bare Starlette: a ``StreamingResponse`` over a generator of the same frames."""

    async def stream(request: Request) -> Response:
        n = _n(request)
        job_id, correlation_id = _ids()

        async def body() -> AsyncIterator[bytes]:
            for i in range(n):
                yield frame(i + 1, job_id, correlation_id, token_payload(i))

        return StreamingResponse(body(), media_type="text/event-stream")

    async def idle(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield RETRY_FRAME
            await anyio.sleep_forever()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(
        routes=[Route("/stream", stream), Route("/idle", idle), Route("/floor", _Floor())]
    )


class _Floor:
    """The least a stream can be in Starlette: a raw ASGI endpoint that sends its first frame and
    waits for the disconnect, no task beside it (what any SSE response here costs at least)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": RETRY_FRAME, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass


async def _bare_events(
    job_id: str, correlation_id: str, first: bytes = b""
) -> AsyncIterator[bytes]:
    """The bare stream of job ``first``: ``retry:``, ``first`` (a created block), one data event,
    then the terminal event in a second write."""
    yield RETRY_FRAME + first + frame(1, job_id, correlation_id, token_payload(0))
    end = {
        "seq": 2,
        "job_id": job_id,
        "correlation_id": correlation_id,
        "type": "succeeded",
        "timestamp": format_timestamp(time.time()),
        "payload": {"result": {"n": 1}},
    }
    yield f"id: 2\nevent: succeeded\ndata: {dumps(end)}\n\n".encode()


def bare_jobs_app() -> Starlette:
    """What a service without jobproto would answer: the same JSON, the same first frames."""

    async def create(request: Request) -> Response:
        body = json.loads(await request.body())
        job_id, correlation_id = _ids()
        out = {
            "job_id": job_id,
            "sse_url": f"/v1/jobs/{job_id}/stream",
            "status_url": f"/v1/jobs/{job_id}",
            "operation": body.get("operation"),
            "state": "queued",
            "correlation_id": correlation_id,
            "created_at": format_timestamp(time.time()),
        }
        headers = {
            "Location": out["status_url"],
            "X-Correlation-ID": correlation_id,
            "Cache-Control": "no-store",
        }
        if "text/event-stream" in request.headers.get("accept", ""):
            # create-and-stream in one request: the same head and bytes as jobproto's answer
            headers["Content-Location"] = out["sse_url"]
            headers["X-Job-ID"] = job_id
            headers["X-Accel-Buffering"] = "no"
            created = encode_created_frame(out, job_id, correlation_id, time.time())
            return StreamingResponse(
                _bare_events(job_id, correlation_id, created),
                201,
                headers=headers,
                media_type="text/event-stream; charset=utf-8",
            )
        return JSONResponse(out, 201, headers=headers)

    async def stream(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        correlation_id = new_correlation_id()
        return StreamingResponse(
            _bare_events(job_id, correlation_id), media_type="text/event-stream"
        )

    return Starlette(
        routes=[
            Route("/v1/jobs", create, methods=["POST"]),
            Route("/v1/jobs/{job_id}/stream", stream),
        ]
    )


# -- serving ---------------------------------------------------------------------------------------


def serve(app: Starlette, stock_http: bool = False) -> None:
    """``jobproto.server.serve``'s configuration for every kind (so the same event loop and HTTP
    parser), and the ready line."""
    service = getattr(app.state, "jobs", None)

    def ready(port: int) -> None:
        print(f"{LISTENING} {json.dumps({'port': port})}", flush=True)

    cfg = config(app)
    if stock_http:
        cfg.http = "auto"  # uvicorn resolves it to its own class when the server loads
    run(Server(cfg, service), ready)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.servers")
    p.add_argument("kind", choices=["jobproto", "sse", "streaming", "bare-jobs"])
    p.add_argument("--start-mode", choices=["on_subscribe", "immediate"], default="on_subscribe")
    p.add_argument("--max-log-events", type=int, default=10_000)
    p.add_argument("--max-subscriber-lag", type=int, default=1024)
    p.add_argument("--retention", type=float, default=600.0)
    p.add_argument("--send-timeout", type=float, default=30.0)
    p.add_argument("--stock-http", action="store_true", help="uvicorn's own protocol classes")
    p.add_argument("--store", default=None, metavar="URL", help="keep the jobs in this Redis")
    args = p.parse_args(argv)
    if args.kind == "jobproto":
        settings = ServiceSettings(
            service_name="bench",
            start_mode=args.start_mode,
            max_log_events=args.max_log_events,
            max_subscriber_lag=args.max_subscriber_lag,
            retention_ttl=args.retention,
            send_timeout=args.send_timeout,
        )
        app = jobproto_app(settings, args.store)
    elif args.kind == "sse":
        app = sse_app()
    elif args.kind == "streaming":
        app = streaming_app()
    else:
        app = bare_jobs_app()
    serve(app, args.stock_http)


if __name__ == "__main__":
    main()

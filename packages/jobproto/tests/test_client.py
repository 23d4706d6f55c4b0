"""Tests of ``jobproto.client`` against scripted servers on ``httpx.MockTransport`` (no network).

SSE bodies are built from the real frames of ``jobproto._wire``, so the client is tested against
exactly the bytes a jobproto server sends.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import httpx_sse
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import jobproto.client
from jobproto import (
    Cancelled,
    ConnectFailed,
    Data,
    Expired,
    Failed,
    Gap,
    JobEvent,
    LocalProtocolError,
    Narration,
    Progress,
    RemoteProtocolError,
    RequestError,
    Succeeded,
    TransportFailed,
    bind_job,
)
from jobproto._wire import encode_frame, encode_gap_frame
from jobproto.client import (
    CreatedJob,
    HTTPStatusError,
    JobClient,
    RemoteJobCancelled,
    RemoteJobFailed,
    StreamInterrupted,
)

BASE = "http://jobs.test"
JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"
CID = "corr-test"
TS = 1_700_000_000.5  # exactly representable, survives the millisecond timestamps of the wire

Handler = Callable[[httpx.Request], httpx.Response]


def ev(seq: int, event: Any) -> JobEvent:
    return JobEvent(seq=seq, job_id=JOB, correlation_id=CID, timestamp=TS, event=event)


def frames(*items: JobEvent | Gap | bytes) -> list[bytes]:
    out = []
    for item in items:
        if isinstance(item, JobEvent):
            out.append(encode_frame(item))
        elif isinstance(item, Gap):
            out.append(encode_gap_frame(item, JOB, CID, TS))
        else:
            out.append(item)
    return out


RETRY = b"retry: 1500\n\n"
KEEPALIVE = b": keepalive\n\n"


class ScriptedStream(httpx.AsyncByteStream):
    """A response body sent chunk by chunk, then: the end, an error, or silence forever."""

    def __init__(self, chunks: Iterable[bytes], *, then: str | Exception = "end") -> None:
        self.chunks = list(chunks)
        self.then = then
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if isinstance(self.then, Exception):
            raise self.then
        if self.then == "hang":
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


def sse(*items: JobEvent | Gap | bytes, then: str | Exception = "end") -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=ScriptedStream(frames(*items), then=then),
    )


def error(status: int, code: str, message: str = "nope", **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


def status_json(state: str = "running", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": JOB,
        "operation": "echo",
        "state": state,
        "created_at": "2023-11-14T22:13:20.500Z",
        "started_at": "2023-11-14T22:13:21.000Z",
        "finished_at": None,
        "last_seq": 3,
        "correlation_id": CID,
        "result": None,
        "error": None,
        "sse_url": f"/v1/jobs/{JOB}/stream",
    }
    body.update(over)
    return body


def created_json(**over: Any) -> dict[str, Any]:
    body = {
        "job_id": JOB,
        "sse_url": f"/v1/jobs/{JOB}/stream",
        "status_url": f"/v1/jobs/{JOB}",
        "operation": "echo",
        "state": "queued",
        "correlation_id": CID,
        "created_at": "2023-11-14T22:13:20.500Z",
    }
    body.update(over)
    return body


class Server:
    """Answers requests from a script (responses, or exceptions to raise) and records them."""

    def __init__(self, *script: httpx.Response | Exception | Handler) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.script:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step

    def last_event_ids(self) -> list[str | None]:
        return [r.headers.get("Last-Event-ID") for r in self.requests]


@asynccontextmanager
async def client_for(server: Server, **kwargs: Any) -> AsyncIterator[tuple[JobClient, list[float]]]:
    """A JobClient on ``server`` whose backoff sleeps are recorded instead of waited for."""
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(server)) as http,
        JobClient(BASE, http=http, **kwargs) as client,
    ):
        client._sleep = sleep
        yield client, slept


async def collect(client: JobClient, **kwargs: Any) -> list[JobEvent | Gap]:
    async with aclosing(client.events(JOB, **kwargs)) as stream:
        return [item async for item in stream]


def test_public_api() -> None:
    assert sorted(jobproto.client.__all__) == [
        "CreatedJob",
        "HTTPStatusError",
        "JobClient",
        "JobPage",
        "JobStatus",
        "JobStream",
        "RemoteJobCancelled",
        "RemoteJobFailed",
        "StreamInterrupted",
        "ssl_context",
    ]
    assert issubclass(HTTPStatusError, RequestError)


@pytest.mark.anyio
async def test_closes_only_the_http_client_it_made() -> None:
    async with JobClient(BASE) as own:
        pass
    assert own._http.is_closed
    async with httpx.AsyncClient() as http:
        async with JobClient(BASE, http=http):
            pass
        assert not http.is_closed


# -- create ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_posts_operation_and_fields() -> None:
    server = Server(httpx.Response(201, json=created_json()))
    async with client_for(server) as (client, _):
        created = await client.create("echo", {"text": "hi"}, times=2)
    assert created == CreatedJob(
        job_id=JOB,
        sse_url=f"/v1/jobs/{JOB}/stream",
        status_url=f"/v1/jobs/{JOB}",
        operation="echo",
        state="queued",
        correlation_id=CID,
        replayed=False,
        raw=created_json(),
    )
    (request,) = server.requests
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/v1/jobs")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"operation": "echo", "text": "hi", "times": 2}
    assert "X-Correlation-ID" not in request.headers
    assert "Idempotency-Key" not in request.headers


@pytest.mark.anyio
async def test_create_refuses_a_field_given_twice() -> None:
    async with client_for(Server()) as (client, _):
        with pytest.raises(LocalProtocolError):
            await client.create("echo", {"text": "a"}, text="b")
        with pytest.raises(LocalProtocolError):
            await client.create("echo", operation="other")


@pytest.mark.anyio
@pytest.mark.parametrize("value", [math.nan, math.inf, object()])
async def test_create_refuses_fields_json_cannot_carry(value: object) -> None:
    # jobproto/1 bodies are strict JSON: NaN, Infinity or an object have no spelling there
    server = Server()
    async with client_for(server) as (client, _):
        with pytest.raises(LocalProtocolError, match="temperature"):
            await client.create("echo", temperature=value)
    assert server.requests == []


@pytest.mark.anyio
async def test_create_replayed_by_idempotency_key() -> None:
    server = Server(httpx.Response(200, json=created_json(state="succeeded")))
    async with client_for(server) as (client, _):
        created = await client.create("echo", idempotency_key="key-1")
    assert created.replayed and created.state == "succeeded"
    assert server.requests[0].headers["Idempotency-Key"] == "key-1"


@pytest.mark.anyio
async def test_create_error_shape_becomes_http_status_error() -> None:
    server = Server(error(422, "validation_error", "times: expected int", field="times"))
    async with client_for(server) as (client, _):
        with pytest.raises(HTTPStatusError) as info:
            await client.create("echo", times="2")
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (422, "validation_error", "times")
    assert exc.message == "times: expected int"
    assert exc.response.status_code == 422
    assert isinstance(exc, RequestError)


@pytest.mark.anyio
async def test_error_without_json_body_is_a_protocol_error() -> None:
    server = Server(httpx.Response(502, text="<html>bad gateway</html>"))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteProtocolError):
            await client.status(JOB)


@pytest.mark.anyio
async def test_correlation_id_from_context_or_argument() -> None:
    server = Server(
        httpx.Response(201, json=created_json()), httpx.Response(201, json=created_json())
    )
    with bind_job(None, correlation_id="corr-from-context"):
        async with client_for(server) as (client, _):
            await client.create("echo")
            await client.create("echo", correlation_id="corr-explicit")
    assert [r.headers["X-Correlation-ID"] for r in server.requests] == [
        "corr-from-context",
        "corr-explicit",
    ]


@pytest.mark.anyio
async def test_trace_context_is_injected() -> None:
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    server = Server(httpx.Response(200, json=status_json()))
    async with client_for(server) as (client, _):
        with trace.use_span(NonRecordingSpan(context)):
            await client.status(JOB)
    assert server.requests[0].headers["traceparent"] == (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )


@pytest.mark.anyio
async def test_create_retries_transport_errors_only_with_idempotency_key() -> None:
    server = Server(httpx.ConnectError("refused"), httpx.Response(201, json=created_json()))
    async with client_for(server) as (client, slept):
        created = await client.create("echo", idempotency_key="key-1")
    assert created.job_id == JOB and len(server.requests) == 2 and len(slept) == 1

    refused = httpx.ConnectError("refused")
    server = Server(refused)
    async with client_for(server) as (client, _):
        with pytest.raises(ConnectFailed) as info:
            await client.create("echo")
    assert len(server.requests) == 1
    assert info.value.__cause__ is refused

    cut = httpx.ReadError("reset")
    server = Server(cut, cut, cut)
    async with client_for(server, max_reconnects=2) as (client, slept):
        with pytest.raises(TransportFailed) as failed:
            await client.create("echo", idempotency_key="key-1")
    assert not isinstance(failed.value, ConnectFailed)
    assert failed.value.__cause__ is cut
    assert len(server.requests) == 3 and len(slept) == 2


# -- status, list, cancel --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_status_is_parsed() -> None:
    body = status_json(
        "failed",
        finished_at="2023-11-14T22:13:22.250Z",
        error={"code": "boom", "message": "it broke"},
    )
    server = Server(httpx.Response(200, json=body))
    async with client_for(server) as (client, _):
        status = await client.status(JOB)
    assert (status.job_id, status.operation, status.state) == (JOB, "echo", "failed")
    assert (status.created_at, status.started_at, status.finished_at) == (TS, TS + 0.5, TS + 1.75)
    assert status.last_seq == 3 and status.correlation_id == CID and status.terminal
    assert status.error == {"code": "boom", "message": "it broke"} and status.raw == body
    assert str(server.requests[0].url) == f"{BASE}/v1/jobs/{JOB}"


@pytest.mark.anyio
async def test_status_of_a_malformed_answer_is_a_protocol_error() -> None:
    server = Server(httpx.Response(200, json={"job_id": JOB}))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteProtocolError, match="operation"):
            await client.status(JOB)


@pytest.mark.anyio
async def test_connect_error_is_a_connect_failed_with_its_cause() -> None:
    refused = httpx.ConnectError("refused")
    server = Server(refused)
    async with client_for(server) as (client, _):
        with pytest.raises(ConnectFailed) as info:
            await client.status(JOB)
    assert info.value.__cause__ is refused
    assert f"GET {BASE}/v1/jobs/{JOB}" in str(info.value)
    assert "refused" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cause",
    [httpx.ReadError(""), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("bad line")],
    ids=repr,
)
async def test_every_request_turns_transport_errors_into_transport_failed(
    cause: httpx.TransportError,
) -> None:
    calls: list[Callable[[JobClient], Any]] = [
        lambda c: c.status(JOB),
        lambda c: c.list(),
        lambda c: c.cancel(JOB),
        lambda c: c.create("echo"),
    ]
    for call in calls:
        server = Server(cause)
        async with client_for(server) as (client, _):
            with pytest.raises(TransportFailed) as info:
                await call(client)
        assert type(info.value) is TransportFailed
        assert info.value.__cause__ is cause
        assert type(cause).__name__ in str(info.value)  # httpx's message may be empty


@pytest.mark.anyio
async def test_a_body_that_cannot_be_decoded_is_a_protocol_error() -> None:
    body = httpx.ByteStream(b"not gzip")
    bad = httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=body)
    async with client_for(Server(bad)) as (client, _):
        with pytest.raises(RemoteProtocolError) as info:
            await client.status(JOB)
    assert isinstance(info.value.__cause__, httpx.DecodingError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cause",
    [httpx.ConnectTimeout("slow"), httpx.PoolTimeout("busy"), httpx.ConnectError("refused")],
    ids=repr,
)
async def test_errors_before_anything_was_sent_are_connect_failed(
    cause: httpx.TransportError,
) -> None:
    server = Server(cause)
    async with client_for(server) as (client, _):
        with pytest.raises(ConnectFailed) as info:
            await client.create("echo")
    assert info.value.__cause__ is cause and len(server.requests) == 1

    # nothing was sent, so a create with a key is retried, and a stream reconnects
    server = Server(cause, httpx.Response(201, json=created_json()))
    async with client_for(server) as (client, slept):
        assert (await client.create("echo", idempotency_key="key-1")).job_id == JOB
    assert len(server.requests) == 2 and len(slept) == 1
    server = Server(cause, sse(*HAPPY))
    async with client_for(server) as (client, slept):
        assert await collect(client) == HAPPY
    assert len(slept) == 1


def _recorder(slept: list[float]) -> Callable[[float], Any]:
    async def sleep(delay: float) -> None:
        slept.append(delay)

    return sleep


def _calls() -> list[tuple[str, Callable[[JobClient], Any]]]:
    return [
        ("status", lambda c: c.status(JOB)),
        ("list", lambda c: c.list()),
        ("cancel", lambda c: c.cancel(JOB)),
        ("create", lambda c: c.create("echo", idempotency_key="key-1")),
        ("events", lambda c: collect(c)),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "cause"),
    [("http://[::1", httpx.InvalidURL), ("ftp://jobs.test", httpx.UnsupportedProtocol)],
)
async def test_a_url_that_cannot_be_used_is_connect_failed_at_once(
    url: str, cause: type[Exception]
) -> None:
    for name, call in _calls():
        slept: list[float] = []
        async with JobClient(url) as client:
            client._sleep = _recorder(slept)
            with pytest.raises(ConnectFailed) as info:
                await call(client)
        assert isinstance(info.value.__cause__, cause), name
        assert "cannot use the URL" in str(info.value), name
        assert slept == [], name  # no retry can make the URL work


@pytest.mark.anyio
async def test_a_closed_client_raises_local_protocol_error() -> None:
    async with JobClient(BASE) as own:
        pass
    async with httpx.AsyncClient(transport=httpx.MockTransport(Server())) as http:
        shared = JobClient(BASE, http=http)
    for client in (own, shared):
        for _, call in _calls():
            with pytest.raises(LocalProtocolError, match="closed"):
                await call(client)


@pytest.mark.anyio
async def test_a_header_httpx_will_not_send_is_a_local_protocol_error() -> None:
    refused = httpx.LocalProtocolError("Illegal header value")
    server = Server(refused)
    async with client_for(server) as (client, slept):
        with pytest.raises(LocalProtocolError) as info:
            await client.create("echo", idempotency_key="key-1")
    assert info.value.__cause__ is refused and slept == []


@pytest.mark.anyio
async def test_json_nested_too_deeply_is_a_protocol_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for answer in (httpx.Response(200, content=deep), httpx.Response(500, content=deep)):
        async with client_for(Server(answer)) as (client, _):
            with pytest.raises(RemoteProtocolError):
                await client.status(JOB)
    frame = b"id: 1\nevent: data\ndata: " + deep + b"\n\n"
    async with client_for(Server(sse(frame))) as (client, _):
        with pytest.raises(RemoteProtocolError, match="nested too deeply"):
            await collect(client)


@pytest.mark.anyio
async def test_list_pages() -> None:
    body = {"jobs": [status_json(), status_json("queued", job_id="job_B")], "next_cursor": "c2"}
    server = Server(httpx.Response(200, json=body), httpx.Response(200, json={"jobs": []}))
    async with client_for(server) as (client, _):
        page = await client.list(state="running", limit=2)
        last = await client.list(cursor="c2")
    assert [j.job_id for j in page.jobs] == [JOB, "job_B"] and page.next_cursor == "c2"
    assert last.jobs == [] and last.next_cursor is None
    assert dict(server.requests[0].url.params) == {"state": "running", "limit": "2"}
    assert dict(server.requests[1].url.params) == {"cursor": "c2"}


@pytest.mark.anyio
async def test_cancel_final_or_pending() -> None:
    server = Server(
        httpx.Response(200, json=status_json("cancelled", finished_at="2023-11-14T22:13:22Z")),
        httpx.Response(202, json=status_json("running")),
    )
    async with client_for(server) as (client, _):
        done = await client.cancel(JOB)
        pending = await client.cancel(JOB)
    assert done.state == "cancelled" and done.terminal
    assert pending.state == "running" and not pending.terminal
    assert [r.method for r in server.requests] == ["DELETE", "DELETE"]


# -- events ----------------------------------------------------------------------------------------

HAPPY = [
    ev(1, Narration("start", "starting")),
    ev(2, Progress("work", 1, 2, unit="steps")),
    ev(3, Data({"token": "hi"})),
    ev(4, Succeeded({"answer": 42})),
]


@pytest.mark.anyio
async def test_events_until_terminal() -> None:
    # Anything after the terminal event is never read: the stream ends there.
    server = Server(sse(RETRY, HAPPY[0], KEEPALIVE, *HAPPY[1:], ev(5, Data("late")), then="hang"))
    async with client_for(server) as (client, slept):
        got = await collect(client, correlation_id="corr-x")
    assert got == HAPPY and slept == []
    (request,) = server.requests
    assert str(request.url) == f"{BASE}/v1/jobs/{JOB}/stream"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.headers["X-Correlation-ID"] == "corr-x"
    assert "Last-Event-ID" not in request.headers
    # Streams never time out on reads (a job may be silent); other calls do.
    assert request.extensions["timeout"]["read"] is None


@pytest.mark.anyio
async def test_events_after_sends_last_event_id() -> None:
    server = Server(sse(*HAPPY[2:]))
    async with client_for(server) as (client, _):
        assert await collect(client, after=2) == HAPPY[2:]
    assert server.last_event_ids() == ["2"]


@pytest.mark.anyio
async def test_events_resume_after_cut_without_duplicates() -> None:
    server = Server(
        sse(RETRY, *HAPPY[:2]),  # ends cleanly before the terminal event
        sse(RETRY, *HAPPY[:3], then=httpx.ReadError("reset")),  # overlapping replay, then broken
        sse(RETRY, *HAPPY[1:]),
    )
    async with client_for(server) as (client, slept):
        got = await collect(client)
    assert got == HAPPY
    assert server.last_event_ids() == [None, "2", "3"]
    assert len(slept) == 2


@pytest.mark.anyio
async def test_events_honour_server_retry_then_back_off_exponentially() -> None:
    server = Server(
        sse(RETRY, HAPPY[0]),
        httpx.ConnectError("refused"),
        httpx.ConnectError("refused"),
        httpx.ConnectError("refused"),
        sse(*HAPPY),
    )
    async with client_for(server, backoff_max=5.0) as (client, slept):
        assert await collect(client) == HAPPY
    # 1.5 s from ``retry: 1500``, doubling to the 5 s cap, each with up to 25% jitter.
    for delay, base in zip(slept, [1.5, 3.0, 5.0, 5.0], strict=True):
        assert base <= delay <= base * 1.25


@pytest.mark.anyio
async def test_events_backoff_without_retry_frame() -> None:
    server = Server(httpx.ReadError("x"), httpx.ReadError("x"), sse(*HAPPY))
    async with client_for(server, backoff_initial=0.01, backoff_max=1.0) as (client, slept):
        assert await collect(client) == HAPPY
    assert 0.01 <= slept[0] <= 0.0125 and 0.02 <= slept[1] <= 0.025


@pytest.mark.anyio
async def test_events_yield_gap() -> None:
    gap = Gap(after=0, first_available=3)
    server = Server(sse(RETRY, gap, *HAPPY[2:3]), sse(gap, *HAPPY[2:]))
    async with client_for(server) as (client, _):
        got = await collect(client)
    # The gap is yielded once: the reconnect drew the same gap again, which says nothing new.
    assert got == [gap, *HAPPY[2:]]
    assert server.last_event_ids() == [None, "3"]


@pytest.mark.anyio
async def test_events_404_on_reconnect_raises() -> None:
    server = Server(sse(*HAPPY[:2]), error(404, "job_not_found", field="job_id"))
    async with client_for(server) as (client, _):
        got: list[JobEvent | Gap] = []
        with pytest.raises(HTTPStatusError) as info:
            async with aclosing(client.events(JOB)) as stream:
                async for item in stream:
                    got.append(item)
    assert got == HAPPY[:2]
    assert (info.value.status, info.value.code) == (404, "job_not_found")
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_events_5xx_is_retried() -> None:
    server = Server(error(503, "unavailable"), httpx.Response(500, text="oops"), sse(*HAPPY))
    async with client_for(server) as (client, slept):
        assert await collect(client) == HAPPY
    assert len(slept) == 2


@pytest.mark.anyio
async def test_events_give_up_after_max_reconnects() -> None:
    cut = httpx.ReadError("reset")
    # A clean end after progress, a refused reconnect, a reconnect cut at once: three in a row.
    server = Server(sse(*HAPPY[:1]), httpx.ConnectError("refused"), sse(then=cut))
    async with client_for(server, max_reconnects=2) as (client, slept):
        with pytest.raises(StreamInterrupted) as info:
            await collect(client)
    assert (info.value.job_id, info.value.last_seq, info.value.attempts) == (JOB, 1, 3)
    assert info.value.__cause__ is cut
    assert len(server.requests) == 3 and len(slept) == 2


@pytest.mark.anyio
async def test_events_failure_count_resets_on_progress() -> None:
    server = Server(*[sse(e) for e in HAPPY])  # every connection delivers one event, then ends
    async with client_for(server, max_reconnects=1) as (client, _):
        assert await collect(client) == HAPPY
    assert server.last_event_ids() == [None, "1", "2", "3"]


@pytest.mark.anyio
async def test_events_answer_that_is_not_an_event_stream_is_a_protocol_error_at_once() -> None:
    server = Server(httpx.Response(200, json=status_json()), sse(*HAPPY))
    async with client_for(server) as (client, slept):
        with pytest.raises(RemoteProtocolError, match="text/event-stream") as info:
            await collect(client)
    assert isinstance(info.value.__cause__, httpx_sse.SSEError)
    assert len(server.requests) == 1 and slept == []


@pytest.mark.anyio
async def test_events_bad_envelope_is_a_protocol_error() -> None:
    server = Server(sse(b"id: 1\nevent: data\ndata: {not json\n\n"))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteProtocolError):
            await collect(client)


@pytest.mark.anyio
async def test_early_break_with_aclosing_closes_the_response() -> None:
    body = ScriptedStream(frames(RETRY, *HAPPY[:2]), then="hang")
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response)) as (client, _):
        with anyio.fail_after(5):
            async with aclosing(client.events(JOB)) as stream:
                async for _item in stream:
                    break
    assert body.closed and response.is_closed


# -- run -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_returns_result_and_reports_events() -> None:
    server = Server(httpx.Response(201, json=created_json(correlation_id="corr-srv")), sse(*HAPPY))
    seen: list[JobEvent | Gap] = []
    async with client_for(server) as (client, _):
        result = await client.run("echo", text="hi", on_event=seen.append)
    assert result == {"answer": 42} and seen == HAPPY
    assert json.loads(server.requests[0].content) == {"operation": "echo", "text": "hi"}
    # The stream carries the correlation id the server gave the job.
    assert server.requests[1].headers["X-Correlation-ID"] == "corr-srv"


@pytest.mark.anyio
async def test_run_awaits_async_callbacks() -> None:
    server = Server(httpx.Response(201, json=created_json()), sse(*HAPPY))
    seen: list[int] = []

    async def on_event(item: JobEvent | Gap) -> None:
        await anyio.lowlevel.checkpoint()
        assert isinstance(item, JobEvent)
        seen.append(item.seq)

    async with client_for(server) as (client, _):
        await client.run("echo", on_event=on_event)
    assert seen == [1, 2, 3, 4]


@pytest.mark.anyio
async def test_run_raises_when_the_job_fails() -> None:
    server = Server(httpx.Response(201, json=created_json()), sse(ev(1, Failed("boom", "bad"))))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteJobFailed) as info:
            await client.run("echo")
    assert (info.value.code, info.value.message, info.value.job_id) == ("boom", "bad", JOB)


@pytest.mark.parametrize(
    ("event", "state"),
    [(Cancelled("user asked"), "cancelled"), (Expired("no one came"), "expired")],
)
@pytest.mark.anyio
async def test_run_raises_when_the_job_is_cancelled(event: Any, state: str) -> None:
    server = Server(httpx.Response(201, json=created_json()), sse(ev(1, event)))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteJobCancelled) as info:
            await client.run("echo")
    assert (info.value.state, info.value.reason, info.value.job_id) == (state, event.reason, JOB)


# -- token and TLS ---------------------------------------------------------------------------------

TOKEN = "tok_" + "S3cr3t" * 7


@pytest.mark.anyio
async def test_the_token_goes_on_every_request_reconnects_included() -> None:
    server = Server(
        httpx.Response(201, json=created_json()),
        httpx.Response(200, json=status_json()),
        httpx.Response(200, json={"jobs": [], "next_cursor": None}),
        httpx.Response(200, json=status_json("cancelled")),
        sse(RETRY, *HAPPY[:2]),  # ends early: the client reconnects
        sse(RETRY, *HAPPY[2:]),
    )
    headers = {"Authorization": "Basic old", "X-Extra": "1"}
    async with client_for(server, token=TOKEN, headers=headers) as (client, _):
        await client.create("echo")
        await client.status(JOB)
        await client.list()
        await client.cancel(JOB)
        assert await collect(client) == HAPPY
    assert len(server.requests) == 6
    for request in server.requests:
        # one Authorization, the token's: it wins over one in ``headers``
        assert request.headers.get_list("authorization") == [f"Bearer {TOKEN}"]
        assert request.headers["x-extra"] == "1"
        assert TOKEN not in str(request.url)
    assert server.last_event_ids()[-1] == "2"


@pytest.mark.anyio
async def test_without_a_token_no_authorization_is_sent() -> None:
    server = Server(httpx.Response(200, json=status_json()))
    async with client_for(server) as (client, _):
        await client.status(JOB)
    assert "authorization" not in server.requests[0].headers


@pytest.mark.anyio
async def test_a_401_is_an_http_status_error_without_the_token() -> None:
    refusal = error(401, "unauthorized", "the bearer token is not valid")
    refusal.headers["WWW-Authenticate"] = "Bearer"
    server = Server(refusal, error(403, "forbidden", "'hive:a' may not use the job routes"))
    async with client_for(server, token=TOKEN) as (client, _):
        with pytest.raises(HTTPStatusError) as info:
            await client.create("echo")
        assert (info.value.status, info.value.code) == (401, "unauthorized")
        with pytest.raises(HTTPStatusError) as forbidden:
            await client.status(JOB)
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
        for exc in (info.value, forbidden.value):
            assert isinstance(exc, RequestError)
            assert TOKEN not in str(exc) and TOKEN not in repr(exc)
        assert TOKEN not in repr(client)
        assert "token=<hidden>" in repr(client)


@pytest.mark.anyio
async def test_a_stream_answered_401_is_not_retried() -> None:
    server = Server(sse(*HAPPY[:2]), error(401, "unauthorized"), sse(*HAPPY[2:]))
    async with client_for(server, token=TOKEN) as (client, slept):
        with pytest.raises(HTTPStatusError) as info:
            await collect(client)
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert len(server.requests) == 2  # the cut stream and the refused reconnect: no third try
    assert len(slept) == 1


@pytest.mark.anyio
async def test_transport_errors_do_not_carry_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    server = Server(
        sse(*HAPPY[:1], then=httpx.ReadError("reset")),
        httpx.ConnectError("refused"),
        sse(*HAPPY[1:]),
        httpx.ReadError("reset"),
    )
    async with client_for(server, token=TOKEN) as (client, _):
        assert await collect(client) == HAPPY
        with pytest.raises(TransportFailed) as info:
            await client.status(JOB)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert "reconnecting" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("bad", ["", "has space", "new\nline", "tab\t", "caf\u00e9"])
def test_a_token_that_cannot_go_in_a_header_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ValueError, match="token") as info:
        JobClient(BASE, token=bad)
    if bad:
        assert bad not in str(info.value)


@pytest.mark.anyio
async def test_verify_builds_the_clients_own_tls_context() -> None:
    import ssl

    import certifi

    async with JobClient(BASE, verify=certifi.where()) as client:
        assert not client._http.is_closed
    async with JobClient(BASE, verify=False):
        pass
    context = ssl.create_default_context()
    async with JobClient(BASE, verify=context):
        pass
    with pytest.raises(FileNotFoundError):
        JobClient(BASE, verify="/nonexistent/ca.pem")
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="verify"):
            JobClient(BASE, http=http, verify=False)


def test_str_of_a_status_error_says_status_code_message_and_field() -> None:
    response = httpx.Response(422, request=httpx.Request("POST", f"{BASE}/v1/jobs"))
    exc = HTTPStatusError(
        422, "validation_error", "must be >= 1", field="max_tokens", response=response
    )
    assert str(exc) == "HTTP 422 validation_error: must be >= 1 (field max_tokens)"
    assert exc.message == "must be >= 1"  # the server's message alone stays as it was
    gone = HTTPStatusError(404, "job_not_found", "no such job", response=response)
    assert str(gone) == "HTTP 404 job_not_found: no such job"


@pytest.mark.anyio
async def test_str_of_a_refusal_from_a_server_names_the_field() -> None:
    server = Server(error(422, "validation_error", "times: expected int", field="times"))
    async with client_for(server) as (client, _):
        with pytest.raises(HTTPStatusError) as info:
            await client.create("echo", times="2")
    assert str(info.value) == "HTTP 422 validation_error: times: expected int (field times)"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
async def test_a_dead_host_raises_jobprotos_errors_from_every_call() -> None:
    """No httpx error leaves the client against a real port nobody listens on: every request
    is a ``ConnectFailed``; ``events()`` retries (nothing was sent) and then gives up with
    ``StreamInterrupted``."""
    calls: list[tuple[str, Callable[[JobClient], Any]]] = [
        ("create", lambda c: c.create("echo")),
        ("create with a key", lambda c: c.create("echo", idempotency_key="key-1")),
        ("status", lambda c: c.status(JOB)),
        ("list", lambda c: c.list()),
        ("cancel", lambda c: c.cancel(JOB)),
        ("run", lambda c: c.run("echo")),
    ]
    url = f"http://127.0.0.1:{_closed_port()}"
    for name, call in calls:
        slept: list[float] = []
        async with JobClient(url, max_reconnects=1) as client:
            client._sleep = _recorder(slept)
            with pytest.raises(ConnectFailed) as info:
                await call(client)
        assert isinstance(info.value.__cause__, httpx.ConnectError), name
        assert "cannot connect" in str(info.value) and url in str(info.value), name
    async with JobClient(url, max_reconnects=1) as client:
        client._sleep = _recorder([])
        with pytest.raises(StreamInterrupted) as interrupted:
            await collect(client)
    assert isinstance(interrupted.value.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_server_retry_replaces_backoff_initial_for_reconnects() -> None:
    """As the JobClient docstring says: once the stream carried ``retry:`` the server's value is
    the base of the backoff, however large ``backoff_initial`` is; above ``backoff_max`` it is
    waited in full, without growing."""
    server = Server(
        sse(RETRY, HAPPY[0]),
        httpx.ReadError("cut"),
        httpx.ReadError("cut"),
        sse(*HAPPY),
    )
    async with client_for(server, backoff_initial=4.0, backoff_max=10.0) as (client, slept):
        assert await collect(client) == HAPPY
    for delay, base in zip(slept, [1.5, 3.0, 6.0], strict=True):  # 1.5 s from ``retry: 1500``
        assert base <= delay <= base * 1.25
    server = Server(sse(RETRY, HAPPY[0]), httpx.ReadError("cut"), sse(*HAPPY))
    async with client_for(server, backoff_max=1.0) as (client, slept):
        assert await collect(client) == HAPPY
    assert len(slept) == 2 and all(1.5 <= delay <= 1.5 * 1.25 for delay in slept)
    assert "retry:" in (JobClient.__doc__ or "") and "backoff_initial" in (JobClient.__doc__ or "")

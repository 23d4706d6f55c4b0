"""The ASGI adapter on real uvicorn: lifecycle, cancel, threads, relay, tracing, shutdown."""

from __future__ import annotations

import threading
from contextlib import aclosing
from typing import Any

import anyio
import attrs
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobproto import (
    Cancelled,
    Data,
    JobEvent,
    Narration,
    Operations,
    Succeeded,
    concat_data,
    current_correlation_id,
    emit_data,
    narrate,
)
from jobproto._narration import MAX_DEPTH
from jobproto.asgi import ServiceSettings, create_app
from jobproto.client import JobClient, RemoteJobFailed
from jobproto.conformance import conformance_operations
from jobproto.relay import relay
from jobproto.testing import serving

pytestmark = pytest.mark.anyio


@attrs.frozen
class Empty:
    pass


@attrs.frozen
class Downstream:
    url: str
    op: str = "wait"
    fields: dict[str, Any] = attrs.Factory(dict)


def upstream_ops(seen: dict[str, Any]) -> Operations:
    ops = Operations()

    @ops.operation("cascade")
    async def cascade(params: Downstream) -> Any:
        seen["correlation_id"] = current_correlation_id()
        narrate("cascade", "calling downstream")
        async with JobClient(params.url) as client:
            try:
                return await relay(client, params.op, params.fields, service="down")
            finally:
                seen["relay_exited"] = True

    @ops.operation("threaded")
    async def threaded(params: Empty) -> str:
        def work() -> str:
            for i in range(50):
                narrate("thread", f"line {i}", thread=threading.get_ident())
            return "done"

        return await anyio.to_thread.run_sync(work)

    return ops


async def collect(client: JobClient, job_id: str) -> list[JobEvent]:
    out: list[JobEvent] = []
    async with aclosing(client.events(job_id)) as events:
        async for ev in events:
            assert isinstance(ev, JobEvent)
            out.append(ev)
    return out


async def test_narration_from_worker_threads_reaches_the_stream_in_order() -> None:
    async with serving(create_app(upstream_ops({}))) as url, JobClient(url) as client:
        job = await client.create("threaded")
        events = await collect(client, job.job_id)
    lines = [e.event.message for e in events if isinstance(e.event, Narration)]
    assert lines == [f"line {i}" for i in range(50)]
    assert [e.seq for e in events] == list(range(1, 52))
    assert events[-1].event == Succeeded("done")


async def test_relay_reemits_downstream_events_with_origin_and_correlation() -> None:
    seen: dict[str, Any] = {}
    down_app = create_app(conformance_operations(), ServiceSettings(service_name="down"))
    async with serving(down_app) as down, serving(create_app(upstream_ops(seen))) as up:
        async with JobClient(up) as client:
            fields = {"messages": ["a", "b\nc", ""], "result": {"n": 3}}
            job = await client.create(
                "cascade",
                {"url": down, "op": "echo", "fields": fields},
                correlation_id="corr-relay-test",
            )
            events = await collect(client, job.job_id)
        async with JobClient(down) as down_client:
            (down_job,) = (await down_client.list()).jobs
            down_events = await collect(down_client, down_job.job_id)

    assert seen["correlation_id"] == "corr-relay-test"
    assert down_job.correlation_id == "corr-relay-test"
    assert {e.correlation_id for e in events} == {"corr-relay-test"}
    relayed = [e for e in events if e.origin is not None]
    # every downstream event but its terminal one, in order, with its origin
    assert [(e.origin.seq, e.event) for e in relayed if e.origin] == [
        (d.seq, d.event) for d in down_events[:-1]
    ]
    assert all(e.origin and e.origin.service == "down" for e in relayed)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == Succeeded({"n": 3})
    assert [e.event.payload for e in relayed if isinstance(e.event, Data)][1] == {
        "index": 1,
        "message": "b\nc",
    }


async def test_downstream_failure_fails_the_upstream_job_with_its_code() -> None:
    down_app = create_app(conformance_operations())
    async with serving(down_app) as down, serving(create_app(upstream_ops({}))) as up:
        async with JobClient(up) as client:
            fields = {"code": "no_gpu", "message": "nothing fits"}
            with pytest.raises(RemoteJobFailed) as info:
                await client.run("cascade", {"url": down, "op": "fail", "fields": fields})
    assert info.value.code == "no_gpu"
    assert "nothing fits" in info.value.message


async def test_cancelling_upstream_cancels_the_downstream_job() -> None:
    seen: dict[str, Any] = {}
    down_app = create_app(conformance_operations())
    async with serving(down_app) as down, serving(create_app(upstream_ops(seen))) as up:
        async with JobClient(up) as client, JobClient(down) as down_client:
            job = await client.create(
                "cascade", {"url": down, "op": "wait", "fields": {"seconds": 30}}
            )
            async with aclosing(client.events(job.job_id)) as events:
                async for ev in events:
                    if isinstance(ev, JobEvent) and ev.origin is not None:
                        break  # the downstream job is running
            status = await client.cancel(job.job_id)
            assert status.state == "cancelled"
            (down_job,) = (await down_client.list()).jobs
            with anyio.fail_after(5):
                while (await down_client.status(down_job.job_id)).state != "cancelled":
                    await anyio.sleep(0.02)
            final = await collect(client, job.job_id)
    assert seen["relay_exited"] is True
    assert isinstance(final[-1].event, Cancelled)


async def test_cascade_forms_one_trace_with_an_sdk() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    down_app = create_app(
        conformance_operations(), ServiceSettings(service_name="down"), tracer_provider=provider
    )
    up_app = create_app(
        upstream_ops({}), ServiceSettings(service_name="up"), tracer_provider=provider
    )
    async with serving(down_app) as down, serving(up_app) as up, JobClient(up) as client:
        with tracer.start_as_current_span("client") as root:
            await client.run("cascade", {"url": down, "op": "echo", "fields": {}})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"client", "up cascade", "down echo"} <= set(spans)
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert spans["down echo"].parent.span_id == spans["up cascade"].context.span_id


async def test_traceparent_is_forwarded_without_an_sdk() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    got: dict[str, str] = {}

    ops = Operations()

    @ops.operation("peek")
    async def peek(params: Empty) -> None:
        headers: dict[str, str] = {}
        from opentelemetry import propagate

        propagate.inject(headers)
        got.update(headers)

    async with serving(create_app(ops)) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/jobs", json={"operation": "peek"}, headers={"traceparent": parent})
        async with http.stream("GET", r.json()["sse_url"]) as s:
            await s.aread()
    assert got["traceparent"].split("-")[1] == parent.split("-")[1]


async def test_service_shutdown_cancels_running_jobs_and_ends_streams() -> None:
    app = create_app(conformance_operations())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/jobs", json={"operation": "wait", "seconds": 30})
        job_id = r.json()["job_id"]
        async with http.stream("GET", f"/v1/jobs/{job_id}/stream") as s:
            async for chunk in s.aiter_bytes():
                if b"event: narration" in chunk:
                    break
    # serving() has exited: the lifespan ended and the job with it.
    handle = app.state.jobs.registry.get(job_id)
    assert handle.state.value == "cancelled"
    assert handle.cancel_reason == "service shutting down"


async def test_the_keepalive_interval_setting_takes_effect() -> None:
    # A job quiet for 0.5 s (ten intervals): its stream carries keepalives, however loaded the
    # machine (a late timer only makes fewer of them, and three is far from ten).
    settings = ServiceSettings(keepalive_interval=0.05)
    async with serving(create_app(conformance_operations(), settings)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post("/v1/jobs", json={"operation": "wait", "seconds": 0.5, "tick": 5})
            body = b""
            async with http.stream("GET", r.json()["sse_url"]) as s:
                async for chunk in s.aiter_bytes():
                    body += chunk
    assert body.count(b": keepalive\n\n") >= 3
    assert b"event: succeeded" in body


async def test_405_lists_every_allowed_method_and_head_starts_nothing() -> None:
    async with serving(create_app(conformance_operations())) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.put("/v1/jobs")
            assert r.status_code == 405
            assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
            assert r.json()["error"]["code"] == "method_not_allowed"
            job = (await http.post("/v1/jobs", json={"operation": "echo"})).json()
            r = await http.post(job["status_url"])
            assert {"GET", "DELETE"} <= set(r.headers["allow"].replace(" ", "").split(","))
            r = await http.head(job["sse_url"])
            assert r.status_code == 200
            assert (await http.get(job["status_url"])).json()["state"] == "queued"


async def test_a_long_finished_job_replays_in_one_connection() -> None:
    settings = ServiceSettings(max_subscriber_lag=16, max_batch_events=8)
    async with serving(create_app(conformance_operations(), settings)) as url:
        async with JobClient(url) as client, httpx.AsyncClient(base_url=url) as http:
            job = await client.create("burst", {"count": 500})
            await collect(client, job.job_id)
            async with http.stream("GET", job.sse_url) as s:
                body = await s.aread()
    assert body.count(b"\nevent: data\n") == 500
    assert body.rstrip().endswith(b"}}")
    assert b"event: succeeded" in body


async def test_a_downstream_refusal_fails_the_relaying_job_with_its_code() -> None:
    down_app = create_app(conformance_operations())
    async with serving(down_app) as down, serving(create_app(upstream_ops({}))) as up:
        async with JobClient(up) as client:
            with pytest.raises(RemoteJobFailed) as info:
                await client.run("cascade", {"url": down, "op": "echo", "fields": {"x": 1}})
            assert info.value.code == "validation_error"
            with pytest.raises(RemoteJobFailed) as info:
                dead = "http://127.0.0.1:9"
                await client.run("cascade", {"url": dead, "op": "echo", "fields": {}})
            assert info.value.code == "downstream_unavailable"


@attrs.frozen
class Tokens:
    n: int
    url: str = ""


async def test_unread_tokens_coalesce_downstream_and_through_a_relay() -> None:
    ops = Operations()

    @ops.operation("tokens")
    async def tokens(params: Tokens) -> int:
        for i in range(params.n):  # flat out: no subscriber reads before the handler returns
            emit_data({"text": f"{i} ", "token_ids": [i]}, merge=concat_data)
        return params.n

    @ops.operation("relayed")
    async def relayed(params: Tokens) -> Any:
        async with JobClient(params.url) as client:
            return await relay(client, "tokens", {"n": params.n}, service="down", merge=concat_data)

    n = 600
    async with serving(create_app(ops)) as url, JobClient(url) as client:
        direct = await collect(client, (await client.create("tokens", {"n": n})).job_id)
        job = await client.create("relayed", {"n": n, "url": url})
        through = await collect(client, job.job_id)
    for events in (direct, through):
        data = [e.event.payload for e in events if isinstance(e.event, Data)]
        assert "".join(d["text"] for d in data) == "".join(f"{i} " for i in range(n))
        assert [i for d in data for i in d["token_ids"]] == list(range(n))
        assert len(data) < n  # merged
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].event == Succeeded(n)


async def test_a_lagging_subscriber_is_closed_with_a_clean_end_of_body() -> None:
    settings = ServiceSettings(max_subscriber_lag=64, start_mode="immediate")
    app = create_app(conformance_operations(), settings)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        created = await http.post(
            "/v1/jobs", json={"operation": "burst", "count": 50_000, "size": 1024}
        )
        job_id = created.json()["job_id"]
        handle = app.state.jobs.registry.get(job_id)
        async with http.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
            # Read nothing until the job has run to its end: this subscriber is then 50 000
            # events behind, whatever the machine's speed.
            with anyio.fail_after(60):
                while not handle.state.terminal:
                    await anyio.sleep(0.02)
            body = b"".join([chunk async for chunk in response.aiter_raw()])  # no protocol error
    assert b"event: data" in body
    assert b"event: succeeded" not in body  # closed early, for lag


def _echo_body(levels: int) -> bytes:
    """An echo request whose result is ``levels`` lists, one inside the other (written out: json
    itself refuses to encode some of these)."""
    result = "[" * levels + '"x"' + "]" * levels
    return f'{{"operation": "echo", "result": {result}}}'.encode()


async def test_a_create_body_nested_deeper_than_a_result_can_be_is_refused() -> None:
    # The body {"operation": "echo", "result": [[...]]} is one level more than its result: at the
    # limit, echo's result is encoded and sent; one level deeper, the body is refused with 400
    # (it was taken, and the job then failed: result is not JSON: maximum recursion depth).
    app = create_app(conformance_operations())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        json_headers = {"content-type": "application/json"}
        r = await http.post("/v1/jobs", content=_echo_body(MAX_DEPTH - 1), headers=json_headers)
        assert r.status_code == 201, r.text
        async with http.stream("GET", r.json()["sse_url"]) as s:
            text = (await s.aread()).decode()
        assert "event: succeeded" in text
        for levels in (MAX_DEPTH, 400, 4000):
            r = await http.post("/v1/jobs", content=_echo_body(levels), headers=json_headers)
            assert r.status_code == 400, (levels, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_json"
            assert error["message"] == f"request body is nested more than {MAX_DEPTH} levels deep"

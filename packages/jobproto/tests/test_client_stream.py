"""``JobClient.submit``: create a job and read its events in one request (docs/protocol.md §2.2.2).

Against scripted servers on ``httpx.MockTransport`` (one that answers the create request with the
job's stream, and an older one that answers JSON), built from the real frames of
``jobproto._wire``; then against the jobproto app itself, served on a loopback port.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from jobproto import (
    ConnectFailed,
    Data,
    Failed,
    Gap,
    JobEvent,
    Narration,
    Progress,
    RemoteProtocolError,
    Succeeded,
    TransportFailed,
)
from jobproto._wire import encode_created_frame, encode_frame, encode_gap_frame
from jobproto.asgi import create_app
from jobproto.client import (
    CreatedJob,
    HTTPStatusError,
    JobClient,
    JobStream,
    RemoteJobFailed,
    StreamInterrupted,
)
from jobproto.client import _client as client_module
from jobproto.conformance import conformance_operations
from jobproto.testing import serving

BASE = "http://jobs.test"
JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"
CID = "corr-test"
TS = 1_700_000_000.5  # exactly representable, survives the millisecond timestamps of the wire
RETRY = b"retry: 1500\n\n"


def ev(seq: int, event: Any) -> JobEvent:
    return JobEvent(seq=seq, job_id=JOB, correlation_id=CID, timestamp=TS, event=event)


HAPPY: list[JobEvent | Gap] = [
    ev(1, Narration("start", "starting")),
    ev(2, Progress("work", 1, 2, unit="steps")),
    ev(3, Data({"token": "hi"})),
    ev(4, Succeeded({"answer": 42})),
]


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


class ScriptedStream(httpx.AsyncByteStream):
    """A response body sent chunk by chunk, then: the end, an error, or silence forever."""

    def __init__(self, chunks: list[bytes], *, then: str | Exception = "end") -> None:
        self.chunks = chunks
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

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.script:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
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


ACCEPT = "text/event-stream, application/json;q=0.9"


def created_frame(**over: Any) -> bytes:
    return encode_created_frame(created_json(**over), JOB, CID, TS)


def answer(
    *items: JobEvent | Gap | bytes,
    status: int = 201,
    then: str | Exception = "end",
    created: bytes | None = None,
) -> httpx.Response:
    """A create-and-stream answer: ``retry:``, the created block, then ``items``."""
    body = ScriptedStream(
        [RETRY, created_frame() if created is None else created, *frames(*items)], then=then
    )
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "location": f"/v1/jobs/{JOB}",
        "content-location": f"/v1/jobs/{JOB}/stream",
        "x-job-id": JOB,
    }
    return httpx.Response(status, headers=headers, stream=body)


async def submit_all(client: JobClient, **kwargs: Any) -> tuple[CreatedJob, list[JobEvent | Gap]]:
    async with client.submit("echo", text="hi", **kwargs) as stream:
        return stream.created, [item async for item in stream]


# -- one request -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_is_one_request_answered_with_the_stream() -> None:
    server = Server(answer(*HAPPY))
    async with client_for(server) as (client, slept):
        created, got = await submit_all(client, correlation_id="corr-x")
    assert got == HAPPY and slept == []
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
    assert request.headers["Accept"] == ACCEPT
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Correlation-ID"] == "corr-x"
    assert json.loads(request.content) == {"operation": "echo", "text": "hi"}
    # no read timeout on the transport: after created the job may be silent for as long as it
    # runs, as events()'s streams may (the wait up to created is bounded by the client: see
    # test_a_peer_that_never_answers_is_transport_failed_after_the_timeout)
    assert request.extensions["timeout"]["read"] is None


@pytest.mark.anyio
async def test_the_created_block_may_share_a_chunk_with_the_first_events() -> None:
    body = b"".join([RETRY, created_frame(), *frames(*HAPPY)])
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, content=body)
    async with client_for(Server(response)) as (client, _):
        created, got = await submit_all(client)
    assert created.job_id == JOB and got == HAPPY


@pytest.mark.anyio
async def test_an_idempotent_replay_answers_200_with_the_stream() -> None:
    server = Server(answer(*HAPPY, status=200))
    async with client_for(server) as (client, _):
        created, got = await submit_all(client, idempotency_key="key-1")
    assert created.replayed and got == HAPPY
    assert server.requests[0].headers["Idempotency-Key"] == "key-1"


@pytest.mark.anyio
async def test_run_uses_one_request() -> None:
    server = Server(answer(*HAPPY))
    seen: list[JobEvent | Gap] = []
    async with client_for(server) as (client, _):
        assert await client.run("echo", on_event=seen.append) == {"answer": 42}
    assert seen == HAPPY and len(server.requests) == 1


@pytest.mark.anyio
async def test_run_raises_for_a_failed_job_read_from_the_create_answer() -> None:
    server = Server(answer(JobEvent(1, JOB, CID, TS, Failed("boom", "bad"))))
    async with client_for(server) as (client, _):
        with pytest.raises(RemoteJobFailed) as info:
            await client.run("echo")
    assert (info.value.code, info.value.job_id) == ("boom", JOB)


# -- an older server -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_json_answer_falls_back_to_opening_the_stream() -> None:
    server = Server(httpx.Response(201, json=created_json(correlation_id="corr-srv")), sse(*HAPPY))
    async with client_for(server) as (client, _):
        created, got = await submit_all(client)
    assert created.job_id == JOB and not created.replayed
    assert got == HAPPY
    post, get = server.requests
    assert post.headers["Accept"] == ACCEPT
    assert (get.method, str(get.url)) == ("GET", f"{BASE}/v1/jobs/{JOB}/stream")
    assert get.headers["Accept"] == "text/event-stream"
    assert get.headers["X-Correlation-ID"] == "corr-srv"  # the job's, as run() always sent


@pytest.mark.anyio
async def test_a_json_replay_falls_back_too() -> None:
    server = Server(httpx.Response(200, json=created_json()), sse(*HAPPY))
    async with client_for(server) as (client, _):
        created, got = await submit_all(client, idempotency_key="key-1")
    assert created.replayed and got == HAPPY


# -- refusals and failures before the job ----------------------------------------------------------


@pytest.mark.anyio
async def test_a_refusal_is_an_http_status_error_before_any_stream() -> None:
    server = Server(error(422, "validation_error", "times: expected int", field="times"))
    async with client_for(server) as (client, _):
        with pytest.raises(HTTPStatusError) as info:
            async with client.submit("echo", times="2"):
                pytest.fail("entered without a job")
    assert (info.value.status, info.value.field) == (422, "times")
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_5xx_at_create_is_not_retried_even_with_a_key() -> None:
    server = Server(error(503, "unavailable"))
    async with client_for(server) as (client, _):
        with pytest.raises(HTTPStatusError):
            await submit_all(client, idempotency_key="key-1")
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_without_a_key_a_stream_broken_before_created_is_transport_failed() -> None:
    # The job may or may not exist: sending it again could make a second one.
    cut = httpx.ReadError("reset")
    broken = httpx.Response(
        201, headers={"content-type": "text/event-stream"}, stream=ScriptedStream([RETRY], then=cut)
    )
    async with client_for(Server(broken)) as (client, slept):
        with pytest.raises(TransportFailed) as info:
            await submit_all(client)
    assert info.value.__cause__ is cut and slept == []


@pytest.mark.anyio
async def test_with_a_key_a_failed_create_is_sent_again_and_answered_by_the_replay() -> None:
    broken = httpx.Response(
        201,
        headers={"content-type": "text/event-stream"},
        stream=ScriptedStream([RETRY], then=httpx.ReadError("reset")),
    )
    server = Server(httpx.ConnectError("refused"), broken, answer(*HAPPY, status=200))
    async with client_for(server, backoff_initial=0.01) as (client, slept):
        created, got = await submit_all(client, idempotency_key="key-1")
    assert created.replayed and got == HAPPY
    assert [r.method for r in server.requests] == ["POST"] * 3
    assert {r.headers["Idempotency-Key"] for r in server.requests} == {"key-1"}
    assert len(slept) == 2


@pytest.mark.anyio
async def test_without_a_key_a_refused_connection_is_connect_failed_at_once() -> None:
    server = Server(httpx.ConnectError("refused"))
    async with client_for(server) as (client, slept):
        with pytest.raises(ConnectFailed):
            await submit_all(client)
    assert slept == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first",
    [
        b"id: 1\nevent: narration\ndata: {}\n\n",  # an event before the job was announced
        b"event: created\ndata: {not json\n\n",
    ],
)
async def test_a_stream_that_does_not_open_with_created_is_a_protocol_error(first: bytes) -> None:
    async with client_for(Server(answer(*HAPPY, created=first))) as (client, _):
        with pytest.raises(RemoteProtocolError):
            await submit_all(client, idempotency_key="key-1")


@pytest.mark.anyio
async def test_a_stream_that_ends_before_created_is_a_protocol_error() -> None:
    empty = httpx.Response(201, headers={"content-type": "text/event-stream"}, content=RETRY)
    async with client_for(Server(empty)) as (client, _):
        with pytest.raises(RemoteProtocolError, match="created"):
            await submit_all(client)


# -- no answer, or one that breaks after naming the job ------------------------------------------


def head_only(*, then: str | Exception, job_id: str = JOB) -> httpx.Response:
    """A create-and-stream answer whose head names the job, and whose body never gets to created."""
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "location": f"/v1/jobs/{job_id}",
        "content-location": f"/v1/jobs/{job_id}/stream",
        "x-job-id": job_id,
    }
    return httpx.Response(201, headers=headers, stream=ScriptedStream([RETRY], then=then))


def cancelled_status() -> httpx.Response:
    return httpx.Response(202, json={"job_id": JOB, "state": "running"})


def methods(server: Server) -> list[tuple[str, str]]:
    return [(r.method, r.url.path) for r in server.requests]


@pytest.mark.anyio
async def test_a_peer_that_never_answers_is_transport_failed_after_the_timeout() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(never)) as http,
        JobClient(BASE, http=http, timeout=0.1) as client,
    ):
        with anyio.fail_after(5):
            with pytest.raises(TransportFailed, match=r"no created event within 0\.1s"):
                await submit_all(client)


@pytest.mark.anyio
async def test_a_stream_silent_before_created_times_out_and_its_job_is_cancelled() -> None:
    server = Server(head_only(then="hang"), cancelled_status())
    async with client_for(server, timeout=0.1) as (client, slept):
        with anyio.fail_after(5):
            with pytest.raises(TransportFailed):
                await submit_all(client)
    assert slept == []
    assert methods(server) == [("POST", "/v1/jobs"), ("DELETE", f"/v1/jobs/{JOB}")]


@pytest.mark.anyio
async def test_with_a_key_a_silent_create_is_sent_again_and_its_job_kept() -> None:
    server = Server(head_only(then="hang"), answer(*HAPPY, status=200))
    async with client_for(server, timeout=0.1) as (client, slept):
        with anyio.fail_after(5):
            created, got = await submit_all(client, idempotency_key="key-1")
    assert created.replayed and got == HAPPY and len(slept) == 1
    # the replay answered the same job: nothing to cancel
    assert methods(server) == [("POST", "/v1/jobs")] * 2


@pytest.mark.anyio
async def test_after_created_the_stream_may_be_silent_longer_than_the_timeout() -> None:
    body = ScriptedStream([RETRY, created_frame()], then="hang")
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response), timeout=0.05) as (client, _):
        async with client.submit("echo") as stream:
            with anyio.move_on_after(0.3) as scope:
                async for _ in stream:
                    pass
    assert scope.cancelled_caught  # still waiting for events: no timeout after created


@pytest.mark.anyio
async def test_cancelled_after_the_head_names_the_job_cancels_it() -> None:
    # the POST was the job's first subscriber, so the job runs; only this client knows its id
    server = Server(head_only(then="hang"), cancelled_status())
    async with client_for(server) as (client, _):
        with anyio.move_on_after(0.2) as scope:
            await submit_all(client, correlation_id="corr-x")
        assert scope.cancelled_caught
    assert methods(server) == [("POST", "/v1/jobs"), ("DELETE", f"/v1/jobs/{JOB}")]
    assert server.requests[1].headers["X-Correlation-ID"] == "corr-x"


@pytest.mark.anyio
async def test_a_stream_broken_after_the_head_cancels_the_job_it_named() -> None:
    cut = httpx.ReadError("reset")
    server = Server(head_only(then=cut), cancelled_status())
    async with client_for(server) as (client, _):
        with pytest.raises(TransportFailed) as info:
            await submit_all(client)
    assert info.value.__cause__ is cut
    assert methods(server) == [("POST", "/v1/jobs"), ("DELETE", f"/v1/jobs/{JOB}")]


@pytest.mark.anyio
async def test_a_failed_cancel_of_the_named_job_leaves_the_original_error() -> None:
    cut = httpx.ReadError("reset")
    server = Server(head_only(then=cut), httpx.ConnectError("refused"))
    async with client_for(server) as (client, _):
        with pytest.raises(TransportFailed) as info:
            await submit_all(client)
    assert info.value.__cause__ is cut
    assert [m for m, _ in methods(server)] == ["POST", "DELETE"]


@pytest.mark.anyio
async def test_a_cancel_that_hangs_is_given_up_after_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "ABANDON_TIMEOUT", 0.1)
    answers = [head_only(then=httpx.ReadError("reset"))]
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "DELETE":
            await anyio.sleep_forever()
        return answers.pop(0)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        JobClient(BASE, http=http) as client,
    ):
        with anyio.fail_after(5):
            with pytest.raises(TransportFailed):
                await submit_all(client)
    assert seen == ["POST", "DELETE"]


@pytest.mark.anyio
async def test_a_head_without_a_valid_job_id_cancels_nothing() -> None:
    server = Server(head_only(then=httpx.ReadError("reset"), job_id="../../x"))
    async with client_for(server) as (client, _):
        with pytest.raises(TransportFailed):
            await submit_all(client)
    assert [m for m, _ in methods(server)] == ["POST"]


# -- after the job: resume as events() does --------------------------------------------------------


@pytest.mark.anyio
async def test_a_broken_create_stream_resumes_with_get_and_last_event_id() -> None:
    server = Server(
        answer(*HAPPY[:2], then=httpx.ReadError("reset")),
        sse(RETRY, *HAPPY[1:]),  # overlaps what was read already
    )
    async with client_for(server) as (client, slept):
        created, got = await submit_all(client, idempotency_key="key-1")
    assert got == HAPPY
    post, get = server.requests
    assert post.method == "POST"
    assert (get.method, get.url.path) == ("GET", f"/v1/jobs/{JOB}/stream")
    assert get.headers["Last-Event-ID"] == "2"
    assert get.headers["X-Correlation-ID"] == created.correlation_id
    # the backoff starts from the create answer's ``retry: 1500``
    assert len(slept) == 1 and 1.5 <= slept[0] <= 1.5 * 1.25


@pytest.mark.anyio
async def test_a_create_stream_broken_before_any_event_resumes_from_the_start() -> None:
    server = Server(answer(then=httpx.ReadError("reset")), sse(*HAPPY))
    async with client_for(server) as (client, _):
        _, got = await submit_all(client)
    assert got == HAPPY
    assert server.last_event_ids() == [None, None]
    assert server.requests[1].method == "GET"


@pytest.mark.anyio
async def test_submit_gives_up_as_events_does() -> None:
    cut = httpx.ReadError("reset")
    server = Server(answer(*HAPPY[:1], then=cut), httpx.ConnectError("refused"))
    async with client_for(server, max_reconnects=1) as (client, _):
        with pytest.raises(StreamInterrupted) as info:
            await submit_all(client)
    assert (info.value.job_id, info.value.last_seq) == (JOB, 1)


@pytest.mark.anyio
async def test_a_lost_job_on_resume_is_a_404() -> None:
    server = Server(answer(*HAPPY[:1]), error(404, "job_not_found"))
    async with client_for(server) as (client, _):
        with pytest.raises(HTTPStatusError) as info:
            await submit_all(client)
    assert info.value.status == 404


# -- leaving early ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_leaving_the_context_early_closes_the_connection_at_once() -> None:
    body = ScriptedStream([RETRY, created_frame(), *frames(*HAPPY[:2])], then="hang")
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response)) as (client, _):
        with anyio.fail_after(5):
            async with client.submit("echo") as stream:
                async for item in stream:
                    assert item == HAPPY[0]
                    break
            assert body.closed and response.is_closed


@pytest.mark.anyio
async def test_leaving_without_iterating_closes_the_connection() -> None:
    body = ScriptedStream([RETRY, created_frame()], then="hang")
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response)) as (client, _):
        with anyio.fail_after(5):
            async with client.submit("echo") as stream:
                assert stream.created.job_id == JOB
            assert body.closed and response.is_closed


@pytest.mark.anyio
async def test_leaving_without_iterating_closes_the_started_event_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []

    class Recording(client_module.EventSource):  # type: ignore[misc]
        async def aiter_sse(self) -> AsyncIterator[Any]:
            try:
                async for item in super().aiter_sse():
                    yield item
            finally:
                closed.append(True)

    monkeypatch.setattr(client_module, "EventSource", Recording)
    body = ScriptedStream([RETRY, created_frame()], then="hang")
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response)) as (client, _):
        with anyio.fail_after(5):
            async with client.submit("echo") as stream:
                assert stream.created.job_id == JOB
            # closed by submit() itself, not later by the garbage collector's finalizer
            assert closed == [True] and body.closed


@pytest.mark.anyio
async def test_an_error_in_the_body_closes_the_connection_and_propagates() -> None:
    body = ScriptedStream([RETRY, created_frame(), *frames(*HAPPY)], then="hang")
    response = httpx.Response(201, headers={"content-type": "text/event-stream"}, stream=body)
    async with client_for(Server(response)) as (client, _):
        with pytest.raises(KeyError):
            async with client.submit("echo") as stream:
                async for _item in stream:
                    raise KeyError("mine")
    assert body.closed


def test_a_job_stream_iterates_the_clients_own_generator() -> None:
    """No layer of its own between the caller and the event generator: ``async for`` over a
    ``JobStream`` calls the generator's ``__anext__`` directly (the relay reads every token
    through it)."""

    async def gen() -> AsyncIterator[JobEvent | Gap]:
        yield HAPPY[0]

    events = gen()
    stream = JobStream(
        CreatedJob(JOB, "", "", "echo", "queued", CID, False, {}),
        events,  # type: ignore[arg-type]
    )
    assert stream.__aiter__() is events
    assert JOB in repr(stream)


# -- against the jobproto app ----------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[JobClient, list[httpx.Request]]]:
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async with (
        serving(create_app(conformance_operations())) as url,
        httpx.AsyncClient(event_hooks={"request": [record]}) as http,
        JobClient(url, http=http) as client,
    ):
        yield client, requests


@pytest.mark.anyio
async def test_against_the_app_one_request_gives_the_job_and_what_its_stream_sends(
    served: tuple[JobClient, list[httpx.Request]],
) -> None:
    client, requests = served
    async with client.submit("echo", messages=["a", "b"], result="done") as stream:
        created = stream.created
        got = [item async for item in stream]
    assert [r.method for r in requests] == ["POST"]
    status = await client.status(created.job_id)
    assert (created.operation, created.correlation_id) == ("echo", status.correlation_id)
    assert not created.replayed
    assert all(isinstance(item, JobEvent) for item in got)
    jobs = [(ev.seq, ev.job_id, ev.correlation_id) for ev in got if isinstance(ev, JobEvent)]
    assert jobs == [(seq, created.job_id, created.correlation_id) for seq in range(1, 8)]
    assert [ev.event for ev in got if isinstance(ev, JobEvent)][-1] == Succeeded("done")
    # the same events as the job's stream URL sends
    async with aclosing(client.events(created.job_id)) as events:
        assert [item async for item in events] == got


@pytest.mark.anyio
async def test_against_the_app_a_replayed_key_answers_the_same_job_and_events(
    served: tuple[JobClient, list[httpx.Request]],
) -> None:
    client, requests = served
    first, events = await submit_all_app(client, "key-app")
    again, replayed = await submit_all_app(client, "key-app")
    assert again.replayed and not first.replayed
    assert again.job_id == first.job_id
    assert replayed == events
    assert [r.method for r in requests] == ["POST", "POST"]


async def submit_all_app(client: JobClient, key: str) -> tuple[CreatedJob, list[JobEvent | Gap]]:
    async with client.submit("echo", messages=["x"], result=1, idempotency_key=key) as stream:
        return stream.created, [item async for item in stream]


@pytest.mark.anyio
async def test_against_the_app_leaving_early_leaves_the_job_running(
    served: tuple[JobClient, list[httpx.Request]],
) -> None:
    client, _ = served
    with anyio.fail_after(10):
        async with client.submit("wait", seconds=30, tick=0.05) as stream:
            async for _item in stream:
                break
        status = await client.status(stream.created.job_id)
        assert status.state == "running"
        await client.cancel(stream.created.job_id)

"""``jobproto.relay`` onto a sink that is not the ASGI adapter's, against a scripted downstream.

The relay needs only ``JobSink``: whatever the adapter bound with ``bind_job`` gets the downstream
events with their ``origin``. The downstream service is an ``httpx.MockTransport`` script (no
network, no ASGI app), so nothing here loads ``jobproto.asgi``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from jobproto import (
    ConnectFailed,
    Data,
    Event,
    Failed,
    Gap,
    JobEvent,
    JobFailed,
    Merge,
    Narration,
    Origin,
    Progress,
    Succeeded,
    bind_job,
    concat_data,
    current_job,
)
from jobproto._wire import encode_created_frame, encode_frame, encode_gap_frame
from jobproto.client import HTTPStatusError, JobClient
from jobproto.relay import relay

BASE = "http://hive.test"
DOWN = "job_DOWNSTREAMAAAAAAAAAAAA"
CID = "corr-relay"
TS = 1_700_000_000.5


class ListSink:
    """A job of some other framework: it keeps what it is given, in order."""

    def __init__(self) -> None:
        self.job_id = "job_UPSTREAM"
        self.correlation_id = CID
        self.emitted: list[tuple[Event, Origin | None, Merge | None]] = []

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        self.emitted.append((event, origin, merge))


def down(seq: int, event: Event, origin: Origin | None = None) -> JobEvent:
    return JobEvent(seq, DOWN, CID, TS, event, origin)


def created() -> httpx.Response:
    body = {
        "job_id": DOWN,
        "sse_url": f"/v1/jobs/{DOWN}/stream",
        "status_url": f"/v1/jobs/{DOWN}",
        "operation": "worker_spawn",
        "state": "queued",
        "correlation_id": CID,
        "created_at": "2023-11-14T22:13:20.500Z",
    }
    return httpx.Response(201, json=body)


def stream(*items: JobEvent | Gap) -> httpx.Response:
    body = b"retry: 1000\n\n" + b"".join(
        encode_gap_frame(i, DOWN, CID, TS) if isinstance(i, Gap) else encode_frame(i) for i in items
    )
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


class Downstream:
    """Answers from a script and records the requests."""

    def __init__(
        self, *script: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]
    ) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step


async def run_relay(downstream: Downstream, **kwargs: Any) -> Any:
    transport = httpx.MockTransport(downstream)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        JobClient(BASE, http=http, max_reconnects=0) as client,
    ):
        return await relay(client, "worker_spawn", {"model": "tiny"}, service="hive", **kwargs)


@pytest.fixture
def sink() -> Iterator[ListSink]:
    job = ListSink()
    with bind_job(job):
        yield job


NESTED = Origin("worker", "job_WORKER", 7)


@pytest.mark.anyio
async def test_relay_onto_a_sink_of_its_own_keeps_every_origin(sink: ListSink) -> None:
    downstream = Downstream(
        created(),
        stream(
            down(1, Narration("spawn", "starting")),
            down(2, Progress("load", 1, 2)),
            down(3, Data({"text": "hi"}), NESTED),
            down(4, Succeeded({"worker_id": "w1"})),
        ),
    )
    result = await run_relay(downstream)
    assert result == {"worker_id": "w1"}
    assert sink.emitted == [
        (Narration("spawn", "starting"), Origin("hive", DOWN, 1), None),
        (Progress("load", 1, 2), Origin("hive", DOWN, 2), None),
        (Data({"text": "hi"}), Origin("hive", DOWN, 3, NESTED), None),
    ]  # the terminal event is not re-emitted: the current job has its own
    assert downstream.requests[0].headers["X-Correlation-ID"] == CID  # from the bound job


@pytest.mark.anyio
async def test_relay_hands_the_merge_to_the_sink_for_data_only(sink: ListSink) -> None:
    downstream = Downstream(
        created(),
        stream(down(1, Narration("a", "b")), down(2, Data("x")), down(3, Succeeded(None))),
    )
    await run_relay(downstream, merge=concat_data)
    assert [merge for _, _, merge in sink.emitted] == [None, concat_data]


@pytest.mark.anyio
async def test_a_gap_downstream_is_a_warning_on_the_sink(sink: ListSink) -> None:
    downstream = Downstream(
        created(), stream(Gap(after=0, first_available=5), down(5, Succeeded(1)))
    )
    assert await run_relay(downstream) == 1
    [(event, origin, _)] = sink.emitted
    assert isinstance(event, Narration) and event.action == "relay_gap"
    assert event.level == "warning" and origin is None
    assert "lost 4 events" in event.message


@pytest.mark.anyio
async def test_a_downstream_failure_fails_with_its_code(sink: ListSink) -> None:
    downstream = Downstream(created(), stream(down(1, Failed("no_such_model", "tiny?"))))
    with pytest.raises(JobFailed) as info:
        await run_relay(downstream)
    assert (info.value.code, info.value.message) == ("no_such_model", "hive: tiny?")


@pytest.mark.anyio
async def test_an_unreachable_downstream_is_downstream_unavailable(sink: ListSink) -> None:
    refused = httpx.ConnectError("refused")
    with pytest.raises(JobFailed) as info:
        await run_relay(Downstream(refused))
    assert info.value.code == "downstream_unavailable"
    assert isinstance(info.value.__cause__, ConnectFailed)  # jobproto's error, httpx's behind it
    assert info.value.__cause__.__cause__ is refused
    assert sink.emitted == []


def refused(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "nope"}})


@pytest.mark.anyio
async def test_a_downstream_that_lost_its_job_is_downstream_unavailable(sink: ListSink) -> None:
    # created, then a 404 on the stream: the downstream service restarted and lost the job
    downstream = Downstream(created(), refused(404, "job_not_found"))
    with pytest.raises(JobFailed) as info:
        await run_relay(downstream)
    assert info.value.code == "downstream_unavailable"
    assert f"hive lost job {DOWN}" in info.value.message
    assert isinstance(info.value.__cause__, HTTPStatusError)
    assert len(downstream.requests) == 2  # no cancel of a job that is not there


@pytest.mark.anyio
async def test_a_refusal_at_create_keeps_its_code(sink: ListSink) -> None:
    with pytest.raises(JobFailed) as info:
        await run_relay(Downstream(refused(422, "validation_error")))
    assert (info.value.code, info.value.message) == ("validation_error", "hive: nope")


@pytest.mark.anyio
async def test_an_unusable_downstream_url_is_downstream_unavailable(sink: ListSink) -> None:
    async with JobClient("http://[::1") as client:
        with pytest.raises(JobFailed) as info:
            await relay(client, "worker_spawn", {}, service="hive")
    assert info.value.code == "downstream_unavailable"
    assert isinstance(info.value.__cause__, ConnectFailed)


@pytest.mark.anyio
async def test_outside_a_job_the_relay_runs_and_emits_nowhere() -> None:
    assert current_job() is None
    downstream = Downstream(created(), stream(down(1, Narration("a", "b")), down(2, Succeeded(2))))
    assert await run_relay(downstream) == 2


def test_the_relay_imports_no_asgi_adapter() -> None:
    """In a fresh interpreter, so that what this test session imported does not count."""
    code = (
        "import json, sys\n"
        "import jobproto.relay\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.startswith(('jobproto.asgi', 'starlette')))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(out.stdout) == []


# -- create-and-stream: the create request answered with the job's stream --------------------------


def created_stream(*items: JobEvent | Gap, then: Exception | None = None) -> httpx.Response:
    """The answer of a service that creates the job and streams it in one response."""
    created_block = encode_created_frame(created().json(), DOWN, CID, TS)
    chunks = [b"retry: 1000\n\n", created_block] + [
        encode_gap_frame(i, DOWN, CID, TS) if isinstance(i, Gap) else encode_frame(i) for i in items
    ]
    headers = {"content-type": "text/event-stream; charset=utf-8", "x-job-id": DOWN}
    return httpx.Response(201, headers=headers, stream=Body(chunks, then))


class Body(httpx.AsyncByteStream):
    """A body sent chunk by chunk, then an error, or (``then`` None) silence until closed."""

    def __init__(self, chunks: list[bytes], then: Exception | None) -> None:
        self.chunks = chunks
        self.then = then
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.then is not None:
            raise self.then
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_one_request_relays_a_job_whose_create_answers_with_its_stream(
    sink: ListSink,
) -> None:
    downstream = Downstream(
        created_stream(
            down(1, Narration("spawn", "starting")),
            down(2, Data({"text": "hi"}), NESTED),
            down(3, Succeeded({"worker_id": "w1"})),
        )
    )
    assert await run_relay(downstream, idempotency_key="k1") == {"worker_id": "w1"}
    [request] = downstream.requests
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.headers["Accept"] == "text/event-stream, application/json;q=0.9"
    assert request.headers["Idempotency-Key"] == "k1"
    assert request.headers["X-Correlation-ID"] == CID
    assert sink.emitted == [
        (Narration("spawn", "starting"), Origin("hive", DOWN, 1), None),
        (Data({"text": "hi"}), Origin("hive", DOWN, 2, NESTED), None),
    ]


@pytest.mark.anyio
async def test_a_cancelled_relay_closes_the_stream_then_cancels_the_downstream_job(
    sink: ListSink,
) -> None:
    answer = created_stream(down(1, Narration("spawn", "starting")))
    body = answer.stream
    assert isinstance(body, Body)
    closed_before_cancel: list[bool] = []

    def cancelled(request: httpx.Request) -> httpx.Response:
        closed_before_cancel.append(body.closed)
        return httpx.Response(202, json={"job_id": DOWN, "state": "running"})

    downstream = Downstream(answer, cancelled)
    with anyio.move_on_after(0.5):  # the current job is cancelled while the relay waits
        await run_relay(downstream)
    assert [(r.method, r.url.path) for r in downstream.requests] == [
        ("POST", "/v1/jobs"),
        ("DELETE", f"/v1/jobs/{DOWN}"),
    ]
    assert closed_before_cancel == [True]
    assert sink.emitted == [(Narration("spawn", "starting"), Origin("hive", DOWN, 1), None)]


@pytest.mark.anyio
async def test_a_job_lost_after_its_create_stream_broke_is_downstream_unavailable(
    sink: ListSink,
) -> None:
    downstream = Downstream(
        created_stream(down(1, Narration("a", "b")), then=httpx.ReadError("reset")),
        refused(404, "job_not_found"),
    )
    transport = httpx.MockTransport(downstream)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        JobClient(BASE, http=http, max_reconnects=1) as client,
    ):
        client._sleep = lambda _delay: anyio.lowlevel.checkpoint()
        with pytest.raises(JobFailed) as info:
            await relay(client, "worker_spawn", {}, service="hive")
    assert info.value.code == "downstream_unavailable"
    assert f"hive lost job {DOWN}" in info.value.message
    assert [r.method for r in downstream.requests] == ["POST", "GET"]  # no cancel
    assert downstream.requests[1].headers["Last-Event-ID"] == "1"

"""``jobproto.relay``'s checkpoints, and a relay resumed from one by a fresh relay.

The downstream service is a real jobproto app served on a loopback port (``jobproto.testing``),
whose one operation emits numbered data events and stops half-way until the test lets it go on.
The current job is a sink of this test's own that records each emit and each checkpoint, in
order. A relay "dies" the way a replica does: its connections are cut (its transport refuses
every request, so it cannot cancel the downstream job either) and its task is cancelled; the
downstream job goes on without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest

from jobproto import Data, Event, JobFailed, Merge, Operations, Origin, bind_job, emit_data
from jobproto.asgi import create_app
from jobproto.client import JobClient
from jobproto.relay import RelayPoint, relay, relay_point
from jobproto.testing import serving

SERVICE = "worker:w1"
CONTEXT = {"url": "http://worker.test", "hive": "h1", "worker": "w1"}
#: bounded polls: this many turns of 10 ms at most
POLLS = 1000


class RecordingSink:
    """A job of another framework, with checkpoints: every emit and checkpoint, in order."""

    #: its checkpoints are read (by whoever resumes it)
    keeps_checkpoints = True
    #: set when the job goes on elsewhere (the relay then leaves its downstream job running)
    handed_over = False

    def __init__(self, job_id: str = "job_UPSTREAM") -> None:
        self.job_id = job_id
        self.correlation_id = "corr-resume"
        self.calls: list[tuple[str, Any]] = []

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        self.calls.append(("emit", (event, origin)))

    def set_checkpoint(self, value: Mapping[str, Any] | None) -> None:
        self.calls.append(("checkpoint", value))

    @property
    def emitted(self) -> list[tuple[Event, Origin | None]]:
        return [value for kind, value in self.calls if kind == "emit"]

    @property
    def checkpoint(self) -> Mapping[str, Any] | None:
        marks = [value for kind, value in self.calls if kind == "checkpoint"]
        return marks[-1] if marks else None

    def data(self) -> list[int]:
        return [e.payload["i"] for e, _ in self.emitted if isinstance(e, Data)]


class Severable(httpx.AsyncBaseTransport):
    """A transport that can be cut: then every request fails to connect (a dead replica sends
    nothing more, not even the cancel of its downstream job)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.cut = False
        self.refused: list[str] = []
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            self.refused.append(request.method)
            raise httpx.ConnectError("cut", request=request)
        self.sent.append(request.method)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@attrs.frozen
class CountParams:
    n: int = 10
    pause_at: int = 0


@attrs.define
class Gates:
    """Lets the test hold the downstream job half-way: it waits for ``go`` after ``pause_at``."""

    go: anyio.Event = attrs.field(factory=anyio.Event)
    jobs: int = 0


def downstream_operations(gates: Gates) -> Operations:
    ops = Operations()

    @ops.operation("count")
    async def count(params: CountParams) -> dict[str, int]:
        """Emit ``{"i": 1..n}``, stopping after ``pause_at`` until the test says go."""
        gates.jobs += 1
        for i in range(1, params.n + 1):
            emit_data({"i": i})
            if i == params.pause_at:
                await gates.go.wait()
            await anyio.lowlevel.checkpoint()
        return {"count": params.n}

    return ops


@asynccontextmanager
async def downstream() -> AsyncIterator[tuple[str, Gates]]:
    gates = Gates()
    async with serving(create_app(downstream_operations(gates))) as url:
        yield url, gates


async def wait_for(condition: Any) -> None:
    for _ in range(POLLS):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("condition not met in time")


def check_checkpoints_follow_emits(sink: RecordingSink, job_id: str, first_seq: int) -> None:
    """Every emit is followed at once by the checkpoint that names it (same turn)."""
    kind, value = sink.calls[0]
    assert (kind, value["relay"]["seq"]) == ("checkpoint", first_seq)  # the job announced
    for (kind, value), (next_kind, mark) in zip(sink.calls, sink.calls[1:], strict=False):
        if kind != "emit":
            continue
        _, origin = value
        assert next_kind == "checkpoint"
        assert mark == {"relay": {**CONTEXT, "service": SERVICE, "job_id": job_id,
                                  "seq": origin.seq}}  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("stop", ["dies", "hands_over"])
async def test_a_relay_resumed_from_its_checkpoint_re_emits_every_event_once(stop: str) -> None:
    """The first relay stops half-way: its replica dies (nothing more leaves it), or its job is
    handed over (the sink's ``handed_over``: the relay must not cancel the downstream job)."""
    n, pause_at = 20, 7
    async with downstream() as (url, gates):
        first, cut = RecordingSink(), Severable()
        async with (
            httpx.AsyncClient(transport=cut) as http,
            JobClient(url, http=http, max_reconnects=0) as client,
        ):
            async with anyio.create_task_group() as tg:

                async def run_first() -> None:
                    with bind_job(first):
                        await relay(
                            client,
                            "count",
                            {"n": n, "pause_at": pause_at},
                            service=SERVICE,
                            context=CONTEXT,
                        )

                tg.start_soon(run_first)
                await wait_for(lambda: len(first.data()) == pause_at)
                if stop == "dies":
                    cut.cut = True  # nothing more leaves the replica
                else:
                    first.handed_over = True
                tg.cancel_scope.cancel()
        assert first.data() == list(range(1, pause_at + 1))
        if stop == "dies":
            assert "DELETE" in cut.refused  # it tried to cancel the downstream job, and could not
        else:
            assert "DELETE" not in cut.sent  # it did not try
        point = relay_point(first.checkpoint)
        assert point is not None
        check_checkpoints_follow_emits(first, point.job_id, 0)
        assert (point.seq, point.service, point.context) == (pause_at, SERVICE, CONTEXT)
        gates.go.set()  # the downstream job goes on while no relay reads it

        second = RecordingSink()
        async with JobClient(url, max_reconnects=0) as client:
            with bind_job(second):
                result = await relay(
                    client, "count", None, service=SERVICE, context=CONTEXT, resume=point
                )
        assert result == {"count": n}
        assert gates.jobs == 1  # the resume created no job
        assert first.data() + second.data() == list(range(1, n + 1))  # each exactly once
        seqs = [o.seq for _, o in first.emitted + second.emitted if o is not None]
        assert seqs == list(range(1, n + 1))  # the downstream log, in order, once
        assert all(o is not None and o.job_id == point.job_id for _, o in second.emitted)
        check_checkpoints_follow_emits(second, point.job_id, pause_at)


@pytest.mark.anyio
async def test_a_resume_after_the_downstream_job_ended_returns_its_result_only() -> None:
    async with downstream() as (url, _), JobClient(url, max_reconnects=0) as client:
        sink = RecordingSink()
        with bind_job(sink):
            await relay(client, "count", {"n": 3}, service=SERVICE, context=CONTEXT)
        point = relay_point(sink.checkpoint)
        assert point is not None and point.seq == 3
        again = RecordingSink()
        with bind_job(again):
            result = await relay(client, "count", None, service=SERVICE, resume=point)
        assert result == {"count": 3}
        assert again.emitted == []  # nothing after seq 3 but the terminal event


@pytest.mark.anyio
async def test_a_resume_of_a_job_the_downstream_no_longer_has_is_downstream_lost() -> None:
    async with downstream() as (url, _), JobClient(url, max_reconnects=0) as client:
        sink = RecordingSink()
        gone = RelayPoint("job_AAAAAAAAAAAAAAAAAAAAAA", 5, SERVICE)
        with bind_job(sink), pytest.raises(JobFailed) as failed:
            await relay(client, "count", None, service=SERVICE, resume=gone)
        assert failed.value.code == "downstream_lost"
        assert failed.value.message == f"{SERVICE} job {gone.job_id} is gone: cannot resume"
        assert sink.emitted == []


@pytest.mark.anyio
async def test_a_sink_without_checkpoints_is_relayed_to_as_before() -> None:
    class PlainSink:
        job_id = "job_PLAIN"
        correlation_id = "corr-plain"

        def __init__(self) -> None:
            self.events: list[Event] = []

        def emit(
            self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
        ) -> None:
            self.events.append(event)

    async with downstream() as (url, _), JobClient(url, max_reconnects=0) as client:
        sink = PlainSink()
        with bind_job(sink):
            result = await relay(client, "count", {"n": 2}, service=SERVICE, context=CONTEXT)
        assert result == {"count": 2}
        assert sink.events == [Data({"i": 1}), Data({"i": 2})]


@pytest.mark.parametrize(
    "checkpoint",
    [
        None,
        {},
        {"relay": None},
        {"relay": {"seq": 3}},
        {"relay": {"job_id": "", "seq": 3}},
        {"relay": {"job_id": "job_X", "seq": -1}},
        {"relay": {"job_id": "job_X", "seq": True}},
        {"relay": {"job_id": "job_X", "seq": "3"}},
        {"other": {"job_id": "job_X", "seq": 3}},
    ],
)
def test_a_checkpoint_that_names_no_relay_gives_no_point(checkpoint: Any) -> None:
    assert relay_point(checkpoint) is None


def test_a_relay_point_keeps_the_callers_context() -> None:
    checkpoint = {"relay": {"service": "hive:h", "job_id": "job_X", "seq": 4, "url": "u"}}
    assert relay_point(checkpoint) == RelayPoint("job_X", 4, "hive:h", {"url": "u"})


@pytest.mark.anyio
async def test_a_context_that_is_not_json_is_refused_at_the_call() -> None:
    async with JobClient("http://unused.test") as client:
        with bind_job(RecordingSink()), pytest.raises(TypeError, match=r"relay\(\): context"):
            await relay(client, "count", None, service=SERVICE, context={"url": object()})


@pytest.mark.anyio
async def test_a_sink_whose_checkpoints_nobody_reads_is_spared_them() -> None:
    sink = RecordingSink()
    sink.keeps_checkpoints = False  # e.g. a job in one process
    async with downstream() as (url, _), JobClient(url, max_reconnects=0) as client:
        with bind_job(sink):
            assert await relay(client, "count", {"n": 2}, service=SERVICE) == {"count": 2}
    assert [kind for kind, _ in sink.calls] == ["emit", "emit"]

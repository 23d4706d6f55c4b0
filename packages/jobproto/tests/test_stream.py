"""The stream loop (``jobproto.asgi._stream``) driven as a bare ASGI response: its one timer.

A stream keeps one timer for its two deadlines (the keepalive while it waits, the send timeout
while it sends) and moves the deadlines on each turn without arming a new timer; a timer that
fires before what is due arms itself again. These tests drive ``stream_job`` with a scripted
``send``/``receive`` (no server), so they can see every send and every timer the loop asks for.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest

from jobproto import Data, Job, Operations, emit_data
from jobproto._correlation import new_correlation_id
from jobproto._extensions import ABORT_EXTENSION
from jobproto.asgi import JobHandle, JobService, ServiceSettings, create_app
from jobproto.asgi._stream import (
    DISCONNECT_EXTENSION,
    KEEPALIVE,
    _Subscriber,
    _watch_disconnect,
    stream_job,
)
from jobproto.testing import serving

pytestmark = pytest.mark.anyio


@attrs.frozen
class Steps:
    n: int


@attrs.frozen
class Nothing:
    pass


class Client:
    """The ASGI side of one stream: records what is sent, says ``http.disconnect`` on ``leave``,
    and can stop taking sends (``freeze``: the next send never returns)."""

    def __init__(self, *, server_watches: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.received = 0
        #: what the stream asked the server to call when the connection is lost (``watch``)
        self.on_lost: list[Callable[[], None] | None] = []
        self.sent = anyio.Event()
        self.gone = anyio.Event()
        self.frozen = False
        #: a frozen send that is cancelled raises OSError instead (as a send may that writes
        #: to a transport it finds broken)
        self.breaks = False
        self.aborted = False
        self.scope: dict[str, Any] = {
            "type": "http",
            "extensions": {ABORT_EXTENSION: {"abort": self.abort}},
        }
        if server_watches:
            self.scope["extensions"][DISCONNECT_EXTENSION] = {"watch": self.on_lost.append}

    def abort(self) -> None:
        self.aborted = True

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        if self.frozen:
            try:
                await anyio.sleep_forever()
            except asyncio.CancelledError:
                if self.breaks:
                    raise OSError("the connection broke") from None
                raise
        self.bodies.append(message["body"])
        self.sent.set()
        self.sent = anyio.Event()

    async def wait_for(self, predicate: Callable[[bytes], bool]) -> None:
        while not predicate(b"".join(self.bodies)):
            await self.sent.wait()


class Drops:
    """A ``JobObserver`` that records why subscribers were dropped."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def job_created(self, operation: str) -> None:
        pass

    def job_ended(self, job: Job) -> None:
        pass

    def events_sent(self, count: int) -> None:
        pass

    def subscriber_dropped(self, reason: str) -> None:
        self.reasons.append(reason)

    def relay_ended(
        self, service: str, operation: str, outcome: str, seconds: float, delay: float | None
    ) -> None:
        pass


def watchers() -> list[asyncio.Task[Any]]:
    """The tasks waiting in a stream's ``receive()`` for a disconnect."""
    code = _watch_disconnect.__code__
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "cr_code", None) is code]


def operations(client_box: list[Client]) -> Operations:
    ops = Operations()

    @ops.operation("steps")
    async def steps(params: Steps) -> None:
        """One event at a time, each once the stream has sent the one before (so every event
        is a turn of the stream's loop of its own)."""
        client = client_box[0]
        for i in range(params.n):
            emit_data({"i": i})
            await client.wait_for(lambda body, i=i: f'"i":{i}}}'.encode() in body)

    @ops.operation("idle")
    async def idle(params: Nothing) -> None:
        await anyio.sleep_forever()

    return ops


@asynccontextmanager
async def streaming(
    settings: ServiceSettings, operation: dict[str, Any], *, server_watches: bool = False
) -> AsyncIterator[tuple[Client, JobHandle, anyio.abc.TaskGroup]]:
    client = Client(server_watches=server_watches)
    service = JobService(operations([client]), settings)
    async with service.lifespan(), anyio.create_task_group() as tg:
        handle, _ = await service.create(operation, correlation_id=new_correlation_id())
        tg.start_soon(stream_job, service, handle, 0, client.scope, client.receive, client.send, [])
        yield client, handle, tg
        client.leave()


async def test_a_live_stream_arms_no_timer_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each of 200 events is a turn of its own (a wait, a wake, a send): the stream moves its
    # deadlines, it does not arm a timer per wait or per send (each a timer handle and, once
    # cancelled, garbage that lives until the loop's next turn).
    loop = asyncio.get_running_loop()
    armed: list[object] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(callback)
        return call_at(when, callback, *args, **kwargs)

    settings = ServiceSettings(keepalive_interval=3600, send_timeout=3600)
    async with streaming(settings, {"operation": "steps", "n": 210}) as (client, _, _):
        await client.wait_for(lambda body: b'"i":9}' in body)
        monkeypatch.setattr(loop, "call_at", counting)
        await client.wait_for(lambda body: b'"i":209}' in body)
        monkeypatch.undo()
        await client.wait_for(lambda body: b"event: succeeded" in body)
    assert len(armed) < 10, armed


async def test_a_quiet_stream_gets_keepalives_when_the_send_timeout_is_the_nearer_deadline() -> (
    None
):
    # The timer armed for a send's deadline (0.05 s) fires while the stream waits: it must arm
    # itself again for the keepalive, or the stream would never send one.
    settings = ServiceSettings(keepalive_interval=0.2, send_timeout=0.05)
    async with streaming(settings, {"operation": "idle"}) as (client, _, tg):
        with anyio.fail_after(10):
            await client.wait_for(lambda body: body.count(KEEPALIVE) >= 2)
        tg.cancel_scope.cancel()


async def test_a_frozen_client_is_dropped_when_the_keepalive_is_the_nearer_deadline() -> None:
    # The timer armed for the keepalive (0.2 s) fires while the send of an event is stuck: it
    # must arm itself again for the send's deadline (0.5 s), and then the connection is aborted.
    settings = ServiceSettings(keepalive_interval=0.2, send_timeout=0.5)
    async with streaming(settings, {"operation": "idle"}) as (client, handle, _):
        await client.wait_for(lambda body: body.startswith(b"retry:"))
        client.frozen = True
        handle.emit(Data({"x": 1}))
        with anyio.fail_after(10):
            while handle.streams:
                await anyio.sleep(0.01)
    assert client.aborted
    assert b"event: data" not in b"".join(client.bodies)


async def test_a_client_that_leaves_a_quiet_stream_ends_it_at_once() -> None:
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=3600)
    async with streaming(settings, {"operation": "idle"}) as (client, handle, _):
        await client.wait_for(lambda body: body.startswith(b"retry:"))
        assert handle.streams == 1
        assert len(watchers()) == 1  # no disconnect extension here: a task waits in receive()
        client.leave()
        with anyio.fail_after(10):
            while handle.streams:
                await anyio.sleep(0.01)
    assert not handle._waiters  # nothing left parked on the job


async def test_a_server_that_tells_of_a_lost_connection_spares_the_watcher_task() -> None:
    # Under a server offering the disconnect extension the stream waits in no receive(): the
    # server calls it back when the connection is lost, which ends a quiet stream at once.
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=3600)
    async with streaming(settings, {"operation": "idle"}, server_watches=True) as (
        client,
        handle,
        _,
    ):
        await client.wait_for(lambda body: body.startswith(b"retry:"))
        assert not watchers()
        assert len(client.on_lost) == 1
        callback = client.on_lost[0]
        assert callback is not None
        callback()  # the connection is lost
        with anyio.fail_after(10):
            while handle.streams:
                await anyio.sleep(0.01)
    assert client.received == 0
    assert client.on_lost[-1] is None  # the stream told the server to forget it
    assert not handle._waiters


async def test_cancelling_a_stream_stuck_in_a_send_is_no_frozen_drop() -> None:
    # The service shutting down (or any cancel from outside) while a send is stuck: the stream
    # ends cancelled; only its own send timeout counts as a frozen client (and aborts).
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=3600)
    async with streaming(settings, {"operation": "idle"}) as (client, handle, tg):
        await client.wait_for(lambda body: body.startswith(b"retry:"))
        client.frozen = True
        handle.emit(Data({"x": 1}))
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert handle.streams == 0
    assert not client.aborted


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_client_that_leaves_a_quiet_stream_is_noticed_at_once_on_jobproto_server(
    http: str,
) -> None:
    # jobproto.server (either parser) offers the disconnect extension: the stream waits in no
    # receive() (no watcher task while it is open), and a quiet stream whose client goes away
    # ends at once, on the server's callback, not at its next keepalive.
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=3600, start_mode="immediate")
    app = create_app(operations([Client()]), settings)
    async with serving(app, http=http) as url:
        service: JobService = app.state.jobs
        handle, _ = await service.create({"operation": "idle"}, correlation_id=new_correlation_id())
        host, port = url.removeprefix("http://").split(":")
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            path = f"/v1/jobs/{handle.job_id}/stream"
            await stream.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            with anyio.fail_after(10):
                while b"retry:" not in head:
                    head += await stream.receive()
            assert handle.streams == 1
            assert not watchers()  # the server is in this process, on this loop
        with anyio.fail_after(10):
            while handle.streams:
                await anyio.sleep(0.01)
        assert not handle._waiters


# -- the send timeout and the task's cancel requests ---------------------------------------------


@pytest.mark.parametrize("breaks", [False, True], ids=["cancelled", "oserror"])
async def test_a_send_the_timer_cancelled_is_a_frozen_client_and_leaves_no_cancel_request(
    breaks: bool,
) -> None:
    # The send timeout cancels the stream's task; whether the stuck send lets that cancel
    # through or turns it into OSError ("the connection broke"), the client counts as frozen,
    # its connection is aborted, and the task is left with no cancel request of the timer's
    # (which would break any later asyncio.timeout or task group of that task).
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=0.05)
    client = Client()
    client.frozen = True  # from the first body send (``retry:``) on
    client.breaks = breaks
    service = JobService(operations([client]), settings)
    service.observer = drops = Drops()
    task = asyncio.current_task()
    assert task is not None
    async with service.lifespan():
        handle, _ = await service.create({"operation": "idle"}, correlation_id=new_correlation_id())
        before = task.cancelling()
        with anyio.fail_after(10):
            # run in this task, so that its cancel requests can be seen
            await stream_job(service, handle, 0, client.scope, client.receive, client.send, [])
        assert task.cancelling() == before
        await asyncio.sleep(0)  # no cancel is pending either
    assert drops.reasons == ["frozen"]
    assert client.aborted
    assert handle.streams == 0
    assert not watchers()


@pytest.mark.parametrize("breaks", [False, True], ids=["cancelled", "oserror"])
async def test_a_cancel_from_outside_on_the_send_timeout_s_turn_is_not_swallowed(
    breaks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task group's cancel scope cancels the stream on the very turn of the loop on which its
    # send times out (just before the timer's own cancel): the stream ends cancelled, as the
    # scope asked, and is no frozen client (nothing counted, nothing aborted).
    settings = ServiceSettings(keepalive_interval=3600, send_timeout=0.05)
    client = Client()
    client.frozen = True
    client.breaks = breaks
    service = JobService(operations([client]), settings)
    service.observer = drops = Drops()
    fire = _Subscriber._fire
    timer_cancelled: list[bool] = []

    def fire_after_a_cancel_from_outside(self: _Subscriber) -> None:
        if self.send_deadline != math.inf:  # a send is under way: the send timeout's turn
            tg.cancel_scope.cancel()
        fire(self)
        timer_cancelled.append(self.timed_out)

    monkeypatch.setattr(_Subscriber, "_fire", fire_after_a_cancel_from_outside)
    ended: list[str] = []

    async def stream(handle: JobHandle) -> None:
        try:
            await stream_job(service, handle, 0, client.scope, client.receive, client.send, [])
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        ended.append("returned")

    async with service.lifespan():
        handle, _ = await service.create({"operation": "idle"}, correlation_id=new_correlation_id())
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream, handle)
    assert timer_cancelled == [True]  # the timer did cancel the send, on that same turn
    assert ended == ["cancelled"]
    assert drops.reasons == []
    assert not client.aborted
    assert handle.streams == 0

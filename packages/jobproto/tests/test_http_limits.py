"""jobproto.server's HTTP limits, TLS, frozen-subscriber abort and disconnect callbacks, on real
uvicorn servers.

Raw sockets (blocking, run in a worker thread) stand in for clients that misbehave: a head that
never ends, a request sent half, a subscriber that never reads. Every wait is bounded and
generous; nothing asserts how fast something happens.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs
import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobproto import Operations, emit_data
from jobproto._extensions import DISCONNECT_EXTENSION
from jobproto.asgi import ServiceSettings, create_app
from jobproto.server import HttpLimits, Server, bound_port, config
from jobproto.testing import serving

PARSERS = pytest.mark.parametrize("http", ["h11", "httptools"])
BOUND = 20.0  # seconds: "soon", generously


async def hello(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


async def echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


def plain_app() -> Starlette:
    return Starlette(routes=[Route("/", hello), Route("/echo", echo, methods=["POST"])])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(BOUND)
    sock.connect(("127.0.0.1", port))
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (EOF or reset); raises on a timeout."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _get(port: int, extra: bytes = b"") -> bytes:
    return b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (port, extra)


# -- request head size ---------------------------------------------------------------------------

LIMITS = HttpLimits(max_header_bytes=4096)


@PARSERS
@pytest.mark.anyio
async def test_a_head_under_the_limit_is_served(http: str) -> None:
    async with serving(plain_app(), limits=LIMITS, http=http) as url:
        async with httpx.AsyncClient() as client:
            r = await client.get(url + "/", headers={"X-Big": "v" * 3000})
    assert r.status_code == 200 and r.json() == {"hello": "world"}


@PARSERS
@pytest.mark.anyio
async def test_a_whole_head_over_the_limit_is_refused_431(http: str) -> None:
    async with serving(plain_app(), limits=LIMITS, http=http) as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(_get(port, b"X-Big: " + b"v" * 5000 + b"\r\n"))
                return _read_all(sock)

        raw = await anyio.to_thread.run_sync(client)
    status, headers, body = _response(raw)
    assert status == 431
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_header_too_large"


@PARSERS
@pytest.mark.anyio
async def test_a_head_that_never_ends_is_refused_without_reading_it_all(http: str) -> None:
    """The head grows 512 bytes at a time and never ends: the server answers 431 and closes
    long before 1 MiB of it."""
    async with serving(plain_app(), limits=LIMITS, http=http) as url:
        port = _port(url)

        def client() -> tuple[int, bytes]:
            with _connect(port) as sock:
                sent = 0
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < 1 << 20:
                    readable, _, _ = select.select([sock], [], [], 0.01)
                    if readable:
                        break
                    try:
                        sock.sendall(b"v" * 512)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += 512
                return sent, _read_all(sock)

        sent, raw = await anyio.to_thread.run_sync(client)
    assert sent < 1 << 20
    status, _, body = _response(raw)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_header_too_large"


@pytest.mark.anyio
async def test_a_head_over_the_limit_with_a_body_in_the_same_write_is_refused() -> None:
    async with serving(plain_app(), limits=LIMITS, http="httptools") as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                    + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
                    + b"\r\n0123456789"
                )
                return _read_all(sock)

        raw = await anyio.to_thread.run_sync(client)
    assert _response(raw)[0] == 431


@PARSERS
@pytest.mark.anyio
async def test_keep_alive_requests_each_get_the_whole_limit(http: str) -> None:
    """The head count starts again with each request on a connection (pipelined too)."""
    async with serving(plain_app(), limits=LIMITS, http=http) as url:
        port = _port(url)
        one = _get(port, b"X-Big: " + b"v" * 3000 + b"\r\n")

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(one + one)
                sock.sendall(one[:100])
                time.sleep(0.05)
                sock.sendall(one[100:-2] + b"Connection: close\r\n\r\n")
                return _read_all(sock)

        raw = await anyio.to_thread.run_sync(client)
    assert raw.count(b"HTTP/1.1 200 OK") == 3


# -- read and idle timeouts ----------------------------------------------------------------------

SLOW = HttpLimits(request_read_timeout=0.3)


@PARSERS
@pytest.mark.anyio
async def test_half_a_head_then_nothing_gets_408_and_closed(http: str) -> None:
    async with serving(plain_app(), limits=SLOW, http=http) as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                return _read_all(sock)  # bounded by the socket timeout (BOUND)

        raw = await anyio.to_thread.run_sync(client)
    status, _, body = _response(raw)
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"


@PARSERS
@pytest.mark.anyio
async def test_a_body_that_stops_coming_gets_408_and_closed(http: str) -> None:
    async with serving(plain_app(), limits=SLOW, http=http) as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
                return _read_all(sock)

        raw = await anyio.to_thread.run_sync(client)
    assert _response(raw)[0] == 408


@PARSERS
@pytest.mark.anyio
async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(http: str) -> None:
    async with serving(plain_app(), limits=SLOW, http=http) as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                return _read_all(sock)

        raw = await anyio.to_thread.run_sync(client)
    assert raw == b""


@PARSERS
@pytest.mark.anyio
async def test_an_idle_keep_alive_connection_is_closed(http: str) -> None:
    limits = HttpLimits(keep_alive_timeout=0.3)
    async with serving(plain_app(), limits=limits, http=http) as url:
        port = _port(url)

        def client() -> bytes:
            with _connect(port) as sock:
                sock.sendall(_get(port))
                return _read_all(sock)  # the response, then the close after the idle time

        raw = await anyio.to_thread.run_sync(client)
    status, _, body = _response(raw)
    assert status == 200 and json.loads(body) == {"hello": "world"}


@attrs.frozen
class Ticks:
    n: int
    interval: float


def ticking_ops() -> Operations:
    ops = Operations()

    @ops.operation("tick")
    async def tick(params: Ticks) -> dict[str, int]:
        for i in range(params.n):
            emit_data({"i": i})
            await anyio.sleep(params.interval)
        return {"n": params.n}

    return ops


@PARSERS
@pytest.mark.anyio
async def test_a_stream_longer_than_the_read_timeout_is_not_cut(http: str) -> None:
    app = create_app(ticking_ops())
    async with serving(app, limits=SLOW, http=http) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            created = await client.post(
                "/v1/jobs", json={"operation": "tick", "n": 8, "interval": 0.1}
            )
            job = created.json()["job_id"]
            text = (await client.get(f"/v1/jobs/{job}/stream")).text
            # the same connection, kept alive, serves another request after the stream
            again = await client.get(f"/v1/jobs/{job}")
    assert text.count("event: data") == 8 and "event: succeeded" in text
    assert again.json()["state"] == "succeeded"


# -- access log ----------------------------------------------------------------------------------


@PARSERS
@pytest.mark.anyio
async def test_the_access_log_never_shows_a_query_string(
    http: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a token pasted into a URL must not reach the log in clear (docs/protocol.md §11)
    secret = "tok_" + "s" * 40
    access = logging.getLogger("uvicorn.access")  # uvicorn's config does not propagate it
    async with serving(plain_app(), http=http) as url:
        caplog.set_level(logging.INFO, logger="uvicorn.access")
        access.addHandler(caplog.handler)
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(url + "/", params={"access_token": secret})
        finally:
            access.removeHandler(caplog.handler)
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "uvicorn.access"]
    assert any('"GET / HTTP/1.1" 200' in line for line in lines), lines
    assert secret not in caplog.text
    assert "access_token" not in caplog.text


# -- TLS -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    async with serving(plain_app(), ssl_certfile=cert_file, ssl_keyfile=key_file) as url:
        assert url.startswith("https://")
        async with httpx.AsyncClient(verify=verify) as client:
            r = await client.get(url + "/")
        assert r.status_code == 200 and r.json() == {"hello": "world"}
        async with httpx.AsyncClient() as untrusting:  # the system's CAs do not know this one
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(url + "/")


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="both"):
        config(plain_app(), ssl_certfile="cert.pem")


# -- frozen subscribers --------------------------------------------------------------------------

BIG = "x" * (64 * 1024)


@attrs.frozen
class NoParams:
    pass


def flooding_ops() -> Operations:
    ops = Operations()

    @ops.operation("flood")
    async def flood(params: NoParams) -> None:
        while True:
            emit_data({"blob": BIG})
            await anyio.sleep(0.002)

    return ops


@asynccontextmanager
async def running(
    app: Starlette,
    http: str,
    limits: HttpLimits = HttpLimits(),  # noqa: B008 - frozen
) -> AsyncIterator[Server]:
    """Like ``jobproto.testing.serving``, but yields the server (its connections are looked at)."""
    service = getattr(app.state, "jobs", None)
    server = Server(config(app, http=http, limits=limits), service)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield server
        finally:
            if service is not None:
                service.begin_shutdown()
            server.should_exit = True


@PARSERS
@pytest.mark.anyio
async def test_a_frozen_subscriber_s_connection_is_aborted(http: str) -> None:
    """A subscriber that never reads: once a send to it times out its connection is gone from
    the server (aborted, buffers freed), not kept until the peer reads."""
    settings = ServiceSettings(send_timeout=0.3, max_log_events=32, start_mode="immediate")
    app = create_app(flooding_ops(), settings)
    async with running(app, http) as server:
        port = bound_port(server)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}/v1/jobs", json={"operation": "flood"})
            job = r.json()["job_id"]
        connections = server.server_state.connections
        with anyio.fail_after(BOUND):
            while connections:  # the client above has closed its connection
                await anyio.sleep(0.01)
        sock = _connect(port, rcvbuf=4096)
        try:
            sock.sendall(b"GET /v1/jobs/%s/stream HTTP/1.1\r\nHost: x\r\n\r\n" % job.encode())
            first = await anyio.to_thread.run_sync(sock.recv, 1024)
            assert first.startswith(b"HTTP/1.1 200")
            # From here the client reads nothing.
            with anyio.fail_after(BOUND):
                while connections:
                    await anyio.sleep(0.05)
            # The client's side sees the connection reset (or ended): nothing is held open for it.
            sock.settimeout(BOUND)
            with pytest.raises(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
        finally:
            sock.close()


# -- the disconnect extension --------------------------------------------------------------------

Watch = Callable[[Callable[[], object] | None], None]


def watch_grabbing_app(watches: list[Watch]) -> Starlette:
    """Answers ``GET /`` and keeps its connection's ``jobproto.disconnect`` ``watch``."""

    async def grab(request: Request) -> Response:
        watches.append(request.scope["extensions"][DISCONNECT_EXTENSION]["watch"])
        return JSONResponse({})

    return Starlette(routes=[Route("/", grab)])


@PARSERS
@pytest.mark.anyio
async def test_the_disconnect_extension_calls_back_when_the_connection_is_lost(http: str) -> None:
    """``watch(cb)``: ``cb()`` once, when the connection is lost, or at once if it already is;
    ``watch(None)`` forgets ``cb``."""
    watches: list[Watch] = []
    calls: list[str] = []
    # keep-alive connections stay open until the client closes them
    limits = HttpLimits(keep_alive_timeout=3600)
    async with running(watch_grabbing_app(watches), http, limits) as server:
        port = bound_port(server)
        connections = server.server_state.connections

        async def connect_and_grab() -> tuple[socket.socket, Watch]:
            sock = _connect(port)
            sock.sendall(_get(port))
            raw = b""
            while not raw.endswith(b"{}"):  # the whole response; the connection stays open
                raw += await anyio.to_thread.run_sync(sock.recv, 1024)
            return sock, watches[-1]

        async def lost() -> None:
            with anyio.fail_after(BOUND):
                while connections:
                    await anyio.sleep(0.01)

        # watched, then lost: called back once
        sock, watch = await connect_and_grab()
        watch(lambda: calls.append("lost"))
        assert calls == []
        sock.close()
        await lost()
        assert calls == ["lost"]
        # watched once lost: called back at once (and the first callback not again)
        watch(lambda: calls.append("already lost"))
        assert calls == ["lost", "already lost"]
        # watched, then forgotten (watch(None)), then lost: not called back
        sock, watch = await connect_and_grab()
        watch(lambda: calls.append("forgotten"))
        watch(None)
        sock.close()
        await lost()
        assert calls == ["lost", "already lost"]

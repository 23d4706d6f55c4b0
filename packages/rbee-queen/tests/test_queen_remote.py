"""The queen's transport to hives and workers (``rbee_queen.remote``): aiohttp behind httpx's API,
with no bound on connections and httpx's errors for what went wrong."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from jobproto import ConnectFailed, TransportFailed
from jobproto.client import JobClient, StreamInterrupted
from jobproto.testing import serving
from rbee_queen.remote import Remote, _Transport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only, as the queen does


@asynccontextmanager
async def running(remote: Remote) -> AsyncIterator[httpx.AsyncClient]:
    async with remote.running():
        yield remote.http


class Held:
    """An app whose every response sends its head and one chunk, then stays open until
    ``release``; ``gone`` counts the requests whose client went away."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.gone = 0
        self.disconnected = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.gone += 1
                self.disconnected.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"last\n"})
            tg.cancel_scope.cancel()


def _app(inner: Held) -> Starlette:
    app = Starlette()
    app.mount("/", inner)
    return app


async def test_more_streams_at_once_than_a_pool_bound() -> None:
    # A relayed stream holds its connection for its whole life: 150 of them at once must all be
    # answered (aiohttp's own default would hold every request after the 100th until one ends).
    held = Held()
    async with serving(_app(held)) as url, running(Remote()) as http:
        opened = 0

        async def one() -> None:
            nonlocal opened
            async with http.stream("GET", f"{url}/s") as response:
                async for chunk in response.aiter_bytes():
                    assert chunk.startswith(b"first")
                    break
                opened += 1
                await held.release.wait()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(150):
                    tg.start_soon(one)
                while opened < 150:
                    await anyio.sleep(0.01)
                held.release.set()


async def test_leaving_a_stream_early_closes_its_connection() -> None:
    held = Held()
    async with serving(_app(held)) as url, running(Remote()) as http:
        async with http.stream("GET", f"{url}/s") as response:
            async for _ in response.aiter_bytes():
                break
        with anyio.fail_after(10):
            await held.disconnected.wait()
        assert held.gone == 1
        held.release.set()


@asynccontextmanager
async def closing_server() -> AsyncIterator[str]:
    """A server that reads a request's first bytes and closes the connection unanswered."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_peer_that_closes_unanswered_is_no_connect_failure() -> None:
    # A request that reached the peer may have been acted on: it must not read as "nothing was
    # sent" (httpx.ConnectTimeout, jobproto's ConnectFailed), as httpx-aiohttp alone reports it.
    async with closing_server() as url, running(Remote()) as http:
        with pytest.raises(httpx.TransportError) as info:
            await http.post(f"{url}/v1/jobs", json={"operation": "echo"})
        assert isinstance(info.value, (httpx.RemoteProtocolError, httpx.ReadError))
        with pytest.raises(TransportFailed) as failed:
            await JobClient(url, http=http).create("echo")
        assert not isinstance(failed.value, ConnectFailed)


async def test_a_refused_connection_is_a_connect_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        async with running(Remote()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/health")
            with pytest.raises(ConnectFailed):
                await JobClient(f"http://127.0.0.1:{port}", http=http).create("echo")


#: a token the tests below must never find in an error
TOKEN = "tok-6f1d9c0a"


@asynccontextmanager
async def raw_server(*answers: bytes, pause: float = 0.05) -> AsyncIterator[str]:
    """A server that reads a request's head and writes ``answers``, ``pause`` seconds apart,
    then closes the connection; every connection gets the same."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for i, answer in enumerate(answers):
                if i:
                    await asyncio.sleep(pause)
                writer.write(answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every error it was raised from or while handling."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _no_aiohttp_error_nor_token(exc: BaseException) -> None:
    for link in _chain(exc):
        assert not type(link).__module__.startswith("aiohttp"), repr(link)
        assert TOKEN not in str(link) and TOKEN not in repr(link)


@pytest.mark.parametrize(
    "answer",
    [
        b"GARBAGE\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n",
    ],
    ids=["status line", "header over 8 KiB", "chunk size"],
)
async def test_an_answer_that_is_no_http_is_a_protocol_error_without_the_token(
    answer: bytes,
) -> None:
    # aiohttp reports it as its ClientResponseError, which httpx-aiohttp lets through and whose
    # repr holds the request's headers, the token among them
    async with raw_server(answer) as url, running(Remote()) as http:
        with anyio.fail_after(10):
            with pytest.raises(httpx.RemoteProtocolError) as info:
                await http.get(f"{url}/health", headers={"Authorization": f"Bearer {TOKEN}"})
            _no_aiohttp_error_nor_token(info.value)
            assert "a" * 16 not in str(info.value)  # nor the peer's bytes
            with pytest.raises(TransportFailed) as failed:
                await JobClient(url, http=http, token=TOKEN).create("echo")
        assert not isinstance(failed.value, ConnectFailed)
        _no_aiohttp_error_nor_token(failed.value)


async def test_a_bad_chunk_mid_stream_breaks_the_stream() -> None:
    # the head and a first chunk (the stream's ``retry:``) are fine; the next chunk size is not
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    first = b"retry: 10\n\n"
    answers = (head + b"%x\r\n%s\r\n" % (len(first), first), b"ZZZ\r\nxx\r\n")
    async with raw_server(*answers) as url, running(Remote()) as http:
        with anyio.fail_after(10), pytest.raises(httpx.RemoteProtocolError) as info:
            async with http.stream("GET", f"{url}/s", headers={"Authorization": TOKEN}) as r:
                async for _ in r.aiter_bytes():
                    pass
        _no_aiohttp_error_nor_token(info.value)
        client = JobClient(url, http=http, token=TOKEN, max_reconnects=1)
        with anyio.fail_after(10), pytest.raises(StreamInterrupted) as interrupted:
            async for _ in client.events("j1"):
                pass
        assert interrupted.value.attempts == 2
        assert isinstance(interrupted.value.__cause__, httpx.RemoteProtocolError)
        _no_aiohttp_error_nor_token(interrupted.value)


async def test_a_bool_verify_is_httpx_s_context_for_the_connector() -> None:
    # verify=True is httpx's context (certifi's CAs), not aiohttp's default (the system's)
    transport = _Transport(True)
    context = transport.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    session = transport._session()
    try:
        assert session.connector is not None
        assert session.connector._ssl is context  # type: ignore[attr-defined]
    finally:
        await session.close()


async def test_https_peers_are_verified_against_the_pinned_certificate(tmp_path: Path) -> None:
    import trustme

    cert, key = tmp_path / "peer.pem", tmp_path / "peer.key"
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    async with serving(_app(Held()), ssl_certfile=cert, ssl_keyfile=key) as url:
        async with running(Remote(tls_ca=cert)) as http:
            with anyio.fail_after(10):
                async with http.stream("GET", f"{url}/s") as response:
                    assert response.status_code == 200
        async with running(Remote()) as http:
            with anyio.fail_after(10), pytest.raises(httpx.ConnectError):
                await http.get(f"{url}/s")

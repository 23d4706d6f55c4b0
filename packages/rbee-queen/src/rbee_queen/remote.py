"""Calls from the queen to hives and workers.

Every cascade goes through ``jobproto.relay``: the downstream job's events are re-emitted on the
current job (origin ``hive:ID`` or ``worker:ID``), cancelling the current job cancels the downstream
one, and the correlation id and trace context travel with the create request. A refusal keeps the
peer's code (``validation_error``...); a peer that cannot be reached fails with the protocol's
``downstream_unavailable`` (docs/protocol.md §Errors), whose message here also names the URL.

Every call goes through one ``httpx.AsyncClient`` whose transport is aiohttp's (``httpx-aiohttp``):
the same httpx API (``JobClient(http=...)``), but responses are parsed by aiohttp's C parser
instead of h11's pure Python, and its connection pool hands out and takes back a connection
without httpcore's scan of every connection it holds (a relayed stream holds one for its whole
life: behind 500 relayed streams that scan was most of the queen's CPU, docs/benchmarks.md,
section 2). The pool has no bound on connections, as a relayed stream must never wait for
another to end. ``running()`` owns the client.

Every call names the hive it goes to (``hive=``): the hive itself or one of the workers that hive
reported (``worker=``, its id). A call to the hive carries that hive's token
(``rbee_contracts.auth.hive_token``); a call to a worker the token of that worker, derived from
its hive's (``auth.worker_token``), as the hive derived it for the worker. Without a secret
(tests, library use) no token is sent. HTTPS peers are verified as ``trust`` says: against
``tls_ca`` when the queen has one, else the system's CAs and the queen's own certificate.
``/health`` probes carry no token: the path is public on every tier.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp.http_exceptions import HttpProcessingError
from httpx_aiohttp import AiohttpTransport

from jobproto import JobFailed, Merge, TransportFailed
from jobproto.client import JobClient, ssl_context
from jobproto.relay import RelayPoint, relay
from rbee_contracts.auth import hive_token, worker_token

__all__ = ["UNAVAILABLE", "Remote", "trust"]

#: consecutive reconnects of a relayed stream before the peer counts as gone. A jobproto server
#: asks for 2 s between reconnects (SSE ``retry:``), and the client honours that over its own
#: backoff, so each reconnect costs at least 2 s. Workers get one: a worker that drops its stream
#: has usually died, and the user should hear so in seconds, not after half a minute.
HIVE_RECONNECTS = 8
WORKER_RECONNECTS = 1
#: the relay's code for a peer it cannot reach, or whose job it lost
UNAVAILABLE = "downstream_unavailable"
#: seconds an idle connection to a hive or worker is kept for the next call
KEEPALIVE = 30.0


def trust(tls_ca: Path | None, tls_cert: Path | None) -> ssl.SSLContext | bool:
    """How the queen verifies HTTPS hives and workers: against ``tls_ca`` (a CA or a pinned
    certificate) when given. Else the system's CAs, plus the queen's own certificate
    (``tls_cert``) when it serves HTTPS: a hive started on this machine serves that certificate
    (``LocalHives.tls_flags``), as its workers do, and the hive verifies the queen the same way.
    Without either, the system's CAs."""
    if tls_ca is not None:
        return ssl_context(tls_ca)
    context = ssl_context()
    if tls_cert is None:
        return context
    context.load_verify_locations(cafile=str(tls_cert))
    return context


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport over a connection pool without a bound, whose errors say what
    went wrong as httpx's own transport would.

    httpx-aiohttp reports every aiohttp connection error that is not a failure to connect (the
    peer closed the connection before answering, a socket error after connecting) as
    ``httpx.ConnectTimeout``, which would read as "nothing was sent" (``ConnectFailed``), a
    refused connection too, and a connect timeout as a bare ``httpx.TimeoutException``. Here
    they are httpx's ``RemoteProtocolError``, ``ReadError``, ``ConnectError`` and
    ``ConnectTimeout``, as under httpcore. An aiohttp error httpx-aiohttp does not translate (an
    answer that is no HTTP: a malformed status line or header, a bad chunk size), when sending
    or while reading the body, is httpx's ``RemoteProtocolError`` (a broken connection while
    reading the body ``ReadError``), without aiohttp's error as its cause: that one holds the
    request's headers, the token among them.

    TLS is verified with the context httpx-aiohttp builds from ``verify`` as httpx would
    (``ssl_context``: ``verify`` itself when it is a context).
    """

    def __init__(self, verify: ssl.SSLContext | bool) -> None:
        super().__init__(verify=verify, client=self._session)

    def _session(self) -> aiohttp.ClientSession:
        # limit=0: no bound on connections (aiohttp's default is 100 at once)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE, ssl=self.ssl_context)
        return aiohttp.ClientSession(connector=connector)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # raised after the except clause, so that aiohttp's error is not even its __context__
        error: httpx.TransportError
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            if not isinstance(exc.__cause__, aiohttp.ClientResponseError):
                raise _httpx_error(exc) from exc.__cause__
            error = _httpx_error(exc)
        except _AIOHTTP_ERRORS as exc:
            error = _unmapped(exc)
        else:
            stream = response.stream
            if isinstance(stream, httpx.AsyncByteStream):
                response.stream = _Body(stream)
            return response
        raise error


#: aiohttp's errors: its own, and its parser's for an answer that is no HTTP
_AIOHTTP_ERRORS = (aiohttp.ClientError, HttpProcessingError)


class _Body(httpx.AsyncByteStream):
    """A response body whose aiohttp errors that httpx-aiohttp lets through are httpx's.

    When aiohttp's parser fails mid-body (a bad chunk size), aiohttp closes the connection but
    tells only the connection, not the body's reader, which would wait for ever (a stream has no
    read timeout): here the connection's end wakes the reader with the parser's error.
    """

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        error: httpx.TransportError
        unwatch = _watch(self._inner)
        try:
            async for chunk in self._inner:
                yield chunk
            return
        except _AIOHTTP_ERRORS as exc:
            error = _unmapped(exc)
        finally:
            unwatch()
        raise error

    async def aclose(self) -> None:
        error: httpx.TransportError
        try:
            await self._inner.aclose()
            return
        except _AIOHTTP_ERRORS as exc:
            error = _unmapped(exc)
        raise error


def _watch(stream: httpx.AsyncByteStream) -> Callable[[], None]:
    """Have the end of ``stream``'s connection end its reader too; a function that stops
    watching."""
    response = getattr(stream, "_aiohttp_response", None)
    connection = getattr(response, "connection", None)
    if not isinstance(response, aiohttp.ClientResponse) or connection is None:
        return lambda: None
    protocol = connection.protocol
    closed = None if protocol is None else protocol.closed
    if protocol is None or closed is None:
        return lambda: None
    content = response.content

    def lost(future: asyncio.Future[None]) -> None:
        if content.is_eof() or content.exception() is not None:
            return
        why = protocol.exception() or (None if future.cancelled() else future.exception())
        if not isinstance(why, Exception):
            why = aiohttp.ClientPayloadError("the connection closed before the body ended")
        content.set_exception(why)

    closed.add_done_callback(lost)
    return lambda: closed.remove_done_callback(lost)


def _httpx_error(exc: httpx.TransportError) -> httpx.TransportError:
    """httpx's error for what aiohttp raised (``exc.__cause__``), where httpx-aiohttp's differs."""
    cause = exc.__cause__
    message = str(exc)
    if isinstance(cause, aiohttp.ClientResponseError):  # its str() is safe, its repr() is not
        return type(exc)(_message(cause))
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unknown host, TLS
        return httpx.ConnectError(message)
    if not isinstance(exc, httpx.ConnectTimeout):
        return exc
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message or "the peer closed the connection")
    return httpx.ReadError(message)


def _unmapped(exc: BaseException) -> httpx.TransportError:
    """httpx's error for an aiohttp error httpx-aiohttp does not translate, as httpcore would
    report it: a broken connection is ``ReadError`` (``RemoteProtocolError`` when the peer
    closed it), anything else an answer that is no HTTP (``RemoteProtocolError``)."""
    message = _message(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message or "the peer closed the connection")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)


def _message(exc: BaseException) -> str:
    """What went wrong in aiohttp's ``exc``, without the request's or the answer's headers."""
    if isinstance(exc, aiohttp.ClientResponseError | HttpProcessingError):
        # the parser's message says what is wrong, then quotes the peer's bytes (a header line
        # among them): only the first part is kept. Its status (400) is aiohttp's, not the peer's.
        what = exc.message if isinstance(exc.message, str) else ""
        what = what.split("\n", 1)[0].split(": b'", 1)[0].split(': b"', 1)[0].rstrip(":. ")
        return f"invalid HTTP answer: {what}" if what else "invalid HTTP answer"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Remote:
    def __init__(
        self,
        timeout: float = 30.0,
        *,
        secret: bytes | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
    ) -> None:
        self._timeout = timeout
        self._secret = secret
        self._verify = trust(tls_ca, tls_cert)
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"Remote(tokens={self._secret is not None})"

    def token(self, hive: str, worker: str | None = None) -> str | None:
        """The token hive ``hive`` accepts, or its worker ``worker`` (None: the queen has no
        secret)."""
        if self._secret is None:
            return None
        token = hive_token(self._secret, hive)
        return token if worker is None else worker_token(token, worker)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, keepalive_expiry=KEEPALIVE)
        transport = _Transport(self._verify)
        # trust_env=False: every call goes through ``transport``, verified as ``trust`` says; no
        # proxy or CA bundle named by the environment (httpx ignores its proxies beside a
        # transport anyway)
        async with httpx.AsyncClient(
            timeout=self._timeout, limits=limits, transport=transport, trust_env=False
        ) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        """The client every call to a hive or worker goes through."""
        if self._http is None:
            raise RuntimeError("the queen is not running (serve its app with lifespan)")
        return self._http

    def client(
        self,
        url: str,
        *,
        hive: str,
        worker: str | None = None,
        max_reconnects: int = HIVE_RECONNECTS,
    ) -> JobClient:
        """A client for the service at ``url``: hive ``hive``, or its worker ``worker``."""
        token = self.token(hive, worker)
        return JobClient(url, http=self.http, token=token, max_reconnects=max_reconnects)

    async def relay(
        self,
        url: str,
        service: str,
        operation: str,
        fields: Mapping[str, Any],
        *,
        hive: str,
        worker: str | None = None,
        max_reconnects: int = HIVE_RECONNECTS,
        merge: Merge | None = None,
        context: Mapping[str, Any] | None = None,
        resume: RelayPoint | None = None,
    ) -> Any:
        """Run ``operation`` on the service at ``url`` (hive ``hive``, or its worker ``worker``)
        as part of the current job; its result. ``context`` and ``resume`` are the relay's
        (``jobproto.relay``: what its checkpoints hold, and the point to go on from)."""
        try:
            client = self.client(url, hive=hive, worker=worker, max_reconnects=max_reconnects)
            return await relay(
                client,
                operation,
                fields,
                service=service,
                merge=merge,
                context=context,
                resume=resume,
            )
        except JobFailed as exc:
            # the relay's own failure to reach the peer has a cause; a downstream failure has none
            if exc.code == UNAVAILABLE and isinstance(exc.__cause__, Exception):
                why = _why(exc.__cause__)
                raise JobFailed(UNAVAILABLE, f"{service} at {url} is unavailable: {why}") from exc
            raise

    async def run(self, url: str, operation: str, fields: Mapping[str, Any], *, hive: str) -> Any:
        """Run ``operation`` without relaying its events (a quick look-up); its result."""
        return await self.client(url, hive=hive).run(operation, fields)

    async def health(self, url: str, within: float) -> str | None:
        """Probe ``GET {url}/health``: None when healthy, else why not."""
        try:
            response = await self.http.get(url.rstrip("/") + "/health", timeout=within)
        except httpx.HTTPError as exc:
            return f"unreachable ({_why(exc)})"
        if response.status_code == 200:
            return None
        try:
            reason = response.json().get("reason")
        except (ValueError, AttributeError):
            reason = None
        return f"answered {response.status_code}" + (f": {reason}" if reason else "")


def _why(exc: BaseException) -> str:
    # jobproto's TransportFailed names the request (whose URL the caller names already); its
    # cause, the transport's own error, says what went wrong.
    if isinstance(exc, TransportFailed) and exc.__cause__ is not None:
        exc = exc.__cause__
    # httpx's connection errors often have an empty message; the type says enough then.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

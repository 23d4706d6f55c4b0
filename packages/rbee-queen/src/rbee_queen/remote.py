"""Calls from the queen to hives and workers.

Every cascade goes through ``jobproto.relay``: the downstream job's events are re-emitted on the
current job (origin ``hive:ID`` or ``worker:ID``), cancelling the current job cancels the downstream
one, and the correlation id and trace context travel with the create request. A refusal keeps the
peer's code (``validation_error``...); a peer that cannot be reached fails with the protocol's
``downstream_unavailable`` (docs/protocol.md §Errors), whose message here also names the URL.

Relayed jobs are spread over several ``httpx.AsyncClient``s (connection pools), at most
``STREAMS_PER_POOL`` relays each; other calls use the first. A relayed stream holds its connection
for its whole life, and httpcore's pool scans all its connections (idle ones quadratically) on
every request that starts or ends: one pool behind 500 relayed streams spent four fifths of the
queen's CPU in that scan (docs/benchmarks.md, section 2). ``running()`` owns the pools.

Every call names the hive it goes to (``hive=``): the hive itself or one of the workers that hive
reported (``worker=``, its id). A call to the hive carries that hive's token
(``rbee_contracts.auth.hive_token``); a call to a worker the token of that worker, derived from
its hive's (``auth.worker_token``), as the hive derived it for the worker. Without a secret
(tests, library use) no token is sent. HTTPS peers are verified as ``trust`` says: against
``tls_ca`` when the queen has one, else the system's CAs and the queen's own certificate.
``/health`` probes carry no token: the path is public on every tier.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from jobproto import JobFailed, Merge, TransportFailed
from jobproto.client import JobClient, ssl_context
from jobproto.relay import relay
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
#: relays at once per connection pool (a relay holds one connection, two while it cancels)
STREAMS_PER_POOL = 32


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


class _Pool:
    __slots__ = ("active", "http")

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.active = 0


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
        self._pools: list[_Pool] = []
        self._stack: AsyncExitStack | None = None

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
        async with AsyncExitStack() as stack:
            self._stack = stack
            self._pools = [_Pool(await stack.enter_async_context(self._new_http()))]
            try:
                yield
            finally:
                self._pools = []
                self._stack = None

    def _new_http(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=STREAMS_PER_POOL, keepalive_expiry=30
        )
        return httpx.AsyncClient(timeout=self._timeout, limits=limits, verify=self._verify)

    @property
    def http(self) -> httpx.AsyncClient:
        """The pool for calls that are not relays (health probes, look-ups)."""
        if not self._pools:
            raise RuntimeError("the queen is not running (serve its app with lifespan)")
        return self._pools[0].http

    @asynccontextmanager
    async def _relay_pool(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._stack is None:
            raise RuntimeError("the queen is not running (serve its app with lifespan)")
        pool = min(self._pools, key=lambda p: p.active)
        if pool.active >= STREAMS_PER_POOL:
            pool = _Pool(await self._stack.enter_async_context(self._new_http()))
            self._pools.append(pool)
        pool.active += 1
        try:
            yield pool.http
        finally:
            pool.active -= 1

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
    ) -> Any:
        """Run ``operation`` on the service at ``url`` (hive ``hive``, or its worker ``worker``)
        as part of the current job; its result."""
        try:
            async with self._relay_pool() as http:
                client = JobClient(
                    url, http=http, token=self.token(hive, worker), max_reconnects=max_reconnects
                )
                return await relay(client, operation, fields, service=service, merge=merge)
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

"""``JobClient``: submit jobs, follow their events with automatic resume, cancel, inspect.

Theory of operation
-------------------
Every call is one HTTP request through an ``httpx.AsyncClient`` (the transport seam: tests pass one
built on ``httpx.MockTransport``), carrying the caller's correlation id and W3C trace context.

``events()`` and ``submit()`` are the long-lived calls; both iterate one async generator
(``_follow``) that owns its HTTP stream: the response is closed in the generator's ``finally``, so
closing the generator (``break`` inside ``contextlib.aclosing``, leaving ``submit()``'s context,
cancellation, garbage collection) closes the connection. SSE parsing is httpx-sse's (WHATWG HTML
§9.2.6); reconnecting is ours, because httpx-sse has no reconnect loop.

The generator remembers the last ``seq`` it yielded and, when the stream breaks before the terminal
event (transport error, 5xx, or a clean end of body: the server drops subscribers that lag behind),
connects again with ``Last-Event-ID: <seq>`` as WHATWG §9.2.4 prescribes for a reconnecting
EventSource. The server replays from its log, so nothing is lost, and anything replayed twice is
dropped here by seq. A 4xx means the request itself is wrong (the job is gone): no retry.

``submit()`` creates the job and reads its events in one exchange (docs/protocol.md §2.2.2): one
``POST /v1/jobs`` asking for ``text/event-stream``, answered with the job's stream, whose first
block (``created``) carries what the JSON answer would. The rest of that body is what ``GET
sse_url`` sends, so ``_follow`` takes the open response as its first connection and, when it
breaks, resumes with ``GET sse_url`` as ``events()`` does. A server that predates this answers
JSON (it ignores ``Accept``); ``submit()`` then opens ``sse_url`` as ``events()`` does.

The wait for that answer's head and its ``created`` block is bounded by the client's ``timeout``
(a peer that accepts the request and never answers is a ``TransportFailed``, retried with an
idempotency key as ``create()``'s are); only after ``created`` may the stream be silent for as long
as the job is. The POST is the job's first subscriber, so the job is running before the client
knows its id: when the attempt ends (an error, a timeout, cancellation) after the head, which names
the job (``X-Job-ID``), but before the ``created`` block reached the caller, nobody else can stop
that job, and ``submit()`` sends a best-effort ``DELETE`` for it.

Only jobproto's errors leave the client, each with httpx's (or the parser's) error as
``__cause__``:

- ``ConnectFailed`` when nothing was sent: the connection was refused or timed out
  (``ConnectError``, ``ConnectTimeout``), no pooled connection came free (``PoolTimeout``), or
  the URL cannot be used (``InvalidURL``, ``UnsupportedProtocol``). A URL that cannot be used is
  raised at once, never retried: no retry can make it work.
- ``TransportFailed`` for any other transport error: the request may have reached the peer.
- ``LocalProtocolError`` when the caller misused the client: a request after ``aclose()`` (or on
  a closed ``http`` client), a header httpx refuses to send (``httpx.LocalProtocolError``).
- ``RemoteProtocolError`` for an answer that is not jobproto/1: a body that cannot be decoded
  (``DecodingError``), is not JSON (nested too deeply included), too many redirects, or a ``200``
  stream that is not ``text/event-stream`` (``httpx_sse.SSEError``, raised at once: a reconnect
  would get the same answer).
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import anyio
import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError
from opentelemetry import propagate

from .._correlation import CORRELATION_HEADER, is_valid_job_id
from .._errors import (
    ConnectFailed,
    JobProtoError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportFailed,
)
from .._events import Cancelled, Expired, Failed, Gap, JobEvent, Succeeded
from .._narration import current_correlation_id
from .._wire import decode_created, decode_envelope, dumps
from ._models import (
    CreatedJob,
    JobPage,
    JobStatus,
    JobStream,
    RemoteJobCancelled,
    RemoteJobFailed,
    StreamInterrupted,
    parse_created,
    parse_page,
    parse_status,
    response_error,
    response_json,
)

__all__ = ["JobClient", "ssl_context"]

_T = TypeVar("_T")

logger = logging.getLogger("jobproto.client")

LAST_EVENT_ID = "Last-Event-ID"
IDEMPOTENCY_KEY = "Idempotency-Key"
#: what ``submit()`` asks for: the job's stream, or (a server that predates create-and-stream
#: ignores Accept) the JSON answer of ``create()``
SUBMIT_ACCEPT = "text/event-stream, application/json;q=0.9"
#: the header of a create-and-stream answer that names the job before its ``created`` block
JOB_ID_HEADER = "X-Job-ID"
#: seconds a best-effort ``DELETE`` of a job orphaned by a broken ``submit()`` may take
ABANDON_TIMEOUT = 5.0


class _Opened(NamedTuple):
    """A stream answer already read up to its ``created`` block: ``_follow``'s first connection."""

    response: httpx.Response
    sses: AsyncGenerator[ServerSentEvent, None]
    retry: float | None  # the ``retry:`` it carried (seconds), if any


class JobClient:
    """An async client for one jobproto/1 server at ``base_url`` (e.g. ``http://127.0.0.1:7833``).

    Use it as ``async with JobClient(url) as client:``. Pass ``http`` to share a configured
    ``httpx.AsyncClient`` (auth, TLS, a test transport); the client then leaves closing it to you.
    ``headers`` go on every request. ``token`` goes on every request (stream reconnects included)
    as ``Authorization: Bearer <token>`` (docs/protocol.md §Authentication) and is never shown in a
    repr, an error or a log line. ``verify`` is how the client's own ``httpx.AsyncClient`` checks
    the server's TLS certificate: ``True`` (the system's CAs), the path of a CA bundle or of the
    server's own (pinned) certificate (made into ``ssl_context(path)``), an ``ssl.SSLContext``,
    or ``False``; with ``http`` that client's own setting applies, so ``verify`` cannot be given
    as well. ``max_reconnects`` bounds consecutive failed attempts of ``events()`` and
    ``submit()`` (and of the create request of ``create()`` or ``submit()`` with an idempotency
    key); ``backoff_initial`` and ``backoff_max`` shape the exponential backoff between them, in
    seconds.

    The server's ``retry:`` replaces ``backoff_initial`` for stream reconnects. The *n*-th
    consecutive failed attempt waits ``base * 2 ** (n - 1)``, capped at ``backoff_max``, plus up
    to 25% jitter. ``base`` is ``backoff_initial`` until the stream carries a ``retry:`` field,
    and the server's value from then on, for the rest of that ``events()`` call (WHATWG HTML
    §9.2.4: the server sets the reconnection time). A jobproto server sends ``retry:`` first on
    every stream (``ServiceSettings.retry_ms``, 2 s by default; docs/protocol.md §4.1, §10), so
    against one ``backoff_initial`` only shapes the wait when no stream has opened yet (the
    first connection failed) and for retries of a create request, which never see a ``retry:``
    (after ``submit()``'s create request answered, its ``retry:`` counts). A
    ``retry:`` above ``backoff_max`` is waited in full, without growing: the server asked not to
    be called sooner. To reconnect sooner than the server asks, configure the server
    (``retry_ms``), not the client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
        max_reconnects: int = 8,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if max_reconnects < 0:
            raise ValueError("max_reconnects must be >= 0")
        if token is not None and not _is_token(token):
            # never the token itself in the message: it may be a real one with a stray newline
            raise ValueError("token must be non-empty visible ASCII without spaces")
        if http is not None and verify is not True:
            raise ValueError("verify applies to the client's own httpx client: configure http")
        self._base = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = (
            http if http is not None else httpx.AsyncClient(timeout=timeout, verify=_ssl(verify))
        )
        self._timeout = httpx.Timeout(timeout)
        self._timeout_s = timeout
        # No read timeout on streams: a running job may legitimately say nothing for minutes (the
        # server's 15 s keepalives may also be eaten by a proxy). A dead peer still surfaces as a
        # transport error, and the caller bounds the wait with a cancel scope if it wants one.
        # (``submit()`` bounds the wait for its answer's head and ``created`` block by ``timeout``
        # with a cancel scope: some transports fix their socket read timeout at request start.)
        self._stream_timeout = httpx.Timeout(timeout, read=None)
        self._default_headers = dict(headers or {})
        if token is not None:
            # replaces an Authorization among ``headers``: the explicit token wins
            self._default_headers = {
                k: v for k, v in self._default_headers.items() if k.lower() != "authorization"
            }
            self._default_headers["Authorization"] = f"Bearer {token}"
        self._max_reconnects = max_reconnects
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        # Seam for tests that check the backoff without waiting for it.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    def __repr__(self) -> str:
        has_token = any(k.lower() == "authorization" for k in self._default_headers)
        return f"JobClient({self._base!r}{', token=<hidden>' if has_token else ''})"

    async def __aenter__(self) -> JobClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this ``JobClient`` created it."""
        if self._owns_http:
            await self._http.aclose()

    # -- plumbing ----------------------------------------------------------------------------------

    def _url(self, *parts: str) -> str:
        # Job ids are URL-safe by construction, but quoting keeps a bad one from changing the path.
        return self._base + "/v1/jobs" + "".join("/" + quote(part, safe="") for part in parts)

    def _headers(self, correlation_id: str | None) -> dict[str, str]:
        headers = dict(self._default_headers)
        correlation_id = correlation_id or current_correlation_id()
        if correlation_id:
            headers[CORRELATION_HEADER] = correlation_id
        # W3C Trace Context: the active span (if any) travels as traceparent/tracestate. Without
        # an OpenTelemetry SDK or an active span this adds nothing.
        propagate.inject(headers)
        return headers

    def _delay(self, failures: int, server_retry: float | None) -> float:
        """Seconds to wait before attempt ``failures + 1``: exponential from the server's
        ``retry:`` (else ``backoff_initial``) up to ``backoff_max``, plus up to 25% jitter so that
        many clients cut off together do not come back together. A server ``retry:`` above
        ``backoff_max`` wins: the server asked not to be called sooner (WHATWG §9.2.4)."""
        base = self._backoff_initial if server_retry is None else server_retry
        delay = min(base * 2.0 ** (failures - 1), max(self._backoff_max, base))
        return delay + random.uniform(0, delay / 4)

    def _check_open(self, method: str, url: str) -> None:
        # httpx raises a bare RuntimeError for a closed client
        if self._http.is_closed:
            raise LocalProtocolError(f"{method} {url}: the client is closed")

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        self._check_open(method, url)
        try:
            response = await self._http.request(
                method, url, headers=headers, params=params, content=content, timeout=self._timeout
            )
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            raise _failure(method, url, exc) from exc
        if not response.is_success:
            raise response_error(response)
        return response

    # -- requests ----------------------------------------------------------------------------------

    async def create(
        self,
        operation: str,
        /,
        fields: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        **more_fields: Any,
    ) -> CreatedJob:
        """Submit a job: ``POST /v1/jobs`` with ``{"operation": operation, **fields}``.

        Fields come from ``fields`` and keyword arguments alike (use ``fields`` for names that
        clash with this method's own). With an ``idempotency_key`` a transport failure is retried
        (the server answers a repeat with the job it already made, ``replayed=True``); without
        one ``TransportFailed`` propagates, since the job may or may not have been created
        (``ConnectFailed``: it was not, so sending it again is safe).
        """
        content, headers = self._create_request(
            operation, fields, more_fields, idempotency_key, correlation_id
        )

        async def post() -> CreatedJob:
            response = await self._request("POST", self._url(), headers=headers, content=content)
            # 201: a new job; 200: the Idempotency-Key matched one made before.
            return parse_created(response_json(response), replayed=response.status_code == 200)

        return await self._creating(post, idempotency_key)

    def _create_request(
        self,
        operation: str,
        fields: Mapping[str, Any] | None,
        more_fields: Mapping[str, Any],
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of ``POST /v1/jobs``."""
        body: dict[str, Any] = {"operation": operation}
        for source in (fields or {}, more_fields):
            for key, value in source.items():
                if key in body:
                    raise LocalProtocolError(f"job field {key!r} given twice")
                body[key] = value
        content = _json_body(body)
        headers = self._headers(correlation_id)
        headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers[IDEMPOTENCY_KEY] = idempotency_key
        return content, headers

    async def _creating(self, post: Callable[[], Awaitable[_T]], idempotency_key: str | None) -> _T:
        """``post()``, retried after a transport failure when an idempotency key makes the
        repeat safe (the server answers it with the job it already made)."""
        retries = self._max_reconnects if idempotency_key is not None else 0
        failures = 0
        while True:
            try:
                return await post()
            except TransportFailed as exc:
                failures += 1
                if failures > retries or _unusable_url(exc):
                    raise
                logger.info("retrying job creation after %s (attempt %d)", exc, failures + 1)
                await self._sleep(self._delay(failures, None))

    async def status(self, job_id: str) -> JobStatus:
        """``GET /v1/jobs/{id}``."""
        response = await self._request("GET", self._url(job_id), headers=self._headers(None))
        return parse_status(response_json(response))

    async def list(
        self, *, state: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> JobPage:
        """``GET /v1/jobs``: one page of jobs, optionally only those in ``state``."""
        params = {
            key: str(value)
            for key, value in (("state", state), ("cursor", cursor), ("limit", limit))
            if value is not None
        }
        response = await self._request(
            "GET", self._url(), headers=self._headers(None), params=params
        )
        return parse_page(response_json(response))

    async def cancel(self, job_id: str) -> JobStatus:
        """``DELETE /v1/jobs/{id}``. The status is final when the job has ended; otherwise
        (202) cancellation is under way and ``events()`` will end with ``cancelled``."""
        response = await self._request("DELETE", self._url(job_id), headers=self._headers(None))
        return parse_status(response_json(response))

    # -- streams -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def submit(
        self,
        operation: str,
        /,
        fields: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        **more_fields: Any,
    ) -> AsyncIterator[JobStream]:
        """Create a job and follow its events, in one request where the server can.

        ``async with client.submit("echo", text="hi") as stream:`` sends ``POST /v1/jobs`` as
        ``create()`` does, asking for the job's stream as the answer (docs/protocol.md §2.2.2);
        ``stream.created`` is the ``CreatedJob``, and ``async for item in stream`` yields what
        ``events(stream.created.job_id)`` would: each event once, in seq order, a ``Gap`` where
        events were lost, through the terminal event, resuming with ``GET sse_url`` and
        ``Last-Event-ID`` when the connection breaks, with the same backoff and errors. A server
        that answers JSON (one that predates create-and-stream) is followed with ``events()``.

        Creation fails as ``create()`` does: a refusal is an ``HTTPStatusError`` before any job
        exists, and with an ``idempotency_key`` a transport failure before the ``created`` block
        arrived is retried (the server answers the repeat with the job it already made, and its
        stream). No answer (head and ``created`` block) within the client's ``timeout`` is such a
        transport failure (``TransportFailed``); after ``created`` no read times out. When
        ``submit()`` fails or is cancelled after the answer's head named the job (``X-Job-ID``)
        but before its ``created`` block was read, it cancels that job (a best-effort ``DELETE``,
        at most ``ABANDON_TIMEOUT`` seconds): the job was already running, and nobody else knows
        its id. Leaving the context closes the connection at once, whether or not the job ended;
        the job goes on (``cancel()`` stops it).
        """
        content, headers = self._create_request(
            operation, fields, more_fields, idempotency_key, correlation_id
        )
        headers["Accept"] = SUBMIT_ACCEPT
        # the jobs named by answers whose ``created`` block never arrived
        named: set[str] = set()
        try:
            created, opened = await self._creating(
                lambda: self._post_stream(content, headers, named), idempotency_key
            )
        except BaseException:
            for job_id in sorted(named):
                await self._abandon(job_id, correlation_id)
            raise
        events = self._follow(created.job_id, 0, created.correlation_id, opened)
        try:
            yield JobStream(created, events)
        finally:
            await events.aclose()
            if opened is not None:  # a generator closed before it started never saw it
                with anyio.CancelScope(shield=True):
                    await opened.sses.aclose()  # already started: close it before its response
                    await opened.response.aclose()

    async def _abandon(self, job_id: str, correlation_id: str | None) -> None:
        """Cancel ``job_id``, whose create answer broke before its ``created`` block: shielded,
        at most ``ABANDON_TIMEOUT`` seconds, errors logged and suppressed (best effort)."""
        with anyio.move_on_after(ABANDON_TIMEOUT, shield=True) as scope:
            try:
                await self._request(
                    "DELETE", self._url(job_id), headers=self._headers(correlation_id)
                )
            except Exception as exc:
                logger.warning("could not cancel job %s left without a subscriber: %r", job_id, exc)
                return
        if scope.cancelled_caught:
            logger.warning("could not cancel job %s left without a subscriber: timed out", job_id)

    async def _post_stream(
        self, content: bytes, headers: dict[str, str], named: set[str]
    ) -> tuple[CreatedJob, _Opened | None]:
        """One create-and-stream ``POST``: the job, and its stream read up to the ``created``
        block (None: the server answered JSON).

        The wait for the head and the ``created`` block is bounded by the client's timeout (a
        cancel scope: the transport's own read timeout, fixed when the request starts, must stay
        off for the rest of the stream). When the attempt ends after a successful head that
        names the job (``X-Job-ID``) but before the ``created`` block, that id goes to
        ``named``, for ``submit()`` to cancel should no retry recover the job."""
        url = self._url()
        self._check_open("POST", url)
        try:
            with anyio.fail_after(self._timeout_s):
                return await self._read_created(url, content, headers, named)
        except TimeoutError as exc:
            raise TransportFailed(
                f"POST {url} got no answer: no created event within {self._timeout_s:g}s"
            ) from exc

    async def _read_created(
        self, url: str, content: bytes, headers: dict[str, str], named: set[str]
    ) -> tuple[CreatedJob, _Opened | None]:
        """``_post_stream`` without its time bound."""
        response: httpx.Response | None = None
        sses: AsyncGenerator[ServerSentEvent, None] | None = None
        job_id: str | None = None
        try:
            request = self._http.build_request(
                "POST", url, headers=headers, content=content, timeout=self._stream_timeout
            )
            response = await self._http.send(request, stream=True)
            if not response.is_success:
                await response.aread()
                raise response_error(response)
            header = response.headers.get(JOB_ID_HEADER)
            if header is not None and is_valid_job_id(header):
                job_id = header
            # 201: a new job; 200: the Idempotency-Key matched one made before.
            replayed = response.status_code == 200
            media_type = response.headers.get("content-type", "").partition(";")[0]
            if media_type.strip().lower() != "text/event-stream":
                await response.aread()
                created = parse_created(response_json(response), replayed=replayed)
                await response.aclose()
                return created, None
            sses = EventSource(response).aiter_sse()
            retry: float | None = None
            async for sse in sses:
                if sse.retry is not None:
                    retry = sse.retry / 1000
                if not sse.data:  # the ``retry:`` block
                    continue
                if sse.event != "created":
                    raise RemoteProtocolError(
                        f"POST {url} answered a stream that does not start with its created"
                        f" event (got {sse.event!r})"
                    )
                created = parse_created(decode_created(sse.data), replayed=replayed)
                return created, _Opened(response, sses, retry)
            raise RemoteProtocolError(f"POST {url} answered a stream without its created event")
        except BaseException as exc:
            if job_id is not None:
                named.add(job_id)
            if response is not None:
                with anyio.CancelScope(shield=True):
                    if sses is not None:
                        await sses.aclose()
                    await response.aclose()
            if isinstance(exc, (httpx.RequestError, httpx.InvalidURL)):
                # before the created block: what a failed create() would raise
                raise _failure("POST", url, exc) from exc
            raise

    def events(
        self, job_id: str, *, after: int = 0, correlation_id: str | None = None
    ) -> AsyncGenerator[JobEvent | Gap, None]:
        """The events of a job after seq ``after``, through its terminal event, resuming by itself.

        Yields each ``JobEvent`` once, in seq order, and a ``Gap`` where the server no longer had
        the events the stream needed. Ends right after the terminal event. Raises
        ``HTTPStatusError`` on a 4xx (e.g. 404, the job is gone), ``StreamInterrupted`` after
        ``max_reconnects`` consecutive failed attempts, ``RemoteProtocolError`` at once for an
        answer that is not a jobproto/1 stream, and ``ConnectFailed`` at once for a URL that
        cannot be used.

        To stop early, close the generator so the connection is closed at once, not when the
        garbage collector gets to it::

            from contextlib import aclosing

            from jobproto import JobEvent

            async with aclosing(client.events(job_id)) as events:
                async for item in events:
                    if isinstance(item, JobEvent) and item.type == "data":
                        break  # the first data event is all this caller wanted
        """
        return self._follow(job_id, after, correlation_id, None)

    async def _follow(
        self, job_id: str, after: int, correlation_id: str | None, opened: _Opened | None
    ) -> AsyncGenerator[JobEvent | Gap, None]:
        """``events()``; its first connection is ``opened`` when ``submit()`` has one."""
        url = self._url(job_id, "stream")
        last_seq = after
        last_gap: Gap | None = None
        server_retry = None if opened is None else opened.retry
        failures = 0
        while True:
            cause: Exception | None = None
            try:
                if opened is not None:
                    response, sses = opened.response, opened.sses
                    opened = None
                else:
                    headers = self._headers(correlation_id)
                    headers["Accept"] = "text/event-stream"
                    headers["Cache-Control"] = "no-store"
                    if last_seq > 0:
                        headers[LAST_EVENT_ID] = str(last_seq)
                    self._check_open("GET", url)
                    request = self._http.build_request(
                        "GET", url, headers=headers, timeout=self._stream_timeout
                    )
                    response = await self._http.send(request, stream=True)
                    sses = EventSource(response).aiter_sse()
                try:
                    if not response.is_success:
                        await response.aread()
                        error = response_error(response)
                        if response.status_code < 500:
                            raise error
                        cause = error  # 5xx: the server may be restarting; try again
                    else:
                        async for sse in sses:
                            if sse.retry is not None:
                                server_retry = sse.retry / 1000
                            if not sse.data:  # the ``retry:`` frame
                                continue
                            item = decode_envelope(sse.data)
                            if isinstance(item, tuple):
                                gap = item[0]
                                # A reconnect from the same seq draws the same gap again.
                                if gap == last_gap:
                                    continue
                                last_gap, failures = gap, 0
                                yield gap
                                continue
                            # A replay after a reconnect may overlap what was already yielded.
                            if item.seq <= last_seq:
                                continue
                            last_seq, failures = item.seq, 0
                            yield item
                            if item.terminal:
                                return
                finally:
                    await sses.aclose()
                    await response.aclose()
            except SSEError as exc:  # a 200 that is no event stream: a reconnect gets the same
                raise RemoteProtocolError(f"GET {url} answered 200 with {exc}") from exc
            except (httpx.RequestError, httpx.InvalidURL) as exc:
                failure = _failure("GET", url, exc)
                # not the connection (the body itself is wrong, a caller error), or a URL no
                # reconnect can make work: raised at once
                if not isinstance(failure, TransportFailed) or isinstance(exc, _UNUSABLE_URL):
                    raise failure from exc
                cause = exc
            # Here the stream broke, or ended before the terminal event (a lagging subscriber is
            # dropped by the server and expected to resume from the log).
            failures += 1
            if failures > self._max_reconnects:
                raise StreamInterrupted(job_id, last_seq, failures) from cause
            delay = self._delay(failures, server_retry)
            logger.info(
                "event stream of %s broke (%s); reconnecting after seq %d in %.2fs",
                job_id,
                "ended early" if cause is None else repr(cause),
                last_seq,
                delay,
            )
            await self._sleep(delay)

    async def run(
        self,
        operation: str,
        /,
        fields: Mapping[str, Any] | None = None,
        *,
        on_event: Callable[[JobEvent | Gap], Any] | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        **more_fields: Any,
    ) -> Any:
        """Create a job, follow it to the end, and return its result (through ``submit()``).

        ``on_event`` (a function or coroutine function) sees every event, the terminal one
        included. Raises ``RemoteJobFailed`` when the job fails and ``RemoteJobCancelled`` when
        it is cancelled or expires.
        """
        async with self.submit(
            operation,
            fields,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            **more_fields,
        ) as stream:
            async for item in stream:
                if on_event is not None:
                    outcome = on_event(item)
                    if inspect.isawaitable(outcome):
                        await outcome
                if isinstance(item, JobEvent) and item.terminal:
                    return _result(item)
        # the stream only ends after a terminal event, which returned above.
        job_id = stream.created.job_id
        raise RemoteProtocolError(f"the stream of job {job_id} ended without an outcome")


#: httpx errors raised before anything was sent: the request is safe to send again
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: httpx errors of a URL that cannot be used: nothing was sent, and no retry can help
_UNUSABLE_URL = (httpx.InvalidURL, httpx.UnsupportedProtocol)


def _failure(method: str, url: str, exc: httpx.RequestError | httpx.InvalidURL) -> JobProtoError:
    """The jobproto error for httpx's ``exc`` (the caller chains ``exc`` as its cause)."""
    # httpx's messages are often empty ("ReadError()"): the type name says what happened then
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _UNUSABLE_URL):
        return ConnectFailed(f"cannot use the URL of {method} {url}: {why}")
    if isinstance(exc, _NOTHING_SENT):
        return ConnectFailed(f"cannot connect for {method} {url}: {why}")
    if isinstance(exc, httpx.LocalProtocolError):  # e.g. a header value httpx will not send
        return LocalProtocolError(f"{method} {url} cannot be sent: {why}")
    if isinstance(exc, httpx.TransportError):
        return TransportFailed(f"{method} {url} got no answer: {why}")
    return RemoteProtocolError(f"{method} {url}: {why}")  # DecodingError, TooManyRedirects


def _unusable_url(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``ConnectFailed``) failed on a URL that no retry can make work."""
    return isinstance(exc.__cause__, _UNUSABLE_URL)


def _is_token(token: str) -> bool:
    # RFC 6750 §2.1 b64token is a subset of this; what it rules out (spaces, control characters,
    # non-ASCII) would break the header or make httpx echo the value in its error
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


def ssl_context(ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client's TLS context trusting ``ca`` only: a CA bundle, or the server's own certificate
    pinned (``None``: the system's CAs).

    A pinned server certificate is often not a CA itself but issued by one the client is not
    given; OpenSSL takes such a certificate as a trust anchor only with
    ``VERIFY_X509_PARTIAL_CHAIN``, which Python sets by default from 3.13 on and which is set here
    for 3.11 and 3.12 too. Hostname checking and ``CERT_REQUIRED`` stay as
    ``ssl.create_default_context`` makes them. The one way every tier builds this context.
    """
    context = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    partial_chain = getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", None)
    if partial_chain is not None:
        context.verify_flags |= partial_chain
    return context


def _ssl(verify: ssl.SSLContext | str | os.PathLike[str] | bool) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for ours: a path becomes ``ssl_context(path)`` (httpx 0.28 deprecates
    passing a path)."""
    if isinstance(verify, str | os.PathLike):
        return ssl_context(verify)
    return verify


def _result(ev: JobEvent) -> Any:
    """The result of a succeeded job; raise for the other terminal events."""
    event = ev.event
    if isinstance(event, Succeeded):
        return event.result
    if isinstance(event, Failed):
        raise RemoteJobFailed(event.code, event.message, job_id=ev.job_id)
    if isinstance(event, (Cancelled, Expired)):
        raise RemoteJobCancelled(event.TYPE, event.reason, job_id=ev.job_id)
    raise RemoteProtocolError(f"{ev.type!r} is not a terminal event")


def _json_body(body: dict[str, Any]) -> bytes:
    """``body`` as strict JSON (RFC 8259: no NaN or Infinity), or a
    ``LocalProtocolError`` naming the first field that has no JSON spelling."""
    try:
        return dumps(body).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        for key, value in body.items():
            try:
                dumps(value)
            except (ValueError, TypeError, RecursionError) as field_exc:
                raise LocalProtocolError(
                    f"job field {key!r} cannot be sent as JSON: {field_exc}"
                ) from None
        raise LocalProtocolError(f"the job's fields cannot be sent as JSON: {exc}") from None

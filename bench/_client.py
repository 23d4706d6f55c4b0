"""The one client every stream figure is read by: httpx streaming, bytes counted, not parsed.

Reading a stream here costs the same whatever server sent it: the body is taken as it arrives
(``aiter_raw``) and the benchmark counts the ``event: data`` lines in it (across chunk boundaries)
without decoding anything, so the client's own cost is as small as httpx allows and identical for
jobproto and for the baselines. Where a figure needs the events themselves (which token arrived
when), ``read_events`` decodes them with jobproto's sans-IO decoder, again the same for both paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from jobproto import SSEDecoder

__all__ = [
    "DATA_MARK",
    "ClientPool",
    "StreamResult",
    "count_stream",
    "http_client",
    "read_events",
]

DATA_MARK = b"event: data\n"


def http_client(
    connections: int = 2000, timeout: float = 120.0, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """``headers`` go on every request (a queen's token: rbee's services require one)."""
    return httpx.AsyncClient(
        headers=headers,
        # Below uvicorn's keep-alive timeout (5 s): a connection the server is about to close is
        # never reused, so no request fails on a reused connection (and no retry hides in a run).
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=2.0,
        ),
        timeout=httpx.Timeout(timeout),
    )


class ClientPool:
    """Several httpx clients, a few dozen streams each, handed out round-robin.

    httpcore's connection pool scans every connection it holds on each request and response, so
    one client holding hundreds of open streams spends more time in its pool than reading; the
    client is not what is measured, so its streams are spread over small pools.
    """

    def __init__(
        self, streams: int, per_client: int = 25, headers: dict[str, str] | None = None
    ) -> None:
        self.clients = [
            http_client(per_client * 2, headers=headers)
            for _ in range(max(1, -(-streams // per_client)))
        ]
        self._next = 0

    def next(self) -> httpx.AsyncClient:
        client = self.clients[self._next % len(self.clients)]
        self._next += 1
        return client

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.aclose()


class StreamResult:
    __slots__ = (
        "bytes",
        "data_events",
        "ended_at",
        "ended_ok",
        "first_data_at",
        "retries",
        "started_at",
    )

    def __init__(self) -> None:
        self.retries = 0
        self.bytes = 0
        self.data_events = 0
        self.ended_ok = False
        self.started_at = 0.0
        self.first_data_at: float | None = None
        self.ended_at = 0.0


async def count_stream(
    http: httpx.AsyncClient,
    url: str,
    *,
    end_mark: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """Read ``url`` to its end; count data events (and note when the first one arrived).

    ``end_mark`` (e.g. ``b"event: succeeded"``) must appear in the body for ``ended_ok``; without
    one a clean end of the body is enough. A connection that fails before the response starts is
    tried again (twice at most, counted in ``retries``): a refused or reset connect on a loaded
    loopback is not what is measured, and the stream has not started yet.
    """
    failure: BaseException | None = None
    for attempt in range(3):
        try:
            res = await _count(http, url, end_mark, headers)
        except _NotStarted as exc:
            failure = exc.__cause__
            continue
        res.retries = attempt
        return res
    assert failure is not None
    raise failure


class _NotStarted(Exception):
    pass


async def _count(
    http: httpx.AsyncClient, url: str, end_mark: bytes | None, headers: dict[str, str] | None
) -> StreamResult:
    res = StreamResult()
    mark = DATA_MARK
    keep = len(mark) - 1
    tail = b""
    end_tail = b""
    found_end = end_mark is None
    res.started_at = time.perf_counter()
    stream = http.stream("GET", url, headers=headers)
    try:
        response = await stream.__aenter__()
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        raise _NotStarted() from exc
    try:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        async for chunk in response.aiter_raw():
            n = chunk.count(mark) + (tail + chunk[:keep]).count(mark)
            if n and res.first_data_at is None:
                res.first_data_at = time.perf_counter()
            res.data_events += n
            res.bytes += len(chunk)
            tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
            if not found_end and end_mark is not None:
                window = end_tail + chunk
                found_end = end_mark in window
                end_tail = window[-len(end_mark) :]
    finally:
        await stream.__aexit__(None, None, None)
    res.ended_at = time.perf_counter()
    res.ended_ok = found_end
    return res


async def read_events(
    http: httpx.AsyncClient,
    url: str,
    on_event: Callable[[str, dict[str, Any], float, int], bool | None],
    *,
    headers: dict[str, str] | None = None,
    connected: anyio.Event | None = None,
) -> None:
    """Decode the stream at ``url``; call ``on_event(type, envelope, arrived_at, chunk_no)``.

    ``arrived_at`` is when the chunk holding the event was received (``time.perf_counter``), so
    decoding costs nothing in the measurement. ``on_event`` returning True stops reading.
    ``connected`` is set when the first chunk (a jobproto stream's ``retry:`` frame, sent as the
    server subscribes it) has arrived.
    """
    decoder = SSEDecoder()
    chunk_no = 0
    async with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            chunk_no += 1
            if connected is not None:
                connected.set()
            for sse in decoder.feed(chunk):
                if sse.data and on_event(sse.event, json.loads(sse.data), now, chunk_no):
                    return

"""A lean many-connection client, run as its own process: ``python -m bench._sockclient MODE``.

Thousands of streams in one process cost the client more than the server if each goes through
a full HTTP client; this one is an ``asyncio.Protocol`` per connection that writes a GET and
looks at the raw bytes that come back (it never needs more than the first chunk, or a regex over
the frames). It is the same for jobproto and for the baselines.

    hold PORT PATHS_FILE         open one stream per path; print READY once every stream has
                                 sent its first bytes; close them all on "close" from stdin
    churn PORT PATHS_FILE M C    open M streams (paths cycled), C at a time, each closed as soon
                                 as its first bytes arrive; print DONE {"seconds": ...}
    fan PORT PATHS_FILE E        open one stream per path (READY as above), then record when each
                                 of E events ``{"i": I, "t": T}`` arrives on each stream; print
                                 RESULT {"latency": [[seconds, ...] per event]}

Every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

__all__ = ["main"]

_EVENT = re.compile(rb'"i":(\d+),"t":([0-9.eE+-]+)')
_CONNECT_AT_ONCE = 256


class _Stream(asyncio.Protocol):
    def __init__(self, request: bytes, events: int, latency: list[list[float]] | None) -> None:
        self.request = request
        self.first = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.latency = latency
        self.events = events
        self.seen = 0
        self.carry = b""
        self.done = asyncio.get_running_loop().create_future() if events else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.first.done():
            self.first.set_result(None)
        if self.latency is None:
            return
        buf = self.carry + data if self.carry else data
        end = 0
        for m in _EVENT.finditer(buf):
            i = int(m.group(1))
            if i < len(self.latency):
                self.latency[i].append(now - float(m.group(2)))
                self.seen += 1
            end = m.end()
        self.carry = buf[end:][-256:]
        if self.done is not None and self.seen >= self.events and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.first, self.closed, self.done):
            if fut is not None and not fut.done():
                fut.set_result(None)


def _request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


async def _open(
    port: int, paths: list[str], events: int = 0, latency: list[list[float]] | None = None
) -> list[_Stream]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(_CONNECT_AT_ONCE)
    streams: list[_Stream] = []

    async def one(path: str) -> None:
        async with gate:
            proto = _Stream(_request(port, path), events, latency)
            await loop.create_connection(lambda: proto, "127.0.0.1", port)
            streams.append(proto)
            await proto.first

    await asyncio.gather(*(one(p) for p in paths))
    return streams


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def hold(port: int, paths: list[str], limit: float) -> None:
    streams = await asyncio.wait_for(_open(port, paths), limit)
    print(f"READY {json.dumps({'streams': len(streams)})}", flush=True)
    await asyncio.wait_for(_stdin_line(), limit)
    for s in streams:
        if s.transport is not None:
            s.transport.close()
    await asyncio.wait_for(asyncio.gather(*(s.closed for s in streams)), limit)
    print("CLOSED {}", flush=True)


async def churn(port: int, paths: list[str], total: int, at_once: int, limit: float) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(at_once)
    started = time.perf_counter()

    async def one(i: int) -> None:
        async with gate:
            proto = _Stream(_request(port, paths[i % len(paths)]), 0, None)
            await loop.create_connection(lambda: proto, "127.0.0.1", port)
            await proto.first
            assert proto.transport is not None
            proto.transport.close()  # abandoned: the client goes away mid-stream
            await proto.closed

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(total))), limit)
    print(f"DONE {json.dumps({'seconds': time.perf_counter() - started})}", flush=True)


async def fan(port: int, paths: list[str], events: int, limit: float) -> None:
    latency: list[list[float]] = [[] for _ in range(events)]
    streams = await asyncio.wait_for(_open(port, paths, events, latency), limit)
    print(f"READY {json.dumps({'streams': len(streams)})}", flush=True)
    waits = [s.done for s in streams if s.done is not None]
    await asyncio.wait_for(asyncio.gather(*waits), limit)
    for s in streams:
        if s.transport is not None:
            s.transport.close()
    print(f"RESULT {json.dumps({'latency': latency})}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._sockclient")
    p.add_argument("mode", choices=["hold", "churn", "fan"])
    p.add_argument("port", type=int)
    p.add_argument("paths", type=Path, help="a file with one request path per line")
    p.add_argument("numbers", type=int, nargs="*")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    paths = [line for line in args.paths.read_text().splitlines() if line]
    if args.mode == "hold":
        coro = hold(args.port, paths, args.timeout)
    elif args.mode == "churn":
        total, at_once = args.numbers
        coro = churn(args.port, paths, total, at_once, args.timeout)
    else:
        (events,) = args.numbers
        coro = fan(args.port, paths, events, args.timeout)
    asyncio.run(coro)


if __name__ == "__main__":
    main()

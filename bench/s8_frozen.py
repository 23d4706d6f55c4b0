"""8. Frozen subscribers: what clients that stop reading cost a server once their sends time out.

One finished job holds N data events of S KiB each (``blobs``); F streams subscribe to it from a
client process of their own (``python -m bench.s8_frozen hold PORT PATH F``) whose sockets have
a 4 KiB receive buffer and which stops reading each stream after its first bytes. Every stream's
first send is the whole backlog; the client never takes it, so the send times out
(``send_timeout`` 1 s) and the stream gives up. The server's settled RSS (as in section 5) is read
before the streams, and again 3 s after the last send timed out, with the client still connected
and still not reading. jobproto's server (``jobproto.server``: the stream aborts its connection)
against the same app under uvicorn's own protocol classes (``--stock-http``: the connection is
closed, and uvicorn keeps it and its buffered bytes until the peer reads).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

import anyio
import httpx

from ._client import http_client
from ._ctx import Ctx, create_job
from ._procs import Proc, python
from ._report import Row, Section
from ._stats import Stat
from .s5_memory import _settled_rss

__all__ = ["run"]

MIB = 1024 * 1024
SEND_TIMEOUT = 1.0


async def _finished_job(http: httpx.AsyncClient, base: str, n: int, size: int) -> str:
    job = await create_job(http, base, {"operation": "blobs", "n": n, "size": size})
    with anyio.fail_after(60):
        while (await http.get(f"{base}/v1/jobs/{job}")).json()["state"] != "succeeded":
            await anyio.sleep(0.05)
    return job


async def _one_server(ctx: Ctx, name: str, stock: bool, frozen: int, n: int, size: int) -> int:
    """RSS growth (bytes) of one server process with ``frozen`` frozen subscribers."""
    flags = [
        "--start-mode",
        "immediate",
        "--send-timeout",
        str(SEND_TIMEOUT),
        "--retention",
        "3600",
    ]
    srv = ctx.server(name, "jobproto", *flags, *(["--stock-http"] if stock else []))
    try:
        async with http_client() as http:
            await _hold(ctx, f"{name}-warm", srv, await _finished_job(http, srv.url, n, size), 10)
            job = await _finished_job(http, srv.url, n, size)
        before = await _settled_rss(srv)
        after = await _hold(ctx, f"{name}-hold", srv, job, frozen)
    finally:
        ctx.procs.stop(srv)
    return after - before


async def _hold(ctx: Ctx, name: str, srv: Proc, job: str, frozen: int) -> int:
    """Hold ``frozen`` streams of ``job`` without reading; the server's settled RSS once every
    send has timed out. Then let them go."""
    client = ctx.procs.client(
        name,
        python(
            "-m", "bench.s8_frozen", "hold", str(srv.port), f"/v1/jobs/{job}/stream", str(frozen)
        ),
    )
    await anyio.to_thread.run_sync(client.expect, "READY", 120.0)
    await anyio.sleep(SEND_TIMEOUT + 3.0)
    rss = await _settled_rss(srv)
    client.send("close")
    await anyio.to_thread.run_sync(client.expect, "CLOSED", 60.0)
    ctx.procs.stop(client)
    return rss


def _one(value: float) -> Stat:
    return Stat(value, value, value, 1)


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="frozen",
        title="8. Frozen subscribers",
        ours_name="jobproto.server (the stream aborts the connection)",
        base_name="uvicorn's own protocol classes (the connection is closed)",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    frozen, n, size = 100, ctx.size(128, 96), 64 * 1024
    ours = await _one_server(ctx, "s8-jobproto", False, frozen, n, size)
    base = await _one_server(ctx, "s8-stock", True, frozen, n, size)
    backlog = n * size / MIB
    sec.rows.append(
        Row(
            f"RSS growth with {frozen} frozen subscribers of a {backlog:.0f} MiB backlog",
            "MiB",
            _one(ours / MIB),
            _one(base / MIB),
            _one(ours / base) if base > 0 else None,
            note=f"{frozen} streams of {backlog:.0f} MiB each: {frozen * backlog:.0f} MiB"
            " written to clients that never read",
        )
    )
    sec.extra = {"frozen": frozen, "events": n, "event_bytes": size, "ours": ours, "base": base}
    ctx.log(f"frozen subscribers: jobproto +{ours / MIB:.1f} MiB, stock +{base / MIB:.1f} MiB")
    sec.notes.append(
        "Single measurements (one server process each). The kernel's socket buffers are not in"
        " the RSS: aborting also resets the connection, so the kernel frees its share at once too."
    )
    return sec


# -- the frozen client -----------------------------------------------------------------------------


class _Frozen(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.first = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # Never resumed: the kernel's buffers fill, then the server's.
        self.transport.pause_reading()
        if not self.first.done():
            self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_result(None)


async def _hold_main(port: int, path: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    streams = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, stream = await loop.create_connection(lambda: _Frozen(request), sock=sock)
        streams.append(stream)
    await asyncio.wait_for(asyncio.gather(*(s.first for s in streams)), 60)
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for s in streams:
        s.transport.abort()
    print("CLOSED", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.s8_frozen")
    p.add_argument("mode", choices=["hold"])
    p.add_argument("port", type=int)
    p.add_argument("path")
    p.add_argument("count", type=int)
    args = p.parse_args(argv)
    asyncio.run(_hold_main(args.port, args.path, args.count))


if __name__ == "__main__":
    main()

"""Helpers for testing jobproto services: serve an app on a loopback port inside a test.

    from jobproto.asgi import create_app
    from jobproto.client import JobClient
    from jobproto.conformance import conformance_operations
    from jobproto.testing import serving

    async with serving(create_app(conformance_operations())) as url:  # in an async test
        async with JobClient(url) as client:
            assert await client.run("echo", messages=["hi"], result=42) == 42

Real uvicorn on ``127.0.0.1:0``: endless streams, disconnects and keepalives behave as in
production (``httpx.ASGITransport`` buffers whole bodies, so an open SSE stream hangs under it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette

from ._extras import missing_extra

try:
    import uvicorn  # noqa: F401  (what _http and server need: a missing one names the extra)
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "server", "jobproto.testing") from exc

from ._http import HttpLimits, HttpParser
from .asgi._service import JobService
from .server import Server, StrPath, bound_port, config

__all__ = ["serving"]


@asynccontextmanager
async def serving(
    app: Starlette,
    host: str = "127.0.0.1",
    *,
    limits: HttpLimits = HttpLimits(),  # noqa: B008 - frozen
    http: HttpParser = "auto",
    ssl_certfile: StrPath | None = None,
    ssl_keyfile: StrPath | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port for the duration of the block; yield its base URL
    (``https://`` with a certificate). The server is ``jobproto.server.config``'s."""
    service = getattr(app.state, "jobs", None)
    cfg = config(
        app,
        host,
        0,
        limits=limits,
        http=http,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = Server(cfg, service if isinstance(service, JobService) else None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            scheme = "https" if ssl_certfile is not None else "http"
            yield f"{scheme}://{host}:{bound_port(server)}"
        finally:
            if server.service is not None:
                server.service.begin_shutdown()
            server.should_exit = True

"""Helpers for testing jobproto services: serve an app on a loopback port inside a test.

    async with serving(create_app(ops)) as url:
        async with JobClient(url) as client:
            ...

Real uvicorn on ``127.0.0.1:0``: endless streams, disconnects and keepalives behave as in
production (``httpx.ASGITransport`` buffers whole bodies, so an open SSE stream hangs under it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.applications import Starlette

from .asgi._service import JobService
from .server import Server, bound_port

__all__ = ["serving"]


@asynccontextmanager
async def serving(app: Starlette, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port for the duration of the block; yield its base URL."""
    service = getattr(app.state, "jobs", None)
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
    server = Server(config, service if isinstance(service, JobService) else None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield f"http://{host}:{bound_port(server)}"
        finally:
            if server.service is not None:
                server.service.begin_shutdown()
            server.should_exit = True

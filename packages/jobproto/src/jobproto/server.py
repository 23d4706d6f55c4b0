"""Run a jobproto app under uvicorn, with a shutdown that does not hang on open streams.

uvicorn, asked to stop, waits for open connections to finish before it runs the app's lifespan
shutdown (sse-starlette#124): an SSE stream never finishes by itself, so the server would wait
forever. ``Server`` tells the ``JobService`` to end its streams the moment uvicorn is asked to
exit; clients reconnect (and resume) wherever the service comes back.

``config`` also bounds what one connection may cost (``HttpLimits``: the size of a request head,
the time to read a request, idle keep-alive) with uvicorn protocol classes of jobproto's own
(``jobproto._http``), which also let a stream drop a frozen client's connection at once, and
serves TLS when given a certificate and key.

``run`` also takes what the process built while starting (modules, the app, its settings: tens
of thousands of objects that live as long as the process) out of the cyclic garbage collector's
reach once the server listens (``gc.freeze``): a full collection no longer walks them, so its
pause, which stalls every stream the process serves, is what the running work allocated.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType

from starlette.applications import Starlette

from ._extras import missing_extra

try:
    import uvicorn
except ModuleNotFoundError as exc:  # the `server` extra installs it; jobproto's core needs none
    raise missing_extra(exc, "server", "jobproto.server") from exc

from ._http import HttpLimits, HttpParser, protocol_class
from ._redact import install_log_redaction
from .asgi._service import JobService

__all__ = ["HttpLimits", "Server", "bound_port", "config", "freeze_startup_heap", "run", "serve"]

StrPath = str | os.PathLike[str]


class Server(uvicorn.Server):
    """A uvicorn server whose exit also ends the service's open streams."""

    def __init__(self, config: uvicorn.Config, service: JobService | None = None) -> None:
        super().__init__(config)
        self.service = service
        #: the signals that asked this server to exit, in order
        self.stopped_by: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by.append(sig)
        if self.service is not None:
            self.service.begin_shutdown()
        super().handle_exit(sig, frame)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


def config(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    limits: HttpLimits = HttpLimits(),  # noqa: B008 - frozen
    http: HttpParser = "auto",
    ssl_certfile: StrPath | None = None,
    ssl_keyfile: StrPath | None = None,
) -> uvicorn.Config:
    """uvicorn's settings for a jobproto service.

    The event loop and HTTP parser are uvicorn's own choice (``loop``/``http`` "auto"): uvloop and
    httptools where they are installed (``jobproto[server]`` installs them), asyncio and h11
    otherwise. On the benchmark machine that halved the CPU a relayed token costs the queen
    (docs/benchmarks.md). Either parser runs in a subclass that enforces ``limits``. With
    ``ssl_certfile`` (PEM, the chain) and ``ssl_keyfile`` it serves HTTPS.
    """
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        lifespan="on",
        http=protocol_class(limits, http),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def freeze_startup_heap() -> None:
    """Collect what start-up left for the collector, then move every object alive now to the
    permanent generation, which collections skip (``gc.freeze``): they live as long as the
    process, and a full collection would otherwise walk all of them each time (in the queen,
    ~77,000 objects: a pause of tens of ms, docs/benchmarks.md). Reference counting still frees
    them; only a cycle among them is never collected."""
    gc.collect()
    gc.freeze()


def run(server: uvicorn.Server, on_ready: Callable[[int], None] | None = None) -> None:
    """Run ``server`` on the event loop its config picks until it exits; once it listens, freeze
    the start-up heap (``freeze_startup_heap``), then call ``on_ready(port)``."""
    # Every handler logging has by now (the application's basicConfig, uvicorn's own) masks
    # secrets in records and tracebacks as events are masked (docs/protocol.md §7).
    install_log_redaction()

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            freeze_startup_heap()
            if on_ready is not None:
                on_ready(bound_port(server))
        await task

    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        # uvicorn raises the signal that stopped it again once it has shut down; for Ctrl+C that
        # is a KeyboardInterrupt out of a clean shutdown: return, as for SIGTERM, no traceback
        if signal.SIGINT not in getattr(server, "stopped_by", ()):
            raise


def serve(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    on_ready: Callable[[int], None] | None = None,
    limits: HttpLimits = HttpLimits(),  # noqa: B008 - frozen
    ssl_certfile: StrPath | None = None,
    ssl_keyfile: StrPath | None = None,
) -> None:
    """Serve ``app`` (from ``create_app``) until SIGINT/SIGTERM; ``on_ready(port)`` once bound."""
    service = getattr(app.state, "jobs", None)
    server = Server(
        config(
            app,
            host,
            port,
            log_level=log_level,
            limits=limits,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        ),
        service if isinstance(service, JobService) else None,
    )
    run(server, on_ready)

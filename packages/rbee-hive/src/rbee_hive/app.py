"""The hive's app and its command, ``rbee-hive`` (docs/tiers.md, hive).

The app is built from jobproto's parts rather than ``jobproto.asgi.create_app`` because the hive
needs a lifespan of its own (catalog, supervisor, heartbeat) around the job service's, and
``create_app`` takes none: the job routes, correlation middleware and error handlers are the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jobproto.asgi import (
    CorrelationMiddleware,
    JobService,
    ServiceSettings,
    error_handlers,
    job_routes,
)
from jobproto.server import serve

from . import __version__
from .hive import HiveService
from .operations import hive_operations
from .settings import DEFAULT_WORKER_COMMAND, HiveSettings, default_models_dir, default_state_dir

__all__ = ["create_app", "main"]

LISTENING_PREFIX = "RBEE_HIVE_LISTENING "


def create_app(settings: HiveSettings | None = None) -> Starlette:
    """The hive's Starlette app: jobproto/1 job routes plus ``/health`` and ``/v1/hive``."""
    hive = HiveService(settings or HiveSettings())
    service = JobService(hive_operations(hive), ServiceSettings(service_name="rbee-hive"))

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        # The hive's state inside the service's: on the way out workers stop before jobs end.
        async with service.lifespan(app), hive.running():
            yield

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {"status": "ok", "hive_id": hive.settings.hive_id, "version": __version__}
        )

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(await hive.snapshot(), headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            *job_routes(service),
            Route("/health", health, methods=["GET"]),
            Route("/v1/hive", info, methods=["GET"]),
        ],
        middleware=[Middleware(CorrelationMiddleware)],
        exception_handlers=error_handlers(),
        lifespan=lifespan,
    )
    app.state.jobs = service
    app.state.hive = hive
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rbee-hive", description="rbee hive: runs workers and keeps models on one machine"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port to bind; 0 = any free port")
    p.add_argument("--hive-id", default="localhost", help="this hive's name at the queen")
    p.add_argument("--queen-url", default=None, help="queen to register with (none: standalone)")
    p.add_argument("--models-dir", default=str(default_models_dir()))
    p.add_argument("--state-dir", default=str(default_state_dir()))
    p.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    p.add_argument("--public-url", default=None, help="URL the queen should use for this hive")
    p.add_argument("--worker-host", default=None, help="address workers bind (default: --host)")
    p.add_argument(
        "--worker-command",
        default=shlex.join(DEFAULT_WORKER_COMMAND),
        help="command that starts a worker (split like a shell would; no shell runs it)",
    )
    p.add_argument("--stop-grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--restart-limit", type=int, default=5)
    p.add_argument("--hf-endpoint", default=None, help="Hugging Face endpoint (default: the hub)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """``rbee-hive``: serve until SIGINT/SIGTERM, then stop every worker."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = HiveSettings(
            host=args.host,
            port=args.port,
            hive_id=args.hive_id,
            queen_url=args.queen_url,
            public_url=args.public_url,
            worker_host=args.worker_host or args.host,
            models_dir=args.models_dir,
            state_dir=args.state_dir,
            heartbeat_interval=args.heartbeat,
            worker_command=shlex.split(args.worker_command),
            stop_grace=args.stop_grace,
            ready_timeout=args.ready_timeout,
            restart_limit=args.restart_limit,
            hf_endpoint=args.hf_endpoint,
        )
    except (TypeError, ValueError) as exc:
        print(f"rbee-hive: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings)
    hive: HiveService = app.state.hive

    def ready(port: int) -> None:
        hive.advertise(port)
        line = json.dumps({"port": port, "hive_id": settings.hive_id, "url": hive.url})
        print(LISTENING_PREFIX + line, flush=True)

    serve(app, settings.host, settings.port, log_level="warning", on_ready=ready)


if __name__ == "__main__":
    main()

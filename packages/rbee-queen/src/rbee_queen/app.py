"""The queen's app (``create_app``) and its command, ``rbee-queen``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from jobproto.asgi import JobService, ServiceSettings
from jobproto.asgi import create_app as create_job_app
from jobproto.server import serve

from .operations import queen_operations
from .queen import Queen
from .routes import hive_routes
from .settings import QueenSettings, default_state_dir

__all__ = ["create_app", "main"]

#: printed (one line, flushed) once the queen listens, for whoever started it with --port 0
LISTENING = "RBEE_QUEEN_LISTENING"


def create_app(
    settings: QueenSettings | None = None,
    *,
    service_settings: ServiceSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The queen: jobproto operations plus ``/v1/hives``. ``app.state.queen`` is its state."""
    queen = Queen(settings, clock=clock)
    service = JobService(
        queen_operations(queen), service_settings or ServiceSettings(service_name="queen")
    )
    queen.jobs = service

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the connection pool opens before the first job and closes after the last one ended
        async with queen.running():
            yield

    app = create_job_app(service, routes=hive_routes(queen), lifespan=lifespan)
    app.state.queen = queen
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbee-queen", description="rbee queen: the orchestrator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500, help="0 = any free port")
    p.add_argument(
        "--hive-timeout-beats",
        type=int,
        default=3,
        help="missed heartbeats before a hive is down (default 3)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"pid files and logs of started hives (default {default_state_dir()})",
    )
    p.add_argument("--public-url", default=None, help="the URL hives reach this queen at")
    p.add_argument("--hive-port", type=int, default=9000, help="port of hives started here")
    p.add_argument("--hive-host", default="127.0.0.1", help="address hives started here listen on")
    p.add_argument(
        "--hive-command",
        default=None,
        help="command that runs a hive started here (split like a shell would; no shell runs it;"
        " default: this Python's -m rbee_hive.app)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.hive_timeout_beats < 1:
        _parser().error("--hive-timeout-beats must be at least 1")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    extra: dict[str, Any] = {}
    if args.state_dir is not None:
        extra["state_dir"] = args.state_dir
    if args.hive_command:
        extra["hive_command"] = shlex.split(args.hive_command)
    settings = QueenSettings(
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        hive_timeout_beats=args.hive_timeout_beats,
        hive_port=args.hive_port,
        hive_host=args.hive_host,
        **extra,
    )
    app = create_app(settings)
    queen: Queen = app.state.queen

    def ready(port: int) -> None:
        queen.bound_port = port
        print(f"{LISTENING} {json.dumps({'port': port, 'url': queen.url})}", flush=True)

    serve(app, settings.host, settings.port, log_level=args.log_level, on_ready=ready)


if __name__ == "__main__":
    main(sys.argv[1:])

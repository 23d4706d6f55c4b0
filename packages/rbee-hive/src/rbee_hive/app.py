"""The hive's app and its command, ``rbee-hive`` (docs/tiers.md, hive).

The app is built from jobproto's parts rather than ``jobproto.asgi.create_app``: ``create_app``
enters an app's lifespan around the job service's, and the hive needs its own (catalog,
supervisor, heartbeat) inside it, so that on the way out workers stop before jobs end; it also adds
a middleware of its own (``rbee_hive.metrics``: bytes downloaded). The job routes, correlation
middleware, error handlers and ``/metrics`` route are the same.
jobproto's security middleware comes first (``rbee_hive.trust``): the queen's token on everything
but ``/health``, and only the ``Host`` names the hive is reached by.

The hive's tokens come from its environment only (``RBEE_HIVE_TOKEN`` or ``RBEE_HIVE_TOKEN_FILE``:
the token it accepts; ``RBEE_JOIN_TOKEN`` or ``RBEE_JOIN_TOKEN_FILE``: the one it presents to the
queen), never from flags: another user can read a command line in ``ps``. Without a token it
listens on loopback only; it refuses to start on any other address (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import NoReturn

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
    require_scope,
    security_middleware,
)
from jobproto.metrics import JobMetrics, metrics_route
from jobproto.server import serve
from jobproto.telemetry import traced
from rbee_contracts import auth

from . import __version__
from .hive import HiveService
from .metrics import HiveMetrics
from .operations import hive_operations
from .settings import (
    DEFAULT_CONVERT_COMMAND,
    DEFAULT_WORKER_COMMAND,
    ENV_MODEL_ROOTS,
    HiveSettings,
    default_models_dir,
    default_state_dir,
)
from .trust import hive_security

__all__ = ["create_app", "main"]

LISTENING_PREFIX = "RBEE_HIVE_LISTENING "


def create_app(settings: HiveSettings | None = None) -> Starlette:
    """The hive's Starlette app: jobproto/1 job routes plus ``/health``, ``/v1/hive`` and
    ``/metrics`` (jobproto's and the hive's own, ``rbee_hive.metrics``)."""
    settings = settings or HiveSettings()
    hive = HiveService(settings)
    service = JobService(hive_operations(hive), ServiceSettings(service_name="rbee-hive"))
    metrics = JobMetrics()
    metrics.bind(service)
    hive_metrics = HiveMetrics(hive.supervisor, metrics.registry)

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
        require_scope(request, auth.JOBS_SCOPE)
        return JSONResponse(await hive.snapshot(), headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            *job_routes(service),
            Route("/health", health, methods=["GET"]),
            Route("/v1/hive", info, methods=["GET"]),
            metrics_route(metrics, scope=auth.JOBS_SCOPE),
        ],
        middleware=[
            *security_middleware(hive_security(settings)),
            Middleware(CorrelationMiddleware),
            hive_metrics.middleware(),
        ],
        exception_handlers=error_handlers(),
        lifespan=lifespan,
    )
    app.state.jobs = service
    app.state.hive = hive
    app.state.metrics = metrics
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
    p.add_argument(
        "--convert-command",
        default=shlex.join(DEFAULT_CONVERT_COMMAND),
        help="command that converts a GGUF file for model_import; the hive appends"
        " SRC DEST --dtype DTYPE (split like a shell would; no shell runs it)",
    )
    p.add_argument("--stop-grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--restart-limit", type=int, default=5)
    p.add_argument("--hf-endpoint", default=None, help="Hugging Face endpoint (default: the hub)")
    p.add_argument(
        "--model-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory under which models may be registered besides --models-dir, which"
        f" always is one (repeatable; default: ${ENV_MODEL_ROOTS}, {os.pathsep}-separated)",
    )
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS: certificate")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="serve HTTPS: its key")
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="CA (or the queen's own certificate) to verify the queen with",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the hive is reached by (repeatable; loopback, the bound address and"
        " the public URL's host always are)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin (scheme://host:port) whose web pages may call the hive (repeatable)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _model_roots(flags: list[str]) -> list[str]:
    if flags:
        return flags
    return [root for root in os.environ.get(ENV_MODEL_ROOTS, "").split(os.pathsep) if root]


def _refuse(message: str) -> NoReturn:
    print(f"rbee-hive: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """``rbee-hive``: serve until SIGINT/SIGTERM, then stop every worker."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        token = auth.token_from_env(os.environ, auth.ENV_HIVE_TOKEN, auth.ENV_HIVE_TOKEN_FILE)
        join_token = auth.token_from_env(os.environ, auth.ENV_JOIN_TOKEN, auth.ENV_JOIN_TOKEN_FILE)
    except auth.TokenFileError as exc:
        _refuse(str(exc))
    how = f"set {auth.ENV_HIVE_TOKEN} or {auth.ENV_HIVE_TOKEN_FILE} (the queen's hive token)"
    for host in dict.fromkeys([args.host, args.worker_host or args.host]):
        refusal = auth.open_bind_refusal(host, token, "rbee-hive", how)
        if refusal is not None:
            _refuse(refusal)
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
            convert_command=shlex.split(args.convert_command),
            stop_grace=args.stop_grace,
            ready_timeout=args.ready_timeout,
            restart_limit=args.restart_limit,
            hf_endpoint=args.hf_endpoint,
            token=token,
            join_token=join_token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            allowed_hosts=args.allowed_host,
            allowed_origins=args.allowed_origin,
            model_roots=_model_roots(args.model_root),
        )
        app = create_app(settings)  # reads the CA file (an OSError when it cannot)
    except (TypeError, ValueError, OSError) as exc:
        _refuse(str(exc))
    if settings.queen_url is not None and join_token is None:
        logging.getLogger("rbee_hive").warning(
            "no join token (%s or %s): a queen that checks tokens refuses this hive's heartbeats",
            auth.ENV_JOIN_TOKEN,
            auth.ENV_JOIN_TOKEN_FILE,
        )
    cleartext = auth.cleartext_warning(settings.host, settings.tls_cert is not None, "rbee-hive")
    if cleartext is not None:
        logging.getLogger("rbee_hive").warning("%s", cleartext)
    hive: HiveService = app.state.hive

    def ready(port: int) -> None:
        hive.advertise(port)
        line = json.dumps({"port": port, "hive_id": settings.hive_id, "url": hive.url})
        print(LISTENING_PREFIX + line, flush=True)

    # traces over OTLP/HTTP when the OTEL_* variables ask for them (docs/tracing.md)
    with traced("rbee-hive"):
        serve(
            app,
            settings.host,
            settings.port,
            log_level="warning",
            on_ready=ready,
            ssl_certfile=None if settings.tls_cert is None else str(settings.tls_cert),
            ssl_keyfile=None if settings.tls_key is None else str(settings.tls_key),
        )


if __name__ == "__main__":
    main()

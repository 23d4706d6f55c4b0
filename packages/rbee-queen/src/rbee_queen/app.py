"""The queen's app (``create_app``) and its command, ``rbee-queen``.

``rbee-queen`` always authenticates: it loads its secret (``--secret-file``, else
``RBEE_QUEEN_SECRET_FILE``, else ``{state_dir}/secret``; created 0600 on first start), writes the
local keeper's token to ``{state_dir}/keeper.token`` (0600) and answers only the host names it is
configured for (``rbee_queen.security``). ``create_app`` without a secret checks no tokens (tests,
library use).

With ``--redis-url`` (``RBEE_QUEEN_REDIS_URL``) the queen is one replica of several that share one
Redis: its jobs live there (``jobproto.redis.RedisStore``, namespace ``rbee-queen``), so any
replica lists, streams, resumes and cancels them, and a replica that stops has its jobs adopted
by another; hives and in-flight counts are shared too (``rbee_queen.replicas``). Every replica
needs the same secret (``--secret-file``). The URL is shown only without its password.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from jobproto.metrics import JobMetrics, metrics_route
from jobproto.server import serve
from jobproto.store import JobStore
from jobproto.telemetry import traced
from rbee_contracts.auth import (
    ENV_QUEEN_REDIS_URL,
    ENV_QUEEN_SECRET_FILE,
    KEEPER_TOKEN_FILE,
    SECRET_FILE,
    TokenFileError,
    cleartext_warning,
    keeper_token,
    load_or_create_secret,
    write_private_file,
)

from .metrics import QueenMetrics
from .openai_api import OpenAIErrorShape, openai_routes
from .operations import queen_operations
from .queen import Queen
from .replicas import ReplicaSync
from .routes import hive_routes
from .security import queen_security
from .settings import QueenSettings, default_state_dir
from .web import web_routes

__all__ = ["create_app", "main"]

#: printed (one line, flushed) once the queen listens, for whoever started it with --port 0
LISTENING = "RBEE_QUEEN_LISTENING"
#: names another file for the queen's secret (``--secret-file`` wins)
ENV_SECRET_FILE = ENV_QUEEN_SECRET_FILE
#: the Redis URL replicas share (``--redis-url`` wins); the environment keeps its password out
#: of the argument list, which every user of the machine can read
ENV_REDIS_URL = ENV_QUEEN_REDIS_URL
#: the queen's keys in Redis all start with this
NAMESPACE = "rbee-queen"


def create_app(
    settings: QueenSettings | None = None,
    *,
    service_settings: ServiceSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The queen: jobproto operations plus ``/v1/hives``. ``app.state.queen`` is its state.

    Its security (``rbee_queen.security.queen_security``) follows ``settings``: tokens when it
    has a secret, a ``Host`` check when it has ``allowed_hosts``, and the allowed origins.
    """
    queen = Queen(settings, clock=clock)
    service_settings = service_settings or ServiceSettings(service_name="queen")
    store: JobStore | None = None
    redis_url = queen.settings.redis_url
    if redis_url:
        from jobproto.redis import RedisStore  # the extra's import, only when asked for

        store = RedisStore(
            redis_url,
            NAMESPACE,
            max_log_events=service_settings.max_log_events,
            lease_ttl=queen.settings.lease_ttl,
        )
    service = JobService(
        queen_operations(queen),
        service_settings,
        store=store,
        replica=queen.settings.replica_id,
    )
    queen.jobs = service
    if redis_url:
        # a store of its own for the hive and in-flight records: open while the queen runs,
        # around the job service's (whose lifespan opens and closes the jobs' store)
        queen.replicas = ReplicaSync(
            queen.registry, RedisStore(redis_url, NAMESPACE), service.replica, clock
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the connection pool opens before the first job and closes after the last one ended
        async with queen.running():
            yield

    security = queen_security(queen.settings, lambda: [h.hive_id for h in queen.registry.hives()])
    routes = [*hive_routes(queen), *openai_routes(queen), *web_routes(queen, security)]
    # GET /metrics: the queen's own (jobproto's and rbee_queen.metrics); /metrics/all: the cluster's
    metrics = JobMetrics()
    cluster = QueenMetrics(queen, metrics)
    routes.append(metrics_route(cluster.federate, scope=security.jobs_scope, path="/metrics/all"))
    app = create_job_app(
        service, routes=routes, lifespan=lifespan, security=security, metrics=metrics
    )
    # outermost: refusals on the OpenAI routes (the security layer's included) in OpenAI's shape
    app.add_middleware(OpenAIErrorShape)
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
    p.add_argument(
        "--secret-file",
        type=Path,
        default=os.environ.get(ENV_SECRET_FILE) or None,
        help=f"the queen's secret, created (0600) when missing (default: ${ENV_SECRET_FILE},"
        f" else STATE_DIR/{SECRET_FILE})",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the queen answers for besides loopback, --host and --public-url's"
        " (repeatable)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin (scheme://host:port) whose pages may call the queen (repeatable;"
        " default none)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", type=Path, default=None, help="... and this key (with --tls-cert)")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="verify hives and workers that serve HTTPS against this CA or pinned certificate",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get(ENV_REDIS_URL) or None,
        metavar="URL",
        help="share jobs, hives and in-flight counts with the other queens on this Redis"
        f" (redis://[user:password@]host:port/db; default: ${ENV_REDIS_URL}, which keeps a"
        " password out of the argument list; none: this queen alone)",
    )
    p.add_argument(
        "--replica-id",
        default=None,
        help="this queen's id among the replicas (default: host name, pid and a random suffix)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --redis-url: how long this queen's hold on the jobs it runs lasts without"
        " renewal, i.e. how soon another replica adopts them when it dies (default 5)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.hive_timeout_beats < 1:
        parser.error("--hive-timeout-beats must be at least 1")
    if not args.lease_ttl > 0:
        parser.error("--lease-ttl must be positive")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both or neither")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state_dir: Path = args.state_dir or default_state_dir()
    try:
        secret = load_or_create_secret(args.secret_file or state_dir / SECRET_FILE)
        # for the keeper on this machine (the user's own: 0600 in a 0700 directory)
        write_private_file(state_dir / KEEPER_TOKEN_FILE, keeper_token(secret) + "\n")
    except (TokenFileError, OSError) as exc:
        parser.error(str(exc))  # names the file and what to do, never the secret
    extra: dict[str, Any] = {}
    if args.hive_command:
        extra["hive_command"] = shlex.split(args.hive_command)
    settings = QueenSettings(
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        hive_timeout_beats=args.hive_timeout_beats,
        state_dir=state_dir,
        hive_port=args.hive_port,
        hive_host=args.hive_host,
        secret=secret,
        allowed_hosts=tuple(args.allowed_host),
        allowed_origins=tuple(args.allowed_origin),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        redis_url=args.redis_url,
        replica_id=args.replica_id,
        lease_ttl=args.lease_ttl,
        **extra,
    )
    try:
        app = create_app(settings)
    except ValueError:  # a Redis URL redis-py cannot read (its message may quote the password)
        parser.error("--redis-url: not a Redis URL (redis://[user:password@]host:port/db)")
    queen: Queen = app.state.queen
    if queen.replicas is not None:
        from jobproto.redis import redacted_url

        logging.getLogger("rbee_queen").info(
            "replica %s: jobs, hives and in-flight counts shared through Redis at %s",
            queen.replicas.replica,
            redacted_url(settings.redis_url or ""),
        )
    cleartext = cleartext_warning(settings.host, settings.tls_cert is not None, "rbee-queen")
    if cleartext is not None:
        logging.getLogger("rbee_queen").warning("%s", cleartext)

    def ready(port: int) -> None:
        queen.bound_port = port
        print(f"{LISTENING} {json.dumps({'port': port, 'url': queen.url})}", flush=True)

    # traces over OTLP/HTTP when the OTEL_* variables ask for them (docs/tracing.md)
    with traced("rbee-queen"):
        serve(
            app,
            settings.host,
            settings.port,
            log_level=args.log_level,
            on_ready=ready,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

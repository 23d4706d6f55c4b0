"""The worker app (``create_app``) and the ``rbee-worker`` command (``main``).

    rbee-worker --model PATH --engine {auto,transformers,vllm,synthetic} --host 127.0.0.1
                --port 0 --worker-id ID [--model-name NAME] [--max-concurrency N]
                [--max-queue N] [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
                [--engine-arg KEY=VALUE ...] [--tls-cert FILE --tls-key FILE]
                [--allowed-host NAME ...]
    rbee-worker build-tiny-model DIR [--seed N]

It accepts callers presenting the token in its environment, ``RBEE_WORKER_TOKEN`` (its hive puts
it there; a command line is readable by every user, so it is never a flag), on everything but
``/health``: the hive's ``/ready`` polls and the queen's jobs present it. Without one it listens
on loopback only, and refuses any other address (exit status 2). It answers only ``Host`` names
it is reached by (loopback, its bound address, ``--allowed-host``).

The command binds its port itself (0: any free port, race-free), prints exactly one line on stdout
once it listens, ``RBEE_WORKER_LISTENING {"port": ..., "worker_id": ...}`` (spelled once, in
``rbee_contracts.worker_cli``, with which the hive parses it), and only then starts loading the
model (in a thread: ``/health`` and ``/ready`` answer meanwhile). Logs go to stderr.

Exit status: 0 after SIGTERM/SIGINT (uvicorn re-raises the signal it caught, so a supervisor may
see the signal instead), 2 for bad flags or an engine that cannot run here, and
``EXIT_ENGINE_DEAD`` (3) when the engine died under the worker: the worker stops serving a second
after (its jobs have failed ``engine_dead`` by then) so that its supervisor restarts it.

Importing this module imports neither torch nor vLLM: the engine's module is imported by
``create_engine`` once the command line has said which engine runs, and torch only when that
engine loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
from starlette.applications import Starlette

from jobproto.asgi import ServiceSettings
from jobproto.asgi import create_app as create_job_app
from jobproto.metrics import JobMetrics
from jobproto.telemetry import traced
from rbee_contracts import auth
from rbee_contracts.engines import ENGINES
from rbee_contracts.worker_cli import listening_line

from .engines import Engine, EngineNotAvailable, _vllm_guard, create_engine
from .health import health_routes
from .operations import worker_operations
from .settings import DEVICES, DTYPES, WorkerSettings, new_worker_id
from .worker import WorkerRuntime

__all__ = ["EXIT_ENGINE_DEAD", "create_app", "main", "parse_args"]

EXIT_ENGINE_DEAD = 3

logger = logging.getLogger("rbee_worker")


def create_app(
    settings: WorkerSettings, *, engine: Engine | None = None, load_on_startup: bool = True
) -> Starlette:
    """The worker as a Starlette app: the ``infer`` job, health routes and ``/metrics``.

    ``engine`` replaces the one ``settings`` names (tests use it to inject engines). The model
    loads when the app starts, or, with ``load_on_startup=False``, when
    ``app.state.runtime.begin_loading()`` is called (the command does once it listens).
    """
    if engine is None:
        engine = create_engine(
            settings.engine,
            model=settings.model,
            model_name=settings.display_model_name,
            device=settings.device,
            dtype=settings.dtype,
            max_concurrency=settings.max_concurrency,
            engine_args=settings.engine_args,
        )
    runtime = WorkerRuntime(settings, engine)
    # the token its hive gave it; the queen presents it too (as a hive's: service_security)
    security = auth.service_security(settings.token, settings.host_names())

    # The worker's lifespan wraps the job service's: at shutdown the jobs are cancelled first
    # and the engine is closed after.
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime.running(load_now=load_on_startup):
            yield

    app = create_job_app(
        worker_operations(runtime),
        ServiceSettings(service_name=settings.service_name),
        routes=health_routes(runtime),
        lifespan=lifespan,
        security=security,
        # GET /metrics: jobproto's and the worker's own (rbee_worker.metrics), one registry
        metrics=JobMetrics(runtime.metrics.registry),
    )
    app.state.runtime = runtime
    return app


def _engine_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(
        prog="rbee-worker",
        description="Serve one model as jobproto 'infer' jobs."
        " (Also: rbee-worker build-tiny-model DIR.)",
    )
    parser.add_argument("--model", help="model directory (not needed by the synthetic engine)")
    parser.add_argument("--engine", choices=ENGINES, default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_non_negative, default=0, help="0: any free port")
    parser.add_argument("--worker-id", default=None, help="default: a random id")
    parser.add_argument("--model-name", default=None, help="default: the model directory name")
    parser.add_argument("--max-concurrency", type=_positive, default=None)
    parser.add_argument("--max-queue", type=_non_negative, default=16)
    parser.add_argument("--device", choices=DEVICES, default=None)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument(
        "--engine-arg", type=_engine_arg, action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS")
    parser.add_argument("--tls-key", default=None, metavar="FILE")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.model is None and args.engine != "synthetic":
        parser.error(f"--model is required with --engine {args.engine}")
    if args.port > 65535:
        parser.error("--port must be at most 65535")
    return WorkerSettings(
        model=args.model,
        engine=args.engine,
        host=args.host,
        port=args.port,
        worker_id=args.worker_id or new_worker_id(),
        model_name=args.model_name,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        device=args.device,
        dtype=args.dtype,
        engine_args=dict(args.engine_arg),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        allowed_hosts=args.allowed_host,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rbee-worker`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Progress bars (transformers' "Loading weights") are carriage-return noise in a log file.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if argv[:1] == ["build-tiny-model"]:
        from .tiny_model import main as build_main

        return build_main(argv[1:])
    settings = parse_args(argv)
    # The token is read once and leaves the environment: the engine's own processes (vLLM's
    # engine core) and the model's code do not need it.
    token = os.environ.pop(auth.ENV_WORKER_TOKEN, "").strip() or None
    refusal = auth.open_bind_refusal(
        settings.host, token, "rbee-worker", f"set {auth.ENV_WORKER_TOKEN} in its environment"
    )
    if refusal is not None:
        print(f"rbee-worker: {refusal}", file=sys.stderr)
        return 2
    settings = attrs.evolve(settings, token=token)
    # Before the engine is created: which engine "auto" picked, and why, is logged then.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [{settings.worker_id}] %(name)s: %(message)s",
    )
    try:
        app = create_app(settings, load_on_startup=False)
    except (ValueError, EngineNotAvailable) as exc:
        print(f"rbee-worker: {exc}", file=sys.stderr)
        return 2
    # traces over OTLP/HTTP when the OTEL_* variables ask for them (docs/tracing.md)
    with traced("rbee-worker"):
        return _serve(app, settings)


def _serve(app: Starlette, settings: WorkerSettings) -> int:
    """``jobproto.server.serve``, plus an exit of our own when the engine dies."""
    from jobproto.server import Server, config, run

    runtime: WorkerRuntime = app.state.runtime
    # The job service (create_job_app puts it on app.state.jobs) ends its streams at exit.
    server = Server(
        config(
            app,
            settings.host,
            settings.port,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
        ),
        app.state.jobs,
    )
    exit_code = 0

    def engine_dead(reason: str) -> None:
        nonlocal exit_code
        logger.error(
            "exiting (status %d) so that a fresh worker replaces this one: %s",
            EXIT_ENGINE_DEAD,
            reason,
        )
        exit_code = EXIT_ENGINE_DEAD
        # Not handle_exit(): uvicorn would re-raise that "signal" at the end and the status
        # would read as a SIGTERM instead of the engine's death.
        if server.service is not None:
            server.service.begin_shutdown()
        server.should_exit = True

    runtime.on_engine_dead = engine_dead

    def ready(port: int) -> None:
        print(listening_line(port, settings.worker_id), flush=True)
        runtime.begin_loading()

    run(server, ready)
    return exit_code


# vLLM starts its engine core with multiprocessing, which imports this module again in the child
# (as the main module of ``python -m rbee_worker.app``, or through the console script). There the
# orphan guard starts at once: a worker killed while the engine is still being built must not
# leave an engine core behind, and vLLM loads its plugins (the guard's other way in) only once
# the engine core has finished its handshake with the worker. A no-op in any other process.
_vllm_guard.register()

if __name__ == "__main__":
    raise SystemExit(main())

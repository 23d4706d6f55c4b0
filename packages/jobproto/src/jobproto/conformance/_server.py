"""The reference service for the conformance suite, served by uvicorn three ways.

* ``main()``, behind ``python -m jobproto.conformance.server``: a real server process. It announces
  its address once it is listening (``--port-file``, written atomically, and a line on stdout), so
  a parent that asked for ``--port 0`` finds the port the kernel chose. SIGTERM and SIGINT stop it
  cleanly with exit status 0 (uvicorn would re-raise the signal after its graceful shutdown).
* ``ThreadedServer``: the same app in a background thread of the calling process.
* ``ServerProcess.spawn``: ``main()`` in a child process of its own process group, stopped with
  SIGTERM and, if that is not enough, SIGKILL to the whole group.

With a token (``--token-file``, or ``JOBPROTO_TOKEN`` in its environment; never on the command
line, where ``ps`` shows it) the service refuses every request without it (docs/protocol.md
§Authentication), so the suite can prove it works against a service that needs one.

With a job store (``--store redis://HOST:PORT/DB``, or ``JOBPROTO_STORE_URL`` in its environment:
the only place for a URL with a password, which never goes on a command line) the service keeps
its jobs in Redis (``jobproto.redis.RedisStore``, the ``redis`` extra): the suite then checks the
shared store as it checks the in-memory one. Each server takes a namespace of its own
(``--store-namespace``, default a random one), unless two are meant to be replicas of one
service (the same namespace, each its own ``--replica``).

On shutdown the ``JobService`` is told first (``begin_shutdown``), so open streams end at once
instead of holding uvicorn's graceful shutdown until their jobs finish.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from .._extras import missing_extra

try:
    import uvicorn
except ModuleNotFoundError as exc:  # the `server` extra installs it
    raise missing_extra(exc, "server", "jobproto.conformance.server") from exc

from .._http import HttpLimits, protocol_class
from .._redact import redact_text
from ..asgi import JobService, Principal, Security, ServiceSettings, TokenAuth, create_app
from ..store import JobStore
from ._operations import conformance_operations
from ._target import TOKEN_ENV, token_from

__all__ = [
    "STORE_ENV",
    "TOKEN_ENV",
    "ServerProcess",
    "ThreadedServer",
    "build_parser",
    "main",
    "settings_args",
    "settings_from_args",
]

#: the environment variable naming the job store's URL (a password may only be given there)
STORE_ENV = "JOBPROTO_STORE_URL"

#: ServiceSettings fields a command-line flag can set: ``--max-log-events 64`` and so on
_FLAGS: dict[str, type] = {
    "max_log_events": int,
    "subscribe_timeout": float,
    "retention_ttl": float,
    "keepalive_interval": float,
    "sweep_interval": float,
    "max_body_bytes": int,
    "max_subscriber_lag": int,
    "max_batch_events": int,
    "send_timeout": float,
    "cancel_wait": float,
    "retry_ms": int,
}


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        service: JobService,
        on_started: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.service = service
        self.on_started = on_started

    @property
    def port(self) -> int:
        return int(self.servers[0].sockets[0].getsockname()[1])

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self.port)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.service.begin_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded for re-raising: a signal asks for a clean stop, and a clean stop exits 0.
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def _make_server(
    settings: ServiceSettings,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    log_config: bool = False,
    on_started: Callable[[int], None] | None = None,
    token: str | None = None,
    store: str | None = None,
    namespace: str | None = None,
    replica: str | None = None,
) -> _Server:
    service = JobService(
        conformance_operations(),
        settings,
        store=_store(store, namespace, settings),
        replica=replica,
    )
    security = None
    if token is not None:
        principal = Principal("conformance", frozenset({"jobs"}))
        security = Security(auth=TokenAuth({token: principal}))
    config = uvicorn.Config(
        create_app(service, security=security),
        host=host,
        port=port,
        log_level=log_level,
        log_config=uvicorn.config.LOGGING_CONFIG if log_config else None,
        access_log=False,
        lifespan="on",
        # a frozen client can hold a stream open until the send timeout: do not wait for it
        timeout_graceful_shutdown=3,
        # the HTTP limits and the abort of frozen subscribers, as jobproto.server.config sets them
        http=protocol_class(HttpLimits()),
        h11_max_incomplete_event_size=HttpLimits().max_header_bytes,
    )
    return _Server(config, service, on_started)


def _store(url: str | None, namespace: str | None, settings: ServiceSettings) -> JobStore | None:
    """The job store at ``url`` (None: in memory, the default)."""
    if not url:
        return None
    from ..redis import RedisStore  # the redis extra: only when asked for

    namespace = namespace or f"jobproto-conformance-{secrets.token_hex(4)}"
    return RedisStore(url, namespace, max_log_events=settings.max_log_events)


class ThreadedServer:
    """The reference app served by uvicorn in a thread of this process; with ``token``, only to
    requests that carry it; with ``store`` (default: ``$JOBPROTO_STORE_URL`` if set), its jobs
    in that Redis."""

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        store: str | None = None,
    ) -> None:
        self.settings = settings or ServiceSettings()
        self._server = _make_server(
            self.settings, host, port, token=token, store=store or os.environ.get(STORE_ENV)
        )
        self._host = host
        self._thread = threading.Thread(
            target=self._server.run, name="jobproto-conformance-server", daemon=True
        )
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the in-process conformance server failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the in-process server did not start within {timeout} s")
            time.sleep(0.01)
        self.url = f"http://{self._host}:{self._server.port}"
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@attrs.define
class ServerProcess:
    """``python -m jobproto.conformance.server`` as a child in its own process group; with
    ``token``, written to a 0600 file in ``workdir`` and named by ``--token-file``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def spawn(
        cls,
        args: Sequence[str],
        workdir: Path,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
        *,
        token: str | None = None,
    ) -> ServerProcess:
        port_file = workdir / "port"
        log_path = workdir / "server.log"
        command = [sys.executable, "-m", "jobproto.conformance.server", "--host", host]
        command += ["--port", "0", "--port-file", str(port_file), *args]
        if token is not None:
            token_file = workdir / "token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
            command += ["--token-file", str(token_file)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(process, "", log_path)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(command)} did not start:\n{tail}")
            time.sleep(0.02)
        server.url = f"http://{host}:{int(port_file.read_text())}"
        return server

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        return self.process.wait()


# -- the command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobproto.conformance.server",
        description="Serve the jobproto/1 conformance operations with the reference service.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when listening")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--start-mode", choices=["on_subscribe", "immediate"])
    parser.add_argument("--service-name")
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"require this file's token as a bearer token (default: ${TOKEN_ENV} if set)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep the jobs in this Redis (redis://HOST:PORT/DB; default: $"
        + STORE_ENV
        + " if set, the only place for a URL with a password)",
    )
    parser.add_argument("--store-namespace", help="the store's namespace (default: a random one)")
    parser.add_argument("--replica", help="this server's replica id in the store")
    for name, kind in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, metavar=kind.__name__.upper())
    return parser


def _store_url(ns: argparse.Namespace) -> str | None:
    """``--store``, refused with a password (argv is public), else ``$JOBPROTO_STORE_URL``."""
    if ns.store:
        if redact_text(ns.store) != ns.store or "@" in ns.store.split("//", 1)[-1].split("/")[0]:
            raise ValueError(f"--store: give a URL with a password in ${STORE_ENV}, not in argv")
        return str(ns.store)
    return os.environ.get(STORE_ENV) or None


def settings_from_args(ns: argparse.Namespace) -> ServiceSettings:
    given = {name: getattr(ns, name) for name in _FLAGS if getattr(ns, name) is not None}
    if ns.start_mode is not None:
        given["start_mode"] = ns.start_mode
    if ns.service_name is not None:
        given["service_name"] = ns.service_name
    return ServiceSettings(**given)


def settings_args(settings: ServiceSettings) -> list[str]:
    """The flags that make the command line serve with ``settings``."""
    args = ["--start-mode", settings.start_mode, "--service-name", settings.service_name]
    for name in _FLAGS:
        args += ["--" + name.replace("_", "-"), repr(getattr(settings, name))]
    return args


def _announce(host: str, port_file: Path | None) -> Callable[[int], None]:
    def started(port: int) -> None:
        if port_file is not None:
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(str(port))
            os.replace(tmp, port_file)  # atomic: a reader never sees half a number
        print(f"listening on http://{host}:{port}", flush=True)

    return started


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        settings = settings_from_args(ns)
        token = token_from(ns.token_file, os.environ)
        store = _store_url(ns)
    except (TypeError, ValueError, OSError) as exc:
        parser.error(str(exc))
    server = _make_server(
        settings,
        ns.host,
        ns.port,
        log_level=ns.log_level,
        log_config=True,
        on_started=_announce(ns.host, ns.port_file),
        token=token,
        store=store,
        namespace=ns.store_namespace,
        replica=ns.replica,
    )
    server.run()
    return 0 if server.started else 1

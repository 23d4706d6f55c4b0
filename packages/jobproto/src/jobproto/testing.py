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

``redis_server()`` starts a real ``redis-server`` on a free loopback port for tests of
``jobproto.redis`` (no stand-in: scripts, streams and expiry are Redis's own)::

    from jobproto.redis import RedisStore
    from jobproto.testing import redis_server

    with redis_server() as server:  # a pytest fixture, usually
        store = RedisStore(server.url, namespace="test")
        await store.open()  # in an async test
        await store.close()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

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

__all__ = ["RedisServer", "redis_server", "serving"]


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


class RedisServer:
    """A ``redis-server`` process of a test: loopback only, its files in a private directory.

    ``stop()`` and ``start()`` restart it on the same port and directory (with ``persist``, its
    append-only file brings the data back, as after a real restart).
    """

    def __init__(
        self, executable: str, directory: Path, *, persist: bool, password: str | None
    ) -> None:
        self.directory = directory
        self.persist = persist
        self.port = _free_port()
        self._executable = executable
        self._password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = "" if self._password is None else f":{self._password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING (10 s at most)."""
        if self._process is not None:
            return
        config = self.directory / "redis.conf"
        # a password goes in a file only its owner reads, never on the command line
        config.write_text("" if self._password is None else f"requirepass {self._password}\n")
        config.chmod(0o600)
        argv = [self._executable, str(config), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.directory), "--daemonize", "no", "--logfile", "redis.log"]
        if self.persist:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and nothing else
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop(kill=True)
                raise RuntimeError(f"redis-server did not start on port {self.port}: {tail}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it saves what ``persist`` keeps), or SIGKILL with ``kill``."""
        process, self._process = self._process, None
        if process is None:
            return
        with suppress(ProcessLookupError):  # it had already exited
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):  # it had already exited
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                if self._password is not None:
                    conn.sendall(_command("AUTH", self._password))
                    if not conn.recv(64).startswith(b"+OK"):
                        return False
                conn.sendall(_command("PING"))
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextmanager
def redis_server(*, persist: bool = False, password: str | None = None) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port with a private directory, for the block.

    ``persist``: append-only file on (``fsync`` on every write), so a restart keeps the data;
    otherwise nothing is saved. ``password``: the server requires it (the URL carries it).
    Where ``redis-server`` is missing and this runs as root on Debian, it is installed from
    Debian's ``redis-server`` package; otherwise a ``RuntimeError`` says what to install.
    """
    executable = _redis_server_executable()
    with tempfile.TemporaryDirectory(prefix="jobproto-redis-") as directory:
        server = RedisServer(executable, Path(directory), persist=persist, password=password)
        server.start()
        try:
            yield server
        finally:
            server.stop(kill=True)


def _redis_server_executable() -> str:
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get") is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
            subprocess.run(argv, check=False, env=env, timeout=600, capture_output=True)
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: install Debian's redis-server package "
            "(apt-get install redis-server) or put redis-server on PATH"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(*parts: str) -> bytes:
    """A command in RESP, Redis's own protocol (what redis-cli would send)."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)

"""Queen replicas on one Redis server, for the tests of the shared job store (a fixture module:
``conftest.py`` loads it and exposes ``queen_replicas``).

``queen_replicas`` gives a test its own ``redis-server`` (``jobproto.testing.redis_server``:
loopback, a private directory, append-only file on, a password) and a directory under the
session's, and starts, on request, queens on that Redis (``python -m rbee_queen.app --replica-id
ID`` with the URL in ``RBEE_QUEEN_REDIS_URL``: it holds the password, which an argument list
would show to every user; one secret file for all, each queen with its own port and state
directory) and a hive registered with one of them. Every process runs in a process group of its
own and is killed, group and all, when the test ends (a hive first gets SIGTERM, to stop its
workers); a test kills a replica with ``Replica.kill`` (SIGKILL to its group: nothing of it gets
to clean up).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from jobproto import SSEDecoder
from jobproto.client import JobClient
from jobproto.testing import RedisServer, redis_server
from rbee_contracts import auth

#: the ready lines of the queen and the hive
QUEEN_LISTENING = re.compile(r"RBEE_QUEEN_LISTENING (\{.*\})")
HIVE_LISTENING = re.compile(r"RBEE_HIVE_LISTENING (\{.*\})")
#: the id of the hive ``Replicas.hive`` starts
HIVE_ID = "localhost"
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


@dataclass
class Event:
    """One event of a stream: its type, its envelope, and when it arrived (monotonic)."""

    type: str
    envelope: dict[str, Any]
    at: float

    @property
    def seq(self) -> int:
        return int(self.envelope["seq"])


def read_stream(
    url: str,
    headers: dict[str, str],
    *,
    stop: Callable[[list[Event]], bool] | None = None,
    timeout: float = 60.0,
) -> list[Event]:
    """The events of the stream at ``url`` until its terminal event (or until ``stop(events)``
    is true; the connection is then closed). Fails on any answer but 200."""
    events: list[Event] = []
    decoder = SSEDecoder()
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            pytest.fail(f"GET {url}: {response.status_code} {response.text}")
        for chunk in response.iter_raw():
            now = time.monotonic()
            for sse in decoder.feed(chunk):
                if not sse.data:
                    continue
                events.append(Event(sse.event, json.loads(sse.data), now))
                if sse.event in TERMINAL or (stop is not None and stop(events)):
                    return events
    pytest.fail(f"GET {url}: the stream ended without a terminal event after {len(events)}")


@dataclass
class Replica:
    """One queen process on the shared Redis."""

    name: str
    running: Any  # conftest's Running
    url: str

    @property
    def pid(self) -> int:
        return int(self.running.pid)

    def kill(self) -> None:
        """SIGKILL to the queen's whole process group (what a crashed machine looks like)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.running.pid, signal.SIGKILL)
        self.running.close()


@dataclass
class Replicas:
    root: Path
    redis: RedisServer
    kit: Any
    secret_file: Path
    env: dict[str, str]
    running: list[Any] = field(default_factory=list)
    hives: list[Any] = field(default_factory=list)

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(auth.read_token_file(self.secret_file))

    @property
    def token(self) -> str:
        """The keeper's token: every replica accepts it (one secret)."""
        return auth.keeper_token(self.secret)

    @property
    def headers(self) -> dict[str, str]:
        return auth.bearer(self.token)

    def worker_headers(self, worker_id: str, hive_id: str = HIVE_ID) -> dict[str, str]:
        """The token a worker of ``hive_id`` accepts (its hive's token, then its own)."""
        return auth.bearer(auth.worker_token(auth.hive_token(self.secret, hive_id), worker_id))

    def _start(
        self, argv: list[str], env: dict[str, str], pattern: re.Pattern[str], what: str
    ) -> Any:
        running = self.kit.Running(argv, env, self.root)
        self.running.append(running)
        found = running.wait_for(lambda r: pattern.search(r.out), 90, what)
        return running, json.loads(found.group(1))

    def queen(self, name: str, *extra: str) -> Replica:
        """A queen replica ``name`` on the shared Redis, on a port of its own."""
        state = self.root / f"queen-{name}"
        argv = [
            self.kit.PYTHON,
            "-m",
            "rbee_queen.app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--state-dir",
            str(state),
            "--secret-file",
            str(self.secret_file),
            "--replica-id",
            name,
            *extra,
        ]
        # the URL holds the password: in the environment, never in the argument list
        env = {**self.env, auth.ENV_QUEEN_REDIS_URL: self.redis.url}
        running, info = self._start(argv, env, QUEEN_LISTENING, f"queen {name}")
        return Replica(name, running, str(info["url"]))

    def hive(self, queen: Replica, *extra: str) -> str:
        """A hive registered with ``queen`` (1 s heartbeat); its URL."""
        secret = self.secret
        env = {
            **self.env,
            auth.ENV_HIVE_TOKEN: auth.hive_token(secret, HIVE_ID),
            auth.ENV_JOIN_TOKEN: auth.join_token(secret, HIVE_ID),
        }
        argv = [
            self.kit.PYTHON,
            "-m",
            "rbee_hive.app",
            "--port",
            "0",
            "--hive-id",
            HIVE_ID,
            "--queen-url",
            queen.url,
            "--models-dir",
            str(self.root / "models"),
            "--state-dir",
            str(self.root / "hive"),
            "--heartbeat",
            "1",
            "--stop-grace",
            "5",
            *extra,
        ]
        running, info = self._start(argv, env, HIVE_LISTENING, "the hive")
        self.hives.append(running)
        # listening is not registered: its first heartbeat may still be on its way
        self.wait_for_hive(queen)
        return str(info["url"])

    def wait_for_hive(self, queen: Replica, within: float = 60.0) -> None:
        """Until ``queen`` lists the hive as up (polled; bounded)."""
        deadline = time.monotonic() + within
        while True:
            response = httpx.get(f"{queen.url}/v1/hives", headers=self.headers, timeout=10)
            hives = response.json().get("hives", []) if response.status_code == 200 else []
            if any(h.get("hive_id") == HIVE_ID and h.get("state") == "up" for h in hives):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"queen {queen.name} does not list the hive as up: {hives}")
            time.sleep(0.2)

    def job(self, queen: Replica, operation: str, **fields: Any) -> dict[str, Any]:
        """``POST /v1/jobs`` on ``queen`` (expected to be accepted); the created job."""
        response = httpx.post(
            f"{queen.url}/v1/jobs",
            json={"operation": operation, **fields},
            headers=self.headers,
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def read(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        stop: Callable[[list[Event]], bool] | None = None,
    ) -> list[Event]:
        """``read_stream`` with the keeper's token, or ``headers``' ``Authorization``."""
        return read_stream(url, {**self.headers, **(headers or {})}, stop=stop)

    def run(self, queen: Replica, operation: str, **fields: Any) -> Any:
        """Run one job on ``queen`` to its end with jobproto's client; its result."""

        async def run() -> Any:
            async with JobClient(queen.url, timeout=60, token=self.token) as client:
                return await client.run(operation, fields)

        return anyio.run(run)

    @property
    def password(self) -> str:
        """The Redis server's password: no output, answer or event may show it."""
        password = urlsplit(self.redis.url).password
        assert password
        return password

    def close(self) -> None:
        # A hive stops its workers on SIGTERM (they run in process groups of their own, which
        # killing the hive's would leave behind); everything else is killed.
        for hive in self.hives:
            if hive.proc.poll() is None:
                hive.signal(signal.SIGTERM)
        for hive in self.hives:
            with contextlib.suppress(subprocess.TimeoutExpired):
                hive.proc.wait(20)
        for running in reversed(self.running):
            running.close()


@pytest.fixture
def queen_replicas(e2e_base: Path, kit: Any, request: pytest.FixtureRequest) -> Iterator[Replicas]:
    root = e2e_base / re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    root.mkdir()
    secret_file = root / "secret"
    auth.load_or_create_secret(secret_file)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RBEE_", "XDG_", "HF_", "HUGGING", "FORCE_COLOR", "TTY_"))
    }
    env.update(
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_STATE_HOME=str(root / "xdg-state"),
        XDG_DATA_HOME=str(root / "xdg-data"),
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        HF_HOME=str(root / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        # the hive registers models under its roots only: the session's tiny model is in e2e_base
        RBEE_HIVE_MODEL_ROOTS=os.pathsep.join([str(root / "models"), str(e2e_base)]),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    with redis_server(persist=True, password=secrets.token_hex(12)) as redis:
        replicas = Replicas(root, redis, kit, secret_file, env)
        try:
            yield replicas
        finally:
            replicas.close()

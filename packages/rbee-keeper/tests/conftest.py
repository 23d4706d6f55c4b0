"""Fixtures of the keeper's tests: an isolated environment, a fake queen, a CLI runner.

The fake queen (``fake_queen.py``) runs as a subprocess in its own process group: ``CliRunner``
runs ``anyio.run`` in the test's thread, so the server must live elsewhere. It is stopped by
process group at the end of the session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rbee_contracts.auth import KEEPER_TOKEN_FILE, read_token_file
from rbee_keeper.cli import rbee

FAKE_QUEEN = Path(__file__).with_name("fake_queen.py")

Invoke = Callable[..., Result]


def free_port() -> int:
    """A port nothing listens on (bound and released: nothing else takes it in a test's time)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL; reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


def start_fake_queen(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_QUEEN), "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("FAKE_QUEEN_LISTENING"):
        stop_group(proc)
        raise RuntimeError(f"the fake queen did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


@pytest.fixture
def fake_queens() -> Iterator[Callable[..., str]]:
    """Start fake queens with the given arguments (their URLs); all stopped at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        proc, url = start_fake_queen(*args)
        procs.append(proc)
        return url

    try:
        yield start
    finally:
        for proc in procs:
            stop_group(proc)


@pytest.fixture(scope="session")
def fake_queen_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state dir of the session's fake queen: its secret and ``keeper.token``."""
    return tmp_path_factory.mktemp("fake-queen")


@pytest.fixture(scope="session")
def fake_queen(fake_queen_state: Path) -> Iterator[str]:
    """The URL of a fake queen shared by the session's tests; it wants the keeper token in
    ``{fake_queen_state}/keeper.token`` (``fake_queen_token``)."""
    proc, url = start_fake_queen("--state-dir", str(fake_queen_state))
    try:
        yield url
    finally:
        stop_group(proc)


@pytest.fixture(scope="session")
def fake_queen_token_file(fake_queen: str, fake_queen_state: Path) -> Path:
    return fake_queen_state / KEEPER_TOKEN_FILE


@pytest.fixture(scope="session")
def fake_queen_token(fake_queen_token_file: Path) -> str:
    return read_token_file(fake_queen_token_file)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """XDG folders under ``tmp_path`` and no ``RBEE_*`` from the outside; returns the env."""
    for name in list(os.environ):
        if name.startswith("RBEE_"):
            monkeypatch.delenv(name)
    for name, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_DATA_HOME", "data"),
    ):
        monkeypatch.setenv(name, str(tmp_path / sub))
    # Unreachable unless a test says otherwise: a test must never talk to a real local queen.
    monkeypatch.setenv("RBEE_QUEEN_URL", f"http://127.0.0.1:{free_port()}")
    return dict(os.environ)


@pytest.fixture
def invoke(env: dict[str, str]) -> Invoke:
    """Run ``rbee ARGS`` in-process; stdout and stderr apart."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, **env_overrides: str) -> Result:
        return runner.invoke(rbee, list(args), input=input, env=env_overrides or None)

    return run

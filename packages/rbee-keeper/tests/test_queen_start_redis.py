"""``rbee queen start --redis-url URL --port N``: a queen that shares a Redis with others.

The queen started is the fake one (``fake_queen.py``), which ignores the flags it does not know:
what is checked is how the keeper starts it. The Redis URL goes into its environment
(``RBEE_QUEEN_REDIS_URL``), never its argument list (other users can read that), and is printed
nowhere; ``--port`` replaces queen_url's port.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

import rbee_process
from rbee_contracts.auth import ENV_QUEEN_REDIS_URL

Invoke = Callable[..., Result]
FAKE = str(Path(__file__).with_name("fake_queen.py"))
PASSWORD = "pw-in-the-redis-url"
REDIS_URL = f"redis://:{PASSWORD}@127.0.0.1:6390/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def state(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The fake queen and hive as the local services; anything left running is killed (and the
    test fails)."""
    state = tmp_path / "state" / "rbee"
    monkeypatch.setenv("RBEE_HIVE_PORT", str(free_port()))
    monkeypatch.setenv("RBEE_QUEEN_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("RBEE_HIVE_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("RBEE_START_TIMEOUT", "20")
    monkeypatch.setenv("RBEE_STOP_TIMEOUT", "5")
    yield state
    leftovers = []
    for pid_file in state.rglob("*.pid"):
        record = rbee_process.read_pid_file(pid_file)
        if record is not None and rbee_process.alive(record):
            leftovers.append(record.pid)
            rbee_process.terminate(record, grace=0.1)
    assert not leftovers, f"processes left behind: {leftovers}"


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_queen_start_gives_the_queen_the_redis_url_by_environment_and_the_port(
    state: Path, invoke: Invoke
) -> None:
    port = free_port()
    started = invoke("queen", "start", "--json", "--redis-url", REDIS_URL, "--port", str(port))
    try:
        assert started.exit_code == 0, started.stderr
        assert json.loads(started.stdout)["queen"]["url"] == f"http://127.0.0.1:{port}"
        record = rbee_process.read_pid_file(state / "queen.pid")
        assert record is not None
        argv = list(record.argv)
        assert argv[argv.index("--port") + 1] == str(port)
        assert not [arg for arg in argv if PASSWORD in arg]
        assert f"{ENV_QUEEN_REDIS_URL}={REDIS_URL}".encode() in environ(record.pid)
        assert PASSWORD not in started.stdout + started.stderr
        again = invoke("queen", "start", "--redis-url", REDIS_URL, "--port", str(port))
        assert again.exit_code == 0, again.stderr
        assert "keeps the settings it was started with" in again.stderr
    finally:
        stopped = invoke("queen", "stop", "--json", RBEE_QUEEN_URL=f"http://127.0.0.1:{port}")
    assert stopped.exit_code == 0, stopped.stderr
    assert json.loads(stopped.stdout)["queen"]["outcome"] == "stopped"


def test_queen_start_without_a_redis_url_adds_none(state: Path, invoke: Invoke) -> None:
    started = invoke("queen", "start")
    try:
        assert started.exit_code == 0, started.stderr
        record = rbee_process.read_pid_file(state / "queen.pid")
        assert record is not None
        assert not [v for v in environ(record.pid) if v.startswith(ENV_QUEEN_REDIS_URL.encode())]
    finally:
        invoke("queen", "stop")

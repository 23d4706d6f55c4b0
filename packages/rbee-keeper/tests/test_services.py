"""The local queen as a background process and the local hive through it, with fake commands.

The fake queen script serves a jobproto app on the ``--port`` it is given and ignores the hive's
other arguments, so it plays the queen and the hive alike; as the queen, it runs the hive like the
real one (``hive_start``/``hive_stop``, pid files under ``{state}/queen/hives``). Every test
checks that no process it started is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import Result

import rbee_process
from rbee_contracts import local_layout
from rbee_contracts.auth import keeper_token, read_token_file, write_private_file
from rbee_keeper.config import load_settings
from rbee_keeper.services import local_services, running_pid

Invoke = Callable[..., Result]
FAKE = str(Path(__file__).with_name("fake_queen.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Settings for a local queen and hive run by the fake; yields the state dir. Afterwards,
    anything still named by a pid file is killed (and the test fails)."""
    state = tmp_path / "state" / "rbee"
    monkeypatch.setenv("RBEE_QUEEN_URL", f"http://127.0.0.1:{free_port()}")
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


def pids(state: Path) -> dict[str, int]:
    """The pids of the local queen and hive, by their pid files (the hive's is the queen's)."""
    hive = local_layout.hive_pid_file(state / "queen", "localhost")
    files = {"queen": state / "queen.pid", "hive": hive}
    return {name: json.loads(f.read_text())["pid"] for name, f in files.items() if f.exists()}


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_queen_start_and_stop(local: Path, invoke: Invoke) -> None:
    started = invoke("queen", "start")
    assert started.exit_code == 0, started.stderr
    assert "started queen" in started.stderr and "started hive" in started.stderr
    running = pids(local)
    assert set(running) == {"queen", "hive"}
    logs = {
        "queen": local / "logs" / "queen.log",
        "hive": local_layout.hive_log(local / "queen", "localhost"),
    }
    for name, pid in running.items():
        # Detached: a session (and process group) of its own, output into its log file.
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        assert logs[name].read_text().startswith("--- rbee:")
    # the queen started the hive: the hive is the queen's child, not the keeper's
    assert psutil.Process(running["hive"]).ppid() == running["queen"]

    again = invoke("queen", "start")
    assert again.exit_code == 0
    assert "queen already running" in again.stderr
    assert pids(local) == running

    status = invoke("queen", "status")
    assert status.exit_code == 0, status.stderr
    assert str(running["queen"]) in status.stdout

    stopped = invoke("queen", "stop", "--json")
    assert stopped.exit_code == 0, stopped.stderr
    outcome = json.loads(stopped.stdout)
    assert outcome["queen"] == {"outcome": "stopped", "pid": running["queen"]}
    assert outcome["hive"] == {"outcome": "stopped", "pid": running["hive"]}
    assert pids(local) == {}
    assert all(gone(pid) for pid in running.values())

    nothing = invoke("queen", "stop", "--json")
    assert json.loads(nothing.stdout)["queen"]["outcome"] == "not running"


def test_infer_autostarts_the_queen_and_hive(local: Path, invoke: Invoke) -> None:
    result = invoke("infer", "hi", "-m", "tiny")
    try:
        assert result.exit_code == 0, result.stderr
        assert "started queen" in result.stderr
        assert result.stdout == "Hello, world!\n"
        assert set(pids(local)) == {"queen", "hive"}
    finally:
        assert invoke("queen", "stop").exit_code == 0
    assert pids(local) == {}


def test_unreachable_queen_with_no_autostart_exits_3(local: Path, invoke: Invoke) -> None:
    result = invoke("infer", "hi", "-m", "tiny", "--no-autostart")
    assert result.exit_code == 3
    port = load_settings().queen_url.rsplit(":", 1)[1]
    assert f"queen not running on 127.0.0.1:{port}; start it with `rbee queen start`" in (
        result.stderr
    )
    assert pids(local) == {}  # nothing was started

    as_json = invoke("status", "--json")
    assert as_json.exit_code == 3
    error = json.loads(as_json.stdout)
    assert error["type"] == "error" and error["exit_code"] == 3


def test_a_queen_that_dies_on_start_is_reported(local: Path, invoke: Invoke) -> None:
    script = "import sys; print('cannot bind', file=sys.stderr); sys.exit(3)"
    result = invoke(
        "queen", "start", RBEE_QUEEN_COMMAND=f"{sys.executable} -c {json.dumps(script)}"
    )
    assert result.exit_code == 3
    assert "the queen exited while starting" in result.stderr
    assert "cannot bind" in result.stderr  # the tail of its log
    assert invoke("queen", "stop").exit_code == 0
    assert pids(local) == {}


def test_a_missing_command_is_reported(local: Path, invoke: Invoke) -> None:
    result = invoke("queen", "start", RBEE_QUEEN_COMMAND="/nonexistent/rbee-queen")
    assert result.exit_code == 3
    assert "cannot start the queen" in result.stderr
    assert "RBEE_QUEEN_COMMAND" in result.stderr


def test_stale_pid_file_of_a_dead_process(local: Path, invoke: Invoke) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    queen, _ = local_services(load_settings())
    queen.pid_file.parent.mkdir(parents=True)
    record = {"pid": dead.pid, "argv": list(queen.argv), "create_time": 0}
    queen.pid_file.write_text(json.dumps(record))

    result = invoke("queen", "stop", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["queen"]["outcome"] == "not running"
    assert "stale pid file of the queen" in result.stderr
    assert not queen.pid_file.exists()


@pytest.mark.parametrize("kind", ["other command", "bare pid"])
def test_a_reused_pid_is_not_signalled(local: Path, invoke: Invoke, kind: str) -> None:
    # A live process that is not the queen holds the pid the pid file names.
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        queen, _ = local_services(load_settings())
        queen.pid_file.parent.mkdir(parents=True)
        if kind == "bare pid":
            queen.pid_file.write_text(f"{other.pid}\n")
        else:
            record = {"pid": other.pid, "argv": list(queen.argv), "create_time": None}
            queen.pid_file.write_text(json.dumps(record))
        assert running_pid(queen) is None
        assert queen.pid_file.exists()  # only read: the next start (or a stop) replaces it

        queen.pid_file.write_text(json.dumps({"pid": other.pid, "argv": list(queen.argv)}))
        assert invoke("queen", "stop").exit_code == 0
        assert other.poll() is None  # still alive: not ours to stop
    finally:
        other.kill()
        other.wait()


def test_the_keeper_only_reads_the_queens_hive_pid_file(local: Path) -> None:
    # The hive's pid file is the queen's: a stale-looking one may be one the queen is writing.
    _, hive = local_services(load_settings())
    hive.pid_file.parent.mkdir(parents=True)
    hive.pid_file.write_text(json.dumps({"pid": 2**22 + 7, "argv": ["rbee-hive"]}))
    assert running_pid(hive) is None
    assert hive.pid_file.exists()


def test_queen_stop_stops_a_hive_an_earlier_keeper_started(local: Path, invoke: Invoke) -> None:
    # An earlier keeper ran the hive itself, with its pid file {state_dir}/hive.pid.
    settings = load_settings()
    legacy = settings.state_dir / "hive.pid"
    hive = rbee_process.spawn_detached(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=settings.state_dir / "logs" / "hive.log",
        pid_file=legacy,
    )
    try:
        stopped = invoke("queen", "stop", "--json")
        assert stopped.exit_code == 0, stopped.stderr
        assert json.loads(stopped.stdout)["hive"] == {"outcome": "stopped", "pid": hive.pid}
        assert not legacy.exists()
        assert not rbee_process.alive(hive)
    finally:
        rbee_process.terminate(hive, grace=1, reap=True)
        rbee_process.reap(hive.pid)


def final(result: Result) -> dict[str, Any]:
    """The result of a job command's ``--json`` output (its last line, the terminal event)."""
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["type"] == "result" and last["state"] == "succeeded", last
    return dict(last["result"])


def test_hive_start_and_stop_go_through_the_queen(local: Path, invoke: Invoke) -> None:
    assert invoke("queen", "start").exit_code == 0
    first = pids(local)
    try:
        stopped = invoke("hive", "stop", "--json")
        assert stopped.exit_code == 0, stopped.stderr
        assert final(stopped)["stopped"] == "stopped"
        assert set(pids(local)) == {"queen"} and gone(first["hive"])

        started = invoke("hive", "start", "--json")
        assert started.exit_code == 0, started.stderr
        again = pids(local)
        assert final(started)["pid"] == again["hive"] != first["hive"]
        assert psutil.Process(again["hive"]).ppid() == first["queen"]
    finally:
        assert invoke("queen", "stop").exit_code == 0
    assert pids(local) == {}


def test_queen_stop_stops_the_hive_a_killed_queen_left(local: Path, invoke: Invoke) -> None:
    assert invoke("queen", "start").exit_code == 0
    running = pids(local)
    os.kill(running["queen"], signal.SIGKILL)  # the hive outlives it, with its pid file
    assert rbee_process.wait_gone(rbee_process.ProcessRecord(running["queen"], None, ()), 30)
    assert not gone(running["hive"])

    stopped = invoke("queen", "stop", "--json")
    assert stopped.exit_code == 0, stopped.stderr
    outcome = json.loads(stopped.stdout)
    assert outcome["hive"] == {"outcome": "stopped", "pid": running["hive"]}
    assert outcome["queen"]["outcome"] == "not running"
    assert pids(local) == {} and gone(running["hive"])


def test_the_queen_is_told_the_hive_host_and_port(
    local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queen starts the local hive, so `hive_host`/`hive_port` must reach it on its argv.
    monkeypatch.setenv("RBEE_HIVE_HOST", "127.0.0.3")
    settings = load_settings()
    queen, hive = local_services(settings)
    argv = list(queen.argv)
    assert argv[argv.index("--hive-host") + 1] == "127.0.0.3"
    assert argv[argv.index("--hive-port") + 1] == str(settings.hive_port)
    assert hive.url == f"http://127.0.0.3:{settings.hive_port}"


def test_the_model_roots_setting_reaches_the_queen_and_its_local_hive(
    local: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    roots = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    monkeypatch.setenv("RBEE_MODEL_ROOTS", roots)
    monkeypatch.setenv("RBEE_HIVE_MODEL_ROOTS", "/the/hives/own/variable")  # the setting wins
    assert invoke("queen", "start").exit_code == 0
    try:
        for name, pid in pids(local).items():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"RBEE_HIVE_MODEL_ROOTS={roots}".encode() in environ, name
    finally:
        assert invoke("queen", "stop").exit_code == 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rotate_secret_replaces_every_token(local: Path, invoke: Invoke) -> None:
    started = invoke("queen", "start")
    try:
        assert started.exit_code == 0, started.stderr
        token_file, secret_file = local / "queen" / "keeper.token", local / "queen" / "secret"
        old_token, old_secret = read_token_file(token_file), secret_file.read_text()
        jobs = load_settings().queen_url + "/v1/jobs"
        assert httpx.get(jobs, headers=bearer(old_token)).status_code == 200
        before = pids(local)

        rotated = invoke("queen", "rotate-secret", "--json")
        assert rotated.exit_code == 0, rotated.stderr
        assert "rbee hive start --host ALIAS" in rotated.stderr
        assert json.loads(rotated.stdout)["restarted"] is True
        new_token = read_token_file(token_file)
        assert secret_file.read_text() != old_secret and new_token != old_token
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        # Old tokens stop working; the new one works.
        assert httpx.get(jobs, headers=bearer(old_token)).status_code == 401
        assert httpx.get(jobs, headers=bearer(new_token)).status_code == 200
        # The queen and its hive were stopped and started again.
        after = pids(local)
        assert set(after) == {"queen", "hive"}
        assert all(gone(pid) for pid in before.values())
        assert after["queen"] != before["queen"]

        # The keeper reads the new token itself; an old one given to it is refused, unprinted.
        assert invoke("jobs", "list").exit_code == 0
        stale = invoke("jobs", "list", RBEE_TOKEN=old_token)
        assert stale.exit_code == 5
        assert "did not accept the token from env RBEE_TOKEN" in stale.stderr
        assert "rotate-secret" in stale.stderr
        assert old_token not in stale.stdout + stale.stderr
    finally:
        assert invoke("queen", "stop").exit_code == 0


def test_queen_start_waits_for_the_token_the_new_queen_writes(
    local: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A keeper.token an earlier queen left (another secret), and a queen that answers a while
    # before it writes its own: the keeper waits for the token it accepts.
    token_file = local / "queen" / "keeper.token"
    write_private_file(token_file, keeper_token(os.urandom(32)) + "\n")
    monkeypatch.setenv("RBEE_QUEEN_COMMAND", f"{sys.executable} {FAKE} --write-token-after 1")
    result = invoke("infer", "hi", "-m", "tiny")
    try:
        assert result.exit_code == 0, result.stderr
        assert "started queen" in result.stderr
        assert result.stdout == "Hello, world!\n"
    finally:
        assert invoke("queen", "stop").exit_code == 0


def test_a_configured_token_the_starting_queen_refuses_is_reported(
    local: Path, invoke: Invoke
) -> None:
    wrong = keeper_token(os.urandom(32))
    result = invoke("queen", "start", RBEE_TOKEN=wrong)
    try:
        assert result.exit_code == 5
        assert "did not accept the token from env RBEE_TOKEN" in result.stderr
        assert wrong not in result.stdout + result.stderr
    finally:
        assert invoke("queen", "stop").exit_code == 0


def test_the_keeper_and_the_queen_name_the_secret_file_alike(
    local: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rbee_contracts import auth
    from rbee_keeper.services import queen_secret_file
    from rbee_queen import app as queen_app

    assert queen_app.ENV_SECRET_FILE == auth.ENV_QUEEN_SECRET_FILE
    assert queen_secret_file(load_settings()) == local / "queen" / "secret"
    monkeypatch.setenv(auth.ENV_QUEEN_SECRET_FILE, str(tmp_path / "elsewhere"))
    assert queen_secret_file(load_settings()) == tmp_path / "elsewhere"


def test_rotate_secret_stops_a_hive_its_gone_queen_left(local: Path, invoke: Invoke) -> None:
    # the queen was killed; its hive runs on with tokens of the old secret, and would be left
    # running (unable to join) by the next `rbee queen start`
    assert invoke("queen", "start").exit_code == 0
    before = pids(local)
    os.kill(before["queen"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(before["queen"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(before["queen"]) and not gone(before["hive"])
    rotated = invoke("queen", "rotate-secret", "--json")
    assert rotated.exit_code == 0, rotated.stderr
    assert json.loads(rotated.stdout)["restarted"] is False
    assert gone(before["hive"])
    assert "stopped the local queen and its hives" in rotated.stderr


def test_rotate_secret_without_a_queen_says_when_the_keeper_token_is_written(
    local: Path, invoke: Invoke
) -> None:
    rotated = invoke("queen", "rotate-secret")
    assert rotated.exit_code == 0, rotated.stderr
    token = local / "queen" / "keeper.token"
    assert not token.exists()
    assert f"a copy of the new {token} (the queen writes it when it starts)" in " ".join(
        rotated.stderr.split()
    )


def test_the_queen_does_not_get_the_keepers_token(
    local: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rbee_keeper.services import Service, spawn

    monkeypatch.setenv("RBEE_TOKEN", "rbee_k_the_keepers_own")
    monkeypatch.setenv("RBEE_TOKEN_FILE", str(tmp_path / "keeper.token"))
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    service = Service("queen", sleeper, "http://127.0.0.1:1", local / "q.pid", local / "q.log")
    record, fresh = spawn(service)
    try:
        assert fresh
        environ = dict(
            item.partition(b"=")[::2]
            for item in Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
        )
        assert environ.get(b"RBEE_TOKEN", b"") == b""
        assert environ.get(b"RBEE_TOKEN_FILE", b"") == b""
        assert b"rbee_k_the_keepers_own" not in b"".join(environ.values())
    finally:
        rbee_process.terminate(record, grace=0.1)


def test_a_local_queen_at_another_address_is_named_not_waited_for(
    local: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = load_settings().queen_url.rsplit(":", 1)[1]
    elsewhere = f"http://127.0.0.2:{port}"
    assert invoke("queen", "start", RBEE_QUEEN_URL=elsewhere).exit_code == 0
    try:
        queen_pid = pids(local)["queen"]
        for args in (("queen", "start"), ("infer", "hi", "-m", "tiny")):
            result = invoke(*args)
            assert result.exit_code == 3, result.stderr
            said = " ".join(result.stderr.split())
            assert f"the local queen (pid {queen_pid}) runs at {elsewhere}, not at" in said
            assert "set queen_url to it, or `rbee queen stop` it first" in said
            assert "queen is starting" not in said and "did not answer" not in said
        assert pids(local)["queen"] == queen_pid
    finally:
        assert invoke("queen", "stop").exit_code == 0
    assert pids(local) == {}


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_infer_starts_a_local_hive_that_died(local: Path, invoke: Invoke) -> None:
    assert invoke("queen", "start").exit_code == 0
    try:
        before = pids(local)
        _kill(before["hive"])
        result = invoke("infer", "hi", "-m", "tiny")
        assert result.exit_code == 0, result.stderr
        assert "started hive 'localhost'" in result.stderr
        after = pids(local)
        assert after["queen"] == before["queen"] and after["hive"] != before["hive"]
        assert not gone(after["hive"])
        # a hive the job does not use is left alone
        _kill(after["hive"])
        other = invoke("infer", "hi", "-m", "tiny", "--hive", "elsewhere")
        assert "started hive" not in other.stderr
    finally:
        assert invoke("queen", "stop").exit_code == 0


def test_infer_after_the_queen_died_asks_it_for_the_live_hive_first(
    local: Path, invoke: Invoke
) -> None:
    # The queen's hive_start of a live hive waits until it has registered again
    # (rbee_queen.hives), so the job that follows finds it.
    assert invoke("queen", "start").exit_code == 0
    try:
        before = pids(local)
        _kill(before["queen"])
        result = invoke("infer", "hi", "-m", "tiny")
        assert result.exit_code == 0, result.stderr
        assert "started queen" in result.stderr
        assert f"hive 'localhost' already running (pid {before['hive']})" in result.stderr
    finally:
        assert invoke("queen", "stop").exit_code == 0


def test_the_hive_url_has_the_scheme_the_hive_serves(
    local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = load_settings().hive_port
    assert local_services(load_settings())[1].url == f"http://127.0.0.1:{port}"
    tls = f"{sys.executable} {FAKE} --tls-cert /c.pem --tls-key /k.pem"
    monkeypatch.setenv("RBEE_QUEEN_COMMAND", tls)
    assert local_services(load_settings())[1].url == f"http://127.0.0.1:{port}"  # loopback
    monkeypatch.setenv("RBEE_HIVE_HOST", "0.0.0.0")
    assert local_services(load_settings())[1].url == f"https://0.0.0.0:{port}"
    # a running hive: what it was started with
    monkeypatch.setenv("RBEE_QUEEN_COMMAND", f"{sys.executable} {FAKE}")
    hive_pid_file = local_layout.hive_pid_file(local / "queen", "localhost")
    record, _ = rbee_process.start_once(
        hive_pid_file,
        (sys.executable, "-c", "import time; time.sleep(60)", "--tls-cert=/c.pem"),
        log_path=local / "hive.log",
        label="hive",
    )
    try:
        assert local_services(load_settings())[1].url == f"https://0.0.0.0:{port}"
    finally:
        rbee_process.terminate(record, grace=0.1)

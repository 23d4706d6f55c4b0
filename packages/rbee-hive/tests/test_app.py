"""The ``rbee-hive`` command end to end (a real process), settings, pid-file cleanup."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import rbee_process
from jobproto.client import JobClient
from rbee_contracts.auth import worker_token
from rbee_hive.app import main
from rbee_hive.reaping import pid_file_path, reap_leftovers
from rbee_hive.settings import HiveSettings
from rbee_hive.supervisor import Supervisor
from rbee_process import ProcessRecord, write_pid_file

Settings = Callable[..., HiveSettings]

WORKER_FIELDS = {
    "worker_id", "model", "engine", "url", "pid", "state", "restarts", "started_at", "last_exit",
}  # fmt: skip


HIVE_TOKEN = "rbee_h_" + "A" * 43  # made up: the hive only compares it
JOIN_TOKEN = "rbee_j_" + "B" * 43


def _proc(pid: int, what: str) -> bytes:
    return Path(f"/proc/{pid}/{what}").read_bytes()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.anyio
async def test_the_command_serves_registers_and_stops_its_workers_on_sigterm(
    tmp_path: Path, fake_queen: Any, model_dir: Path, kit: Any
) -> None:
    """With its tokens from the environment: the queen's token is needed for everything but
    /health, the join token goes with each beat, the worker gets its token in its environment
    (not its command line), and no token reaches a log or the hive's output."""
    join_file = tmp_path / "join.token"
    join_file.write_text(JOIN_TOKEN + "\n")
    join_file.chmod(0o600)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RBEE_")},
        "RBEE_HIVE_TOKEN": HIVE_TOKEN,
        "RBEE_JOIN_TOKEN_FILE": str(join_file),
    }
    async with fake_queen() as (queen_url, queen):
        argv = [
            sys.executable, "-m", "rbee_hive.app", "--port", "0", "--hive-id", "cli-hive",
            "--queen-url", queen_url, "--models-dir", str(tmp_path / "models"),
            "--state-dir", str(tmp_path / "state"), "--heartbeat", "0.2",
            "--worker-command", shlex.join(kit.fake_worker()), "--stop-grace", "2",
            "--model-root", str(model_dir.parent),
        ]  # fmt: skip
        with (tmp_path / "hive.err").open("wb") as err:
            process = await anyio.open_process(argv, stderr=err, start_new_session=True, env=env)
        try:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(60):
                line = (await lines.receive_until(b"\n", 65536)).decode()
            assert line.startswith("RBEE_HIVE_LISTENING ")
            info = json.loads(line.split(" ", 1)[1])
            url = info["url"]
            assert url == f"http://127.0.0.1:{info['port']}"

            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.get("/health")).status_code == 200  # the one public path
                for headers in ({}, {"Authorization": "Bearer rbee_h_wrong"}):
                    for path in ("/v1/jobs", "/v1/hive", "/openapi.json"):
                        refused = await http.get(path, headers=headers)
                        assert refused.status_code == 401, (path, headers)
                        assert refused.json()["error"]["code"] == "unauthorized"
                        assert refused.headers["www-authenticate"] == "Bearer"
                posted = await http.post("/v1/jobs", json={"operation": "worker_list"})
                assert posted.status_code == 401
                # a Host the hive is not reached by (DNS rebinding) is refused before the token
                rebound = await http.get("/v1/jobs", headers={"Host": "evil.example"})
                assert rebound.status_code == 421

            async with JobClient(url, token=HIVE_TOKEN) as client:
                await kit.run_job(client, "model_register", name="tiny", path=str(model_dir))
                worker, _ = await kit.run_job(client, "worker_spawn", model="tiny")
            assert set(worker) >= WORKER_FIELDS
            # ready: the hive polled the fake worker's /ready with the token it was given
            assert worker["state"] == "ready"
            environ = _proc(worker["pid"], "environ").split(b"\0")
            own = worker_token(HIVE_TOKEN, worker["worker_id"])  # its own, not the hive's
            assert f"RBEE_WORKER_TOKEN={own}".encode() in environ
            assert not [v for v in environ if HIVE_TOKEN.encode() in v]
            assert not [v for v in environ if v.startswith((b"RBEE_HIVE_TOKEN", b"RBEE_JOIN"))]
            assert HIVE_TOKEN.encode() not in _proc(worker["pid"], "cmdline")
            assert HIVE_TOKEN.encode() not in _proc(process.pid, "cmdline")
            await kit.wait_for(lambda: any(b["workers"] for _, _, b in queen.beats))
            assert queen.beats[0][1] == "cli-hive" and queen.beats[0][2]["url"] == url
            assert set(queen.authorizations) == {f"Bearer {JOIN_TOKEN}"}

            process.send_signal(signal.SIGTERM)  # the hive only: it must stop its workers
            with anyio.fail_after(60):
                # uvicorn re-raises the SIGTERM it caught once shutdown is complete.
                assert await process.wait() in (0, -signal.SIGTERM)
            assert "state stopped" in (tmp_path / "hive.err").read_text()
            assert kit.gone(worker["pid"])
            worker_log = Path(worker["log_path"])
            assert _mode(worker_log) == 0o600 and _mode(worker_log.parent) == 0o700
            for written in (tmp_path / "hive.err", worker_log):
                text = written.read_text()
                assert HIVE_TOKEN not in text and JOIN_TOKEN not in text, written
            assert list((tmp_path / "state" / "run").iterdir()) == []
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            # workers run in sessions of their own: a failed test must not leave one behind
            rbee_process.stop_pid_dir(tmp_path / "state" / "run", grace=1.0)
            await process.aclose()


def test_the_command_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    base = [sys.executable, "-m", "rbee_hive.app", "--port", "0"]
    base += ["--state-dir", str(tmp_path / "state"), "--models-dir", str(tmp_path / "models")]
    for flags in (["--host", "0.0.0.0"], ["--worker-host", "0.0.0.0"]):
        done = subprocess.run(
            [*base, *flags], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, done
        assert "refuses to listen on 0.0.0.0 without a token" in done.stderr
        assert "RBEE_HIVE_TOKEN" in done.stderr and "Traceback" not in done.stderr
    # a token file others can read is refused too, with what to do
    loose = tmp_path / "hive.token"
    loose.write_text(HIVE_TOKEN)
    loose.chmod(0o644)
    done = subprocess.run(
        [*base, "--host", "0.0.0.0"],
        env={**env, "RBEE_HIVE_TOKEN_FILE": str(loose)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "chmod 600" in done.stderr, done
    assert HIVE_TOKEN not in done.stderr


def test_bad_settings_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--hive-id", "no/slashes"])
    assert exc.value.code == 2
    assert "hive_id" in capsys.readouterr().err


def test_settings_defaults() -> None:
    settings = HiveSettings()
    assert settings.port == 9000
    assert settings.hive_id == "localhost"
    assert settings.queen_url is None
    assert settings.heartbeat_interval == 5.0
    assert settings.stop_grace == 10.0
    assert settings.restart_limit == 5
    assert (settings.backoff_initial, settings.backoff_max) == (1.0, 60.0)
    assert settings.ready_timeout == 300.0
    assert settings.worker_command == (sys.executable, "-m", "rbee_worker.app")
    with pytest.raises(ValueError):
        HiveSettings(queen_url="ftp://queen")
    with pytest.raises(ValueError):
        HiveSettings(worker_command=())


def test_workers_left_by_a_killed_hive_are_stopped(make_settings: Settings) -> None:
    settings = make_settings()
    settings.run_dir.mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    leftover = subprocess.Popen(sleeper, start_new_session=True)
    # A pid file whose process started before the recorded time is someone else's (a reused pid).
    stranger = subprocess.Popen(sleeper, start_new_session=True)
    try:
        write_pid_file(
            pid_file_path(settings.run_dir, "old"), ProcessRecord.of(leftover.pid, sleeper)
        )
        path = pid_file_path(settings.run_dir, "reused")
        write_pid_file(path, ProcessRecord.of(stranger.pid, sleeper))
        info = json.loads(path.read_text())
        later = {
            "start_time": time.time() + 3600,
            "start_ticks": (info["start_ticks"] or 0) + 10**6,
        }
        path.write_text(json.dumps(dict(info, **later)))

        reap_leftovers(settings.run_dir, grace=2.0)
        leftover.wait(30)  # gone (psutil reaped it, so its status is not ours to read)
        assert stranger.poll() is None
        assert list(settings.run_dir.iterdir()) == []
    finally:
        for proc in (leftover, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.anyio
async def test_the_supervisor_reaps_leftovers_when_it_starts(make_settings: Settings) -> None:
    settings = make_settings()
    settings.run_dir.mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    leftover = await anyio.open_process(sleeper, start_new_session=True)
    try:
        write_pid_file(
            pid_file_path(settings.run_dir, "old"), ProcessRecord.of(leftover.pid, sleeper)
        )
        async with Supervisor(settings).running():
            with anyio.fail_after(30):
                await leftover.wait()
    finally:
        if leftover.returncode is None:
            leftover.kill()
            await leftover.wait()
        await leftover.aclose()


def fake_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine is ``Box`` (FQDN ``box.lan``) at 192.168.1.10."""

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        if host not in ("Box", "box.lan"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.10", 0))]

    monkeypatch.setattr(socket, "gethostname", lambda: "Box")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "box.lan")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.anyio
async def test_a_hive_bound_to_every_interface_answers_to_this_machines_names_and_addresses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rbee_contracts import auth
    from rbee_hive.app import create_app

    settings = HiveSettings(host="0.0.0.0", models_dir=tmp_path / "m", state_dir=tmp_path / "s")
    with monkeypatch.context() as patch:
        fake_machine(patch)
        assert settings.host_names() == auth.allowed_host_names("0.0.0.0", None)  # one rule
        app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        for host in ("box", "box.lan", "192.168.1.10", "localhost"):
            answer = await http.get(f"http://{host}:9000/health")
            assert answer.status_code == 200, host
        assert (await http.get("http://evil.example:9000/health")).status_code == 421

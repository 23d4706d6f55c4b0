"""Worker supervision with FAKE workers (``fake_worker.py``): spawn, readiness, output, stop,
crash and restart with backoff, shutdown. After every test no process may be left
(the autouse ``no_leftover_processes`` fixture, with psutil)."""

from __future__ import annotations

import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import rbee_hive
import rbee_process
from jobproto import LocalProtocolError, converter
from jobproto.client import JobClient, RemoteJobCancelled, RemoteJobFailed
from jobproto.testing import serving
from rbee_contracts.auth import worker_token
from rbee_contracts.lifecycle import WorkerState
from rbee_contracts.records import parse_worker_record
from rbee_contracts.worker_cli import LISTENING_PREFIX, parse_listening_line
from rbee_hive.app import create_app
from rbee_hive.settings import HiveSettings
from rbee_hive.supervisor import Supervisor, WorkerProcess, WorkerSpec
from rbee_hive.worker_process import TracebackFolder

Settings = Callable[..., HiveSettings]


def _proc(pid: int, what: str) -> bytes:
    return Path(f"/proc/{pid}/{what}").read_bytes()


async def register(h: Any, kit: Any, model_dir: Path) -> None:
    await kit.run_job(h.client, "model_register", name="tiny", path=str(model_dir))


@pytest.mark.anyio
async def test_spawn_ready_list_stop(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(worker_command=kit.fake_worker("--fake-ready-after", "0.3"))
    async with start_hive(settings) as h:
        await register(h, kit, model_dir)
        worker, events = await kit.run_job(
            h.client,
            "worker_spawn",
            model="tiny",
            worker_id="w1",
            engine="synthetic",
            device="cpu",
            max_concurrency=2,
            engine_args={"tokens_per_second": "50"},
        )
        assert worker["state"] == "ready"
        assert worker["worker_id"] == "w1"
        assert worker["model"] == "tiny"
        assert worker["engine"] == "fake"  # what /ready said the engine is
        assert worker["restarts"] == 0
        pid = worker["pid"]
        assert not kit.gone(pid)
        # The record is the shared contract's (the queen parses it with the same type).
        assert converter.unstructure(parse_worker_record(worker)) == worker
        # While it runs, its pid file records who it is (rbee_process: pid and start time).
        record = rbee_process.read_pid_file(settings.run_dir / "w1.json")
        assert record is not None and record.pid == pid and record.start_time is not None
        assert record.log_path == str(settings.state_dir / "logs" / "w1.log")

        # The worker's own output arrives as narration on the spawn job...
        output = [n.message for n in kit.narrations(events, "worker_output")]
        assert any(parse_listening_line(line) is not None for line in output)
        assert any("fake worker w1: model " + str(model_dir) in line for line in output)
        argv_line = next(line for line in output if line.startswith("fake worker args:"))
        for part in [
            "--engine synthetic",
            "--port 0",
            "--worker-id w1",
            "--model-name tiny",
            "--device cpu",
            "--max-concurrency 2",
            "--engine-arg tokens_per_second=50",
        ]:
            assert part in argv_line
        stderr = [
            n for n in kit.narrations(events, "worker_output") if n.fields["stream"] == "stderr"
        ]
        assert stderr and all(n.fields["worker_id"] == "w1" for n in stderr)
        # ...start-up progress is reported in seconds against the ready timeout...
        started = kit.progresses(events, "worker_start")
        assert started and started[0].unit == "s" and started[0].total == settings.ready_timeout
        # ...and every line is in the worker's log file.
        log = (settings.state_dir / "logs" / "w1.log").read_text()
        assert LISTENING_PREFIX in log and "fake worker args:" in log

        async with httpx.AsyncClient() as http:
            assert (await http.get(worker["url"] + "/health")).json() == {"status": "ok"}

        listed, _ = await kit.run_job(h.client, "worker_list")
        assert [w["worker_id"] for w in listed["workers"]] == ["w1"]
        assert listed["workers"][0]["state"] == "ready"

        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w1")
        assert exc.value.code == "worker_exists"

        stopped, _ = await kit.run_job(h.client, "worker_stop", worker_id="w1")
        assert stopped["state"] == "stopped"
        assert stopped["last_exit"] == -15  # SIGTERM
        assert kit.gone(pid)
        assert not (settings.run_dir / "w1.json").exists()
        listed, _ = await kit.run_job(h.client, "worker_list")
        assert listed["workers"] == []

        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "worker_stop", worker_id="w1")
        assert exc.value.code == "worker_not_found"


@pytest.mark.anyio
async def test_stop_kills_the_whole_group_and_sigkills_after_grace(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(
        worker_command=kit.fake_worker("--fake-ignore-term", "--fake-child"), stop_grace=0.5
    )
    async with start_hive(settings) as h:
        await register(h, kit, model_dir)
        worker, events = await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w")
        child_line = next(
            n.message for n in kit.narrations(events, "worker_output") if "child pid" in n.message
        )
        child = int(child_line.rsplit(" ", 1)[1])
        assert not kit.gone(child)
        t0 = time.monotonic()
        stopped, _ = await kit.run_job(h.client, "worker_stop", worker_id="w")
        assert time.monotonic() - t0 >= 0.5  # it ignored SIGTERM: SIGKILL came after the grace
        assert stopped["last_exit"] == -9
        assert kit.gone(worker["pid"])
        assert kit.gone(child)  # the grandchild went with the group


@pytest.mark.anyio
async def test_crash_is_marked_at_once_and_restarted_with_backoff_up_to_the_limit(
    make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(
        worker_command=kit.fake_worker("--fake-ready-after", "0.05", "--fake-crash-after", "0.3"),
        restart_limit=2,
        backoff_initial=0.2,
        backoff_max=0.3,
    )
    supervisor = Supervisor(settings)
    async with supervisor.running():
        worker = supervisor.spawn(WorkerSpec("w", "tiny", model_dir))
        with anyio.fail_after(20):
            await worker.finished.wait()
    changes = list(worker.history)
    states = [state for _, state in changes]
    assert states == [
        "starting", "ready", "restarting",
        "starting", "ready", "restarting",
        "starting", "ready", "failed",
    ]  # fmt: skip
    assert worker.restarts == 2
    assert worker.last_exit == 3
    assert "exited with status 3" in (worker.error or "")
    assert "gave up after 2 restarts" in (worker.error or "")
    # Backoff: restart n waits at least backoff_initial * 2**(n-1), capped at backoff_max (how
    # much longer a loaded machine takes is not the supervisor's to promise).
    times = [t for t, _ in changes]
    assert times[3] - times[2] >= 0.2
    assert times[6] - times[5] >= 0.3  # 0.4, capped at 0.3
    log = worker.log_path.read_text()
    assert log.count("fake worker: crashing on purpose") == 3


@pytest.mark.anyio
async def test_a_worker_whose_pid_file_cannot_be_written_is_ended_and_the_supervisor_goes_on(
    make_settings: Settings, model_dir: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unrecorded, the worker would outlive a killed hive; the error must not take down the
    # supervisor's task group either.
    settings = make_settings(worker_command=kit.fake_worker("--fake-ready-after", "0.05"))
    real = rbee_process.write_pid_file
    refused: list[Path] = []

    def full_disk(path: Path, record: rbee_process.ProcessRecord) -> None:
        if path.stem == "w":
            refused.append(path)
            raise OSError(28, "No space left on device")
        real(path, record)

    monkeypatch.setattr(rbee_process, "write_pid_file", full_disk)
    supervisor = Supervisor(settings)
    async with supervisor.running():
        worker = supervisor.spawn(WorkerSpec("w", "tiny", model_dir))
        with anyio.fail_after(20):
            await worker.finished.wait()
        assert refused and worker.state == WorkerState.FAILED
        assert "pid file" in (worker.error or "") and worker.last_exit == -9
        other = supervisor.spawn(WorkerSpec("w2", "tiny", model_dir))
        with anyio.fail_after(20):
            await supervisor.wait_started(other)
        assert other.state == WorkerState.READY
    assert not list(settings.run_dir.glob("*.json"))


@pytest.mark.anyio
async def test_a_worker_that_never_gets_ready_fails_the_spawn(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    # Only the never-ready case has a short ready timeout: the others must fail for their own
    # reason, however slowly a loaded machine starts the fake worker.
    cases = [
        (
            kit.fake_worker("--fake-exit-early", "7"),
            60.0,
            "exited with status 7 before it was ready",
        ),
        (kit.fake_worker("--fake-fail-load"), 60.0, "failed to load: fake load failure"),
        (kit.fake_worker("--fake-ready-after", "60"), 0.6, "not ready within 0.6 s"),
        (("/nonexistent/worker-binary",), 60.0, "could not start"),
    ]
    for i, (command, ready_timeout, message) in enumerate(cases):
        settings = make_settings(worker_command=command, ready_timeout=ready_timeout)
        async with start_hive(settings) as h:
            if i == 0:
                await register(h, kit, model_dir)
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w")
            assert exc.value.code == "worker_failed"
            assert message in exc.value.message
            assert "w.log" in exc.value.message
            # A first start that fails is not retried: the worker is left failed, visible.
            listed, _ = await kit.run_job(h.client, "worker_list")
            (record,) = listed["workers"]
            assert record["state"] == "failed" and record["restarts"] == 0
            assert record["pid"] is None
            # Stopping a failed worker removes it.
            await kit.run_job(h.client, "worker_stop", worker_id="w")


@pytest.mark.anyio
async def test_a_traceback_a_worker_prints_is_told_in_one_line_and_kept_in_its_log(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(worker_command=kit.fake_worker("--fake-traceback", "--fake-fail-load"))
    events: list[Any] = []
    async with start_hive(settings) as h:
        await register(h, kit, model_dir)
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "worker_spawn", events.append, model="tiny", worker_id="w")
    assert exc.value.code == "worker_failed"
    told = [n.message for n in kit.narrations(events)]
    assert "[traceback in the worker's log] ValueError: fake load failure in a frame" in told
    for message in [*told, exc.value.message]:
        assert "Traceback" not in message and 'File "' not in message, message
        assert "fake_worker.py" not in message, message
    log = (settings.logs_dir / "w.log").read_text()
    assert "Traceback (most recent call last):" in log and "fake_worker.py" in log


def test_traceback_folder_tells_one_line_per_exception() -> None:
    printed = [
        "loading the model failed: OSError: no weights",
        "Traceback (most recent call last):",
        '  File "/srv/rbee/engines/x.py", line 3, in load',
        "    open(path)",
        "FileNotFoundError: [Errno 2] no weights",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/srv/rbee/worker.py", line 9, in _load',
        "OSError: no weights",
        "a line after it",
        "  + Exception Group Traceback (most recent call last):",
        '  |   File "/srv/rbee/app.py", line 1, in main',
        "  | ExceptionGroup: unhandled errors (1 sub-exception)",
        "  +-+---------------- 1 ----------------",
        "    | ValueError: x",
        "the next line",
    ]
    folder = TracebackFolder()
    told = [line for text in printed for line in folder.feed(text)]
    assert told == [
        "loading the model failed: OSError: no weights",
        "[traceback in the worker's log] FileNotFoundError: [Errno 2] no weights",
        "[traceback in the worker's log] OSError: no weights",
        "a line after it",
        "[traceback in the worker's log] an exception group",
        "the next line",
    ]


def test_a_traceback_summary_hides_the_paths_of_rbee_and_python_but_not_the_users(
    tmp_path: Path,
) -> None:
    site_file = Path(sysconfig.get_paths()["purelib"]) / "transformers" / "configuration.py"
    stdlib_file = Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py"
    source_file = Path(rbee_hive.__file__).parent / "models.py"
    venv_file = Path(sys.prefix) / "bin" / "python"
    model = tmp_path / "my model"
    exception = (
        f"OSError: no config.json in '{model}' (tried '{site_file}', {stdlib_file}:12,"
        f" [{source_file}] and {venv_file}=1)"
    )
    folder = TracebackFolder()
    assert folder.feed("Traceback (most recent call last):") == []
    assert folder.feed(f'  File "{site_file}", line 3, in load') == []
    (told,) = folder.feed(exception)
    assert told == (
        f"[traceback in the worker's log] OSError: no config.json in '{model}'"
        " (tried '…', …:12, […] and …=1)"
    )


@pytest.mark.anyio
async def test_a_hive_with_a_token_gives_it_to_its_workers_and_asks_it_of_callers(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    token = "rbee_h_" + "C" * 43
    settings = make_settings(token=token)
    assert token not in repr(settings)
    async with start_hive(settings) as h:
        async with httpx.AsyncClient(base_url=h.url) as http:
            assert (await http.get("/health")).status_code == 200
            for headers in ({}, {"Authorization": "Bearer " + "C" * 50}):
                answer = await http.post(
                    "/v1/jobs", json={"operation": "worker_list"}, headers=headers
                )
                assert answer.status_code == 401
                assert answer.json()["error"]["code"] == "unauthorized"
                assert token not in answer.text
            info = await http.get("/v1/hive", headers={"Authorization": f"Bearer {token}"})
            assert info.status_code == 200
        await register(h, kit, model_dir)
        # the fake worker answers /ready only to its token: ready means the hive presented it
        worker, events = await kit.run_job(h.client, "worker_spawn", model="tiny")
        assert worker["state"] == "ready"
        cmdline = _proc(worker["pid"], "cmdline")
        environ = _proc(worker["pid"], "environ").split(b"\0")
        # its own token, derived from the hive's: the hive's token is not in its environment
        own = worker_token(token, worker["worker_id"])
        assert f"RBEE_WORKER_TOKEN={own}".encode() in environ
        assert not [v for v in environ if token.encode() in v]
        assert token.encode() not in cmdline and own.encode() not in cmdline
        assert not [e for e in events if token in str(e)]
        await kit.run_job(h.client, "worker_stop", worker_id=worker["worker_id"])
    assert token not in (settings.logs_dir / f"{worker['worker_id']}.log").read_text()


@pytest.mark.anyio
async def test_a_hive_with_a_certificate_serves_https_and_verifies_its_queen_and_workers(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    queen = FakeTlsQueen()
    async with serving(queen.app(), ssl_certfile=cert, ssl_keyfile=key) as queen_url:
        settings = make_settings(
            queen_url=queen_url, tls_cert=cert, tls_key=key, tls_ca=ca_file, join_token="j" * 20
        )
        app = create_app(settings)
        async with serving(app, ssl_certfile=cert, ssl_keyfile=key) as url:
            assert url.startswith("https://")
            hive = app.state.hive
            hive.advertise(int(url.rsplit(":", 1)[1]))
            assert hive.url == url
            async with JobClient(url, verify=str(ca_file)) as client:
                await kit.run_job(client, "model_register", name="tiny", path=str(model_dir))
                # ready: the hive polled the worker over HTTPS, against its own certificate
                worker, _ = await kit.run_job(client, "worker_spawn", model="tiny")
                assert worker["state"] == "ready" and worker["url"].startswith("https://127.0.0.1:")
                await kit.run_job(client, "worker_stop", worker_id=worker["worker_id"])
            # beats reached the queen over TLS verified with --tls-ca, with the join token
            await kit.wait_for(lambda: bool(queen.beats))
            assert queen.beats[0] == ("Bearer " + "j" * 20, url)


class FakeTlsQueen:
    def __init__(self) -> None:
        self.beats: list[tuple[str | None, str]] = []

    def app(self) -> Starlette:
        async def put_hive(request: Request) -> JSONResponse:
            body = await request.json()
            self.beats.append((request.headers.get("authorization"), body["url"]))
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/v1/hives/{hive_id}", put_hive, methods=["PUT"])])


@pytest.mark.anyio
async def test_spawn_of_an_unknown_model_fails(
    start_hive: Any, make_settings: Settings, kit: Any
) -> None:
    async with start_hive(make_settings()) as h:
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "worker_spawn", model="nothing")
        assert exc.value.code == "model_not_found"


@pytest.mark.anyio
async def test_cancelling_the_spawn_job_stops_the_worker(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(worker_command=kit.fake_worker("--fake-ready-after", "60"))
    async with start_hive(settings) as h:
        await register(h, kit, model_dir)
        created = await h.client.create("worker_spawn", model="tiny", worker_id="w")
        pid = None
        async for item in h.client.events(created.job_id):
            if getattr(item.event, "action", None) == "worker_start":
                pid = h.hive.supervisor.get("w").pid
                await h.client.cancel(created.job_id)
            if getattr(item, "terminal", False):
                break
        assert pid is not None
        with pytest.raises(RemoteJobCancelled):
            await _result(h.client, created.job_id)
        assert kit.gone(pid)
        assert h.hive.supervisor.list_workers() == []


async def _result(client: Any, job_id: str) -> Any:
    status = await client.status(job_id)
    if status.state == "cancelled":
        raise RemoteJobCancelled("cancelled", "", job_id=job_id)
    return status.result


@pytest.mark.anyio
async def test_model_in_use_is_not_deleted(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    async with start_hive(make_settings()) as h:
        await register(h, kit, model_dir)
        await kit.run_job(h.client, "worker_spawn", model="tiny", worker_id="w")
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_delete", name="tiny")
        assert exc.value.code == "model_in_use"
        await kit.run_job(h.client, "worker_stop", worker_id="w")
        await kit.run_job(h.client, "model_delete", name="tiny")


@pytest.mark.anyio
async def test_hive_shutdown_stops_every_worker(
    start_hive: Any, make_settings: Settings, model_dir: Path, kit: Any
) -> None:
    settings = make_settings(worker_command=kit.fake_worker("--fake-child"), stop_grace=0.5)
    pids = []
    async with start_hive(settings) as h:
        await register(h, kit, model_dir)
        for worker_id in ("a", "b", "c"):
            worker, _ = await kit.run_job(
                h.client, "worker_spawn", model="tiny", worker_id=worker_id
            )
            pids.append(worker["pid"])
        assert not any(kit.gone(pid) for pid in pids)
    assert all(kit.gone(pid) for pid in pids)
    assert list((settings.state_dir / "run").iterdir()) == []  # pid files removed


@pytest.mark.anyio
async def test_worker_states_move_only_through_the_lifecycle_table(
    make_settings: Settings, model_dir: Path
) -> None:
    worker = WorkerProcess(WorkerSpec("w", "tiny", model_dir), model_dir / "w.log", lambda: None)
    worker.set_state(WorkerState.READY)
    worker.set_state(WorkerState.READY, error="noted, not a move")  # staying put is no move
    with pytest.raises(LocalProtocolError):
        worker.set_state(WorkerState.STARTING)  # ready -> starting is not in the table
    worker.set_state(WorkerState.RESTARTING)
    worker.set_state(WorkerState.STARTING)
    worker.set_state(WorkerState.STOPPED)
    with pytest.raises(LocalProtocolError):
        worker.set_state(WorkerState.READY)  # stopped is the end
    changes = [state for _, state in worker.history]
    assert changes == ["starting", "ready", "restarting", "starting", "stopped"]
    assert worker.error == "noted, not a move"

"""The reference server of the conformance suite: its command line, signals and shutdown."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from jobproto.conformance._model import JobRecord, View
from jobproto.conformance._probe import StreamEvent
from jobproto.conformance._server import ServerProcess, ThreadedServer
from jobproto.conformance._streams import follow, open_stream

pytestmark = pytest.mark.conformance


def _create(http: httpx.Client, body: dict[str, object]) -> JobRecord:
    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    return JobRecord(out["job_id"], body, out["correlation_id"], 0)


def _wait_job(http: httpx.Client) -> JobRecord:
    return _create(http, {"operation": "wait", "seconds": 30, "tick": 0.1})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_streams_and_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    server = ServerProcess.spawn(["--keepalive-interval", "0.2"], tmp_path)
    try:
        assert f"listening on {server.url}" in server.log_path.read_text()
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            job = _wait_job(http)
            view = View(job)
            with open_stream(http, job) as stream:
                view.add(stream.read(1)[0])
                server.process.send_signal(sig)
                # The stream ends without its terminal event (the job would run 30 s and end
                # with one: a server that waited for it, not ending the stream, is caught).
                for item in stream.read():
                    view.add(item)
                assert not view.finished
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_the_port_file_and_flags(tmp_path: Path) -> None:
    server = ServerProcess.spawn(["--max-log-events", "64", "--start-mode", "immediate"], tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            r = http.post("/v1/jobs", json={"operation": "echo"})
            assert r.json()["state"] == "running"  # --start-mode immediate took effect
    finally:
        assert server.stop() == 0


def test_bad_flags_exit_with_usage(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        ServerProcess.spawn(["--max-log-events", "0"], tmp_path, timeout=20)


def test_the_threaded_server_stops_with_streams_open() -> None:
    server = ThreadedServer()
    url = server.start()
    with httpx.Client(base_url=url, timeout=10.0) as http:
        job = _wait_job(http)
        with open_stream(http, job) as stream:
            stream.read(1)
            server.stop()
            # Ended cleanly, without a terminal event (§4.9), and without the narration of the
            # 30 s job's ticks (a stop that waited for the job would have let them through).
            assert stream.read() == []


def test_parameters_too_deep_to_encode_as_a_result_are_refused(tmp_path: Path) -> None:
    """Parameters nested deeper than a result or an event can be encoded (echo's result) are
    refused at create, with 400 (§8), and the service keeps serving. Run on a server of its own:
    a service that breaks here is dead."""
    server = ServerProcess.spawn([], tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            deep: list[object] = []
            for _ in range(900):  # valid JSON, parsed fine; too deep to convert recursively
                deep = [deep]
            r = http.post("/v1/jobs", json={"operation": "echo", "result": deep})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_json"
            after = _create(http, {"operation": "echo", "messages": ["still here"]})
            view = View(after)
            follow(http, view, timeout=10.0)
            assert [i.type for i in view.items if isinstance(i, StreamEvent)][-1] == "succeeded"
    finally:
        server.stop()


def test_a_server_with_a_token_file_refuses_requests_without_it(tmp_path: Path) -> None:
    token = "conformance_" + "t0k" * 10
    server = ServerProcess.spawn([], tmp_path, token=token)
    try:
        assert (tmp_path / "token").stat().st_mode & 0o077 == 0
        # by file, never on the command line (another user can read ``ps``)
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert b"--token-file" in cmdline and token.encode() not in cmdline
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            r = http.get("/v1/jobs")
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            r = http.get("/v1/jobs", headers={"Authorization": "Bearer " + token[:-1]})
            assert r.status_code == 401
            r = http.get("/v1/jobs", headers={"Authorization": "Bearer " + token})
            assert r.status_code == 200
    finally:
        assert server.stop() == 0
    assert token not in server.log_path.read_text()


def test_the_token_comes_from_the_file_else_the_environment(tmp_path: Path) -> None:
    from jobproto.conformance._server import TOKEN_ENV, token_from

    path = tmp_path / "token"
    path.write_text("  from-file\n")
    assert token_from(path, {TOKEN_ENV: "from-env"}) == "from-file"
    assert token_from(None, {TOKEN_ENV: "from-env"}) == "from-env"
    assert token_from(None, {TOKEN_ENV: ""}) is None
    assert token_from(None, {}) is None
    path.write_text("\n")
    with pytest.raises(ValueError, match="no token"):
        token_from(path, {})


def test_the_threaded_server_with_a_token() -> None:
    server = ThreadedServer(token="threaded-token")
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            assert http.get("/v1/jobs").status_code == 401
            ok = http.get("/v1/jobs", headers={"Authorization": "Bearer threaded-token"})
            assert ok.status_code == 200
    finally:
        server.stop()

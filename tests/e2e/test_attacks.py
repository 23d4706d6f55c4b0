"""The attacks of issue 10's "What was seen", each against the real queen, hive and worker.

Every case was reproduced as an attacker on the same machine would do it; each test here does the
same and asserts the safe outcome. The cluster is the e2e session's (``rbee queen start``, as the
README does); the tokens are derived from the queen's secret file with ``rbee_contracts.auth``,
as the queen itself derives them.

The last test greps every token in every log file of the cluster, in all the narration and every
response body these tests saw, and in the argument list of every process of the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest

from jobproto import JobEvent
from jobproto.client import JobClient
from rbee_contracts import auth

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOCAL_HIVE = "localhost"
#: a hive id nobody runs
ROGUE = "rogue"
#: an address no hive reports (TEST-NET-1, RFC 5737)
ELSEWHERE = "192.0.2.77"


@dataclass
class Seen:
    """Everything the attacks got back (response bodies, narration): grepped for tokens last."""

    texts: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        self.texts.append(text)
        return text


@dataclass
class Tokens:
    secret: bytes
    keeper: str
    join: str  # the local hive's join token
    hive: str  # the token the local hive and its workers accept

    def all(self) -> dict[str, str]:
        return {
            "keeper": self.keeper,
            "join": self.join,
            "hive": self.hive,
            "secret": self.secret.hex(),
            f"join({ROGUE})": auth.join_token(self.secret, ROGUE),
        }


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


def _secret_file(root: Path) -> Path:
    """The queen's secret: ``{queen_state_dir}/secret`` (the session's queen runs with
    ``--state-dir {root}/queen-state``)."""
    expected = root / "queen-state" / auth.SECRET_FILE
    if expected.exists():
        return expected
    found = sorted(root.rglob(auth.SECRET_FILE))
    assert found, f"the queen wrote no secret file under {root} (expected {expected})"
    return found[0]


@pytest.fixture(scope="module")
def tokens(cluster: Any) -> Tokens:
    path = _secret_file(cluster.root)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"{path} has mode {mode:04o}"
    secret = auth.load_or_create_secret(path)
    return Tokens(
        secret=secret,
        keeper=auth.keeper_token(secret),
        join=auth.join_token(secret, LOCAL_HIVE),
        hive=auth.hive_token(secret, LOCAL_HIVE),
    )


def request(
    seen: Seen,
    method: str,
    url: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> httpx.Response:
    """One plain HTTP request (no client of rbee's); its body is kept in ``seen``."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"headers": sent, "timeout": 30}
    if body is not None:
        kwargs["json"] = body
    if method == "GET" and url.endswith("/stream"):
        # a stream answers its headers at once and then stays open: read the status only
        with httpx.stream(method, url, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                seen.add(response.text)
            return response
    response = httpx.request(method, url, **kwargs)
    seen.add(response.text)
    return response


def error_code(response: httpx.Response) -> str:
    """The ``code`` of jobproto's error shape ``{"error": {"code", "message"}}``."""
    body = response.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert error_code(response) == "unauthorized"
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def run_job(
    seen: Seen, url: str, token: str, operation: str, fields: dict[str, Any]
) -> tuple[str, Any, str | None]:
    """Run a job with jobproto's client; ``(state, result, error message)``; every event's
    text goes to ``seen``."""

    async def go() -> tuple[str, Any, str | None]:
        async with JobClient(url, token=token, timeout=60) as client:
            created = await client.create(operation, fields)
            state, result, message = "running", None, None
            async for event in client.events(created.job_id):
                seen.add(repr(event))
                if isinstance(event, JobEvent) and event.terminal:
                    state = event.type
                    result = getattr(event.event, "result", None)
                    message = getattr(event.event, "message", None) or getattr(
                        event.event, "reason", None
                    )
            return state, result, message

    return anyio.run(go)


def stop_workers(cluster: Any, tokens: Tokens, seen: Seen, model: str) -> None:
    """Stop every worker of ``model`` (clean-up, through the queen)."""
    state, listed, _ = run_job(seen, cluster.queen_url, tokens.keeper, "worker_list", {})
    for worker in (listed or {}).get("workers", []) if state == "succeeded" else []:
        if worker["model"] == model:
            run_job(
                seen,
                cluster.queen_url,
                tokens.keeper,
                "worker_stop",
                {"worker_id": worker["worker_id"]},
            )


def heartbeat(url: str, workers: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"url": url, "workers": workers, "models": ["bait"], **more}


def ready_worker(url: str, model: str = "bait") -> dict[str, Any]:
    return {"worker_id": "w-rogue", "model": model, "state": "ready", "engine": "x", "url": url}


@contextlib.contextmanager
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A socket on loopback that records every connection made to it (the attacker's worker):
    ``(url, what each connection sent)``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    got: list[bytes] = []
    stop = False

    def accept() -> None:
        while not stop:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    got.append(conn.recv(65536))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", got
    finally:
        stop = True
        thread.join(5)
        sock.close()


def hives(cluster: Any, tokens: Tokens, seen: Seen) -> dict[str, Any]:
    response = request(seen, "GET", cluster.queen_url + "/v1/hives", token=tokens.keeper)
    assert response.status_code == 200, response.text
    return {h["hive_id"]: h for h in response.json()["hives"]}


# -- prompt hijack: a rogue hive -------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["none", "wrong"])
def test_a_rogue_hive_without_a_valid_token_is_refused_and_never_routed_to(
    cluster: Any, tokens: Tokens, seen: Seen, credential: str
) -> None:
    token = None if credential == "none" else "rbee_j_" + "A" * 43
    with listener() as (bait_url, connections):
        beat = heartbeat(bait_url, [ready_worker(bait_url)], heartbeat_interval=1.0)
        put = request(seen, "PUT", f"{cluster.queen_url}/v1/hives/{ROGUE}", token=token, body=beat)
        assert_unauthorized(put)
        assert ROGUE not in hives(cluster, tokens, seen)
        # the model only the rogue hive claimed: no hive has it, and nobody contacts the bait
        state, _, message = run_job(
            seen, cluster.queen_url, tokens.keeper, "infer", {"model": "bait", "prompt": "secret"}
        )
        assert state == "failed", message
        # taking the real hive's id fails the same way
        takeover = heartbeat(bait_url, [ready_worker(bait_url, "tiny")])
        put = request(
            seen, "PUT", f"{cluster.queen_url}/v1/hives/{LOCAL_HIVE}", token=token, body=takeover
        )
        assert_unauthorized(put)
        assert hives(cluster, tokens, seen)[LOCAL_HIVE]["url"] == cluster.hive_url
        assert connections == [], "the queen contacted an address no authenticated hive reported"
    # nothing the rogue sent makes the queen's hive-wide operations need a hive
    state, result, message = run_job(seen, cluster.queen_url, tokens.keeper, "model_list", {})
    assert state == "succeeded", message
    assert "tiny" in json.dumps(result)


def test_another_hives_credential_cannot_take_an_id(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    """The rogue's own join token (valid, for hive ``rogue``) and the keeper's token cannot
    register as the real ``localhost``, nor the real hive's join token as another hive."""
    with listener() as (bait_url, connections):
        takeover = heartbeat(bait_url, [ready_worker(bait_url, "tiny")])
        # a join token the queen never issued to a hive it knows: no credential at all
        put = request(
            seen,
            "PUT",
            f"{cluster.queen_url}/v1/hives/{LOCAL_HIVE}",
            token=auth.join_token(tokens.secret, ROGUE),
            body=takeover,
        )
        assert put.status_code in (401, 403), put.text
        # the keeper's token: a valid credential, but not this hive's
        put = request(
            seen,
            "PUT",
            f"{cluster.queen_url}/v1/hives/{LOCAL_HIVE}",
            token=tokens.keeper,
            body=takeover,
        )
        assert put.status_code == 403, put.text
        assert error_code(put) in {"forbidden", "hive_id_taken"}
        # the real hive's join token for another id
        put = request(
            seen,
            "PUT",
            f"{cluster.queen_url}/v1/hives/{ROGUE}",
            token=tokens.join,
            body=heartbeat(bait_url, [ready_worker(bait_url)]),
        )
        assert put.status_code == 403, put.text
        assert error_code(put) in {"forbidden", "hive_id_taken"}
        known = hives(cluster, tokens, seen)
        assert ROGUE not in known
        assert known[LOCAL_HIVE]["url"] == cluster.hive_url
        assert connections == []


def test_registration_values_are_bounded(cluster: Any, tokens: Tokens, seen: Seen) -> None:
    """With the real hive's join token: an absurd heartbeat interval, and a worker on another
    address than the hive's, are refused with a 422 naming the field; the hive stays as it was."""
    token = tokens.join
    url = f"{cluster.queen_url}/v1/hives/{LOCAL_HIVE}"
    put = request(
        seen,
        "PUT",
        url,
        token=token,
        body=heartbeat("http://127.0.0.1:9", [], heartbeat_interval=1e300),
    )
    assert put.status_code == 422, put.text
    assert "heartbeat_interval" in put.text
    elsewhere = heartbeat("http://127.0.0.1:9", [ready_worker(f"http://{ELSEWHERE}:80")])
    put = request(seen, "PUT", url, token=token, body=elsewhere)
    assert put.status_code == 422, put.text
    assert "workers[0].url" in put.text
    hive = hives(cluster, tokens, seen)[LOCAL_HIVE]
    assert hive["url"] == cluster.hive_url and hive["heartbeat_interval"] < 300, hive


def test_a_join_token_cannot_move_its_hive_elsewhere(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    """With the real hive's join token: a URL on an address the heartbeat does not come from is
    403 ``hive_address_mismatch``; one on the address it comes from, but another host than the
    hive registered with (a second machine running the same id), is 403 ``hive_address_changed``.
    The hive keeps its URL and the queen sends nothing to either address."""
    url = f"{cluster.queen_url}/v1/hives/{LOCAL_HIVE}"
    put = request(seen, "PUT", url, token=tokens.join, body=heartbeat(f"http://{ELSEWHERE}:80", []))
    assert put.status_code == 403, put.text
    assert error_code(put) == "hive_address_mismatch"
    # another loopback address of this machine stands for a second machine
    other = "127.0.0.2"
    with socket.socket() as probe:
        probe.bind((other, 0))
        port = probe.getsockname()[1]
        transport = httpx.HTTPTransport(local_address=other)
        with httpx.Client(transport=transport, timeout=30) as client:
            put = client.put(
                url,
                json=heartbeat(f"http://{other}:{port}", []),
                headers={"Authorization": f"Bearer {tokens.join}"},
            )
        seen.add(put.text)
    assert put.status_code == 403, put.text
    assert error_code(put) == "hive_address_changed"
    assert hives(cluster, tokens, seen)[LOCAL_HIVE]["url"] == cluster.hive_url


# -- no authentication anywhere --------------------------------------------------------------------


def test_hive_start_cannot_aim_a_local_hive_elsewhere(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    """With the keeper's token: a local hive told to report to another address (the attacker's
    listener on loopback) is refused before it starts, and so is a models directory of ``/``
    (judged on the machine the hive would run on: this one)."""
    with listener() as (bait_url, connections):
        state, _, message = run_job(
            seen,
            cluster.queen_url,
            tokens.keeper,
            "hive_start",
            {"hive": "aimed", "port": 0, "queen_url": bait_url},
        )
        assert state == "failed" and "queen_url" in str(message), message
        assert connections == [], "a hive sent its join token to the attacker's address"
    assert "aimed" not in hives(cluster, tokens, seen)
    state, _, message = run_job(
        seen,
        cluster.queen_url,
        tokens.keeper,
        "hive_start",
        {"hive": "rooted", "port": 0, "models_dir": "/"},
    )
    assert state == "failed" and "models_dir" in str(message), message
    assert "rooted" not in hives(cluster, tokens, seen)


def test_a_failed_hive_start_narrates_no_traceback(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    """A local hive that cannot bind (the local hive's port is taken) fails the job with its
    error in one line: no traceback, no path of rbee's own code."""
    port = int(cluster.hive_url.rsplit(":", 1)[1])
    before = len(seen.texts)
    state, _, message = run_job(
        seen, cluster.queen_url, tokens.keeper, "hive_start", {"hive": "busy", "port": port}
    )
    events = seen.texts[before:]
    assert state == "failed", message
    told = "\n".join(events)
    assert "Traceback" not in told and 'File "' not in told, told
    assert "/site-packages/" not in str(message) and "/src/" not in str(message), message
    assert "address already in use" in str(message) and "hive-busy.log" in str(message), message


def test_health_is_public_and_says_nothing_of_what_runs(cluster: Any, seen: Seen) -> None:
    """``/health`` answers without a token on the queen and on the hive, and names no hive of
    the queen's (a caller without a token learns "up" and the version)."""
    health = request(seen, "GET", cluster.queen_url + "/health")
    assert health.status_code == 200, health.text
    assert set(health.json()) == {"status", "version"}
    assert health.json()["status"] == "ok"
    hive = request(seen, "GET", cluster.hive_url + "/health")
    assert hive.status_code == 200, hive.text


def test_jobs_at_the_queen_need_the_keeper_token(cluster: Any, tokens: Tokens, seen: Seen) -> None:
    """List, status, stream and cancel: 401 without the token (and with a hive's token), the same
    answer for a job that exists and one that does not; the job is untouched."""
    created = request(
        seen,
        "POST",
        cluster.queen_url + "/v1/jobs",
        token=tokens.keeper,
        body={"operation": "status"},
    )
    assert created.status_code == 201, created.text
    job = created.json()["job_id"]
    unknown = "job_" + "0" * 32
    answers = []
    for token in (None, tokens.hive, tokens.join):
        response = request(seen, "GET", cluster.queen_url + "/v1/jobs", token=token)
        assert response.status_code in (401, 403), response.text
        for job_id in (job, unknown):
            for method, path in (
                ("GET", f"/v1/jobs/{job_id}"),
                ("GET", f"/v1/jobs/{job_id}/stream"),
                ("DELETE", f"/v1/jobs/{job_id}"),
            ):
                response = request(seen, method, cluster.queen_url + path, token=token)
                if token is None:
                    assert_unauthorized(response)
                else:
                    assert response.status_code in (401, 403), response.text
                answers.append((token, method, path.replace(job_id, "ID"), response.text))
    # an existing job and an unknown one get byte-for-byte the same refusal
    by_request: dict[tuple[Any, ...], set[str]] = {}
    for token, method, path, text in answers:
        by_request.setdefault((token, method, path), set()).add(text)
    assert all(len(texts) == 1 for texts in by_request.values()), by_request
    response = request(seen, "POST", cluster.queen_url + "/v1/jobs", body={"operation": "status"})
    assert_unauthorized(response)
    status = request(seen, "GET", f"{cluster.queen_url}/v1/jobs/{job}", token=tokens.keeper)
    assert status.status_code == 200 and status.json()["state"] == "queued", status.text


@pytest.fixture(scope="module")
def synthetic_worker(cluster: Any, tokens: Tokens, seen: Seen) -> Iterator[dict[str, Any]]:
    """A synthetic worker of a model of this module's own (so no other module's infer lands on
    it): long outputs, as fast as it goes."""
    model = "attack-model"
    target = cluster.models_dir / model
    shutil.copytree(cluster.tiny, target)
    # a directory in the models directory is a model of the hive: no registration
    state, listed, message = run_job(seen, cluster.queen_url, tokens.keeper, "model_list", {})
    assert state == "succeeded" and model in json.dumps(listed), (message, listed)
    state, record, message = run_job(
        seen,
        cluster.queen_url,
        tokens.keeper,
        "worker_spawn",
        {
            "model": model,
            "engine": "synthetic",
            "engine_args": {"max_model_len": str(1 << 21), "tokens_per_second": "50000"},
        },
    )
    assert state == "succeeded", message
    try:
        yield dict(record)
    finally:
        stop_workers(cluster, tokens, seen, model)
        run_job(seen, cluster.queen_url, tokens.keeper, "model_delete", {"name": model})


def test_hive_and_worker_jobs_need_the_hive_token(
    cluster: Any, tokens: Tokens, seen: Seen, synthetic_worker: dict[str, Any]
) -> None:
    worker_url = synthetic_worker["url"]
    spawn = {"operation": "worker_spawn", "model": "attack-model", "engine": "synthetic"}
    register = {"operation": "model_register", "name": "x", "path": str(cluster.models_dir)}
    infer = {"operation": "infer", "prompt": "hi", "max_tokens": 1}
    for token in (None, "rbee_h_" + "B" * 43, tokens.keeper, tokens.join):
        for url, body in (
            (cluster.hive_url, spawn),
            (cluster.hive_url, register),
            (worker_url, infer),
        ):
            response = request(seen, "POST", url + "/v1/jobs", token=token, body=body)
            assert_unauthorized(response)
            response = request(seen, "GET", url + "/v1/jobs", token=token)
            assert_unauthorized(response)
        response = request(seen, "GET", cluster.hive_url + "/v1/hive", token=token)
        assert_unauthorized(response)
    # with the hive's token, the hive answers
    response = request(seen, "GET", cluster.hive_url + "/v1/jobs", token=tokens.hive)
    assert response.status_code == 200, response.text
    # a worker has its own token: neither its hive's nor another worker's opens it
    own = auth.worker_token(tokens.hive, synthetic_worker["worker_id"])
    for token in (tokens.hive, auth.worker_token(tokens.hive, "another-worker")):
        assert_unauthorized(request(seen, "GET", worker_url + "/v1/jobs", token=token))
    response = request(seen, "GET", worker_url + "/v1/jobs", token=own)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/", "/proc"])
def test_a_directory_outside_the_model_roots_cannot_be_registered(
    cluster: Any, tokens: Tokens, seen: Seen, path: str
) -> None:
    """At the hive (its own token) and through the queen (the keeper's): refused, naming the
    roots; the model does not appear."""
    for url, token in ((cluster.hive_url, tokens.hive), (cluster.queen_url, tokens.keeper)):
        body = {"operation": "model_register", "name": "everything", "path": path}
        response = request(seen, "POST", url + "/v1/jobs", token=token, body=body)
        if response.status_code == 201:
            state, _, message = run_job(
                seen, url, token, "model_register", {"name": "everything", "path": path}
            )
            assert state == "failed", (url, state)
            text = message or ""
        else:
            assert 400 <= response.status_code < 500, response.text
            text = response.text
        assert str(cluster.models_dir.resolve()) in text, text
    state, result, message = run_job(seen, cluster.queen_url, tokens.keeper, "model_list", {})
    assert state == "succeeded", message
    assert "everything" not in json.dumps(result)


# -- Host and Origin -------------------------------------------------------------------------------


def test_a_foreign_host_is_misdirected(
    cluster: Any, tokens: Tokens, seen: Seen, synthetic_worker: dict[str, Any]
) -> None:
    """DNS rebinding: a page on evil.example reaching a loopback service gets 421 everywhere."""
    for url, token in (
        (cluster.queen_url, tokens.keeper),
        (cluster.hive_url, tokens.hive),
        (synthetic_worker["url"], auth.worker_token(tokens.hive, synthetic_worker["worker_id"])),
    ):
        for path in ("/health", "/v1/jobs"):
            response = request(
                seen, "GET", url + path, token=token, headers={"Host": "evil.example"}
            )
            assert response.status_code == 421, (url, path, response.text)
            assert error_code(response) == "misdirected_request"
        response = request(seen, "GET", url + "/v1/jobs", token=token)
        assert response.status_code == 200, response.text


def test_a_cross_origin_stream_is_refused_and_does_not_start_the_job(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    created = request(
        seen,
        "POST",
        cluster.queen_url + "/v1/jobs",
        token=tokens.keeper,
        body={"operation": "status"},
    )
    assert created.status_code == 201, created.text
    job = created.json()["job_id"]
    stream = f"{cluster.queen_url}/v1/jobs/{job}/stream"
    evil = {"Origin": "http://evil.example"}
    preflight = request(
        seen,
        "OPTIONS",
        stream,
        headers={**evil, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 403, preflight.text
    assert error_code(preflight) == "origin_not_allowed"
    assert "access-control-allow-origin" not in preflight.headers
    for token in (None, tokens.keeper):  # the page may even hold the token: still refused
        response = request(seen, "GET", stream, token=token, headers=evil)
        assert response.status_code == 403, response.text
        assert "access-control-allow-origin" not in response.headers
    status = request(seen, "GET", f"{cluster.queen_url}/v1/jobs/{job}", token=tokens.keeper)
    assert status.status_code == 200 and status.json()["state"] == "queued", status.text


# -- resource limits -------------------------------------------------------------------------------


def _serving(cluster: Any, tokens: Tokens) -> bool:
    """The queen answers a request of the keeper's (it has no /health)."""
    headers = {"Authorization": f"Bearer {tokens.keeper}"}
    return httpx.get(cluster.queen_url + "/v1/jobs", headers=headers, timeout=30).status_code == 200


def test_a_huge_header_is_cut_off_and_others_are_served(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    """A 256 MiB header, sent in 64 KiB chunks: the queen answers 431 or closes the connection
    long before the end; a request beside it is served."""
    host, port = cluster.queen_url.removeprefix("http://").split(":")
    total, chunk = 256 << 20, b"a" * (64 << 10)
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode())
        sock.setblocking(False)
        closed = False
        while sent < total and not closed:
            try:
                got = sock.recv(65536)
                answer += got
                closed = not got or b"\r\n\r\n" in answer
                continue
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                # the queen stopped reading: wait for its answer (bounded)
                sock.settimeout(30)
                try:
                    answer += sock.recv(65536)
                except TimeoutError:
                    pytest.fail(f"the queen stopped reading after {sent} bytes but never answered")
                except OSError:
                    pass
                closed = True
            except OSError:  # reset or broken pipe: it closed on us
                closed = True
        assert sent < total, "the queen read a 256 MiB header whole"
        assert closed
        seen.add(answer.decode("latin-1"))
        if answer:
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        print(f"cut off after {sent >> 10} KiB: {answer[:40]!r}")
        assert sent <= 16 << 20, f"{sent} bytes were accepted before the cut"
    assert _serving(cluster, tokens)


def _queen_pid(cluster: Any) -> int:
    return int(cluster.pids["queen"])


def _connections_from(pid: int, ports: set[int]) -> set[int]:
    """Which of the client ports ``ports`` the process ``pid`` still has a connection with."""
    return {
        c.raddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port in ports
    }


@pytest.mark.timeout(300)
def test_frozen_subscribers_are_disconnected_and_the_queen_keeps_serving(
    cluster: Any, tokens: Tokens, seen: Seen, synthetic_worker: dict[str, Any]
) -> None:
    """100 subscribers of a long infer that never read: after the send timeout the queen has
    aborted every one of their connections, and answers others meanwhile."""
    body = {
        "operation": "infer",
        "model": "attack-model",
        "prompt": "go",
        "max_tokens": 1 << 20,
    }
    created = request(seen, "POST", cluster.queen_url + "/v1/jobs", token=tokens.keeper, body=body)
    assert created.status_code == 201, created.text
    job = created.json()["job_id"]
    host, port = cluster.queen_url.removeprefix("http://").split(":")
    pid = _queen_pid(cluster)
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall(
                (
                    f"GET /v1/jobs/{job}/stream HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {tokens.keeper}\r\nAccept: text/event-stream\r\n\r\n"
                ).encode()
            )
            socks.append(sock)
        ports = {s.getsockname()[1] for s in socks}
        rss_frozen = psutil.Process(pid).memory_info().rss
        # the send timeout is 30 s; the wait is bounded well beyond it
        deadline = time.monotonic() + 180
        left = _connections_from(pid, ports)
        while left and time.monotonic() < deadline:
            assert _serving(cluster, tokens)
            time.sleep(1)
            left = _connections_from(pid, ports)
        rss_after = psutil.Process(pid).memory_info().rss
        print(
            f"queen RSS with 100 frozen subscribers: {rss_frozen >> 20} MiB,"
            f" after they were dropped: {rss_after >> 20} MiB"
        )
        assert not left, f"{len(left)} of 100 frozen subscribers still connected after 180 s"
        assert _serving(cluster, tokens)
    finally:
        for sock in socks:
            sock.close()
        request(seen, "DELETE", f"{cluster.queen_url}/v1/jobs/{job}", token=tokens.keeper)


# -- what failures tell, and who may read the logs -------------------------------------------------


def test_a_failed_worker_load_narrates_no_traceback(
    cluster: Any, tokens: Tokens, seen: Seen
) -> None:
    model = "attack-broken"
    target = cluster.models_dir / model
    target.mkdir()
    (target / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"')
    # a directory in the models directory is a model of the hive: no registration
    state, listed, message = run_job(seen, cluster.queen_url, tokens.keeper, "model_list", {})
    assert state == "succeeded" and model in json.dumps(listed), (message, listed)
    before = len(seen.texts)
    try:
        state, _, message = run_job(
            seen,
            cluster.queen_url,
            tokens.keeper,
            "worker_spawn",
            {"model": model, "engine": "transformers"},
        )
        assert state == "failed", state
        narration = "\n".join(seen.texts[before:])
        assert "Traceback" not in narration, narration
        assert not re.search(r'File "[^"]+", line \d+', narration), narration
        assert "site-packages" not in narration and "/src/rbee_" not in narration, narration
        assert message, "the failure says nothing"
    finally:
        stop_workers(cluster, tokens, seen, model)
        run_job(seen, cluster.queen_url, tokens.keeper, "model_delete", {"name": model})


def _log_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".log" or "logs" in p.parts)]


def test_log_files_are_their_owners_only(cluster: Any) -> None:
    logs = _log_files(cluster.root)
    assert logs, f"no log files under {cluster.root}"
    loose = {
        str(p): f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in logs if p.stat().st_mode & 0o077
    }
    assert not loose, loose


def test_no_token_in_logs_narration_or_argument_lists(
    cluster: Any, tokens: Tokens, seen: Seen, e2e_base: Path, kit: Any
) -> None:
    """Last: after every attack above, no token (nor the secret) appears in any log file of the
    cluster, in any response or narration the attacks saw, or in any process's argument list."""
    assert seen.texts, "the attacks saw nothing"
    secrets_files = {
        _secret_file(cluster.root).resolve(),
    }
    found: list[str] = []
    files = [
        p
        for p in cluster.root.rglob("*")
        if p.is_file()
        and p.resolve() not in secrets_files
        and not p.name.endswith(".token")
        and "models" not in p.relative_to(cluster.root).parts
    ]
    assert _log_files(cluster.root)
    for path in files:
        data = path.read_bytes()
        for name, token in tokens.all().items():
            if token.encode() in data:
                found.append(f"{name} in {path}")
    for text in seen.texts:
        for name, token in tokens.all().items():
            if token in text:
                found.append(f"{name} in a response or narration: {text[:200]!r}")
    procs = {pid for start in cluster.pids.values() for pid in kit.tree(start)}
    procs |= {p.pid for p in kit.mentioning(str(e2e_base))}
    for pid in sorted(procs):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for name, token in tokens.all().items():
            if token.encode() in cmdline:
                found.append(f"{name} in the argument list of pid {pid}")
    print(f"grepped {len(files)} files, {len(seen.texts)} texts, {len(procs)} processes")
    assert not found, found
    assert os.getpid() not in procs

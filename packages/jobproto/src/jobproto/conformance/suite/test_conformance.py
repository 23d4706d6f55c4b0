"""The jobproto/1 conformance suite: ``python -m jobproto.conformance [--url URL]``.

``test_state_machine`` is the random walk (``jobproto.conformance._machine``). The other tests pin
down what a random walk rarely reaches: gaps, keepalives, expiry, retention and slow subscribers
need a service whose limits are known (``tuned_target``, left out with ``--url``); cancelling queued
and running jobs and closing a stream early work against any service (``conformance_target``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from jobproto.asgi import ServiceSettings
from jobproto.conformance._create_stream import STREAM_ACCEPT, post_stream
from jobproto.conformance._machine import ConformanceConfig, run_conformance
from jobproto.conformance._model import JobRecord, View, check_status_object
from jobproto.conformance._probe import (
    CursorMode,
    GapItem,
    StreamEvent,
    check_error,
    check_headers,
    expect,
)
from jobproto.conformance._refusals import refuse_unauthenticated
from jobproto.conformance._streams import follow, open_stream
from jobproto.conformance.pytest_plugin import Target

pytestmark = pytest.mark.conformance


@pytest.mark.timeout(420)  # a failing walk with --conformance-shrink: minutes
def test_state_machine(conformance_config: ConformanceConfig) -> None:
    run_conformance(conformance_config)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def http(conformance_target: Target) -> Iterator[httpx.Client]:
    with conformance_target.client() as client:
        yield client


@pytest.fixture
def tuned(tuned_target: Target) -> Iterator[httpx.Client]:
    with tuned_target.client() as client:
        yield client


def limits(target: Target) -> ServiceSettings:
    assert target.settings is not None
    return target.settings


def create(http: httpx.Client, body: dict[str, Any], key: str | None = None) -> JobRecord:
    headers = {} if key is None else {"Idempotency-Key": key}
    r = http.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    out = r.json()
    return JobRecord(out["job_id"], body, out["correlation_id"], 0, states=[out["state"]])


def status(http: httpx.Client, job: JobRecord) -> dict[str, Any]:
    r = http.get(f"/v1/jobs/{job.job_id}")
    assert r.status_code == 200, r.text
    check_headers(r)
    body: dict[str, Any] = r.json()
    job.check_status(body, "status")
    return body


def read_all(http: httpx.Client, job: JobRecord, after: int = 0) -> View:
    """The job's events after ``after`` to its end, reconnecting as a client does."""
    view = View(job)
    view.rewind(after)
    follow(http, view, after, timeout=30.0)
    return view


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def events(view: View) -> list[StreamEvent]:
    return [i for i in view.items if isinstance(i, StreamEvent)]


# -- any service -----------------------------------------------------------------------------------


def test_cancel_a_queued_job(http: httpx.Client) -> None:
    job = create(http, {"operation": "wait", "seconds": 30})
    first = http.delete(f"/v1/jobs/{job.job_id}")
    assert first.status_code == 200, first.text
    job.check_status(first.json(), "DELETE")
    assert first.json()["state"] == "cancelled"
    view = read_all(http, job)
    if job.states[0] == "queued":  # on_subscribe: it never ran, so its log is one event
        assert [e.type for e in events(view)] == ["cancelled"]
        assert first.json()["started_at"] is None
    assert events(view)[-1].payload["reason"] == "cancelled by request"
    again = http.delete(f"/v1/jobs/{job.job_id}")
    assert (again.status_code, again.json()) == (200, status(http, job))
    job.check_log()


def test_cancel_a_running_job(http: httpx.Client) -> None:
    job = create(http, {"operation": "wait", "seconds": 30, "tick": 0.1})
    view = View(job)
    with open_stream(http, job) as stream:
        first = stream.read(1)
        assert [type(i) for i in first] == [StreamEvent], first
        view.add(first[0])
        assert status(http, job)["state"] == "running"
        r = http.delete(f"/v1/jobs/{job.job_id}")
        assert r.status_code in (200, 202), r.text
        job.check_status(r.json(), "DELETE")
        for item in stream.read():
            view.add(item)
        assert view.finished, "the stream of a cancelled job ends with its terminal event"
        stream.expect_end()
    assert events(view)[-1].type == "cancelled"
    assert events(view)[-1].payload["reason"] == "cancelled by request"
    final = status(http, job)
    assert final["state"] == "cancelled" and final["started_at"] is not None
    again = http.delete(f"/v1/jobs/{job.job_id}")
    assert (again.status_code, again.json()["state"]) == (200, "cancelled")
    job.check_log()


def test_closing_a_stream_does_not_cancel_the_job(http: httpx.Client) -> None:
    job = create(http, {"operation": "echo", "messages": ["a", "b", "c", "d"], "delay": 0.1})
    view = View(job)
    follow(http, view, max_events=2)
    assert not view.finished
    time.sleep(0.2)
    follow(http, view, view.last_seen, "header")  # resume where it hung up
    assert events(view)[-1].type == "succeeded"
    assert [e.seq for e in events(view)] == list(range(1, 14))
    job.check_log()


def test_cursor_at_the_end_of_a_finished_job(http: httpx.Client) -> None:
    job = create(http, {"operation": "echo", "messages": ["x"]})
    last = read_all(http, job).cursor
    modes: list[CursorMode] = ["header", "query"]
    for mode in modes:
        with open_stream(http, job, last, mode) as stream:
            assert stream.read() == []
            assert stream.raw.first_line is not None and stream.raw.first_line.startswith("retry:")
    r = http.get(f"/v1/jobs/{job.job_id}/stream", params={"after": str(last + 1)})
    check_error(r, status=400, code="invalid_cursor", field="after")


@pytest.mark.parametrize("digits", ["\u00b2", "\u0660", "\uff11"])  # ², Arabic-Indic 0, fullwidth 1
def test_only_ascii_digits_make_an_integer(http: httpx.Client, digits: str) -> None:
    """``limit`` and ``after`` are decimal integers written in ASCII digits (§2.4, §4.6)."""
    job = create(http, {"operation": "wait", "seconds": 0})
    r = http.get("/v1/jobs", params={"limit": digits})
    check_error(r, status=400, code="invalid_query", field="limit")
    r = http.get(f"/v1/jobs/{job.job_id}/stream", params={"after": digits})
    check_error(r, status=400, code="invalid_query", field="after")


def test_deeply_nested_json_is_refused(http: httpx.Client) -> None:
    """JSON nested deeper than the service parses is a refused request, never a 500 (§5)."""
    body = b'{"operation": "echo", "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    check_error(r)
    r = http.post("/v1/jobs", json={"operation": "echo"})
    assert r.status_code == 201, "the service still creates jobs"


def _body_after_created(http: httpx.Client, job_id: str, key: str, after: int) -> bytes:
    """A finished job's replayed create-and-stream after ``after``: what follows its created
    block, byte for byte."""
    body = {"operation": "echo", "messages": ["a", "b\nc"], "result": [1]}
    with post_stream(http, body, key=key, after=after or None, replayed=True) as reader:
        assert reader.job_id == job_id
        reader.read_created()
        for _ in reader.read():
            pass
        reader.expect_end()
        raw = reader.raw.bytes
    r = http.post(
        "/v1/jobs",
        json=body,
        headers={"Accept": STREAM_ACCEPT, "Idempotency-Key": key, "Last-Event-ID": str(after)},
    )
    assert r.status_code == 200 and len(r.content) == raw
    return r.content.split(b"\n\n", 2)[2]


def test_create_and_stream_is_the_jobs_stream(http: httpx.Client) -> None:
    """§2.2.2: after the created block, the body is what GET sse_url sends with the same cursor,
    byte for byte, for a new job and for a replay from the start or from any seq."""
    key = f"create-and-stream-{time.monotonic_ns()}"
    body = {"operation": "echo", "messages": ["a", "b\nc"], "result": [1]}
    with post_stream(http, body, key=key, cid="conformance-one-request") as reader:
        created = reader.read_created()
        job = JobRecord(reader.job_id, body, str(created["correlation_id"]), 0)
        view = View(job)
        view.connections += 1
        for item in reader.read():
            view.add(item)
        assert view.finished
        reader.expect_end()
    assert created["correlation_id"] == "conformance-one-request"
    final = status(http, job)
    assert created["payload"]["created_at"] == final["created_at"]
    for after in range(0, 8):
        stream = http.get(f"/v1/jobs/{job.job_id}/stream", headers={"Last-Event-ID": str(after)})
        assert stream.status_code == 200
        events = stream.content.split(b"\n\n", 1)[1]
        assert _body_after_created(http, job.job_id, key, after) == events, after
    view.check_against(read_all(http, job))
    job.check_log()


def test_create_and_stream_answers_json_unless_asked(http: httpx.Client) -> None:
    """§2.2.2: an Accept that does not ask for the stream gets the JSON of §2.2."""
    for accept in ("*/*", "application/json", "text/event-stream;q=0", "text/*"):
        r = http.post("/v1/jobs", json={"operation": "echo"}, headers={"Accept": accept})
        assert r.status_code == 201, (accept, r.text)
        assert r.headers["content-type"].startswith("application/json"), accept
        http.delete(f"/v1/jobs/{r.json()['job_id']}")


def test_openapi_document(http: httpx.Client) -> None:
    r = http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == "jobproto/1"
    schemas = doc["components"]["schemas"]
    for name in ("Error", "JobStatus", "op_echo", "op_fail", "op_crash", "op_wait", "op_burst"):
        assert name in schemas, name


# -- services with known limits --------------------------------------------------------------------


def test_gap_when_a_burst_overflows_the_log(tuned: httpx.Client, tuned_target: Target) -> None:
    keep = limits(tuned_target).max_log_events
    count = 5 * keep
    job = create(tuned, {"operation": "burst", "count": count, "size": 8})
    live = read_all(tuned, job)  # live, a subscriber may or may not lag behind the burst
    assert live.cursor == count + 1
    assert status(tuned, job)["last_seq"] == count + 1  # counts dropped events too (§4.8)

    replay = read_all(tuned, job)
    gap = replay.items[0]
    assert isinstance(gap, GapItem), replay.items[:2]
    assert gap.after == 0 and gap.first_available > 1
    retained = count + 1 - gap.first_available + 1
    assert keep <= retained <= keep + keep // 16, retained
    assert [e.seq for e in events(replay)] == list(range(gap.first_available, count + 2))
    live.check_against(replay)

    # the same cursor gets the same gap again; one inside the retained log gets none (§4.5)
    again = read_all(tuned, job, after=3)
    assert again.items[0] == GapItem(3, gap.first_available)
    assert read_all(tuned, job, after=3).items[0] == again.items[0]
    inside = read_all(tuned, job, after=gap.first_available + 5)
    assert events(inside)[0].seq == gap.first_available + 6
    assert not any(isinstance(i, GapItem) for i in inside.items)
    job.check_log()


def test_keepalive_on_a_quiet_stream(tuned: httpx.Client, tuned_target: Target) -> None:
    interval = limits(tuned_target).keepalive_interval
    quiet = 6 * interval
    job = create(tuned, {"operation": "wait", "seconds": quiet, "tick": 10})
    with open_stream(tuned, job) as stream:
        view = View(job)
        for item in stream.read():
            view.add(item)
        stream.expect_end()
        comments = stream.raw.comments
    assert [e.type for e in events(view)] == ["narration", "succeeded"]
    assert len(comments) >= 3, comments
    assert set(comments) == {"keepalive"}, comments
    job.check_log()


def test_a_job_nobody_subscribes_to_expires(tuned: httpx.Client, tuned_target: Target) -> None:
    settings = limits(tuned_target)
    created = time.monotonic()  # before the service creates it: the time measured is never less
    job = create(tuned, {"operation": "echo", "messages": ["never"]})
    wait_for(
        lambda: status(tuned, job)["state"] != "queued",
        settings.subscribe_timeout + settings.sweep_interval + 5,
        "expiry",
    )
    assert time.monotonic() - created >= settings.subscribe_timeout  # never expired early
    final = status(tuned, job)
    assert final["state"] == "expired" and final["started_at"] is None and final["last_seq"] == 1
    view = read_all(tuned, job)  # subscribing now does not start it: it replays its end
    assert [(e.seq, e.type) for e in events(view)] == [(1, "expired")]
    reason = f"no subscriber within {settings.subscribe_timeout:g} s"
    assert events(view)[0].payload["reason"] == reason
    r = tuned.delete(f"/v1/jobs/{job.job_id}")
    assert (r.status_code, r.json()["state"]) == (200, "expired")
    job.check_log()


def test_a_finished_job_is_removed_after_retention(
    tuned: httpx.Client, tuned_target: Target
) -> None:
    settings = limits(tuned_target)
    key = f"retention-{time.monotonic_ns()}"
    body = {"operation": "echo", "messages": ["kept a while"]}
    job = create(tuned, body, key)
    read_all(tuned, job)
    assert status(tuned, job)["state"] == "succeeded"

    def gone() -> bool:
        return tuned.get(f"/v1/jobs/{job.job_id}").status_code == 404

    wait_for(gone, settings.retention_ttl + settings.sweep_interval + 5, "removal")
    path = f"/v1/jobs/{job.job_id}"
    check_error(tuned.get(path), status=404, code="job_not_found", field="job_id")
    check_error(tuned.get(path + "/stream"), status=404, code="job_not_found")
    check_error(tuned.delete(path), status=404, code="job_not_found")
    listed = tuned.get("/v1/jobs", params={"limit": "100"}).json()["jobs"]
    assert job.job_id not in {j["job_id"] for j in listed}
    # its idempotency key went with it (§2.2.1): the same request now makes a new job
    again = create(tuned, body, key)
    assert again.job_id != job.job_id


def test_a_slow_subscriber_does_not_delay_the_others(
    tuned: httpx.Client, tuned_target: Target
) -> None:
    count = 20_000
    job = create(tuned, {"operation": "burst", "count": count, "size": 1024})
    # the slow one is never read while the others run
    with tuned_target.client() as other, open_stream(other, job) as slow:
        # Were the job held up by the slow subscriber, it would never end and these reads
        # would fail at their deadline.
        fast = [read_all(tuned, job) for _ in range(2)]
        assert status(tuned, job)["state"] == "succeeded"
        for view in fast:
            assert view.cursor == count + 1
        # the slow one, read at last, still gets a consistent view, resuming as needed
        view = View(job)
        view.connections += 1
        try:
            for item in slow.read():
                view.add(item)
        except httpx.TransportError:
            pass  # dropped as a frozen client (send_timeout): it resumes from the log
    follow(tuned, view, view.last_seen, "header")
    assert view.finished
    view.check_against(read_all(tuned, job))


def test_status_objects_in_each_state(http: httpx.Client) -> None:
    """A queued (unless the service starts jobs at once), a running and a failed job, listed."""
    queued = create(http, {"operation": "wait", "seconds": 5})
    running = create(http, {"operation": "wait", "seconds": 5, "tick": 0.1})
    failed = create(http, {"operation": "fail", "after": 1, "code": "nope"})
    expected = [(running, "running"), (failed, "failed")]
    if queued.states[0] == "queued":
        expected.append((queued, "queued"))
    with open_stream(http, running) as stream:
        stream.read(1)
        read_all(http, failed)
        page = http.get("/v1/jobs", params={"limit": "10"}).json()["jobs"]
        by_id = {entry["job_id"]: entry for entry in page}
        for job, state in expected:
            check_status_object(by_id[job.job_id], f"list entry of a {state} job")
            expect(by_id[job.job_id]["state"] == state, f"{by_id[job.job_id]}")
        assert by_id[failed.job_id]["error"] == {"code": "nope", "message": "failed on purpose"}
        http.delete(f"/v1/jobs/{running.job_id}")
    http.delete(f"/v1/jobs/{queued.job_id}")


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["none", "wrong", "not_bearer"])
@pytest.mark.parametrize("method", ["create", "get", "delete", "stream"])
def test_without_the_token_every_job_route_is_401(
    authenticated_target: Target, credential: str, method: str
) -> None:
    """§Authentication: against a service that needs a token (the ``token`` target, or ``--url``
    with ``--jobproto-token-file``); the same 401 for a job that exists and one that does not."""
    with authenticated_target.client() as http:
        job = create(http, {"operation": "wait", "seconds": 5, "tick": 0.1})
        refuse_unauthenticated(http, credential, method, [job.job_id, "job_" + "A" * 22])
        # the job was not touched by the refused requests
        assert status(http, job)["state"] in ("queued", "running")
        http.delete(f"/v1/jobs/{job.job_id}")


def test_the_token_target_refuses_what_the_suite_sends_without_it(
    authenticated_target: Target,
) -> None:
    """The authenticated target really needs its token (else the run above proves nothing)."""
    assert authenticated_target.token is not None
    with httpx.Client(base_url=authenticated_target.url, timeout=10.0) as bare:
        check_error(bare.get("/v1/jobs"), status=401, code="unauthorized")
    assert authenticated_target.token not in repr(authenticated_target)

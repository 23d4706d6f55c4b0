"""Tests for jobs and the job registry (jobproto._registry). Sans-IO: the time is passed in."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto._correlation import is_valid_job_id
from jobproto._errors import (
    IdempotencyConflict,
    JobNotFound,
    LocalProtocolError,
    RequestError,
)
from jobproto._events import (
    Cancelled,
    Data,
    Expired,
    Failed,
    JobEvent,
    Narration,
    Origin,
    Progress,
    Succeeded,
    UnknownEvent,
)
from jobproto._registry import Job, JobRegistry
from jobproto._sse import SSEDecoder
from jobproto._states import JobState
from jobproto._wire import decode_envelope

S = JobState


def new_job(registry: JobRegistry | None = None, now: float = 100.0, **kwargs: object) -> Job:
    if registry is None:  # not ``registry or ...``: an empty registry is falsy (it has __len__)
        registry = JobRegistry()
    job, created = registry.create("echo", {"n": 1}, "corr-1", now, **kwargs)  # type: ignore[arg-type]
    assert created
    return job


def running_job(registry: JobRegistry | None = None, now: float = 100.0) -> Job:
    job = new_job(registry, now)
    job.start(now + 1)
    return job


def decoded_log(job: Job) -> list[JobEvent]:
    """Every retained frame of the job's log, decoded the way a client would."""
    decoder = SSEDecoder()
    _, frames = job.log.read(0)
    out: list[JobEvent] = []
    for sse in decoder.feed(b"".join(frames)):
        ev = decode_envelope(sse.data)
        assert isinstance(ev, JobEvent)
        out.append(ev)
    return out


# --- create / get ---------------------------------------------------------------------------------


def test_create_makes_a_queued_job() -> None:
    registry = JobRegistry()
    job, created = registry.create(
        "echo", {"n": 1}, "corr-1", 100.0, trace_headers={"traceparent": "x"}
    )
    assert created
    assert is_valid_job_id(job.id)
    assert job.operation == "echo"
    assert job.params == {"n": 1}
    assert job.correlation_id == "corr-1"
    assert job.created_at == 100.0
    assert job.state is S.QUEUED
    assert not job.finished
    assert job.last_seq == 0
    assert job.started_at is None
    assert job.finished_at is None
    assert job.trace_headers == {"traceparent": "x"}
    assert registry.get(job.id) is job
    assert len(registry) == 1
    assert list(registry) == [job]


def test_trace_headers_are_copied() -> None:
    headers = {"traceparent": "x"}
    job = new_job(trace_headers=headers)
    headers["traceparent"] = "y"
    assert job.trace_headers == {"traceparent": "x"}


def test_ids_are_distinct() -> None:
    registry = JobRegistry()
    ids = {new_job(registry).id for _ in range(200)}
    assert len(ids) == 200
    assert len(registry) == 200


def test_get_unknown_job() -> None:
    registry = JobRegistry()
    new_job(registry)
    with pytest.raises(JobNotFound) as info:
        registry.get("job_nope")
    exc = info.value
    assert isinstance(exc, KeyError)
    assert isinstance(exc, RequestError)
    assert isinstance(exc, ValueError)
    assert exc.status == 404
    assert exc.code == "job_not_found"
    assert exc.job_id == "job_nope"
    assert "job_nope" in str(exc)
    assert exc.to_json()["error"]["code"] == "job_not_found"


def test_job_not_found_is_caught_as_key_error() -> None:
    with pytest.raises(KeyError):
        JobRegistry().get("job_x")


def test_log_bound_is_passed_to_jobs() -> None:
    registry = JobRegistry(max_log_events=16)
    job = running_job(registry)
    for i in range(100):
        job.emit(Data(i), 102.0)
    assert job.log.first_seq > 1
    assert len(job.log) <= 17


# --- lifecycle ------------------------------------------------------------------------------------


def test_start_sets_running() -> None:
    job = new_job()
    job.start(101.0)
    assert job.state is S.RUNNING
    assert job.started_at == 101.0
    with pytest.raises(LocalProtocolError):
        job.start(102.0)


def test_emit_only_while_running() -> None:
    job = new_job()
    with pytest.raises(LocalProtocolError):
        job.emit(Narration("a", "queued"), 100.5)
    assert job.last_seq == 0
    job.start(101.0)
    record = job.emit(Narration("a", "hello"), 102.0)
    assert record == JobEvent(1, job.id, "corr-1", 102.0, Narration("a", "hello"))
    assert job.last_seq == 1
    job.finish(Succeeded(None), 103.0)
    with pytest.raises(LocalProtocolError):
        job.emit(Narration("a", "late"), 104.0)
    assert job.last_seq == 2


@pytest.mark.parametrize(
    "event",
    [Succeeded(1), Failed("x", "y"), Cancelled(), Expired(), UnknownEvent("succeeded", {})],
    ids=lambda e: type(e).__name__,
)
def test_emit_refuses_terminal_events(event: object) -> None:
    job = running_job()
    with pytest.raises(LocalProtocolError):
        job.emit(event, 102.0)  # type: ignore[arg-type]
    assert job.state is S.RUNNING
    assert job.last_seq == 0


def test_emitted_events_are_logged_with_contiguous_seqs_and_origin() -> None:
    job = running_job()
    origin = Origin("hive", "job_down", 7, Origin("worker", "job_deeper", 3))
    events = [
        Narration("load", "loading", fields={"model": "m"}),
        Progress("load", 1, 2, "files"),
        Data({"token": "hi"}),
    ]
    records = [job.emit(events[0], 102.0), job.emit(events[1], 102.5)]
    records.append(job.emit(events[2], 103.0, origin=origin))
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[2].origin == origin
    assert decoded_log(job) == records


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (Succeeded({"answer": 42}), S.SUCCEEDED),
        (Failed("boom", "it broke"), S.FAILED),
        (Cancelled("user asked"), S.CANCELLED),
    ],
)
def test_finish_a_running_job(event: Succeeded | Failed | Cancelled, state: JobState) -> None:
    job = running_job()
    job.emit(Narration("a", "m"), 102.0)
    record = job.finish(event, 103.0)
    assert job.state is state
    assert job.finished
    assert job.finished_at == 103.0
    assert record == JobEvent(2, job.id, "corr-1", 103.0, event)
    assert record.terminal
    assert job.result == (event.result if isinstance(event, Succeeded) else None)
    assert job.error == (event if isinstance(event, Failed) else None)
    assert job.cancel_reason == (event.reason if isinstance(event, Cancelled) else None)
    log = decoded_log(job)
    assert log[-1] == record
    assert [e.seq for e in log] == [1, 2]
    # Nothing after the terminal frame, ever.
    for late in (Narration("a", "late"), Data(1)):
        with pytest.raises(LocalProtocolError):
            job.emit(late, 104.0)
    for again in (Succeeded(1), Failed("a", "b"), Cancelled(), Expired()):
        with pytest.raises(LocalProtocolError):
            job.finish(again, 104.0)
    assert job.last_seq == 2
    assert job.state is state
    assert decoded_log(job)[-1] == record


@pytest.mark.parametrize(
    ("event", "state"), [(Cancelled("no"), S.CANCELLED), (Expired("nobody came"), S.EXPIRED)]
)
def test_finish_a_queued_job(event: Cancelled | Expired, state: JobState) -> None:
    job = new_job()
    record = job.finish(event, 200.0)
    assert job.state is state
    assert job.cancel_reason == event.reason
    assert record.seq == 1
    assert decoded_log(job) == [record]


@pytest.mark.parametrize("event", [Succeeded(1), Failed("a", "b")], ids=lambda e: e.TYPE)
def test_a_queued_job_cannot_succeed_or_fail(event: Succeeded | Failed) -> None:
    job = new_job()
    with pytest.raises(LocalProtocolError):
        job.finish(event, 101.0)
    assert job.state is S.QUEUED
    assert job.last_seq == 0


def test_a_running_job_cannot_expire() -> None:
    job = running_job()
    with pytest.raises(LocalProtocolError):
        job.finish(Expired(), 101.0)
    assert job.state is S.RUNNING


@pytest.mark.parametrize(
    "result", [object(), {1, 2}, float("nan"), math.inf, {"a": [b"bytes"]}], ids=repr
)
def test_a_result_that_is_not_json_leaves_the_job_unchanged(result: object) -> None:
    job = running_job()
    job.emit(Data(1), 102.0)
    with pytest.raises((TypeError, ValueError)):
        job.finish(Succeeded(result), 103.0)
    assert job.state is S.RUNNING
    assert job.finished_at is None
    assert job.result is None
    assert job.last_seq == 1
    # ...so the caller can still end it another way.
    job.emit(Data(2), 103.5)
    record = job.finish(Failed("bad_result", "not JSON"), 104.0)
    assert record.seq == 3
    assert job.state is S.FAILED
    assert decoded_log(job)[-1] == record


def test_a_data_payload_that_is_not_json_is_not_logged() -> None:
    job = running_job()
    with pytest.raises((TypeError, ValueError)):
        job.emit(Data(object()), 102.0)
    assert job.last_seq == 0
    assert job.emit(Data("ok"), 102.0).seq == 1


# --- idempotency ----------------------------------------------------------------------------------


def test_same_key_and_fingerprint_returns_the_same_job() -> None:
    registry = JobRegistry()
    job, created = registry.create("echo", {}, "c", 1.0, idempotency_key="k", fingerprint="f")
    assert created
    again, created = registry.create("echo", {}, "c2", 2.0, idempotency_key="k", fingerprint="f")
    assert again is job
    assert not created
    assert len(registry) == 1
    assert job.idempotency_key == "k"


def test_same_key_other_fingerprint_conflicts() -> None:
    registry = JobRegistry()
    registry.create("echo", {}, "c", 1.0, idempotency_key="k", fingerprint="f")
    with pytest.raises(IdempotencyConflict) as info:
        registry.create("echo", {}, "c", 2.0, idempotency_key="k", fingerprint="g")
    exc = info.value
    assert isinstance(exc, RequestError)
    assert exc.status == 409
    assert exc.code == "idempotency_conflict"
    assert exc.details == {"key": "k"}
    assert len(registry) == 1


def test_has_key_while_the_job_is_kept() -> None:
    registry = JobRegistry()
    assert not registry.has_key("k")
    job, _ = registry.create("echo", {}, "c", 1.0, idempotency_key="k")
    assert registry.has_key("k") and not registry.has_key("other")
    job.start(2.0)
    job.finish(Succeeded(None), 3.0)
    registry.remove_finished(now=1000.0, ttl=1.0)
    assert not registry.has_key("k")


def test_other_keys_and_no_key_make_new_jobs() -> None:
    registry = JobRegistry()
    a, _ = registry.create("echo", {}, "c", 1.0, idempotency_key="a", fingerprint="f")
    b, created_b = registry.create("echo", {}, "c", 1.0, idempotency_key="b", fingerprint="f")
    c, created_c = registry.create("echo", {}, "c", 1.0)
    d, created_d = registry.create("echo", {}, "c", 1.0)
    assert created_b and created_c and created_d
    assert len({a.id, b.id, c.id, d.id}) == 4


def test_idempotent_replay_of_a_finished_job() -> None:
    registry = JobRegistry()
    job, _ = registry.create("echo", {}, "c", 1.0, idempotency_key="k")
    job.start(2.0)
    job.finish(Succeeded(1), 3.0)
    again, created = registry.create("echo", {}, "c", 4.0, idempotency_key="k")
    assert again is job
    assert not created


# --- page -----------------------------------------------------------------------------------------


def make_jobs(registry: JobRegistry, count: int) -> list[Job]:
    return [new_job(registry, now=float(i)) for i in range(count)]


def test_page_is_newest_first() -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, 5)
    page, cursor = registry.page()
    assert page == jobs[::-1]
    assert cursor is None


def test_page_of_an_empty_registry() -> None:
    assert JobRegistry().page() == ([], None)


def test_page_cursor() -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, 5)
    page, cursor = registry.page(limit=2)
    assert page == [jobs[4], jobs[3]]
    assert cursor is not None
    page, cursor = registry.page(limit=2, cursor=cursor)
    assert page == [jobs[2], jobs[1]]
    assert cursor is not None
    page, cursor = registry.page(limit=2, cursor=cursor)
    assert page == [jobs[0]]
    assert cursor is None


def test_page_exactly_full_has_no_next_cursor() -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, 4)
    assert registry.page(limit=4) == (jobs[::-1], None)


def test_page_state_filter() -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, 6)
    for job in jobs[::2]:
        job.start(10.0)
    jobs[0].finish(Succeeded(None), 11.0)
    assert registry.page(state=S.RUNNING)[0] == [jobs[4], jobs[2]]
    assert registry.page(state=S.QUEUED)[0] == [jobs[5], jobs[3], jobs[1]]
    assert registry.page(state=S.SUCCEEDED)[0] == [jobs[0]]
    assert registry.page(state=S.FAILED) == ([], None)
    page, cursor = registry.page(state=S.QUEUED, limit=1)
    assert page == [jobs[5]]
    page, cursor = registry.page(state=S.QUEUED, limit=1, cursor=cursor)
    assert page == [jobs[3]]


def test_cursor_survives_removal_of_the_job_it_points_at() -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, 4)
    page, cursor = registry.page(limit=2)
    assert page == [jobs[3], jobs[2]]
    jobs[2].finish(Cancelled(), 5.0)
    registry.remove_finished(now=5.0, ttl=0.0)
    assert registry.page(limit=2, cursor=cursor) == ([jobs[1], jobs[0]], None)


@pytest.mark.parametrize("cursor", ["", "abc", "-1", "1.5", " 1", "1" * 19, "0x10", "²"])
def test_invalid_cursor_is_a_400(cursor: str) -> None:
    """Every cursor this server did not give out is refused the same way, never a crash.

    ``"²"`` is ``str.isdigit()`` yet ``int()`` refuses it: a plain ValueError (a 500), not a 400.
    """
    registry = JobRegistry()
    make_jobs(registry, 3)
    with pytest.raises(RequestError) as info:
        registry.page(cursor=cursor)
    assert info.value.status == 400
    assert info.value.code == "invalid_cursor"
    assert info.value.field == "cursor"


@settings(max_examples=60, deadline=None)
@given(
    states=st.lists(st.sampled_from(["queued", "running", "succeeded"]), max_size=40),
    limit=st.integers(1, 12),
    only=st.none() | st.sampled_from([S.QUEUED, S.RUNNING, S.SUCCEEDED]),
)
def test_pagination_visits_every_job_exactly_once(
    states: list[str], limit: int, only: JobState | None
) -> None:
    registry = JobRegistry()
    jobs = make_jobs(registry, len(states))
    for job, state in zip(jobs, states, strict=True):
        if state != "queued":
            job.start(50.0)
        if state == "succeeded":
            job.finish(Succeeded(None), 60.0)
    expected = [j for j in reversed(jobs) if only is None or j.state is only]
    seen: list[Job] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = registry.page(state=only, cursor=cursor, limit=limit)
        assert len(page) <= limit
        if cursor is not None:
            assert len(page) == limit
        seen.extend(page)
        pages += 1
        assert pages <= len(states) + 1
        if cursor is None:
            break
    assert seen == expected
    assert pages == max(1, -(-len(expected) // limit))


# --- expiry and removal ---------------------------------------------------------------------------


def test_due_to_expire() -> None:
    registry = JobRegistry()
    old = new_job(registry, now=0.0)
    subscribed = new_job(registry, now=0.0)
    subscribed.subscribed = True
    started = new_job(registry, now=0.0)
    started.start(1.0)
    young = new_job(registry, now=8.0)
    assert registry.due_to_expire(now=9.0, subscribe_timeout=10.0) == []
    assert registry.due_to_expire(now=10.0, subscribe_timeout=10.0) == [old]
    assert registry.due_to_expire(now=18.0, subscribe_timeout=10.0) == [old, young]
    # The registry only says who is due; the caller expires them.
    old.finish(Expired("nobody subscribed"), 18.0)
    assert registry.due_to_expire(now=18.0, subscribe_timeout=10.0) == [young]


def test_remove_finished() -> None:
    registry = JobRegistry()
    a, _ = registry.create("echo", {}, "c", 0.0, idempotency_key="ka", fingerprint="f")
    b, _ = registry.create("echo", {}, "c", 0.0, idempotency_key="kb", fingerprint="f")
    running = new_job(registry, now=0.0)
    running.start(0.0)
    queued = new_job(registry, now=0.0)
    a.start(1.0)
    a.finish(Succeeded(1), 2.0)
    b.finish(Cancelled(), 5.0)

    assert registry.remove_finished(now=11.0, ttl=10.0) == []
    assert registry.remove_finished(now=12.0, ttl=10.0) == [a]
    with pytest.raises(JobNotFound):
        registry.get(a.id)
    assert registry.get(b.id) is b
    assert len(registry) == 3
    # The key of a removed job is free again: a new job, no conflict.
    fresh, created = registry.create("echo", {}, "c", 13.0, idempotency_key="ka", fingerprint="g")
    assert created
    assert fresh is not a
    # The key of a job still held still replays.
    assert registry.create("echo", {}, "c", 13.0, idempotency_key="kb", fingerprint="f") == (
        b,
        False,
    )

    assert registry.remove_finished(now=1000.0, ttl=10.0) == [b]
    assert set(registry) == {running, queued, fresh}
    assert registry.page()[0] == [fresh, queued, running]


def test_iterating_is_safe_while_removing() -> None:
    registry = JobRegistry()
    for job in make_jobs(registry, 3):
        job.finish(Cancelled(), 1.0)
    for job in registry:
        registry.remove_finished(now=2.0, ttl=0.0)
        assert job.finished
    assert len(registry) == 0


def test_frames_are_valid_json_envelopes() -> None:
    job = running_job()
    job.emit(Narration("a", "line\nbreak"), 102.0)
    _, frames = job.log.read(0)
    text = frames[0].decode()
    data = text.split("data: ", 1)[1].rstrip("\n")
    assert json.loads(data)["payload"]["message"] == "line\nbreak"

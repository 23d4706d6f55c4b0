"""Create and stream in one request (docs/protocol.md §2.2.2): ``POST /v1/jobs`` whose ``Accept``
asks for ``text/event-stream`` answers with the job's stream, after a ``created`` block.

Negotiation and the ``created`` block's codec are pure (Hypothesis where it helps); the answers
run under real uvicorn on loopback (jobs need the service's lifespan; the streams here are finite,
but a stream left open must be closed by the client, which ``httpx.ASGITransport`` cannot do).
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from jobproto import SSEDecoder
from jobproto._errors import RemoteProtocolError
from jobproto._wire import (
    CREATED_FIELDS,
    decode_created,
    decode_envelope,
    encode_created_frame,
)
from jobproto.asgi import (
    Principal,
    Security,
    ServiceSettings,
    StreamCookie,
    TokenAuth,
    create_app,
    stream_session_routes,
)
from jobproto.asgi._routes import wants_event_stream
from jobproto.conformance import conformance_operations
from jobproto.testing import serving

ACCEPT = "text/event-stream, application/json;q=0.9"
STREAM = {"Accept": ACCEPT}
ECHO = {"operation": "echo", "messages": ["hello", "world"], "result": {"ok": True}}


# -- Accept ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "text/event-stream",
        ACCEPT,
        "TEXT/Event-Stream; charset=utf-8",
        "application/json;q=0.5, text/event-stream",
        "text/event-stream;q=0.5, application/json;q=0.5",  # a tie: the stream
        "text/event-stream, */*",
        "text/event-stream;q=0.001, application/*",
        "text/event-stream;q=0.2, text/event-stream;q=0.8, application/json;q=0.5",
        "text/html, text/event-stream ;q=1.0",
    ],
)
def test_accept_that_asks_for_the_stream(accept: str) -> None:
    assert wants_event_stream(accept)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "application/json",
        "text/*",
        "text/event-stream;q=0",
        "text/event-stream;q=0.000",
        "application/json, text/event-stream;q=0.9",
        "text/event-stream;q=0.5, application/json",
        "text/event-stream;q=nan",
        "text/event-stream;q=2",
        "text/event-stream;q=-1",
        "text/event-streams",
        "application/event-stream",
    ],
)
def test_accept_that_does_not(accept: str | None) -> None:
    assert not wants_event_stream(accept)


#: what float() takes but RFC 9110 §12.4.2's qvalue does not
_NOT_QVALUES = ["1e0", "0_5", "\uff10.5", "0.\u0665", ".5", "+0.5", "0.5000", "1.001", "1.5", "01"]


@pytest.mark.parametrize("q", ["0.", "0.5", "0.123", "1", "1.", "1.000"])
def test_qvalues_of_the_grammar_count(q: str) -> None:
    assert wants_event_stream(f"text/event-stream;q={q}") is (float(q) > 0)
    # a JSON element with a valid q above the stream's wins
    assert not wants_event_stream(f"text/event-stream;q=0, application/json;q={q}")


@pytest.mark.parametrize("q", _NOT_QVALUES)
def test_a_qvalue_outside_the_grammar_counts_for_nothing(q: str) -> None:
    assert not wants_event_stream(f"text/event-stream;q={q}")
    # a JSON element with one is ignored: the stream, named alone, wins
    assert wants_event_stream(f"text/event-stream;q=0.5, application/json;q={q}")


_Q = st.integers(0, 1000).map(lambda n: f"{n / 1000:.3f}")


@given(sse=_Q, json_q=st.none() | _Q, extra=st.sampled_from(["", ", */*", ", application/*"]))
def test_accept_weighs_the_stream_against_json(sse: str, json_q: str | None, extra: str) -> None:
    accept = f"text/event-stream;q={sse}" + (
        "" if json_q is None else f", application/json;q={json_q}"
    )
    expected = float(sse) > 0 and (json_q is None or float(json_q) <= float(sse))
    assert wants_event_stream(accept + extra) is expected


# -- the created block -----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@given(fields=st.fixed_dictionaries({k: _text for k in CREATED_FIELDS}), cid=_text)
def test_created_block_round_trips(fields: dict[str, str], cid: str) -> None:
    frame = encode_created_frame(fields, fields["job_id"], cid, 1_800_000_000.25)
    events = SSEDecoder().feed(frame)
    assert [e.event for e in events] == ["created"]
    assert not events[0].id  # no id: line, so Last-Event-ID stays put
    assert b"\nid:" not in frame and not frame.startswith(b"id:")
    assert decode_created(events[0].data) == fields
    envelope = json.loads(events[0].data)
    assert envelope["seq"] is None and envelope["correlation_id"] == cid
    assert envelope["timestamp"] == "2027-01-15T08:00:00.250Z"
    assert "origin" not in envelope


def _created(**changes: Any) -> str:
    payload = {k: "x" for k in CREATED_FIELDS}
    payload["job_id"] = "job_1"
    envelope = {"seq": None, "job_id": "job_1", "correlation_id": "c", "type": "created"}
    envelope["payload"] = payload
    envelope["timestamp"] = "2026-01-01T00:00:00.000Z"
    for key, value in changes.items():
        if key.startswith("p_"):
            payload[key[2:]] = value
        else:
            envelope[key] = value
    return json.dumps(envelope)


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[1]",
        "[" * 100_000,
        _created(type="data"),
        _created(payload=[]),
        _created(p_state=None),
        _created(p_sse_url=1),
        _created(p_job_id="job_2"),
        json.dumps({"type": "created", "payload": {}}),
    ],
)
def test_decode_created_refuses_anything_else(data: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_created(data)


def test_decode_created_keeps_fields_a_service_adds() -> None:
    assert decode_created(_created(p_extra=1))["extra"] == 1


# -- the answers -----------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(conformance_operations())) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


def split_created(body: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    """(the retry: block, the created block's envelope, the rest of the body)."""
    retry, created, rest = body.split(b"\n\n", 2)
    assert retry.startswith(b"retry: ")
    lines = created.split(b"\n")
    assert lines[0] == b"event: created" and lines[1].startswith(b"data: ") and len(lines) == 2
    return retry + b"\n\n", json.loads(lines[1][6:]), rest


async def stream_body(http: httpx.AsyncClient, job_id: str, after: int = 0) -> bytes:
    r = await http.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": str(after)})
    assert r.status_code == 200
    return r.content


def seqs(rest: bytes) -> list[int]:
    return [decode_envelope(e.data).seq for e in SSEDecoder().feed(rest)]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_new_job_answers_with_its_stream(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/jobs", json=ECHO, headers={**STREAM, "X-Correlation-ID": "req-1"})
    assert r.status_code == 201
    job_id = r.headers["x-job-id"]
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-correlation-id"] == "req-1"
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.headers["content-location"] == f"/v1/jobs/{job_id}/stream"
    assert "idempotent-replayed" not in r.headers
    retry, envelope, rest = split_created(r.content)
    assert retry == b"retry: 2000\n\n"
    assert envelope["type"] == "created" and envelope["seq"] is None
    assert envelope["job_id"] == job_id and envelope["correlation_id"] == "req-1"
    created = envelope["payload"]
    status = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert created == {**{k: status[k] for k in CREATED_FIELDS}, "state": "queued"}
    # the rest is what GET sse_url sends, byte for byte; the job ran because this request
    # subscribed (start mode on_subscribe)
    assert rest == (await stream_body(http, job_id)).split(b"\n\n", 1)[1]
    assert seqs(rest) == list(range(1, 8))
    assert status["state"] == "succeeded"


@pytest.mark.anyio
async def test_the_json_answer_is_unchanged_when_accept_does_not_ask(
    http: httpx.AsyncClient,
) -> None:
    for accept in (None, "*/*", "application/json", "application/json, text/event-stream;q=0.5"):
        headers = {"Last-Event-ID": "bogus"}  # not a stream request: not looked at
        if accept is not None:
            headers["Accept"] = accept
        r = await http.post("/v1/jobs", json=ECHO, headers=headers)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == set(CREATED_FIELDS) and r.json()["state"] == "queued"
        assert "x-job-id" not in r.headers and "content-location" not in r.headers


@pytest.mark.anyio
async def test_immediate_mode_says_running() -> None:
    app = create_app(conformance_operations(), ServiceSettings(start_mode="immediate"))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.post("/v1/jobs", json=ECHO, headers=STREAM)
        assert r.status_code == 201
        _, envelope, rest = split_created(r.content)
        assert envelope["payload"]["state"] == "running"
        assert seqs(rest) == list(range(1, 8))


@pytest.mark.anyio
async def test_a_replayed_key_answers_with_the_existing_jobs_stream(
    http: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": "replay-1"}
    first = await http.post(
        "/v1/jobs", json=ECHO, headers={**STREAM, **key, "X-Correlation-ID": "a"}
    )
    assert first.status_code == 201
    job_id = first.headers["x-job-id"]
    _, _, whole = split_created(first.content)
    same = dict(reversed(list(ECHO.items())))  # the same JSON value
    for after in (0, 3, 7):
        headers = {**STREAM, **key, "X-Correlation-ID": "b", "Last-Event-ID": f"{after}"}
        r = await http.post("/v1/jobs", json=same, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["idempotent-replayed"] == "true"
        assert r.headers["x-job-id"] == job_id
        assert r.headers["x-correlation-id"] == "b"  # this request's, as on every response
        _, envelope, rest = split_created(r.content)
        assert envelope["correlation_id"] == "a"  # the job's, as in its events
        assert envelope["payload"]["state"] == "succeeded"
        assert envelope["payload"]["correlation_id"] == "a"
        assert rest == (await stream_body(http, job_id, after)).split(b"\n\n", 1)[1]
        assert seqs(rest) == list(range(after + 1, 8))
        assert rest == whole[len(whole) - len(rest) :]
    jobs = (await http.get("/v1/jobs")).json()["jobs"]
    assert [j["job_id"] for j in jobs] == [job_id]  # nothing new was made


@pytest.mark.anyio
async def test_a_replay_of_a_json_create_streams_too(http: httpx.AsyncClient) -> None:
    """The key made the job with a JSON create; a stream request with it subscribes."""
    key = {"Idempotency-Key": "replay-2"}
    made = await http.post("/v1/jobs", json=ECHO, headers=key)
    assert made.json()["state"] == "queued"
    r = await http.post("/v1/jobs", json=ECHO, headers={**STREAM, **key})
    assert r.status_code == 200
    _, envelope, rest = split_created(r.content)
    assert envelope["payload"] == made.json()  # queued: this request starts it
    assert seqs(rest) == list(range(1, 8))


# -- refusals: the JSON 4xx of today, in today's order, and no job --------------------------------


async def assert_refused(
    http: httpx.AsyncClient, r: httpx.Response, status: int, code: str, field: str | None = None
) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store" and r.headers["x-correlation-id"]
    error = r.json()["error"]
    assert (error["code"], error.get("field")) == (code, field)


async def no_jobs(http: httpx.AsyncClient) -> bool:
    return (await http.get("/v1/jobs")).json()["jobs"] == []


@pytest.mark.anyio
async def test_refusals_stay_json_in_their_order(http: httpx.AsyncClient) -> None:
    post = http.post
    bad_cursor = {**STREAM, "Last-Event-ID": "x1"}
    r = await post("/v1/jobs", content=b"{}", headers={**bad_cursor, "Content-Type": "text/plain"})
    await assert_refused(http, r, 415, "unsupported_media_type", "Content-Type")
    big = b'{"operation":"echo","messages":["' + b"x" * (1 << 20) + b'"]}'
    r = await post(
        "/v1/jobs", content=big, headers={**bad_cursor, "Content-Type": "application/json"}
    )
    await assert_refused(http, r, 413, "payload_too_large")
    r = await post(
        "/v1/jobs", content=b"{", headers={**bad_cursor, "Content-Type": "application/json"}
    )
    await assert_refused(http, r, 400, "invalid_json")
    r = await post("/v1/jobs", json=ECHO, headers={**bad_cursor, "Idempotency-Key": ""})
    await assert_refused(http, r, 400, "invalid_header", "Idempotency-Key")
    # the cursor's syntax comes right after the key's, before the body's validation
    r = await post("/v1/jobs", json={"operation": "nope"}, headers=bad_cursor)
    await assert_refused(http, r, 400, "invalid_header", "Last-Event-ID")
    for value in ("-1", "1.0", "\u00b2".encode(), "1" * 19):
        r = await post("/v1/jobs", json=ECHO, headers={**STREAM, "Last-Event-ID": value})
        await assert_refused(http, r, 400, "invalid_header", "Last-Event-ID")
    # a cursor past the end comes after validation (422) and the key (409)
    after = {**STREAM, "Last-Event-ID": "5"}
    r = await post("/v1/jobs", json={"operation": "nope"}, headers=after)
    await assert_refused(http, r, 422, "unknown_operation", "operation")
    r = await post("/v1/jobs", json={"operation": "echo", "x": 1}, headers=after)
    await assert_refused(http, r, 422, "validation_error", "x")
    assert await no_jobs(http)
    # a new job has no events: any cursor is past its end, and no job is made
    r = await post("/v1/jobs", json=ECHO, headers=after)
    await assert_refused(http, r, 400, "invalid_cursor", "Last-Event-ID")
    r = await post("/v1/jobs", json=ECHO, headers={**after, "Idempotency-Key": "new-key"})
    await assert_refused(http, r, 400, "invalid_cursor", "Last-Event-ID")
    assert await no_jobs(http)
    # the key is still free: it makes its job now
    r = await post("/v1/jobs", json=ECHO, headers={**STREAM, "Idempotency-Key": "new-key"})
    assert r.status_code == 201
    r = await post(
        "/v1/jobs", json={**ECHO, "messages": []}, headers={**after, "Idempotency-Key": "new-key"}
    )
    await assert_refused(http, r, 409, "idempotency_conflict", "Idempotency-Key")
    r = await post(
        "/v1/jobs",
        json=ECHO,
        headers={**STREAM, "Idempotency-Key": "new-key", "Last-Event-ID": "8"},
    )
    await assert_refused(http, r, 400, "invalid_cursor", "Last-Event-ID")
    assert len((await http.get("/v1/jobs")).json()["jobs"]) == 1


@pytest.mark.anyio
async def test_leaving_early_does_not_cancel_the_job(http: httpx.AsyncClient) -> None:
    body = {"operation": "wait", "seconds": 30, "tick": 0.05}
    async with http.stream("POST", "/v1/jobs", json=body, headers=STREAM) as r:
        assert r.status_code == 201
        job_id = r.headers["x-job-id"]
        decoder = SSEDecoder()
        got: list[str] = []
        async for chunk in r.aiter_raw():
            got += [e.event for e in decoder.feed(chunk)]
            if "narration" in got:
                break
    assert got[0] == "created"
    status = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert status["state"] == "running"
    assert (await http.delete(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"


@pytest.mark.anyio
async def test_an_open_stream_keeps_no_more_of_its_request_than_get(
    http: httpx.AsyncClient,
) -> None:
    """The stream of a create, open for hours maybe, holds no more of its request than GET sse_url
    does (Starlette's own middleware keeps a bare Request per request; ours, with its parsed
    headers, must not outlive the create)."""

    def requests(method: str) -> int:
        gc.collect()
        alive = gc.get_objects()
        return sum(isinstance(o, Request) and o.scope["method"] == method for o in alive)

    async def until_narration(chunks: AsyncIterator[bytes]) -> None:
        decoder = SSEDecoder()
        async for chunk in chunks:
            if "narration" in [e.event for e in decoder.feed(chunk)]:
                return

    body = {"operation": "wait", "seconds": 30, "tick": 0.05}
    async with http.stream("POST", "/v1/jobs", json=body, headers=STREAM) as r:
        assert r.status_code == 201
        posted = r.aiter_raw()  # held open: a finalized iterator would close the connection
        await until_narration(posted)
        job_id = r.headers["x-job-id"]
        async with http.stream("GET", f"/v1/jobs/{job_id}/stream") as g:
            got = g.aiter_raw()
            await until_narration(got)
            assert requests("POST") == requests("GET") == 1
        assert (await http.delete(f"/v1/jobs/{job_id}")).status_code in (200, 202)


# -- security: the create needs the token, whatever it asks for ------------------------------------

TOKEN = "kt_" + "a" * 40
KEY = bytes(range(32))


@pytest.mark.anyio
async def test_a_stream_cookie_does_not_create_jobs() -> None:
    security = Security(
        auth=TokenAuth({TOKEN: Principal("keeper", frozenset({"jobs"}))}),
        stream_cookie=StreamCookie(KEY, lifetime=600),
    )
    app = create_app(
        conformance_operations(), routes=stream_session_routes(security), security=security
    )
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        session = await http.post("/v1/session", headers=bearer)
        assert session.status_code == 200
        # The cookie's Path keeps a jar (a browser's too) from sending it with POST /v1/jobs;
        # a client that sends it anyway must still be refused: sent here by hand, jar emptied.
        cookie = {"Cookie": session.headers["set-cookie"].split(";", 1)[0]}
        http.cookies.clear()

        async def jobs() -> list[dict[str, Any]]:
            return list((await http.get("/v1/jobs", headers=bearer)).json()["jobs"])

        for accept in (STREAM, {}):
            r = await http.post("/v1/jobs", json=ECHO, headers={**accept, **cookie})
            await assert_refused(http, r, 401, "unauthorized")
        assert await jobs() == []
        # the token creates and streams; the cookie reads that stream
        key = {"Idempotency-Key": "cookie-replay"}
        r = await http.post("/v1/jobs", json=ECHO, headers={**STREAM, **bearer, **key})
        assert r.status_code == 201
        job_id = r.headers["x-job-id"]
        assert (await http.get(f"/v1/jobs/{job_id}/stream", headers=cookie)).status_code == 200
        # nor does the cookie replay the create of a job it may read, streamed or not
        for accept in (STREAM, {}):
            r = await http.post("/v1/jobs", json=ECHO, headers={**accept, **cookie, **key})
            await assert_refused(http, r, 401, "unauthorized")
        assert [j["job_id"] for j in await jobs()] == [job_id]


@pytest.mark.anyio
async def test_openapi_lists_the_stream_answer(http: httpx.AsyncClient) -> None:
    post = (await http.get("/openapi.json")).json()["paths"]["/v1/jobs"]["post"]
    for status in ("201", "200"):
        content = post["responses"][status]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
        assert "X-Job-ID" in post["responses"][status]["headers"]
    names = {p["name"] for p in post["parameters"]}
    assert "Last-Event-ID" in names and "Accept" not in names  # OpenAPI 3.1 ignores Accept
    assert "Accept: text/event-stream" in post["description"]

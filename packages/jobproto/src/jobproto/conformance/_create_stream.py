"""Create and stream in one request (docs/protocol.md §2.2.2), the way a client does it.

``post_stream`` sends ``POST /v1/jobs`` with an ``Accept`` that asks for the stream and checks the
answer's head and its ``created`` block: ``201`` (``200`` and ``Idempotent-Replayed: true`` on a
replay), the headers of every stream (§4.1), ``Location``/``Content-Location``/``X-Job-ID``
naming the job, and a ``created`` payload that agrees with them. What follows the block is read
as any stream is (``StreamReader``), so every check of §4 applies to it, and each event is
compared with every other copy of the same log entry (``JobRecord.observe``). Which ``Accept``
values ask for the stream, and which do not, are strategies here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from hypothesis import strategies as st

from .._correlation import is_valid_correlation_id
from .._wire import CREATED_FIELDS
from ._model import STATES
from ._probe import TIMESTAMP, StreamReader, expect

__all__ = ["JSON_ACCEPTS", "STREAM_ACCEPT", "STREAM_ACCEPTS", "created_of", "post_stream"]

#: what a client sends: the stream, or today's JSON from a service that predates §2.2.2
STREAM_ACCEPT = "text/event-stream, application/json;q=0.9"

#: ``Accept`` values that ask for the stream (§2.2.2)
STREAM_ACCEPTS: st.SearchStrategy[str] = st.sampled_from(
    [
        STREAM_ACCEPT,
        "text/event-stream",
        "Text/Event-Stream; charset=utf-8",
        "application/json;q=0.5, text/event-stream",
        "text/event-stream;q=0.4, application/json;q=0.4",
        "text/event-stream, */*",
        "text/event-stream;q=0.1, application/*",
    ]
)

#: ``Accept`` values that do not: the answer is the JSON of §2.2 (None: no ``Accept`` sent)
JSON_ACCEPTS: st.SearchStrategy[str | None] = st.sampled_from(
    [
        None,
        "*/*",
        "application/json",
        "text/*",
        "text/event-stream;q=0",
        "application/json, text/event-stream;q=0.9",
        "text/event-stream;q=0.2, application/json;q=0.3",
    ]
)


def post_stream(
    http: httpx.Client,
    body: Any,
    *,
    cid: str | None = None,
    key: str | None = None,
    after: int | None = None,
    accept: str = STREAM_ACCEPT,
    replayed: bool = False,
    timeout: float = 30.0,
) -> StreamReader:
    """Create (or replay, with ``key``) and stream: the open answer, its head and created block
    checked (``reader.created``); the caller reads the events and closes it."""
    headers = {"Content-Type": "application/json", "Accept": accept}
    if cid is not None:
        headers["X-Correlation-ID"] = cid
    if key is not None:
        headers["Idempotency-Key"] = key
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    request = http.build_request(
        "POST", "/v1/jobs", content=json.dumps(body).encode(), headers=headers
    )
    sent = cid if cid is not None and is_valid_correlation_id(cid) else None
    reader = StreamReader(http, "", create=request, sent_correlation=sent, timeout=timeout)
    try:
        _check_head(reader, replayed)
    except BaseException:
        reader.close()
        raise
    return reader


def _check_head(reader: StreamReader, replayed: bool) -> None:
    r = reader.response
    where = f"POST /v1/jobs (Accept: {r.request.headers.get('accept')!r})"
    job_id = r.headers.get("x-job-id")
    reader.job_id = job_id or ""
    reader.check_opened(200 if replayed else 201)
    expect(bool(job_id), f"{where} -> {r.status_code}: no X-Job-ID")
    location = r.headers.get("location", "")
    expect(location.endswith(f"/v1/jobs/{job_id}"), f"{where}: Location {location!r}")
    content_location = r.headers.get("content-location")
    expect(
        content_location == location + "/stream",
        f"{where}: Content-Location {content_location!r}, Location {location!r}",
    )
    flag = r.headers.get("idempotent-replayed", "")
    if replayed:
        expect(flag.lower() == "true", f"{where}: a replay with Idempotent-Replayed {flag!r}")
    else:
        expect(not flag, f"{where}: a new job with Idempotent-Replayed {flag!r}")
    envelope = reader.read_created()
    created: Mapping[str, Any] = envelope["payload"]
    expect(created["job_id"] == job_id, f"{where}: created {created}, X-Job-ID {job_id!r}")
    expect(created["status_url"] == location, f"{where}: created {created}, Location {location}")
    expect(created["sse_url"] == content_location, f"{where}: created {created}")
    expect(
        created["correlation_id"] == envelope["correlation_id"],
        f"{where}: created {created} in an envelope of {envelope['correlation_id']!r}",
    )
    expect(created["state"] in STATES, f"{where}: created state {created['state']!r}")
    stamp = created["created_at"]
    expect(bool(TIMESTAMP.fullmatch(stamp)), f"{where}: created_at {stamp!r}")


def created_of(reader: StreamReader) -> dict[str, Any]:
    """The seven fields of the created block (§2.2), as a JSON create answer has them."""
    assert reader.created is not None
    payload = reader.created["payload"]
    return {k: payload[k] for k in CREATED_FIELDS}

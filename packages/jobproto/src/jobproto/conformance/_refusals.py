"""Requests a service must refuse, each sent and its answer checked (docs/protocol.md §2, §5).

Every refusal is a 4xx with the one error shape, the documented ``code`` and ``field``, and the
headers every response carries. The requests themselves come from ``_strategies``. A create
refused is refused alike whether or not its ``Accept`` asks for the stream (§2.2.2): the same
JSON error, before any job exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx

from .._correlation import is_valid_correlation_id
from ._probe import check_error, expect
from ._strategies import BadCreate

__all__ = [
    "refuse_create",
    "refuse_create_cursor",
    "refuse_cursor",
    "refuse_key",
    "refuse_list",
    "refuse_oversize",
    "refuse_route",
    "refuse_unauthenticated",
    "refuse_unknown_job",
]


def refuse_create(
    http: httpx.Client, bad: BadCreate, cid: str | None, accept: str | None = None
) -> None:
    headers = {} if cid is None else {"X-Correlation-ID": cid}
    if accept is not None:
        headers["Accept"] = accept
    if bad.content_type is not None:
        headers["Content-Type"] = bad.content_type
    r = http.post("/v1/jobs", content=bad.body, headers=headers)
    sent = cid if cid is not None and is_valid_correlation_id(cid) else None
    check_error(r, status=bad.status, code=bad.code, field=bad.field, sent_correlation=sent)


def refuse_key(http: httpx.Client, key: str, accept: str | None = None) -> None:
    """An Idempotency-Key must be 1 to 255 characters (§2.2 step 4)."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if accept is not None:
        headers["Accept"] = accept
    r = http.post("/v1/jobs", content=json.dumps({"operation": "echo"}), headers=headers)
    check_error(r, status=400, code="invalid_header", field="Idempotency-Key")


def refuse_oversize(
    http: httpx.Client, limit: int, chunked: bool, accept: str | None = None
) -> None:
    """A body one byte over the limit, with a Content-Length or chunked (§2.2 step 2)."""
    head, tail = b'{"operation": "echo", "messages": ["', b'"]}'
    body = head + b"x" * (limit + 1 - len(head) - len(tail)) + tail
    content: bytes | Iterator[bytes] = body
    if chunked:  # no Content-Length: the service must count while it reads
        content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    headers = {"Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept
    r = http.post("/v1/jobs", content=content, headers=headers)
    check_error(r, status=413, code="payload_too_large")


def refuse_create_cursor(
    http: httpx.Client, accept: str, value: str, code: str, key: str | None = None
) -> None:
    """A create-and-stream's ``Last-Event-ID`` (§2.2.2): not an integer >= 0 is
    ``invalid_header``; one past the end of a job it would create is ``invalid_cursor``, and no
    job is created: with ``key`` (unused so far), the key is still free afterwards, so the same
    key with another body makes a job (``201``) instead of a ``409``. That job is cancelled."""
    headers = {"Content-Type": "application/json", "Accept": accept, "Last-Event-ID": value}
    if key is not None:
        headers["Idempotency-Key"] = key
    body = json.dumps({"operation": "echo", "messages": ["refused"]})
    r = http.post("/v1/jobs", content=body, headers=headers)
    check_error(r, status=400, code=code, field="Last-Event-ID")
    if key is None:
        return
    other = {"Content-Type": "application/json", "Idempotency-Key": key}
    r = http.post("/v1/jobs", content=json.dumps({"operation": "echo"}), headers=other)
    expect(
        r.status_code == 201,
        f"the key of a refused create-and-stream was bound to a job: {r.status_code} {r.text!r}",
    )
    http.delete(f"/v1/jobs/{r.json()['job_id']}")


def refuse_unknown_job(http: httpx.Client, job_id: str, method: str) -> None:
    """Unknown and malformed ids alike are ``404 job_not_found`` (§2, §6.3)."""
    path = f"/v1/jobs/{quote(job_id, safe='%')}"
    if method == "stream":
        method, path = "get", path + "/stream"
    r = http.request(method.upper(), path)
    check_error(r, status=404, code="job_not_found", field="job_id")


def refuse_list(http: httpx.Client, params: dict[str, str], code: str, field: str) -> None:
    check_error(http.get("/v1/jobs", params=params), status=400, code=code, field=field)


def refuse_route(http: httpx.Client, method: str, path: str, status: int, code: str) -> None:
    """No such path: 404; no such method on a path: 405 with ``Allow`` (§2.8)."""
    r = http.request(method, path)
    check_error(r, status=status, code=code, no_store=False)
    if status == 405:
        expect(bool(r.headers.get("allow")), f"{method} {path} -> 405 without Allow")


def refuse_cursor(http: httpx.Client, job_id: str, value: str, code: str, header: bool) -> None:
    """A stream cursor that is no integer >= 0 is refused as a bad header or query parameter;
    one past the job's last_seq is ``invalid_cursor`` (§2.6, §4.6)."""
    path = f"/v1/jobs/{job_id}/stream"
    if header:
        name = "Last-Event-ID"
        code = code.replace("invalid_query", "invalid_header")
        r = http.get(path, headers={name: value})
    else:
        name = "after"
        r = http.get(path, params={name: value})
    check_error(r, status=400, code=code, field=name)


#: what a request presents instead of the service's token
_CREDENTIALS = {
    "none": None,
    "wrong": "Bearer conformance-wrong-token",
    "not_bearer": "Basic Y29uZm9ybWFuY2U6d3Jvbmc=",
}


def refuse_unauthenticated(
    http: httpx.Client, credential: str, method: str, job_ids: list[str]
) -> None:
    """A request without the service's token (``credential`` ``none``), with a wrong one or
    another scheme is ``401 unauthorized`` with ``WWW-Authenticate: Bearer``, whatever the job:
    the answers for ``job_ids`` (one that exists, one that does not) are identical, so a refusal
    never says whether a job exists (§Authentication). ``create`` and the list are 401 too.

    ``http`` carries the token by default: this request has its ``Authorization`` replaced."""
    targets: list[tuple[str, str]]
    if method == "create":
        targets = [("POST", "/v1/jobs"), ("GET", "/v1/jobs")]
    else:
        suffix = "/stream" if method == "stream" else ""
        verb = "GET" if method == "stream" else method.upper()
        targets = [(verb, f"/v1/jobs/{quote(job_id, safe='%')}{suffix}") for job_id in job_ids]
    answers = []
    for verb, path in targets:
        content = b'{"operation": "echo"}' if verb == "POST" else None
        request = http.build_request(
            verb, path, content=content, headers={"Content-Type": "application/json"}
        )
        value = _CREDENTIALS[credential]
        if value is None:
            del request.headers["Authorization"]
        else:
            request.headers["Authorization"] = value
        r = http.send(request)
        error = check_error(r, status=401, code="unauthorized")
        challenge = r.headers.get("www-authenticate", "")
        expect(
            challenge.split(" ", 1)[0].lower() == "bearer",
            f"{verb} {path} -> 401 with WWW-Authenticate {challenge!r}, not Bearer",
        )
        answers.append((verb, dict(error), challenge))
    if method != "create":
        expect(
            all(answer == answers[0] for answer in answers),
            f"{method} without a valid token: the answers differ by job id, so they say which "
            f"jobs exist: {answers}",
        )

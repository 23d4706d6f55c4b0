"""The HTTP endpoints of jobproto/1 (docs/protocol.md §Endpoints), as Starlette routes.

Every endpoint answers a refused request with the one error shape and a 4xx, and every response
carries ``X-Correlation-ID`` (the client's when well formed, else a new one), whether or not the
correlation middleware is installed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .._correlation import CORRELATION_HEADER, accept_correlation_id, is_valid_job_id
from .._errors import JobNotFound, RequestError
from .._narration import MAX_DEPTH, bind_job
from .._registry import Job
from .._states import JobState
from .._tracing import trace_headers_from
from .._wire import CREATED_FIELDS, encode_created_frame, format_timestamp
from ._openapi import openapi_document
from ._service import JobHandle, JobService
from ._stream import stream_job

__all__ = ["job_routes", "read_json_body", "status_json", "wants_event_stream"]

MAX_PAGE = 100
DEFAULT_PAGE = 50


def _ts(value: float | None) -> str | None:
    return None if value is None else format_timestamp(value)


def status_json(
    handle: JobHandle | Job, root: str = "", prefix: str = "/v1/jobs"
) -> dict[str, Any]:
    """A job's status document (§2.3), from its handle or the job itself (a store's snapshot)."""
    job = handle if isinstance(handle, Job) else handle.job
    error = None if job.error is None else {"code": job.error.code, "message": job.error.message}
    return {
        "job_id": job.id,
        "operation": job.operation,
        "state": job.state.value,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "last_seq": job.last_seq,
        "correlation_id": job.correlation_id,
        "result": job.result,
        "error": error,
        "sse_url": f"{root}{prefix}/{job.id}/stream",
        "status_url": f"{root}{prefix}/{job.id}",
    }


def correlation_of(scope: Scope) -> str:
    """The request's correlation id (set by the middleware, or derived here without it)."""
    state = scope.setdefault("state", {})
    cid = state.get("correlation_id")
    if cid is None:
        raw = None
        for name, value in scope.get("headers", []):
            if name == b"x-correlation-id":
                raw = value.decode("latin-1")
                break
        cid = state["correlation_id"] = accept_correlation_id(raw)
    return str(cid)


def _json(
    scope: Scope, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> Response:
    headers = dict(headers or {})
    headers[CORRELATION_HEADER] = correlation_of(scope)
    headers["Cache-Control"] = "no-store"
    return JSONResponse(body, status, headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Turn a refused request into its 4xx error shape."""

    async def wrapped(request: Request) -> Response:
        with bind_job(None, correlation_id=correlation_of(request.scope)):
            try:
                return await endpoint(request)
            except RequestError as exc:
                return _error(request.scope, exc)

    return wrapped


def _error(scope: Scope, exc: RequestError) -> Response:
    """The error shape for ``exc``, with the headers it asks for (a 503's ``Retry-After``)."""
    detail = getattr(exc, "detail", None)
    if (
        detail is not None
    ):  # what the store said (its address redacted): the log's, not the client's
        logging.getLogger("jobproto.service").warning("%s: %s", scope.get("path", ""), detail)
    return _json(scope, exc.status, exc.to_json(), getattr(exc, "headers", None))


def _content_type_is_json(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "payload_too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "payload_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, or a ``RequestError``: 415 not JSON's media type, 413 over
    ``limit`` bytes (declared or read), 400 ``invalid_json`` (not JSON, NaN/Infinity, nested more
    than ``MAX_DEPTH`` levels). What ``POST /v1/jobs`` reads its body with; a service's own JSON
    routes read theirs with it too."""
    content_type = request.headers.get("content-type", "")
    if not _content_type_is_json(content_type):
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {content_type or 'none'!r}",
            field="Content-Type",
        )
    raw = await _read_body(request, limit)
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "invalid_json", _TOO_DEEP) from None
    if _too_deep(body):
        # Parameters echoed into a result or an event must still encode: the same bound as
        # narration's (json would fail on them later, as the job's result).
        raise RequestError(400, "invalid_json", _TOO_DEEP)
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_TOO_DEEP = f"request body is nested more than {MAX_DEPTH} levels deep"


def _too_deep(body: Any) -> bool:
    """Whether ``body`` has more than ``MAX_DEPTH`` levels of arrays and objects (itself one)."""
    level = [body]
    for _ in range(MAX_DEPTH):
        level = [
            item
            for value in level
            if isinstance(value, (dict, list))
            for item in (value.values() if isinstance(value, dict) else value)
        ]
        if not level:
            return False
    return any(isinstance(value, (dict, list)) for value in level)


#: RFC 9110 §12.4.2's qvalue, ASCII only (float() also takes "1e0", "0_5", a full-width "0.5")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _qvalue(params: list[str]) -> float | None:
    """The ``q`` of one element of ``Accept`` (RFC 9110 §12.4.2): 1 without one, None when it is
    not a qvalue (the element then counts for nothing)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else None
    return 1.0


def wants_event_stream(accept: str | None) -> bool:
    """Whether ``Accept`` asks for the job's stream as the answer to its create (§2.2.2):
    ``text/event-stream`` named with a q above 0, and ``application/json`` not named with a higher
    one (``*/*`` and ``application/*`` do not name it). Media types compare case-insensitively;
    parameters other than ``q`` are ignored."""
    if not accept or "event-stream" not in accept.lower():
        return False  # the common case (no Accept, */*, application/json) parses nothing
    sse: float | None = None
    json_q: float | None = None
    for element in accept.split(","):
        media, *params = element.split(";")
        media = media.strip().lower()
        if media not in ("text/event-stream", "application/json"):
            continue
        q = _qvalue(params)
        if q is None:
            continue
        if media == "text/event-stream":
            sse = q if sse is None else max(sse, q)
        else:
            json_q = q if json_q is None else max(json_q, q)
    return sse is not None and sse > 0 and (json_q is None or json_q <= sse)


def _cursor(raw: str, name: str, code: str) -> int:
    """A stream cursor (§4.6): a decimal integer >= 0, surrounding whitespace ignored."""
    return _int_param(raw.strip(), name, 0, code=code)


def _past_the_end(name: str, after: int, last_seq: int) -> RequestError:
    return RequestError(
        400,
        "invalid_cursor",
        f"{name} {after} is past the last event of this job ({last_seq})",
        field=name,
    )


async def _replays(service: JobService, key: str | None) -> bool:
    """Whether a create with ``key`` names a job already made (a replay or a conflict)."""
    return key is not None and await service.has_key(key)


async def _handle(service: JobService, job_id: str) -> JobHandle:
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return await service.lookup(job_id)


def _int_param(
    raw: str, name: str, low: int, high: int | None = None, code: str = "invalid_query"
) -> int:
    if (
        not (raw.isascii() and raw.isdigit())  # str.isdigit() also accepts "²" and other scripts
        or len(raw) > 18
        or int(raw) < low
        or (high is not None and int(raw) > high)
    ):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RequestError(400, code, f"{name} must be an integer {bound}", field=name)
    return int(raw)


def job_routes(service: JobService, prefix: str = "/v1/jobs") -> list[BaseRoute]:
    """The routes of jobproto/1 for ``service``; mount them on any Starlette app."""
    settings = service.settings

    async def create(request: Request) -> Response:
        body = await read_json_body(request, settings.max_body_bytes)
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 255:
            raise RequestError(
                400,
                "invalid_header",
                "Idempotency-Key must be 1-255 characters",
                field="Idempotency-Key",
            )
        stream = wants_event_stream(request.headers.get("accept"))
        after = 0
        if stream:  # create-and-stream (§2.2.2): the stream's cursor, as on GET sse_url
            raw = request.headers.get("last-event-id")
            if raw:
                after = _cursor(raw, "Last-Event-ID", "invalid_header")
            if after and not await _replays(service, key):
                # A new job has no events, so any cursor is past its end: refused before the
                # job exists, after the body's own refusals (422), as a create's order says.
                service.operations.parse(body)
                raise _past_the_end("Last-Event-ID", after, 0)
        handle, created = await service.create(
            body,
            correlation_id=correlation_of(request.scope),
            trace_headers=trace_headers_from(request.headers),
            idempotency_key=key,
        )
        root = request.scope.get("root_path", "")
        out = status_json(handle, root, prefix)
        out = {k: out[k] for k in CREATED_FIELDS}
        if stream:
            if after > handle.job.last_seq:
                raise _past_the_end("Last-Event-ID", after, handle.job.last_seq)
            return _CreatedStream(
                service, handle, after, created, out, correlation_of(request.scope)
            )
        headers = {"Location": out["status_url"]}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return _json(request.scope, 201 if created else 200, out, headers)

    async def list_jobs(request: Request) -> Response:
        q = request.query_params
        unknown = set(q) - {"state", "cursor", "limit"}
        if unknown:
            name = sorted(unknown)[0]
            raise RequestError(
                400, "invalid_query", f"unknown query parameter {name!r}", field=name
            )
        state = None
        if "state" in q:
            try:
                state = JobState(q["state"])
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise RequestError(
                    400, "invalid_query", f"state must be one of {names}", field="state"
                ) from None
        limit = _int_param(q["limit"], "limit", 1, MAX_PAGE) if "limit" in q else DEFAULT_PAGE
        jobs, cursor = await service.page(state=state, cursor=q.get("cursor"), limit=limit)
        root = request.scope.get("root_path", "")
        body = {
            "jobs": [status_json(j, root, prefix) for j in jobs],
            "next_cursor": cursor,
        }
        return _json(request.scope, 200, body)

    async def status(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = await service.snapshot(job_id)
        return _json(
            request.scope, 200, status_json(job, request.scope.get("root_path", ""), prefix)
        )

    async def cancel(request: Request) -> Response:
        handle = await _handle(service, request.path_params["job_id"])
        done = await service.cancel(handle)
        body = status_json(handle, request.scope.get("root_path", ""), prefix)
        return _json(request.scope, 200 if done else 202, body)

    async def stream_cursor(request: Request, handle: JobHandle) -> int:
        raw = request.headers.get("last-event-id")
        name, code = "Last-Event-ID", "invalid_header"
        if raw is None or raw == "":
            raw, name, code = request.query_params.get("after", "0"), "after", "invalid_query"
        after = _cursor(raw, name, code)
        if after > handle.job.last_seq:
            raise _past_the_end(name, after, handle.job.last_seq)
        return after

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        with bind_job(None, correlation_id=correlation_of(scope)):
            try:
                handle = await _handle(service, request.path_params["job_id"])
                after = await stream_cursor(request, handle)
            except RequestError as exc:
                await _error(scope, exc)(scope, receive, send)
                return
        # The stream can stay open for hours: keep nothing of the request it does not need (the
        # Request with its parsed headers and query: ~0.4 KiB of an idle stream's ~18).
        del request
        headers = [(b"x-correlation-id", correlation_of(scope).encode())]
        if scope["method"] == "HEAD":  # headers only: a HEAD is no subscriber, starts nothing
            start = {"type": "http.response.start", "status": 200, "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        await stream_job(service, handle, after, scope, receive, send, headers)

    async def openapi(request: Request) -> Response:
        return _json(request.scope, 200, openapi_document(service, prefix))

    # One route per resource, dispatching on the method, so a 405 lists every allowed method
    # in its Allow header (RFC 9110, section 15.5.6).
    async def jobs(request: Request) -> Response:
        return await (create if request.method == "POST" else list_jobs)(request)

    async def job(request: Request) -> Response:
        return await (cancel if request.method == "DELETE" else status)(request)

    guarded_jobs = _guarded(jobs)

    async def jobs_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        # A create's answer can be the job's stream (§2.2.2), open for hours: as on GET sse_url,
        # it keeps nothing of the request (a function endpoint's Request, with its parsed
        # headers, would live as long as the answer).
        request = Request(scope, receive)
        response = await guarded_jobs(request)
        del request
        await response(scope, receive, send)

    return [
        Route(prefix, _RawEndpoint(jobs_endpoint), methods=["GET", "POST"]),
        Route(prefix + "/{job_id}", _guarded(job), methods=["GET", "DELETE"]),
        Route(prefix + "/{job_id}/stream", _RawEndpoint(stream), methods=["GET"]),
        Route("/openapi.json", _guarded(openapi), methods=["GET"], include_in_schema=False),
    ]


class _CreatedStream(Response):
    """The answer to a create-and-stream request (§2.2.2): ``201`` (``200`` on a replay), the
    ``created`` block, then exactly what ``GET sse_url`` with the same cursor sends; the request
    is that job's subscriber (``stream_job``), so in start mode ``on_subscribe`` it starts it."""

    def __init__(
        self,
        service: JobService,
        handle: JobHandle,
        after: int,
        created: bool,
        out: dict[str, Any],
        correlation_id: str,
    ) -> None:
        # No Response.__init__: this answer is sent by ``stream_job``, never rendered as a body.
        self.status_code = 201 if created else 200
        self.background = None
        self._service = service
        self._handle = handle
        self._after = after
        self._out = out
        headers = [
            (b"x-correlation-id", correlation_id.encode()),
            (b"location", out["status_url"].encode()),
            (b"content-location", out["sse_url"].encode()),
            (b"x-job-id", handle.job.id.encode()),
        ]
        if not created:
            headers.append((b"idempotent-replayed", b"true"))
        self._extra = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self._handle.job
        first = encode_created_frame(self._out, job.id, job.correlation_id, time.time())
        await stream_job(
            self._service,
            self._handle,
            self._after,
            scope,
            receive,
            send,
            self._extra,
            status=self.status_code,
            first=first,
        )


class _RawEndpoint:
    """Starlette treats a non-function endpoint as a raw ASGI app: the streams need one."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

"""The OpenAI-compatible API on the queen (``docs/openai.md``).

| route                                  | does                                               |
|----------------------------------------|----------------------------------------------------|
| ``GET /v1/models``, ``/v1/models/{m}`` | the models the hives have                          |
| ``POST /v1/chat/completions``          | a chat completion (``stream`` or not)              |
| ``POST /v1/completions``               | a text completion (``stream`` or not)              |
| ``GET /v1/chat/completions/{id}``      | the same completion again: whole, or the rest of   |
| ``GET /v1/completions/{id}``           | its stream (``stream=true&starting_after=SEQ``)    |

Each completion is one ``completion`` job (``openai_jobs``), created in-process as
``POST /v1/jobs`` would create it; the answer is read from the job's log with a cursor, as a
jobproto stream reads it (``openai_stream``), and written in OpenAI's format (``openai_wire``).
Each chunk carries ``id: <seq>``, the job event it came from, so the rest of a stream can be read
again from ``GET /v1/jobs/{job_id}/stream`` (jobproto's events) or from the completion's own route
(OpenAI's chunks), either with ``Last-Event-ID``. A streamed answer sends its headers once the job
has its first token or has ended: a completion that fails before its first token is an HTTP error
with OpenAI's error object, not a 200 that breaks off.

Every reader (streamed or not) counts itself in ``JobHandle.streams`` while it waits; the job
cancels itself once nobody has read it for ``abandon_grace`` seconds (``openai_jobs``).

Who may: the keeper's token (scope ``jobs``) is the API key; body limits are the job routes'.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from jobproto import JobNotFound, RequestError, is_valid_job_id
from jobproto.asgi import (
    JobHandle,
    JobService,
    read_json_body,
    require_scope,
    trace_headers_from,
)
from rbee_contracts.auth import JOBS_SCOPE
from rbee_contracts.completion import CompletionParams

from .openai_stream import JOB_ID_HEADER, answer, correlation, error_response, headers
from .openai_wire import (
    CHAT,
    TEXT,
    Kind,
    OpenAIError,
    StreamShape,
    field_to_param,
    job_id_of,
    openai_error_body,
    parse_request,
)
from .queen import Queen

__all__ = ["JOB_ID_HEADER", "OpenAIErrorShape", "openai_routes"]

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Raw:
    """Starlette serves an endpoint that is no function as a plain ASGI app."""

    def __init__(self, app: Endpoint) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class OpenAIApi:
    def __init__(self, queen: Queen) -> None:
        self.queen = queen
        #: how each completion created here is streamed (``include_usage``), by job id
        self._shapes: dict[str, StreamShape] = {}

    @property
    def service(self) -> JobService:
        if self.queen.jobs is None:
            raise RuntimeError("the queen has no job service (build it with create_app)")
        return self.queen.jobs

    # -- GET /v1/models ----------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return error_response(request.scope, OpenAIError.from_request_error(exc))
        data = [_model(name, when) for name, when in sorted(self._models().items())]
        return JSONResponse({"object": "list", "data": data}, headers=headers(request.scope))

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return error_response(request.scope, OpenAIError.from_request_error(exc))
        when = self._models().get(name)
        if when is None:
            error = OpenAIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            )
            return error_response(request.scope, error)
        return JSONResponse(_model(name, when), headers=headers(request.scope))

    def _models(self) -> dict[str, float]:
        """Every model a hive has, and when the queen first heard of a hive with it."""
        seen: dict[str, float] = {}
        for hive in self.queen.registry.hives():
            for name in hive.heartbeat.models:
                seen[name] = min(seen.get(name, hive.first_seen), hive.first_seen)
        return seen

    def _known(self, model: str) -> bool:
        """Whether a hive has ``model`` (by its name there: a download's alias too). One that
        only a hive that is down has is known: its request fails 503, not 404."""
        registry = self.queen.registry
        return any(
            registry.local_name(h.hive_id, model) in h.heartbeat.models for h in registry.hives()
        )

    # -- POST /v1/chat/completions, /v1/completions -----------------------------------------------

    async def create(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            require_scope(request, JOBS_SCOPE)
            body = await self._body(request)
            parsed = parse_request(kind, body)
            if not self._known(parsed.model):
                raise OpenAIError(
                    404,
                    f"The model '{parsed.model}' does not exist (GET /v1/models lists the models)",
                    param="model",
                    code="model_not_found",
                )
            try:
                handle, _ = await self.service.create(
                    parsed.job,
                    correlation_id=correlation(scope),
                    trace_headers=trace_headers_from(request.headers),
                )
            except RequestError as exc:
                param = field_to_param(exc.field, kind, body)
                raise OpenAIError.from_request_error(exc, param) from None
        except RequestError as exc:
            await error_response(scope, OpenAIError.from_request_error(exc))(scope, receive, send)
            return
        except OpenAIError as exc:
            await error_response(scope, exc)(scope, receive, send)
            return
        del request
        shape = StreamShape(
            kind, handle.job_id, int(handle.job.created_at), parsed.model, parsed.include_usage
        )
        self._remember(shape)
        await answer(self.service, handle, shape, parsed.stream, 0, scope, receive, send)

    async def _body(self, request: Request) -> Any:
        try:
            return await read_json_body(request, self.service.settings.max_body_bytes)
        except RequestError as exc:
            raise OpenAIError.from_request_error(exc) from None

    def _remember(self, shape: StreamShape) -> None:
        # bounded by the job service's own retention: entries of removed jobs go
        if len(self._shapes) > len(self.service.handles) + 64:
            self._shapes = {k: v for k, v in self._shapes.items() if k in self.service.handles}
        self._shapes[shape.job_id] = shape

    # -- GET /v1/chat/completions/{id}, /v1/completions/{id} --------------------------------------

    async def resume(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            require_scope(request, JOBS_SCOPE)
            handle = await self._completion(kind, request.path_params["completion_id"])
            stream, after = self._resume_query(request, handle)
        except RequestError as exc:
            await error_response(scope, OpenAIError.from_request_error(exc))(scope, receive, send)
            return
        except OpenAIError as exc:
            await error_response(scope, exc)(scope, receive, send)
            return
        del request
        if scope["method"] == "HEAD":  # headers only: no reader, nothing to wait for
            only = Response(status_code=200, headers=headers(scope, handle.job_id))
            await only(scope, receive, send)
            return
        shape = self._shapes.get(handle.job_id)
        if shape is None or shape.kind != kind:  # created through POST /v1/jobs
            params = handle.job.params
            shape = StreamShape(
                kind, handle.job_id, int(handle.job.created_at), params.model, False
            )
        await answer(self.service, handle, shape, stream, after, scope, receive, send)

    async def _completion(self, kind: Kind, completion: str) -> JobHandle:
        missing = OpenAIError(
            404, f"no completion {completion!r}", param="completion_id", code="not_found"
        )
        job_id = job_id_of(kind, completion)
        if job_id is None or not is_valid_job_id(job_id):
            raise missing
        try:
            handle = await self.service.lookup(job_id)
        except (JobNotFound, KeyError):
            raise missing from None
        params = handle.job.params
        if not isinstance(params, CompletionParams) or (params.messages is None) != (kind == TEXT):
            raise missing
        return handle

    @staticmethod
    def _resume_query(request: Request, handle: JobHandle) -> tuple[bool, int]:
        query = request.query_params
        unknown = set(query) - {"stream", "starting_after"}
        if unknown:
            name = sorted(unknown)[0]
            raise OpenAIError(
                400, f"Unrecognized query parameter: {name}", param=name, code="unknown_parameter"
            )
        raw_stream = query.get("stream", "false")
        if raw_stream not in ("true", "false"):
            raise OpenAIError(400, "'stream' must be true or false", param="stream")
        name, raw = "Last-Event-ID", request.headers.get("last-event-id") or ""
        if not raw:
            name, raw = "starting_after", query.get("starting_after", "0")
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise OpenAIError(400, f"'{name}' must be an event id (an integer)", param=name)
        after = int(raw)
        if after > handle.job.last_seq:
            raise OpenAIError(
                400,
                f"'{name}' {after} is past the last event of this completion"
                f" ({handle.job.last_seq})",
                param=name,
                code="invalid_cursor",
            )
        return raw_stream == "true", after


def _model(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "rbee"}


_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")


class OpenAIErrorShape:
    """ASGI middleware, outermost: an error answered on the OpenAI routes before they run (the
    security layer's 401, 403 and 421, the app's 404, 405 and 500: jobproto's error shape) in
    OpenAI's error object, as the routes answer their own errors."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not any(path == p or path.startswith(p + "/") for p in _PATHS):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        parts: list[bytes] = []

        async def reshape(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = openai_error_body(start["status"], b"".join(parts))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)


def openai_routes(queen: Queen) -> list[BaseRoute]:
    api = OpenAIApi(queen)
    return [
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/v1/chat/completions", _Raw(functools.partial(api.create, CHAT)), methods=["POST"]),
        Route("/v1/completions", _Raw(functools.partial(api.create, TEXT)), methods=["POST"]),
        Route(
            "/v1/chat/completions/{completion_id}",
            _Raw(functools.partial(api.resume, CHAT)),
            methods=["GET"],
        ),
        Route(
            "/v1/completions/{completion_id}",
            _Raw(functools.partial(api.resume, TEXT)),
            methods=["GET"],
        ),
    ]

"""The queen's plain JSON endpoints (not jobs): hives register and heartbeat here.

``PUT /v1/hives/{hive_id}``: register or heartbeat (idempotent: 201 the first time, 200 after);
``GET /v1/hives``: every hive with its state; ``GET /v1/hives/{hive_id}``: one. A refused request
gets the jobproto error shape ``{"error": {"code", "message", "field"}}`` and a 4xx.

Who may (``rbee_queen.security``): ``PUT /v1/hives/H`` needs scope ``hive:H`` (H's join token),
checked before the body is read; the reads need ``jobs`` (the keeper's token). Without a secret
the queen checks no tokens, and ``require_scope`` lets every call through.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jobproto import RequestError, converter
from jobproto.asgi import principal_of, require_scope
from rbee_contracts.auth import JOBS_SCOPE, hive_scope
from rbee_contracts.lifecycle import HiveState

from .queen import Queen
from .registry import parse_registration

__all__ = ["hive_routes"]

#: a heartbeat lists models and workers: generous, but bounded
MAX_BODY_BYTES = 1 << 20


async def _json_body(request: Request) -> Any:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {media or 'none'!r}",
            field="Content-Type",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "invalid_json", f"request body is not JSON: {exc}") from None


def _error(exc: RequestError) -> Response:
    return JSONResponse(exc.to_json(), exc.status, headers={"Cache-Control": "no-store"})


def hive_routes(queen: Queen) -> list[BaseRoute]:
    registry = queen.registry

    async def put_hive(request: Request) -> Response:
        hive_id = request.path_params["hive_id"]
        try:
            require_scope(request, hive_scope(hive_id))
            registration = parse_registration(hive_id, await _json_body(request))
            principal = principal_of(request)
            created = registry.register(
                registration, queen.clock(), owner=None if principal is None else principal.name
            )
        except RequestError as exc:
            return _error(exc)
        body = {
            "hive_id": hive_id,
            "state": HiveState.UP,  # it was heard just now
            "registered": created,
            "heartbeat_interval": registration.heartbeat.heartbeat_interval,
            "timeout_beats": registry.timeout_beats,
        }
        return JSONResponse(body, 201 if created else 200)

    async def list_hives(request: Request) -> Response:
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return _error(exc)
        body = converter.unstructure(queen.hive_list())
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def get_hive(request: Request) -> Response:
        hive_id = request.path_params["hive_id"]
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return _error(exc)
        if hive_id not in registry:
            error = RequestError(
                404, "hive_not_found", f"no hive {hive_id!r} is registered", field="hive_id"
            )
            return _error(error)
        now = queen.clock()
        body = converter.unstructure(
            registry.hive_detail(registry.get(hive_id), now, registry.workers(now))
        )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [
        Route("/v1/hives", list_hives, methods=["GET"]),
        Route("/v1/hives/{hive_id}", put_hive, methods=["PUT"]),
        Route("/v1/hives/{hive_id}", get_hive, methods=["GET"]),
    ]

"""``POST /v1/session``: a browser trades its bearer token for a stream cookie.

``POST`` needs a bearer token with the jobs scope (the same as ``POST /v1/jobs``) and answers
``200`` ``{"expires_at", "expires_in", "path"}`` with ``Set-Cookie`` (``StreamCookie``). The
request body is ignored, up to ``MAX_BODY`` bytes (a larger one is a 413). ``DELETE`` (with a
token, like every other path) clears the cookie. Without tokens configured
(``Security.auth`` None) the middleware never looks at the cookie, and ``POST`` still answers, so
a page works the same against an open service.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._errors import RequestError
from .._wire import format_timestamp
from ._routes import correlation_of
from ._security import Security, principal_of, require_scope

__all__ = ["SESSION_PATH", "stream_session_routes"]

SESSION_PATH = "/v1/session"
MAX_BODY = 1024


def _json(request: Request, status: int, body: object) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "X-Correlation-ID": correlation_of(request.scope)}
    return JSONResponse(body, status, headers=headers)


async def _drain(request: Request) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestError(413, "payload_too_large", f"request body over {MAX_BODY} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(413, "payload_too_large", f"request body over {MAX_BODY} bytes")


def stream_session_routes(security: Security, path: str = SESSION_PATH) -> list[BaseRoute]:
    """The session route for ``security.stream_cookie``; none when it has no cookie."""
    cookie = security.stream_cookie
    if cookie is None:
        return []

    def where(request: Request) -> tuple[str, bool]:
        root = str(request.scope.get("root_path", ""))
        return f"{root}/v1/jobs/", request.url.scheme in ("https", "wss")

    async def session(request: Request) -> Response:
        cookie_path, secure = where(request)
        if request.method == "DELETE":
            response = _json(request, 200, {"expires_in": 0, "path": cookie_path})
            response.headers["Set-Cookie"] = cookie.clear_cookie(cookie_path, secure)
            return response
        try:
            require_scope(request, security.jobs_scope)
            await _drain(request)
        except RequestError as exc:
            return _json(request, exc.status, exc.to_json())
        principal = principal_of(request)
        value, expires = cookie.issue("anonymous" if principal is None else principal.name)
        body = {
            "expires_at": format_timestamp(expires),
            "expires_in": int(cookie.lifetime),
            "path": cookie_path,
        }
        response = _json(request, 200, body)
        response.headers["Set-Cookie"] = cookie.set_cookie(value, cookie_path, secure)
        return response

    return [Route(path, session, methods=["POST", "DELETE"])]

"""Serve jobproto/1 operations from Starlette.

    import attrs

    from jobproto import Operations, narrate
    from jobproto.asgi import create_app

    @attrs.frozen
    class HelloParams:  # parameters are attrs classes; validators are enforced and published
        name: str = attrs.field(validator=attrs.validators.max_len(100))

    ops = Operations()

    @ops.operation("hello")
    async def hello(params: HelloParams) -> dict[str, str]:
        narrate("hello", f"greeting {params.name}")
        return {"greeting": f"hello {params.name}"}

    app = create_app(ops)   # uvicorn module:app

To require a bearer token (and check ``Host`` and ``Origin``), pass
``create_app(ops, security=Security(auth=TokenAuth({token: Principal("keeper", {"jobs"})})))``;
an app built by hand puts ``security_middleware(security)`` first in its middleware. For pages
in a browser, ``Security(stream_cookie=StreamCookie(key))`` plus the routes of
``stream_session_routes(security)`` let an ``EventSource`` read streams without a token in a URL.

To add the job routes to an existing app, build a ``JobService`` and use ``job_routes(service)``
with ``service.lifespan`` as (part of) the app's lifespan.
"""

from __future__ import annotations

from .._tracing import trace_headers_from
from ._app import create_app, error_handlers
from ._middleware import CorrelationMiddleware
from ._openapi import openapi_document
from ._routes import job_routes, read_json_body, status_json
from ._security import (
    Principal,
    Security,
    SecurityMiddleware,
    TokenAuth,
    principal_of,
    require_scope,
    security_middleware,
)
from ._service import JobHandle, JobService
from ._session import stream_session_routes
from ._settings import ServiceSettings
from ._stream_cookie import StreamCookie

__all__ = [
    "CorrelationMiddleware",
    "JobHandle",
    "JobService",
    "Principal",
    "Security",
    "SecurityMiddleware",
    "ServiceSettings",
    "StreamCookie",
    "TokenAuth",
    "create_app",
    "error_handlers",
    "job_routes",
    "openapi_document",
    "principal_of",
    "read_json_body",
    "require_scope",
    "security_middleware",
    "status_json",
    "stream_session_routes",
    "trace_headers_from",
]

"""``create_app``: a Starlette app serving one ``JobService``, with the error shape everywhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ExceptionHandler

from .._correlation import CORRELATION_HEADER
from .._operations import Operations
from ._middleware import CorrelationMiddleware
from ._routes import correlation_of, job_routes
from ._security import Security, security_middleware
from ._service import JobService
from ._settings import ServiceSettings

if TYPE_CHECKING:
    from ..metrics import JobMetrics

__all__ = ["create_app", "error_handlers"]

logger = logging.getLogger("jobproto.asgi")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    body = {"error": {"code": code, "message": exc.detail or code.replace("_", " ")}}
    headers = dict(exc.headers or {})
    headers[CORRELATION_HEADER] = correlation_of(request.scope)
    return JSONResponse(body, exc.status_code, headers=headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Logged by Starlette's ServerErrorMiddleware; the client gets the shape, never a traceback.
    body = {"error": {"code": "internal_error", "message": "internal server error"}}
    return JSONResponse(body, 500, headers={CORRELATION_HEADER: correlation_of(request.scope)})


def error_handlers() -> dict[Any, ExceptionHandler]:
    """Exception handlers that give a host app's 404/405/500 the jobproto error shape."""
    return {HTTPException: _http_error, Exception: _internal_error}


def _combined(
    service: JobService,
    outer: Callable[[Starlette], AbstractAsyncContextManager[None]] | None,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    if outer is None:
        return service.lifespan

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with outer(app), service.lifespan(app):
            yield

    return lifespan


def create_app(
    operations: Operations | JobService,
    settings: ServiceSettings | None = None,
    *,
    routes: Sequence[BaseRoute] = (),
    tracer_provider: TracerProvider | None = None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    security: Security | None = None,
    metrics: JobMetrics | None = None,
) -> Starlette:
    """A Starlette app speaking jobproto/1 for ``operations``; extra ``routes`` are added after.

    ``lifespan`` is the app's own: it is entered before the job service starts and left after the
    service has ended its jobs, so resources it opens outlive every job.

    ``security`` (tokens, allowed hosts and origins) is checked before anything else, by
    ``security_middleware``; without it the app answers anyone, as a library default should.

    ``metrics`` (``jobproto.metrics.JobMetrics``, the ``metrics`` extra) counts the service's
    jobs, streams and relays and serves them as ``GET /metrics`` to callers with the jobs scope.
    """
    service = (
        operations
        if isinstance(operations, JobService)
        else JobService(operations, settings, tracer_provider=tracer_provider)
    )
    extra = list(routes)
    if metrics is not None:
        from ..metrics import metrics_route  # the extra: only when asked for

        metrics.bind(service)
        scope = security.jobs_scope if security is not None else "jobs"
        extra.append(metrics_route(metrics, scope=scope))
    app = Starlette(
        routes=[*job_routes(service), *extra],
        middleware=[
            *(security_middleware(security) if security is not None else []),
            Middleware(CorrelationMiddleware),
        ],
        exception_handlers=error_handlers(),
        lifespan=_combined(service, lifespan),
    )
    app.state.jobs = service
    app.state.metrics = metrics
    return app

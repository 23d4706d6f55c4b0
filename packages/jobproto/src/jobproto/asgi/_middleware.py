"""Pure-ASGI middleware (``BaseHTTPMiddleware`` breaks disconnect detection: starlette#2620).

``CorrelationMiddleware`` gives every request a correlation id (the client's ``X-Correlation-ID``
when well formed, else a new one), makes it the current one for narration and logging while the
request is handled, and echoes it on the response.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._narration import bind_job
from ._routes import correlation_of

__all__ = ["CorrelationMiddleware"]


class CorrelationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = correlation_of(scope)
        header = (b"x-correlation-id", cid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-correlation-id" for name, _ in headers):
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        with bind_job(None, correlation_id=cid):
            await self.app(scope, receive, send_with_id)

"""The queen's live web page at ``/``: hives, workers, jobs with their narration, a chart of
tokens/s and time to first token per worker, and a prompt box (docs/web.md).

The page is static files checked in beside this module (``index.html``, ``app.js``,
``chart.js``, ``app.css``): no build step, nothing fetched from elsewhere, so it works offline.
They are public (no token: they hold no data) and served with a Content-Security-Policy that
lets the page load only its own scripts and styles and talk only to its own origin.

Everything the page shows it reads from the queen's ordinary API with the token the user enters
(kept in the browser's ``localStorage``, sent as ``Authorization: Bearer``): ``GET /v1/hives``,
``GET /v1/jobs``, ``POST /v1/jobs`` (an ``infer`` job for the prompt box) and ``DELETE``. Its
``EventSource`` streams cannot send that header: the page trades the token for a stream cookie
at ``POST /v1/session`` (``jobproto.asgi.StreamCookie``), which opens job streams only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from jobproto.asgi import Security, stream_session_routes

if TYPE_CHECKING:  # the queen's security imports this module's paths
    from ..queen import Queen

__all__ = ["PAGE_PATHS", "web_routes"]

#: the page's files: URL path -> (file beside this module, media type)
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/web/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: paths served without a token (``rbee_queen.security`` makes them public)
PAGE_PATHS: tuple[str, ...] = tuple(_FILES)

#: the page runs its own scripts and styles only, and talks to its own origin only
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # revalidate each time: a new queen's page is never mixed with an old one's script
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    here = resources.files(__name__)
    return {
        path: (here.joinpath(name).read_bytes(), media) for path, (name, media) in _FILES.items()
    }


def _serve(body: bytes, media: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return Response(body, 200, headers=_HEADERS, media_type=media)

    return endpoint


def web_routes(queen: Queen, security: Security | None = None) -> list[BaseRoute]:
    """``/`` and the page's files, and ``POST /v1/session`` when ``security`` issues stream
    cookies. The files are read once, here."""
    routes: list[BaseRoute] = [
        Route(path, _serve(body, media), methods=["GET"]) for path, (body, media) in _load().items()
    ]
    if security is not None:
        routes.extend(stream_session_routes(security))
    return routes

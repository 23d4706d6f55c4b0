"""Who may call a jobproto service, from where: bearer tokens, ``Host`` and CORS, as pure ASGI.

One middleware answers four questions in order, before any route runs (docs/protocol.md
§Authentication). Each refusal is jobproto's one error shape with ``Cache-Control: no-store``:

1. Is the request for this service? A ``Host`` outside ``allowed_hosts`` is a **421**
   ``misdirected_request`` (RFC 9110 §15.5.20): a web page that reaches a loopback service by DNS
   rebinding sends its own host name, so it is refused here. More than one ``Host`` is a **400**
   ``bad_request`` (RFC 9112 §3.2); an absolute-form target's authority stands for ``Host``.
2. Is the page it comes from allowed? A request with an ``Origin`` outside ``allowed_origins`` is a
   **403** ``origin_not_allowed``; a preflight (``OPTIONS``) from an allowed origin is answered
   here with the CORS headers (WHATWG Fetch §3.2), never ``*``.
3. Who is calling? Outside ``public_paths``, ``Authorization: Bearer <token>`` must name a known
   token, else **401** ``unauthorized`` with ``WWW-Authenticate: Bearer`` (RFC 6750 §3). The
   answer is the same for every path, so it never says whether a job exists.
4. May it touch jobs? ``/v1/jobs*`` and ``/openapi.json`` need ``jobs_scope``, else **403**
   ``forbidden``; other routes check their own scope with ``require_scope``.

Browsers: a page served by the service itself is same-origin, and its ``POST`` carries an
``Origin`` naming the service; ``allow_same_origin`` lets that through (only where ``Host`` is
checked, so a rebinding page's own origin is never "same"). An ``EventSource`` cannot send a
header, and a token must never be put in a URL: ``StreamCookie`` is a short-lived signed
capability in an HttpOnly, SameSite=Strict cookie, issued by ``POST /v1/session`` to a caller
with the jobs scope (``stream_session_routes``), that opens ``GET``/``HEAD``
``/v1/jobs/{id}/stream`` and nothing else (``_stream_cookie.py``).

The caller's ``Principal`` is left in ``scope["state"]["principal"]`` for the routes. A token is
compared against every known token in constant time (their SHA-256 digests, so the length of a
token is not measured either), and it never appears in a log line, an error or a repr: a
``Principal`` holds a name, and ``TokenAuth`` keeps only digests.

Pure ASGI, not ``BaseHTTPMiddleware``, which breaks disconnect detection of the event streams
(starlette#2620).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import attrs
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._correlation import CORRELATION_HEADER
from .._errors import RequestError
from ._routes import correlation_of
from ._stream_cookie import StreamCookie, is_stream_read

__all__ = [
    "Principal",
    "Security",
    "SecurityMiddleware",
    "StreamCookie",
    "TokenAuth",
    "principal_of",
    "require_scope",
    "security_middleware",
]

logger = logging.getLogger("jobproto.asgi")

#: paths that need ``Security.jobs_scope`` (the job routes of ``job_routes`` and their schema)
JOB_PATH_PREFIX = "/v1/jobs"
OPENAPI_PATH = "/openapi.json"

ALLOW_METHODS = "GET, POST, PUT, DELETE"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Correlation-ID, "
    "traceparent, tracestate"
)
MAX_AGE = "600"
#: longest ``Host`` or ``Origin`` repeated in a refusal's message (they come from the caller)
_ECHO_LIMIT = 200


def _scopes(value: Iterable[str]) -> frozenset[str]:
    # a named converter, not ``frozenset``: mypy's attrs plugin cannot type a generic one
    if isinstance(value, str):
        raise TypeError("scopes must be a collection of scope names, not one string")
    return frozenset(value)


@attrs.frozen
class Principal:
    """An authenticated caller: a name for logs and decisions, never the token itself."""

    name: str
    scopes: frozenset[str] = attrs.field(factory=frozenset, converter=_scopes)

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def _digest(token: str) -> bytes:
    # surrogatepass: any str encodes, so a strange header value is an unknown token, not a crash
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenAuth:
    """Tokens and the principal each one stands for.

    ``authenticate`` compares the presented token with every known one (``hmac.compare_digest``
    over SHA-256 digests, no early exit), so how long it takes does not depend on which token
    matched, how much of one matched, or how long it is.

    Tokens that depend on the request (one per resource named in the path, say) come from
    ``candidates``, which a subclass overrides: the middleware passes the request's ASGI
    ``scope`` to ``authenticate``, which compares every candidate of that scope along with the
    fixed tokens, the same way. A subclass never compares tokens itself.
    """

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        entries: list[tuple[bytes, Principal]] = []
        for token, principal in tokens.items():
            if not token or token != token.strip():
                # the name only: the token must not show up in a traceback either
                raise ValueError(f"the token of {principal.name!r} is empty or has spaces")
            entries.append((_digest(token), principal))
        self._entries = tuple(entries)

    def candidates(self, scope: Scope | None) -> Iterable[tuple[str, Principal]]:
        """Tokens (and their principals) that are valid for the request ``scope`` only, on top
        of the fixed ones; ``scope`` is ``None`` when no request is given. None by default.

        Derive them from the scope (its ``path``, ``method``); an empty one never matches.
        """
        return ()

    def authenticate(self, presented: str, scope: Scope | None = None) -> Principal | None:
        """The principal whose token is ``presented`` (on the request ``scope``), or ``None``.
        Where two tokens match, the later one wins: a candidate over a fixed token."""
        digest = _digest(presented)
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(digest, known):
                found = principal
        for token, principal in self.candidates(scope):
            # compared even when empty, so the count of comparisons says nothing either
            if hmac.compare_digest(digest, _digest(token)) and token:
                found = principal
        return found

    @property
    def principals(self) -> tuple[Principal, ...]:
        return tuple(principal for _, principal in self._entries)

    def __repr__(self) -> str:
        names = ", ".join(repr(p.name) for p in self.principals)
        return f"TokenAuth(principals=[{names}])"


def _host_names(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError("allowed_hosts must be a sequence of host names, not one string")
    return tuple(_normal_host(host) for host in value)


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _origins(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("allowed_origins must be a sequence of origins, not one string")
    origins = tuple(origin.strip().lower().rstrip("/") for origin in value)
    if "*" in origins:
        raise ValueError("allowed_origins never takes '*': list each origin")
    return origins


@attrs.frozen
class Security:
    """What ``security_middleware`` enforces; the default enforces nothing."""

    #: tokens and their principals; ``None``: no authentication (the library default, tests)
    auth: TokenAuth | None = None
    #: host names (no port) the service answers for, case-insensitive; ``None``: any ``Host``
    allowed_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_host_names)
    #: exact origins (``https://ui.example:8443``) whose pages may call; never ``*``
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=_origins)
    #: the scope a principal needs for ``/v1/jobs*`` and ``/openapi.json``
    jobs_scope: str = "jobs"
    #: paths served without a token (answer little there: ``/health`` says "up", not what runs)
    public_paths: tuple[str, ...] = attrs.field(default=("/health",), converter=tuple)
    #: accept an ``Origin`` that is the service itself (its scheme and ``Host``), for pages it
    #: serves; honoured only with ``allowed_hosts`` set (else any page could claim it)
    allow_same_origin: bool = False
    #: the read-only stream capability for browsers (``StreamCookie``); None: tokens only
    stream_cookie: StreamCookie | None = None


def security_middleware(security: Security) -> list[Middleware]:
    """The middleware for ``security``, outermost first: for an app built by hand,
    ``Starlette(..., middleware=[*security_middleware(security), ...])``."""
    return [Middleware(SecurityMiddleware, security=security)]


def principal_of(request_or_scope: HTTPConnection | Scope) -> Principal | None:
    """The authenticated caller of a request (``None``: no token was needed or checked)."""
    scope = (
        request_or_scope.scope if isinstance(request_or_scope, HTTPConnection) else request_or_scope
    )
    principal = scope.get("state", {}).get("principal")
    return principal if isinstance(principal, Principal) else None


def require_scope(request: HTTPConnection | Scope, scope: str) -> None:
    """Refuse the request unless its caller holds ``scope``: 403 ``forbidden`` (401 on a public
    path, which has no caller). Passes when the service checks no tokens at all."""
    raw = request.scope if isinstance(request, HTTPConnection) else request
    state = raw.get("state", {})
    if "principal" not in state:  # no authentication configured: everyone may
        return
    principal = principal_of(raw)
    if principal is None:
        raise RequestError(401, "unauthorized", "this request needs a bearer token")
    if not principal.may(scope):
        raise RequestError(403, "forbidden", f"{principal.name!r} may not do this")


def _parse_host(value: str) -> str | None:
    """The host name of a ``Host`` header (RFC 9110 §7.2), without port; ``None`` if malformed."""
    value = value.strip().lower()
    if value.startswith("["):  # IPv6 literal: "[::1]" or "[::1]:8080" (RFC 3986 §3.2.2)
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return value[1:end]
    host, sep, port = value.partition(":")
    if sep and not (port.isascii() and port.isdigit()):
        return None
    return host.rstrip(".") or None


def _absolute_target(scope: Scope) -> tuple[str, str] | None:
    """The authority and path of an absolute-form request target (``GET http://host/path``,
    RFC 9112 §3.2.2), or ``None`` for any other form.

    ASGI has no field for it: uvicorn's h11 protocol leaves the whole target in ``raw_path`` (and
    ``path``), its httptools protocol keeps only the path, and jobproto's server puts the target
    back into ``raw_path`` (``jobproto._http``) so that it is checked here under both.
    """
    raw = scope.get("raw_path")
    target = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    root = scope.get("root_path", "")
    if root and target.startswith(root):
        target = target[len(root) :]
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    authority, slash, path = rest.partition("/")
    path = slash + path
    if not path:  # "http://host" means "/" (RFC 9112 §3.2.1's rule for an empty path)
        path = "/"
    if "@" in authority:  # userinfo has no place in an http(s) target (RFC 9110 §4.2.4)
        authority = ""
    return authority, path


def _bearer(value: str) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1; the scheme is
    case-insensitive, RFC 9110 §11.1), or ``None``."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _echo(value: str) -> str:
    return value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "..."


class SecurityMiddleware:
    """Pure ASGI: host, origin, token and jobs-scope checks; see the module docstring."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[str]] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), []).append(value.decode("latin-1"))
        sec = self.security

        if sec.allowed_hosts is not None:
            hosts = headers.get(b"host", [])
            if len(hosts) > 1:  # RFC 9112 §3.2: more than one Host is a 400, never "the first"
                message = "the request has more than one Host header"
                await _refuse(scope, send, 400, "bad_request", message)
                return
            target = _absolute_target(scope)
            # RFC 9112 §3.2.2: with an absolute-form target, its authority is the host and the
            # Host header is ignored, so a request for another host cannot hide behind ours
            raw_host = target[0] if target is not None else (hosts[0] if hosts else "")
            host = _parse_host(raw_host)
            if host is None or host not in sec.allowed_hosts:
                if raw_host:
                    message = f"this service does not answer for host {_echo(raw_host)!r}"
                elif target is not None:
                    message = "the request target names no host"
                else:
                    message = "the request has no Host header"
                await _refuse(scope, send, 421, "misdirected_request", message)
                return
            if target is not None:  # route it as the origin-form request it stands for
                scope["raw_path"] = target[1].encode("latin-1")
                scope["path"] = scope.get("root_path", "") + unquote(target[1])

        origin = headers.get(b"origin", [None])[0]
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and not (
            sec.allow_same_origin
            and sec.allowed_hosts is not None
            and _same_origin(origin, scope, headers.get(b"host", []))
        ):
            if origin.strip().lower().rstrip("/") not in sec.allowed_origins:
                message = f"origin {_echo(origin)!r} is not allowed"
                await _refuse(scope, send, 403, "origin_not_allowed", message)
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", CORRELATION_HEADER.encode()),
            ]
            if scope.get("method") == "OPTIONS" and b"access-control-request-method" in headers:
                await _preflight(send, origin)
                return
            send = _with_headers(send, cors)

        path: str = scope["path"]
        state: dict[str, Any] = scope.setdefault("state", {})
        if sec.auth is not None:
            principal: Principal | None = None
            if path not in sec.public_paths:
                values = headers.get(b"authorization", [])
                if not values and sec.stream_cookie is not None and is_stream_read(scope):
                    # no header: the browser's stream capability, on a stream read only
                    principal = sec.stream_cookie.principal(
                        headers.get(b"cookie", []), sec.jobs_scope
                    )
                else:
                    token = _bearer(values[0]) if len(values) == 1 else None
                    principal = None if token is None else sec.auth.authenticate(token, scope)
                if principal is None:
                    message = (
                        "this request needs a bearer token (Authorization: Bearer <token>)"
                        if not values
                        else "the bearer token is not valid"
                    )
                    await _refuse(
                        scope,
                        send,
                        401,
                        "unauthorized",
                        message,
                        [(b"www-authenticate", b"Bearer")],
                    )
                    return
                if _needs_jobs_scope(path) and not principal.may(sec.jobs_scope):
                    message = f"{principal.name!r} may not use the job routes"
                    await _refuse(scope, send, 403, "forbidden", message)
                    return
            state["principal"] = principal
        await self.app(scope, receive, send)


def _same_origin(origin: str, scope: Scope, hosts: list[str]) -> bool:
    """Whether ``origin`` is this service as the request reached it: the request's scheme and
    its one ``Host`` (RFC 6454 §4: scheme, host and port; a default port may be left out)."""
    scheme = str(scope.get("scheme", "http")).lower()
    if len(hosts) != 1:
        return False
    default = "443" if scheme in ("https", "wss") else "80"
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    want_scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or want_scheme != scheme or "/" in authority:
        return False

    def normal(value: str) -> tuple[str | None, str]:
        host = _parse_host(value)
        rest = value.strip().lower().rpartition("]")[2] if value.strip().startswith("[") else value
        port = rest.rpartition(":")[2] if ":" in rest else default
        return host, port or default

    host, port = normal(hosts[0])
    return host is not None and normal(authority) == (host, port)


def _needs_jobs_scope(path: str) -> bool:
    return path in (JOB_PATH_PREFIX, OPENAPI_PATH) or path.startswith(JOB_PATH_PREFIX + "/")


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sender


async def _preflight(send: Send, origin: str) -> None:
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-max-age", MAX_AGE.encode()),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    client = scope.get("client")
    logger.info(
        "refused %s %s from %s: %d %s",
        scope.get("method", "WEBSOCKET"),
        scope.get("path"),
        client[0] if client else "?",
        status,
        code,
    )
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # policy violation (RFC 6455)
        return
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (CORRELATION_HEADER.lower().encode(), correlation_of(scope).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""A read-only stream capability for browsers: a signed, short-lived cookie.

A browser's ``EventSource`` cannot send ``Authorization``, and a token in a URL ends up in logs
and history (docs/protocol.md §11). So a page that holds the token calls ``POST /v1/session``
with it (``stream_session_routes``) and gets this cookie back; the browser then sends the cookie
with its ``EventSource`` requests, and ``SecurityMiddleware`` accepts it for one thing only:
``GET`` (or ``HEAD``) ``/v1/jobs/{job_id}/stream`` without an ``Authorization`` header. Reading a
stream changes nothing (it may start a queued job, which is what its creator asked for), so a
stolen cookie can read what runs for at most ``lifetime`` seconds and can neither create, cancel
nor list anything.

The value is ``v1.<expiry>.<name>.<mac>``: the expiry in whole Unix seconds, the principal's
name (base64url), and HMAC-SHA256 under ``key`` of the three before it (base64url). Nothing else
is kept on the server, so any number of pages may hold one, and a new ``key`` (a restart with a
random key, or a new secret) withdraws them all. The cookie is ``HttpOnly`` (no script reads
it), ``SameSite=Strict`` (no other site's page makes the browser send it; RFC 6265bis §5.4.7),
scoped to the job routes' path, and ``Secure`` when the request came over TLS. Its value never
appears in a log line, an error or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from starlette.types import Scope

if TYPE_CHECKING:
    from ._security import Principal

__all__ = ["StreamCookie", "is_stream_read"]

#: the only requests a stream cookie opens: one job's stream (relative to the app's root path)
_STREAM_PATH = re.compile(r"/v1/jobs/[^/]+/stream")
_VERSION = "v1"
#: a cookie header longer than this is not looked into (RFC 6265 §6.1 asks for 4096 per cookie)
_MAX_COOKIE_HEADER = 8192
#: cookies of our name looked at, at most (one per path in the browser's jar, normally one)
_MAX_CANDIDATES = 4
_MAX_NAME = 200


def is_stream_read(scope: Scope) -> bool:
    """Whether the request is a ``GET``/``HEAD`` of one job's stream."""
    if scope.get("type") != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return _STREAM_PATH.fullmatch(path) is not None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) < 16:
        raise ValueError("a stream cookie key is at least 16 random bytes")
    return value


@attrs.frozen
class StreamCookie:
    """Issues and checks the stream capability (see the module docstring).

    ``key``: at least 16 random bytes (``secrets.token_bytes(32)``; a service whose tokens
    derive from one secret can derive it from that secret, so that a restart keeps pages
    working). ``lifetime``: seconds a cookie stays good; a page renews it before then.
    """

    key: bytes = attrs.field(converter=_key, repr=False)
    lifetime: float = attrs.field(default=600.0)
    name: str = "jobproto_stream"
    clock: Callable[[], float] = attrs.field(default=time.time, repr=False, eq=False)

    @lifetime.validator
    def _check_lifetime(self, attribute: Any, value: float) -> None:
        if not 1 <= value <= 86400:
            raise ValueError("a stream cookie lives between 1 s and one day")

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode("ascii"), hashlib.sha256).digest())

    def issue(self, principal_name: str) -> tuple[str, int]:
        """A cookie value for ``principal_name`` and its expiry (Unix seconds)."""
        expires = int(self.clock() + self.lifetime)
        body = f"{_VERSION}.{expires}.{_b64(principal_name[:_MAX_NAME].encode())}"
        return f"{body}.{self._mac(body)}", expires

    def check(self, value: str) -> str | None:
        """The principal name of a good, unexpired ``value``; ``None`` for any other value."""
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body).encode(), parts[3].encode("ascii", "replace")):
            return None
        if int(parts[1]) <= self.clock():
            return None
        try:
            return _unb64(parts[2]).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None

    def principal(self, cookie_headers: Iterable[str], jobs_scope: str) -> Principal | None:
        """The caller a request's ``Cookie`` headers prove, with ``jobs_scope`` (the routes it
        opens are job routes); ``None`` when none of our cookies is good."""
        from ._security import Principal

        for value in self._values(cookie_headers):
            name = self.check(value)
            if name is not None:
                return Principal(name, frozenset({jobs_scope}))
        return None

    def _values(self, cookie_headers: Iterable[str]) -> list[str]:
        found: list[str] = []
        for header in cookie_headers:
            if len(header) > _MAX_COOKIE_HEADER:
                continue
            for pair in header.split(";"):  # RFC 6265 §5.4: "name=value; name=value"
                name, sep, value = pair.strip().partition("=")
                if sep and name == self.name and len(found) < _MAX_CANDIDATES:
                    found.append(value.strip().strip('"'))
        return found

    def set_cookie(self, value: str, path: str, secure: bool) -> str:
        """The ``Set-Cookie`` header value that hands ``value`` to the browser."""
        attributes = [
            f"{self.name}={value}",
            f"Path={path}",
            f"Max-Age={int(self.lifetime)}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if secure:
            attributes.append("Secure")
        return "; ".join(attributes)

    def clear_cookie(self, path: str, secure: bool) -> str:
        """The ``Set-Cookie`` header value that makes the browser forget the cookie."""
        tail = "; Secure" if secure else ""
        return f"{self.name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{tail}"

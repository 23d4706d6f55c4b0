"""HTTP/1.1 limits uvicorn leaves open, enforced by subclasses of its two protocol classes.

uvicorn (0.54) with httptools reads a request head of any size (httptools concatenates a header
value across reads until it ends), and neither of its parsers times out a connection that opens
and sends nothing, or half a request: each costs the server memory and a descriptor for as long as
the peer likes. h11 alone bounds an unfinished head (``max_incomplete_event_size``, 16 KiB by
default) but answers 400. And when an app gives up on a response (a stream's send timed out
because the peer stopped reading), uvicorn ``close()``s the transport, which keeps the connection
and every byte buffered for it until the peer reads them, which a frozen peer never does.

The subclasses here add, for both parsers (``HttpLimits``):

* a request line plus headers over ``max_header_bytes`` is answered 431 in jobproto's error shape
  and the connection closed; reading stops there, nothing more of the head is buffered;
* a request not read whole (head and body) within ``request_read_timeout`` of the connection
  opening, or of the previous response ending, closes the connection (with a 408 when part of a
  request came and nothing of its answer was sent); an idle keep-alive connection is closed after
  ``keep_alive_timeout`` by uvicorn's own timer;
* uvicorn's access log shows each request's path without its query string, where a token
  pasted into a URL would otherwise be written in clear;
* every HTTP scope carries the ASGI extension ``jobproto.abort`` (``{"abort": callable}``): the
  app calls it to drop the connection at once (``transport.abort()``: its buffers are freed
  now). ``jobproto.asgi``'s stream calls it when a send times out; under a server without the
  extension the stream ends as before;
* and the extension ``jobproto.disconnect`` (``{"watch": callable}``): ``watch(callback)`` has
  the connection call ``callback()`` once when it is lost. ``jobproto.asgi``'s stream uses it
  instead of a task waiting in ``receive()`` (~1.4 KiB of an idle stream); under a server
  without it, the stream keeps that task.

RFC 9110 §15.5.9 (408) and RFC 6585 §5 (431).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import attrs
import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ._extensions import ABORT_EXTENSION, DISCONNECT_EXTENSION

__all__ = ["HttpLimits", "protocol_class"]

HttpParser = Literal["auto", "h11", "httptools"]

_NO_LINGER = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class HttpLimits:
    """What one HTTP/1.1 connection may cost the server before it is refused or closed."""

    #: request line plus headers; over it the answer is 431 and the connection is closed
    max_header_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    #: seconds from the connection opening (or the previous response ending) to the whole
    #: request (head and body) read; past it the connection is closed
    request_read_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: seconds an idle keep-alive connection is kept between requests
    keep_alive_timeout: float = attrs.field(default=5.0, validator=_positive)


def error_response(
    status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 response in jobproto's error shape that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"cache-control: no-store",
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _AccessLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """uvicorn's access logger without query strings: a token pasted into a URL
    (``?access_token=...``) must not reach a log in clear (docs/protocol.md §11). uvicorn logs
    the path percent-quoted, so its first ``?`` starts the query."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        args = tuple(a.partition("?")[0] if isinstance(a, str) else a for a in args)
        super().log(level, msg, *args, **kwargs)


class _Limited:
    """What both parsers' protocol classes share: the read deadline, the abort extension, the
    query-free access log and the refusals (400, 431) in jobproto's error shape.

    The read deadline runs while no request is waiting for its response: from the connection
    opening, and from each response's end (or from a request's head, for a request answered
    before its body was read) until the parser has read a whole request. A request that is read
    stops it; a long response (an SSE stream) is never cut by it.
    """

    # jobproto's own state of a connection, in slots: added to uvicorn's instance dict it made
    # that dict grow past its shared size (~1.2 KiB more per connection, docs/benchmarks.md)
    __slots__ = (
        "_app_inner",
        "_extension",
        "_lost",
        "_on_lost",
        "_read_timer",
        "_request_begun",
        "_requests_read",
        "_responses_done",
    )

    limits: ClassVar[HttpLimits] = HttpLimits()
    #: called once when the connection is lost (the ``jobproto.disconnect`` extension)
    _on_lost: Callable[[], object] | None
    # set by uvicorn's protocol classes
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    app: Any
    cycle: Any
    access_logger: Any
    server_state: ServerState

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)  # type: ignore[misc]
        self._lost = True
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused (``msg`` is its own wording)."""
        if self._head_too_large():
            self._refuse_head()
        else:
            self._refuse_malformed()

    def _head_too_large(self) -> bool:
        """Whether the parser stopped because the head is over ``max_header_bytes``."""
        raise NotImplementedError

    def _limits_init(self) -> None:
        self.access_logger = _AccessLog(self.access_logger)
        self._app_inner = self.app
        self.app = self._app_with_extension
        # one mapping under both extensions' names: what a response may ask of its connection
        self._extension = {"abort": self._abort, "watch": self._watch}
        self._on_lost = None
        self._lost = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._requests_read = 0
        self._responses_done = 0
        # bytes of a request came since the last response (or since the connection opened)
        self._request_begun = False

    async def _app_with_extension(self, scope: Any, receive: Any, send: Any) -> None:
        extensions = scope.setdefault("extensions", {})
        extensions[ABORT_EXTENSION] = extensions[DISCONNECT_EXTENSION] = self._extension
        await self._app_inner(scope, receive, send)

    def _watch(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` once when the connection is lost (now if it is); None: forget."""
        self._on_lost = callback
        if callback is not None and self._lost:
            self._on_lost = None
            callback()

    def _abort(self) -> None:
        """Drop the connection now: what is buffered for it is freed, the peer sees a reset."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # later sends are no-ops, receive() says disconnect
            cycle.message_event.set()
        self._stop_read_timer()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # No linger: the kernel drops what it still holds for the peer and resets the
            # connection, instead of keeping an orphan socket that waits for a reader.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        self.transport.abort()

    # -- the read deadline ------------------------------------------------------------------

    def _start_read_timer(self) -> None:
        self._stop_read_timer()
        self._read_timer = self.loop.call_later(
            self.limits.request_read_timeout, self._read_timed_out
        )

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _request_read(self) -> None:
        self._requests_read += 1
        if self._requests_read > self._responses_done:
            self._stop_read_timer()

    def _response_done(self) -> None:
        self._responses_done += 1
        self._request_begun = False
        if self._responses_done >= self._requests_read and not self.transport.is_closing():
            self._start_read_timer()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self._requests_read > self._responses_done:
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self._request_begun and not answered:
            message = f"the request was not received within {self.limits.request_read_timeout} s"
            self.transport.write(
                error_response(408, "request_timeout", message, self.server_state.default_headers)
            )
        self.transport.close()

    def _refuse_head(self) -> None:
        """Answer 431 and close: the request's head is over ``max_header_bytes``."""
        message = f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
        self._refuse(431, "request_header_too_large", message)

    def _refuse_malformed(self) -> None:
        """Answer 400 and close: the parser refused the request (a malformed head, more than one
        ``Host`` under h11, RFC 9112 §3.2), in jobproto's error shape, not uvicorn's text."""
        self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._stop_read_timer()
        self.transport.write(
            error_response(status, code, message, self.server_state.default_headers)
        )
        self.transport.close()


def _head_size(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a request line and headers as sent, give or take whitespace."""
    return len(method) + len(target) + 11 + sum(len(n) + len(v) + 4 for n, v in headers)


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


# -- h11 ---------------------------------------------------------------------------------------


class _H11Connection(h11.Connection):
    """h11's connection, which also refuses a complete head over the limit (h11 itself bounds
    only an incomplete one) and tells its owner when a request has been read."""

    def __init__(self, max_header_bytes: int, on_request_read: Any) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.on_request_read = on_request_read
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc
            raise
        if isinstance(event, h11.Request):
            size = _head_size(event.method, event.target, list(event.headers))
            if size > self.max_header_bytes:
                self.refusal = h11.RemoteProtocolError("head too large", error_status_hint=431)
                raise self.refusal
        elif isinstance(event, h11.EndOfMessage):
            self.on_request_read()
        return event


class LimitedH11Protocol(_Limited, H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _H11Connection(self.limits.max_header_bytes, self._request_read)
        # uvicorn types its keep-alive timeout as int; call_later takes any float
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]
        self._limits_init()

    def data_received(self, data: bytes) -> None:
        self._request_begun = True
        super().data_received(data)

    def _head_too_large(self) -> bool:
        refusal = self.conn.refusal if isinstance(self.conn, _H11Connection) else None
        return refusal is not None and refusal.error_status_hint == 431

    def on_response_complete(self) -> None:
        self._response_done()
        super().on_response_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_read_timer()  # the connection belongs to another protocol from here
        super().handle_websocket_upgrade(event)


# -- httptools ---------------------------------------------------------------------------------


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - jobproto[server] installs it
        return None

    class LimitedHttpToolsProtocol(_Limited, HttpToolsProtocol):
        """httptools reports a head as pieces (URL chunks, whole headers) and buffers the
        piece it is in the middle of, so the head is counted two ways: exactly from the pieces
        once it is complete, and, while it is not, as every byte read since it began (a chunk in
        which it began counts only its reported pieces, so the buffered part of a head is never
        more than the limit plus one read)."""

        __slots__ = ("_head_bytes", "_head_known", "_head_refused", "_heads_begun", "_in_head")

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]
            self._limits_init()
            self._in_head = True  # waiting for, or reading, a request head
            self._head_known = 0  # bytes of the head's complete pieces
            self._head_bytes = 0  # bytes of an unfinished head read so far
            self._heads_begun = 0
            self._head_refused = False

        def data_received(self, data: bytes) -> None:
            self._request_begun = True
            was_in_head, begun = self._in_head, self._heads_begun
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            if was_in_head and begun == self._heads_begun:
                self._head_bytes += len(data)
            else:
                self._head_bytes = self._head_known
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head()

        def _head_too_large(self) -> bool:
            return self._head_refused

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_known = 0
            self._heads_begun += 1

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._head_known += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._head_known += len(name) + len(value) + 4

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_known + 16 > self.limits.max_header_bytes:
                self._head_refused = True
                raise _HeadTooLarge  # httptools stops parsing; uvicorn then answers (431 here)
            super().on_headers_complete()
            if b"://" in self.url and not self.url.startswith(b"/"):
                # An absolute-form target (RFC 9112 §3.2.2): uvicorn keeps only its path, so
                # jobproto's Host check could not see the authority that replaces Host. Keep
                # the target without its query in raw_path, as uvicorn's h11 protocol does
                # (the app task that reads the scope has not started yet).
                target = self.url.partition(b"?")[0]
                self.scope["raw_path"] = self.root_path.encode("ascii") + target

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head_known = 0
            self._head_bytes = 0
            self._request_read()

        def on_response_complete(self) -> None:
            self._response_done()
            super().on_response_complete()

        def handle_websocket_upgrade(self) -> None:
            self._stop_read_timer()
            super().handle_websocket_upgrade()

    return LimitedHttpToolsProtocol


_HTTPTOOLS = _httptools_protocol()


@functools.cache
def protocol_class(limits: HttpLimits, http: HttpParser = "auto") -> type[asyncio.Protocol]:
    """uvicorn's protocol class for ``http`` that enforces ``limits`` (``uvicorn.Config(http=)``).

    "auto" is uvicorn's own choice: httptools where it is installed, h11 otherwise.
    """
    if http == "h11" or (http == "auto" and _HTTPTOOLS is None):
        base: type[asyncio.Protocol] = LimitedH11Protocol
    elif _HTTPTOOLS is None:
        raise RuntimeError("http='httptools' needs httptools (pip install 'jobproto[server]')")
    else:
        base = _HTTPTOOLS
    return type(base.__name__, (base,), {"limits": limits})

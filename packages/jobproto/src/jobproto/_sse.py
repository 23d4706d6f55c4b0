"""Sans-IO Server-Sent Events codec.

Theory of operation
-------------------
This module follows the WHATWG HTML Living Standard, section 9.2 "Server-sent events"
(https://html.spec.whatwg.org/multipage/server-sent-events.html), subsections 9.2.5
"Parsing an event stream" and 9.2.6 "Interpreting an event stream". It does no I/O:
:func:`encode` turns one event into the bytes of one block, and :class:`SSEDecoder`
turns bytes, in chunks cut anywhere, into :class:`ServerSentEvent` objects.

Parsing. The stream is UTF-8 decoded incrementally (invalid bytes become U+FFFD and one
leading U+FEFF BOM is dropped). Lines end at CRLF, a lone CR or a lone LF and at nothing
else; a CR that ends one chunk and an LF that starts the next form one line break. A line
ending at the end of the stream without a line break is never processed.

Interpreting, line by line:

* an empty line dispatches the event;
* a line starting with ":" is a comment and is ignored;
* otherwise the field name is everything before the first ":" and the value everything
  after it, less one leading space if there is one; a line without ":" is a field name
  with an empty value;
* "event" sets the event type buffer; "data" appends the value and an LF to the data
  buffer; "id" sets the last event ID buffer unless the value contains NUL; "retry" sets
  the reconnection time if the value is ASCII digits only; any other field is ignored.

Dispatching: if the data buffer is empty, the data and event type buffers are cleared and
nothing is dispatched; otherwise one trailing LF is removed from the data, and an event is
produced with the type "message" when the event type buffer is empty. The last event ID
buffer is *not* reset by dispatching; it persists until the next "id" field. At the end
of the stream an incomplete event (no blank line after it) is discarded.

Encoding emits, in order, comment lines, ``id``, ``event``, ``retry`` and ``data`` lines
(the data split on CRLF, CR and LF into one ``data:`` line each), and a blank line, which
the decoder above reads back as exactly the same event.
"""

from __future__ import annotations

import codecs
import re

import attrs

__all__ = ["SSEDecoder", "ServerSentEvent", "encode", "encode_comment"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_utf8_decode = codecs.utf_8_decode


@attrs.frozen(slots=True)
class ServerSentEvent:
    """One dispatched event."""

    event: str = "message"
    """The event type; "message" when the block had no (or an empty) event field."""
    data: str = ""
    """The data lines of the block joined with LF."""
    id: str = ""
    """The decoder's last event ID buffer at dispatch time."""
    retry: int | None = None
    """A valid retry value seen in this block, if any (informational)."""


def _split_lines(text: str) -> list[str]:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _check_field(name: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")


def encode(
    *,
    data: str | None = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event block as UTF-8 bytes, ending with a blank line.

    ``data`` may contain any newlines (each line becomes a ``data:`` line; ``""`` gives
    one empty ``data:`` line, which decodes to ``""``). ``id`` and ``event`` must not
    contain CR or LF, nor ``id`` NUL; ``retry`` must be a non-negative int (milliseconds).
    Raises ``ValueError`` (``TypeError`` for a non-int retry) on misuse, including a
    block with no field at all.
    """
    parts: list[str] = []
    if comment is not None:
        if "\n" in comment or "\r" in comment:
            comment = "\n: ".join(_split_lines(comment))
        parts.append(f": {comment}\n")
    if id is not None:
        _check_field("id", id)
        if "\0" in id:
            raise ValueError(f"SSE id must not contain NUL: {id!r}")
        parts.append(f"id: {id}\n")
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if retry is not None:
        if type(retry) is not int:
            raise TypeError(f"SSE retry must be an int, not {type(retry).__name__}")
        if retry < 0:
            raise ValueError(f"SSE retry must be non-negative: {retry}")
        parts.append(f"retry: {retry}\n")
    if data is not None:
        if "\n" in data or "\r" in data:
            data = "\ndata: ".join(_split_lines(data))
        parts.append(f"data: {data}\n")
    if not parts:
        raise ValueError("an SSE block needs at least one of data, event, id, retry, comment")
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment-only block (``: text``), e.g. a keepalive; it dispatches nothing."""
    return encode(comment=text)


class SSEDecoder:
    """Incremental decoder: bytes in, events out. Follows the WHATWG algorithm.

    After :meth:`close` the decoder may be fed a new stream (e.g. after reconnecting);
    :attr:`last_event_id` and :attr:`retry` are kept across streams.
    """

    __slots__ = (
        "_block_retry",
        "_data",
        "_event",
        "_last_event_id",
        "_pending",
        "_retry",
        "_skip_lf",
        "_start",
        "_undecoded",
    )

    def __init__(self) -> None:
        self._undecoded = b""  # an incomplete UTF-8 sequence at the end of the last chunk
        self._start = True  # nothing decoded yet: a leading BOM is to be dropped
        self._pending: list[str] = []  # the current, unterminated line (no CR/LF inside)
        self._skip_lf = False  # the last chunk ended with CR: drop an LF that follows
        self._data: list[str] = []  # data buffer, as lines (spec: value + LF each)
        self._event = ""
        self._block_retry: int | None = None
        self._last_event_id = ""
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The spec's last event ID buffer (send it as ``Last-Event-ID`` on reconnect)."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The last valid reconnection time seen, in milliseconds, or None."""
        return self._retry

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; return the events completed by it (possibly none)."""
        if self._undecoded:
            chunk = self._undecoded + chunk
        # The C codec directly (codecs' incremental decoders are Python wrappers around it).
        text, used = _utf8_decode(chunk, "replace", False)
        self._undecoded = bytes(chunk[used:]) if used < len(chunk) else b""
        if not text:
            return []
        if self._start:
            self._start = False
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        has_cr = "\r" in text
        if not has_cr and "\n" not in text:
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending.clear()
        if has_cr:
            lines = _LINE_BREAK.split(text)
            self._skip_lf = text[-1] == "\r"
        else:
            lines = text.split("\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
        return self._interpret(lines)

    def close(self) -> list[ServerSentEvent]:
        """End of stream: an incomplete event is discarded, per spec. Returns ``[]``."""
        self._undecoded = b""
        self._start = True
        self._pending.clear()
        self._skip_lf = False
        self._data = []
        self._event = ""
        self._block_retry = None
        return []

    def _interpret(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        event = self._event
        block_retry = self._block_retry
        for line in lines:
            if not line:  # blank line: dispatch
                if data:
                    events.append(
                        ServerSentEvent(
                            event or "message", "\n".join(data), self._last_event_id, block_retry
                        )
                    )
                    data = []
                event = ""
                block_retry = None
                continue
            colon = line.find(":")
            if colon == 0:  # comment
                continue
            if colon < 0:
                name, value = line, ""
            else:
                name = line[:colon]
                start = colon + 2 if line[colon + 1 : colon + 2] == " " else colon + 1
                value = line[start:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                if "\0" not in value:
                    self._last_event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                block_retry = self._retry = int(value)
        self._data = data
        self._event = event
        self._block_retry = block_retry
        return events

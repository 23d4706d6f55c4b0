"""The suite's own view of the wire: requests through a plain ``httpx.Client``, streams read raw.

The conformance suite must not trust the code it checks, so it does not use ``jobproto.client``.
A stream is read twice over the same bytes: by the sans-IO ``SSEDecoder`` (WHATWG HTML §9.2.6,
"Interpreting an event stream") for the events, and by ``RawScanner`` for what the decoder hides
on purpose: comments (keepalives), whether a block carried an ``id:`` line (a gap must not, so a
client's Last-Event-ID stays put, docs/protocol.md §4.5), and that the stream opens with a
``retry:`` block (§4.1). Every read is bounded twice: httpx's read timeout per socket read, and a
deadline for the whole stream.

Failures raise ``ConformanceFailure`` (an ``AssertionError``) through ``expect``, not ``assert``:
they must hold under ``python -O`` too, and the message names the job and what was seen.
"""

from __future__ import annotations

import codecs
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs
import httpx

from .._errors import RemoteProtocolError
from .._sse import ServerSentEvent, SSEDecoder
from .._wire import decode_created, decode_envelope

__all__ = [
    "TERMINAL",
    "TIMESTAMP",
    "ConformanceFailure",
    "GapItem",
    "Item",
    "RawBlock",
    "RawScanner",
    "StreamEvent",
    "StreamReader",
    "check_error",
    "check_headers",
    "expect",
    "json_body",
]

#: the terminal event types of jobproto/1; each is also the name of the job's final state
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})

#: RFC 3339, UTC, exactly three fractional digits, ``Z`` (§2.1)
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

_ENVELOPE_KEYS = frozenset({"seq", "job_id", "correlation_id", "type", "timestamp", "payload"})
_LINE_END = re.compile(r"\r\n|\r|\n")

CursorMode = Literal["header", "query", "both"]


class ConformanceFailure(AssertionError):
    """The service under test broke jobproto/1."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


def _where(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.raw_path.decode('ascii', 'replace')}"


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ConformanceFailure(
            f"{_where(response)} -> {response.status_code}: body is not JSON: "
            f"{response.text[:200]!r}"
        ) from None


def check_headers(
    response: httpx.Response, sent_correlation: str | None = None, *, no_store: bool = True
) -> str:
    """Every response carries ``X-Correlation-ID`` (the client's when well formed, §6.1); those
    of the ``/v1/jobs`` endpoints also ``Cache-Control: no-store`` (§2). Returns the id."""
    where = f"{_where(response)} -> {response.status_code}"
    cid: str | None = response.headers.get("x-correlation-id")
    expect(bool(cid), f"{where} has no X-Correlation-ID")
    assert cid is not None
    if sent_correlation is not None and cid != sent_correlation:
        expect(False, f"{where}: sent X-Correlation-ID {sent_correlation!r}, got {cid!r} back")
    if no_store:
        cache = response.headers.get("cache-control", "")
        expect("no-store" in cache.lower(), f"{where}: Cache-Control {cache!r}, not no-store")
    return cid


def check_error(
    response: httpx.Response,
    *,
    status: int | None = None,
    code: str | None = None,
    field: str | None = None,
    sent_correlation: str | None = None,
    no_store: bool = True,
) -> Mapping[str, Any]:
    """A refused request: a 4xx (``status`` if given) with the one error shape (§5.1)."""
    where = _where(response)
    got = response.status_code
    if not 400 <= got < 500 or (status is not None and got != status):
        want = status if status is not None else "a 4xx"
        expect(False, f"{where}: expected {want}, got {got}: {response.text[:300]!r}")
    ctype = response.headers.get("content-type", "")
    expect(ctype.startswith("application/json"), f"{where} -> {got}: Content-Type {ctype!r}")
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    expect(isinstance(error, dict), f"{where} -> {got}: no 'error' object in {body!r}")
    assert isinstance(error, dict)
    for key in ("code", "message"):
        expect(isinstance(error.get(key), str), f"{where}: error.{key} is not a string: {error}")
    expect(
        error.get("field") is None or isinstance(error["field"], str),
        f"{where}: error.field is not a string: {error}",
    )
    if code is not None:
        expect(error["code"] == code, f"{where}: expected error code {code!r}, got {error}")
    if field is not None:
        expect(error.get("field") == field, f"{where}: expected field {field!r}, got {error}")
    check_headers(response, sent_correlation, no_store=no_store)
    return error


# -- raw SSE framing -------------------------------------------------------------------------------


@attrs.define
class RawBlock:
    """The field lines of one block (up to a blank line); comments are counted separately."""

    fields: list[tuple[str, str]] = attrs.Factory(list)

    def names(self) -> list[str]:
        return [name for name, _ in self.fields]

    def value(self, name: str) -> str | None:
        values = [v for n, v in self.fields if n == name]
        return values[-1] if values else None


class RawScanner:
    """Splits a stream into lines and blocks, keeping comments and field names the decoder hides."""

    def __init__(self) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._text = ""
        self._block = RawBlock()
        self.comments: list[str] = []
        self.first_line: str | None = None
        self.bytes = 0

    @property
    def pending(self) -> str:
        """Text after the last complete line."""
        return self._text

    def feed(self, chunk: bytes) -> list[RawBlock]:
        """Blocks completed by ``chunk`` that hold at least one field."""
        self.bytes += len(chunk)
        self._text += self._decode(chunk)
        done: list[RawBlock] = []
        start = 0
        for match in _LINE_END.finditer(self._text):
            if match.group() == "\r" and match.end() == len(self._text):
                break  # maybe the first half of a CRLF: wait for the next chunk
            self._line(self._text[start : match.start()], done)
            start = match.end()
        self._text = self._text[start:]
        return done

    def _line(self, line: str, done: list[RawBlock]) -> None:
        if self.first_line is None:
            self.first_line = line
        if not line:
            if self._block.fields:
                done.append(self._block)
            self._block = RawBlock()
        elif line.startswith(":"):
            self.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            self._block.fields.append((name, value[1:] if value.startswith(" ") else value))


# -- stream items ----------------------------------------------------------------------------------


@attrs.frozen
class StreamEvent:
    """One log entry as a subscriber received it; ``data`` is the raw ``data:`` text."""

    seq: int
    type: str
    data: str
    envelope: Mapping[str, Any] = attrs.field(eq=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    @property
    def payload(self) -> Any:
        return self.envelope["payload"]


@attrs.frozen
class GapItem:
    """A gap frame: events ``after+1 .. first_available-1`` are no longer retained."""

    after: int
    first_available: int


Item = StreamEvent | GapItem


class StreamReader:
    """One open ``GET /v1/jobs/{id}/stream``; yields checked items, never blocks without bound.

    ``mode`` says how the cursor ``after`` travels: the ``Last-Event-ID`` header, the ``?after=``
    query, or both, with a decoy ``?after=0`` that the header must win over (§4.6).

    With ``create`` (a ``POST /v1/jobs`` asking for the stream, §2.2.2) that request is sent
    instead; its body must open with the ``created`` block (``created``: its envelope), and the
    job id (``job_id`` may be ``""``) and correlation id come from it.
    """

    def __init__(
        self,
        client: httpx.Client,
        job_id: str,
        *,
        after: int | None = None,
        mode: CursorMode = "query",
        correlation_id: str | None = None,
        timeout: float = 30.0,
        create: httpx.Request | None = None,
        sent_correlation: str | None = None,
    ) -> None:
        self.request_correlation: str | None = f"conformance-{uuid.uuid4().hex[:16]}"
        headers = {"X-Correlation-ID": self.request_correlation}
        params: dict[str, str] = {}
        if after is not None:
            if mode in ("header", "both"):
                headers["Last-Event-ID"] = str(after)
            if mode == "query":
                params["after"] = str(after)
            elif mode == "both":
                params["after"] = "0"
        self.job_id = job_id
        self.correlation_id = correlation_id
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        request = client.build_request(
            "GET", f"/v1/jobs/{job_id}/stream", params=params, headers=headers
        )
        #: the created block's envelope, once read (only on the answer to a create, §2.2.2)
        self.created: Mapping[str, Any] | None = None
        self.opens_with_created = create is not None
        if create is not None:
            request, self.request_correlation = create, sent_correlation
        self.response = client.send(request, stream=True)
        self.decoder = SSEDecoder()
        self.raw = RawScanner()
        self.items: list[Item] = []
        self.eof = False
        self._chunks: Iterator[bytes] | None = None
        self._decoded: deque[ServerSentEvent] = deque()
        self._blocks: deque[RawBlock] = deque()
        self._ready: deque[Item] = deque()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()

    def check_opened(self, status: int = 200) -> None:
        """A ``status`` ``text/event-stream`` response with the headers of §4.1."""
        r = self.response
        if r.status_code != status:
            r.read()
            expect(False, f"stream of {self.job_id}: {r.status_code} {r.text[:300]!r}")
        ctype = r.headers.get("content-type", "").lower().replace(" ", "")
        media, _, params = ctype.partition(";")
        expect(media == "text/event-stream", f"stream of {self.job_id}: content-type {ctype!r}")
        expect(params in ("", "charset=utf-8"), f"stream of {self.job_id}: content-type {ctype!r}")
        buffering = r.headers.get("x-accel-buffering")
        expect(buffering == "no", f"stream of {self.job_id}: X-Accel-Buffering {buffering!r}")
        check_headers(r, self.request_correlation)

    # -- reading -----------------------------------------------------------------------------------

    def _pull(self) -> None:
        """Read one chunk (or the end of the body) and turn what it completes into items."""
        if time.monotonic() > self.deadline:
            seen = len(self.items)
            expect(False, f"stream of {self.job_id} open after {self.timeout:g} s ({seen} items)")
        if self._chunks is None:
            self._chunks = self.response.iter_raw()
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.eof = True
            self.decoder.close()
            return
        self._decoded.extend(self.decoder.feed(chunk))
        self._blocks.extend(self.raw.feed(chunk))
        first = self.raw.first_line
        if first is not None and not self.items and not self._ready:
            expect(
                re.fullmatch(r"retry: ?[0-9]+", first) is not None,
                f"stream of {self.job_id} must open with a 'retry:' line, got {first!r}",
            )
        while self._blocks and (self._decoded or "data" not in self._blocks[0].names()):
            block = self._blocks.popleft()
            if "data" in block.names():  # only a block with data dispatches (WHATWG §9.2.6)
                sse = self._decoded.popleft()
                if self.opens_with_created and self.created is None:
                    self.created = self._created(sse, block)
                else:
                    self._ready.append(self._item(sse, block))

    def read_created(self) -> Mapping[str, Any]:
        """The created block's envelope (§2.2.2): the first block after ``retry:``."""
        while self.created is None:
            expect(not self.eof, f"stream of {self.job_id} ended before its created block")
            self._pull()
        return self.created

    def next_item(self) -> Item | None:
        """The next item, or None at the end of the body."""
        while not self._ready:
            if self.eof:
                where = f"stream of {self.job_id}"
                if self.opens_with_created:
                    expect(self.created is not None, f"{where}: no created block")
                expect(not self._decoded, f"{where}: the decoder saw events the scan did not")
                expect(not self._blocks, f"{where}: the scan saw blocks the decoder did not")
                return None
            self._pull()
        item = self._ready.popleft()
        self.items.append(item)
        return item

    def read(self, max_events: int | None = None) -> list[Item]:
        """Items until ``max_events`` events, the terminal event or the end of the body."""
        out: list[Item] = []
        events = 0
        while max_events is None or events < max_events:
            item = self.next_item()
            if item is None:
                break
            out.append(item)
            if isinstance(item, StreamEvent):
                events += 1
                if item.terminal:
                    break
        return out

    def expect_end(self) -> None:
        """The response ends right after the terminal event (§4.7): no more blocks or comments."""
        comments = len(self.raw.comments)
        item = self.next_item()
        where = f"stream of {self.job_id}"
        expect(item is None, f"{where}: {item!r} after the terminal event")
        expect(len(self.raw.comments) == comments, f"{where}: a comment after the terminal event")
        expect(not self.raw.pending, f"{where}: {self.raw.pending!r} after the terminal event")

    # -- checking ----------------------------------------------------------------------------------

    def _envelope(self, sse: ServerSentEvent) -> dict[str, Any]:
        where = f"stream of {self.job_id}"
        try:
            env = json.loads(sse.data)
        except ValueError:
            raise ConformanceFailure(f"{where}: data is not JSON: {sse.data[:200]!r}") from None
        expect(isinstance(env, dict), f"{where}: envelope is not an object: {env!r}")
        assert isinstance(env, dict)
        missing = _ENVELOPE_KEYS - set(env)
        expect(not missing, f"{where}: envelope lacks {sorted(missing)}: {env}")
        expect(env["job_id"] == self.job_id, f"{where}: envelope of job {env['job_id']!r}")
        cid = env["correlation_id"]
        if self.correlation_id is not None and cid != self.correlation_id:
            expect(False, f"{where}: correlation_id {cid!r}, the job's is {self.correlation_id!r}")
        expect(env["type"] == sse.event, f"{where}: event: {sse.event!r} but type {env['type']!r}")
        stamp = env["timestamp"]
        ok = isinstance(stamp, str) and TIMESTAMP.fullmatch(stamp) is not None
        expect(ok, f"{where}: timestamp {stamp!r}")
        try:
            decode_envelope(sse.data)
        except (RemoteProtocolError, ValueError, TypeError, AttributeError) as exc:
            raise ConformanceFailure(f"{where}: bad envelope {env}: {exc}") from None
        return env

    def _created(self, sse: ServerSentEvent, block: RawBlock) -> Mapping[str, Any]:
        """The created block (§2.2.2): no ``id:`` line, seq null, no origin, the create's fields."""
        where = f"answer to a create-and-stream of {self.job_id or 'a new job'}"
        expect(sse.event == "created", f"{where}: the first block is {sse.event!r}, not created")
        expect("id" not in block.names(), f"{where}: the created block has an id: line: {block}")
        try:
            env = json.loads(sse.data)
            decode_created(sse.data)
        except (ValueError, RemoteProtocolError) as exc:
            raise ConformanceFailure(
                f"{where}: bad created block {sse.data[:300]!r}: {exc}"
            ) from None
        missing = _ENVELOPE_KEYS - set(env)
        expect(not missing, f"{where}: created envelope lacks {sorted(missing)}: {env}")
        expect(env["seq"] is None, f"{where}: created envelope seq is {env['seq']!r}, not null")
        expect("origin" not in env, f"{where}: a created block has an origin: {env}")
        stamp = env["timestamp"]
        ok = isinstance(stamp, str) and TIMESTAMP.fullmatch(stamp) is not None
        expect(ok, f"{where}: timestamp {stamp!r}")
        if self.job_id:
            expect(env["job_id"] == self.job_id, f"{where}: created block of {env['job_id']!r}")
        self.job_id = env["job_id"]
        cid = env["correlation_id"]
        if self.correlation_id is not None:
            expect(cid == self.correlation_id, f"{where}: correlation_id {cid!r}")
        self.correlation_id = cid
        return dict(env)

    def _item(self, sse: ServerSentEvent, block: RawBlock) -> Item:
        where = f"stream of {self.job_id}"
        if sse.event == "created":
            expect(False, f"{where}: a created block, which only opens a create's answer: {block}")
        env = self._envelope(sse)
        if sse.event == "gap":
            if "id" in block.names():
                expect(False, f"{where}: a gap block has an id: line: {block}")
            expect(env["seq"] is None, f"{where}: gap envelope seq is {env['seq']!r}, not null")
            expect("origin" not in env, f"{where}: a gap has an origin: {env}")
            p = env["payload"]
            expect(isinstance(p, dict), f"{where}: gap payload {p!r}")
            after, first, lost = p.get("after"), p.get("first_available"), p.get("lost")
            expect(
                all(type(v) is int for v in (after, first, lost)),
                f"{where}: gap payload fields are not integers: {p!r}",
            )
            assert isinstance(after, int) and isinstance(first, int)
            expect(lost == first - after - 1 and lost > 0, f"{where}: inconsistent gap {p!r}")
            return GapItem(after, first)
        raw_id = block.value("id")
        if raw_id is None:
            expect(False, f"{where}: event block without id: line: {block}")
        seq = env["seq"]
        expect(type(seq) is int and seq >= 1, f"{where}: envelope seq {seq!r}")
        expect(raw_id == str(seq) == sse.id, f"{where}: id: {raw_id!r} but seq {seq!r}")
        return StreamEvent(seq, sse.event, sse.data, env)

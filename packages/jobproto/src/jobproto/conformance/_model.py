"""What the suite knows about each job it made, and what jobproto/1 says must follow from it.

``JobRecord`` collects every observation of one job: the states seen over time (checked against the
closure of the one transition table, ``jobproto._states.transitions()``), and the first copy of
each log entry any subscriber received (every later copy must be byte-identical, §4.6). ``View`` is
one subscriber's picture of the log, stitched from its pieces across resumes: it must cover seqs
``1..n`` exactly once, each by an event or by a gap that declared it lost. ``expected_event`` is
the behaviour of the conformance operations (docs/protocol.md §9), seq by seq.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from .._narration import redact_text
from .._states import JobState, transitions
from ._probe import TERMINAL, TIMESTAMP, GapItem, Item, StreamEvent, expect

__all__ = [
    "ANY_STR",
    "Approx",
    "JobRecord",
    "Open",
    "View",
    "check_status_object",
    "expected_event",
    "expected_length",
    "expected_terminal",
    "matches",
    "reachable",
]

STATES = frozenset(s.value for s in JobState)
CANCELLED_BY_REQUEST = "cancelled by request"


@functools.cache
def _closure() -> dict[str, frozenset[str]]:
    """state -> every state reachable from it in zero or more legal transitions."""
    step: dict[str, set[str]] = {s: set() for s in STATES}
    for (src, _), dst in transitions().items():
        step[src.value].add(dst.value)
    out: dict[str, frozenset[str]] = {}
    for state in step:
        seen, todo = {state}, [state]
        while todo:
            for nxt in step[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        out[state] = frozenset(seen)
    return out


def reachable(src: str, dst: str) -> bool:
    return dst in _closure().get(src, frozenset())


# -- payload patterns ------------------------------------------------------------------------------


class _AnyStr:
    def __repr__(self) -> str:
        return "<any string>"


#: matches any string (a value the service may phrase its own way, or redact)
ANY_STR: Any = _AnyStr()


@attrs.frozen
class EndsWith:
    """A string that ends with ``suffix``: the service may say more first (where it was raised)."""

    suffix: str


@attrs.frozen
class Approx:
    """A float that the operation computes by summing steps (rounding differs by language)."""

    value: float
    tolerance: float = 1e-6


class Open(dict[str, Any]):
    """An object of the protocol: these members, and maybe more (§1.2 lets services add fields)."""


def matches(expected: Any, actual: Any) -> bool:
    if expected is ANY_STR:
        return isinstance(actual, str)
    if isinstance(expected, EndsWith):
        return isinstance(actual, str) and actual.endswith(expected.suffix)
    if isinstance(expected, Approx):
        number = isinstance(actual, (int, float)) and not isinstance(actual, bool)
        return number and abs(actual - expected.value) <= expected.tolerance
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        if not isinstance(expected, Open) and set(expected) != set(actual):
            return False
        return all(k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def _text(message: str) -> Any:
    # A service redacts secret-looking text (§7); random text rarely looks like a secret, but when
    # it does the message is only required to be a string.
    return message if redact_text(message) == message else ANY_STR


def _narrated(action: str, message: Any, fields: dict[str, Any]) -> Open:
    return Open(action=action, message=message, level="info", fields=fields)


# -- the conformance operations, seq by seq (§9) ---------------------------------------------------


def expected_length(body: Mapping[str, Any]) -> int | None:
    """How many non-terminal events the operation emits when it runs to its end (None: varies)."""
    op = body["operation"]
    if op == "echo":
        return 3 * len(body.get("messages", []))
    if op == "fail":
        return int(body.get("after", 0))
    if op == "crash":
        return 0
    if op == "burst":
        return int(body.get("count", 100))
    return None


def expected_event(body: Mapping[str, Any], seq: int) -> tuple[str, Any]:
    """(type, payload pattern) of the non-terminal event ``seq`` of a job made from ``body``."""
    op = body["operation"]
    i = seq - 1
    if op == "echo":
        messages = body.get("messages", [])
        n, kind = divmod(i, 3)
        if kind == 0:
            return "narration", _narrated("echo", _text(messages[n]), {"index": n})
        if kind == 1:
            return "data", {"index": n, "message": messages[n]}
        total = len(messages)
        return "progress", Open(
            action="echo", current=n + 1, total=total, unit="messages", message=""
        )
    if op == "fail":
        return "narration", _narrated("fail", f"step {i}", {})
    if op == "wait":
        return "narration", _narrated("wait", ANY_STR, {})
    if op == "burst":
        return "data", {"i": i, "pad": "x" * int(body.get("size", 16))}
    raise AssertionError(f"operation {op!r} emits no events")


def expected_terminal(body: Mapping[str, Any]) -> tuple[str, Any]:
    """(type, payload pattern) of the terminal event when the job runs to its end."""
    op = body["operation"]
    if op == "echo":
        return "succeeded", Open(result=body.get("result"))
    if op == "fail":
        code = body.get("code", "test_failure")
        return "failed", Open(code=code, message=_text(body.get("message", "failed on purpose")))
    if op == "crash":
        # §3.2: "<ExceptionType>: <text>", which a server may prefix (jobproto names the handler)
        message = "RuntimeError: " + body.get("message", "failed on purpose")
        expected = EndsWith(message) if _text(message) == message else ANY_STR
        return "failed", Open(code="internal_error", message=expected)
    if op == "wait":
        return "succeeded", Open(result={"waited": Approx(float(body.get("seconds", 30.0)))})
    if op == "burst":
        return "succeeded", Open(result={"count": int(body.get("count", 100))})
    raise AssertionError(f"unknown operation {op!r}")


# -- the status object (§2.1) ----------------------------------------------------------------------

_STATUS_KEYS = frozenset(
    {"job_id", "operation", "state", "created_at", "started_at", "finished_at", "last_seq"}
    | {"correlation_id", "result", "error", "sse_url", "status_url"}
)


_ERROR_KEYS = ("code", "message")


def _stamp(value: Any, nullable: bool) -> bool:
    if value is None:
        return nullable
    return isinstance(value, str) and TIMESTAMP.fullmatch(value) is not None


def check_status_object(body: Any, where: str) -> None:
    """The fields of a status and how they agree with its state, whatever the job."""
    expect(isinstance(body, dict), f"{where}: status is not an object: {body!r}")
    missing = _STATUS_KEYS - set(body)
    expect(not missing, f"{where}: status lacks {sorted(missing)}: {body}")
    state, job_id = body["state"], body["job_id"]
    expect(state in STATES, f"{where}: unknown state {state!r}")
    expect(isinstance(job_id, str), f"{where}: job_id {job_id!r}")
    for key in ("operation", "correlation_id"):
        expect(isinstance(body[key], str), f"{where}: {key} {body[key]!r}")
    expect(_stamp(body["created_at"], False), f"{where}: created_at {body['created_at']!r}")
    ran = state not in ("queued", "expired")
    ended = state in TERMINAL
    started, finished = body["started_at"], body["finished_at"]
    if state != "cancelled":  # a cancelled job may or may not have run
        expect((started is not None) == ran, f"{where}: {state} with started_at {started!r}")
    expect(_stamp(started, True), f"{where}: started_at {started!r}")
    expect((finished is not None) == ended, f"{where}: {state} with finished_at {finished!r}")
    expect(_stamp(finished, True), f"{where}: finished_at {finished!r}")
    last_seq = body["last_seq"]
    expect(type(last_seq) is int and last_seq >= 0, f"{where}: last_seq {last_seq!r}")
    if state == "queued":
        expect(last_seq == 0, f"{where}: a queued job has events (last_seq {last_seq})")
    if ended:
        expect(last_seq >= 1, f"{where}: a {state} job without its terminal event")
    if state != "succeeded":
        expect(body["result"] is None, f"{where}: {state} with result {body['result']!r}")
    error = body["error"]
    if state == "failed":
        ok = isinstance(error, dict) and all(isinstance(error.get(k), str) for k in _ERROR_KEYS)
        expect(ok, f"{where}: failed with error {error!r}")
    else:
        expect(error is None, f"{where}: {state} with error {error!r}")
    expect(body["sse_url"] == f"{body['status_url']}/stream", f"{where}: sse_url {body}")
    expect(str(body["status_url"]).endswith(f"/v1/jobs/{job_id}"), f"{where}: status_url {body}")


# -- one job ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class JobRecord:
    job_id: str
    body: dict[str, Any]
    correlation_id: str
    index: int  # creation order within this run
    states: list[str] = attrs.field(factory=list, repr=False)
    #: the first copy of each log entry any subscriber received
    log: dict[int, StreamEvent] = attrs.field(factory=dict, repr=False)
    terminal_seq: int | None = None
    idempotency_key: str | None = None
    views: list[View] = attrs.field(factory=list, repr=False)

    @property
    def operation(self) -> str:
        return str(self.body["operation"])

    def __repr__(self) -> str:
        return f"JobRecord({self.job_id!r}, {self.operation!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints drawn values with its own printer, which would list every field
        printer.text(repr(self))

    @property
    def final_state(self) -> str | None:
        last = self.states[-1] if self.states else None
        return last if last in TERMINAL else None

    def observe_state(self, state: Any, where: str) -> None:
        expect(state in STATES, f"{where}: job {self.job_id} has unknown state {state!r}")
        if self.states:
            last = self.states[-1]
            expect(
                reachable(last, state),
                f"{where}: job {self.job_id} went {last!r} -> {state!r}, which no chain of "
                f"legal transitions allows (states seen: {self.states})",
            )
        self.states.append(state)

    def observe(self, event: StreamEvent) -> None:
        """Every copy of a log entry is the same bytes; only the last entry is terminal."""
        first = self.log.setdefault(event.seq, event)
        expect(
            first.data == event.data,
            f"job {self.job_id}: seq {event.seq} was {first.data} and later {event.data}",
        )
        if event.terminal:
            if self.terminal_seq is not None and self.terminal_seq != event.seq:
                both = (self.terminal_seq, event.seq)
                expect(False, f"job {self.job_id}: terminal events at seqs {both}")
            self.terminal_seq = event.seq
        if self.terminal_seq is not None:
            last = max(self.log)
            expect(last == self.terminal_seq, f"job {self.job_id}: seq {last} after the terminal")

    def check_log(self) -> None:
        """The entries seen follow the operation's behaviour and the job's final state."""
        n = expected_length(self.body)
        terminal = self.terminal_seq
        for seq, event in sorted(self.log.items()):
            where = f"job {self.job_id} ({self.operation}) seq {seq}"
            if seq == terminal:
                continue
            expect(not event.terminal, f"{where}: terminal event before the last")
            expect(n is None or seq <= n, f"{where}: more events than the operation emits")
            typ, payload = expected_event(self.body, seq)
            if event.type != typ or not matches(payload, event.payload):
                expect(False, f"{where}: expected {typ} {payload!r}, got {event.data}")
        if terminal is None:
            return
        event = self.log[terminal]
        where = f"job {self.job_id} ({self.operation}) terminal seq {terminal}"
        if self.final_state is not None and event.type != self.final_state:
            expect(False, f"{where}: terminal event {event.type!r}, state {self.final_state!r}")
        if event.type == "cancelled":
            # the suite's only way to cancel is DELETE (it never stops the service)
            ok = matches(Open(reason=CANCELLED_BY_REQUEST), event.payload)
            expect(ok, f"{where}: {event.data}")
            return
        if event.type == "expired":
            expect(matches(Open(reason=ANY_STR), event.payload), f"{where}: {event.data}")
            expect(terminal == 1, f"{where}: an expired job never ran, yet has earlier events")
            return
        typ, payload = expected_terminal(self.body)
        if event.type != typ or not matches(payload, event.payload):
            expect(False, f"{where}: expected {typ} {payload!r}, got {event.data}")
        expect(n is None or terminal == n + 1, f"{where}: expected the terminal at seq {n}+1")

    def check_status(self, status: Mapping[str, Any], where: str) -> None:
        """A status of this job: its fields, and agreement with what its stream said."""
        check_status_object(status, where)
        expect(status["job_id"] == self.job_id, f"{where}: status of another job {status}")
        expect(status["operation"] == self.operation, f"{where}: operation {status}")
        cid = status["correlation_id"]
        expect(cid == self.correlation_id, f"{where}: correlation id {cid!r}")
        last_seq = status["last_seq"]
        if self.log:
            # the log only grows: status counts at least what subscribers have already seen
            expect(last_seq >= max(self.log), f"{where}: last_seq {last_seq} < {max(self.log)}")
        self.observe_state(status["state"], where)
        if self.terminal_seq is None or status["state"] not in TERMINAL:
            return
        event = self.log[self.terminal_seq]
        expect(status["state"] == event.type, f"{where}: {status['state']}, stream {event.data}")
        expect(last_seq == self.terminal_seq, f"{where}: last_seq {last_seq}, stream {event.data}")
        if event.type == "succeeded":
            ok = status["result"] == event.payload.get("result")
            expect(ok, f"{where}: result {status['result']!r}, stream {event.data}")
        if event.type == "failed":
            error = {"code": event.payload["code"], "message": event.payload["message"]}
            expect(status["error"] == error, f"{where}: error {status['error']}, {event.data}")


@attrs.define(eq=False)
class View:
    """One subscriber's picture of a job's log, stitched across its connections."""

    job: JobRecord
    items: list[Item] = attrs.field(factory=list, repr=False)
    cursor: int = 0  # the seq the subscriber would resume after
    finished: bool = False
    connections: int = 0

    def __repr__(self) -> str:
        return f"View({self.job!r}, cursor={self.cursor}, finished={self.finished})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def seen_seqs(self) -> list[int]:
        return [i.seq for i in self.items if isinstance(i, StreamEvent)]

    @property
    def last_seen(self) -> int:
        """The client's Last-Event-ID: the last event seen (a gap does not move it, §4.5)."""
        seqs = self.seen_seqs()
        return seqs[-1] if seqs else 0

    def rewind(self, seq: int) -> None:
        """Resuming after ``seq``: keep what came up to it, the server sends the rest again."""
        keep: list[Item] = []
        for item in self.items:
            if isinstance(item, StreamEvent) and item.seq > seq:
                break
            if isinstance(item, GapItem) and item.after >= seq:
                break
            keep.append(item)
        self.items = keep
        self.cursor = seq
        self.finished = any(isinstance(i, StreamEvent) and i.terminal for i in keep)

    def add(self, item: Item) -> None:
        where = f"subscriber of {self.job.job_id} (connection {self.connections})"
        expect(not self.finished, f"{where}: {item!r} after the terminal event")
        if isinstance(item, GapItem):
            if item.after != self.cursor:
                expect(False, f"{where}: gap after {item.after}, the cursor is {self.cursor}")
            self.cursor = item.first_available - 1
        else:
            if item.seq != self.cursor + 1:
                seen = self.seen_seqs()[-8:]
                expect(False, f"{where}: seq {item.seq} follows {self.cursor} (seen {seen})")
            self.cursor = item.seq
            self.job.observe(item)
            self.finished = item.terminal
        self.items.append(item)

    def check_against(self, replay: View) -> None:
        """Compare with a full replay taken after the job ended: nothing lost, nothing extra."""
        where = f"subscriber of {self.job.job_id}"
        expect(self.finished and replay.finished, f"{where}: compared before the end")
        if self.cursor != replay.cursor:
            expect(False, f"{where}: ended at seq {self.cursor}, the log at {replay.cursor}")
        mine = {i.seq: i.data for i in self.items if isinstance(i, StreamEvent)}
        theirs = {i.seq: i.data for i in replay.items if isinstance(i, StreamEvent)}
        missing = sorted(set(theirs) - set(mine))
        if missing:
            expect(False, f"{where}: seqs {missing[:10]} are in the log, but it got a gap")
        for seq, data in mine.items():
            if seq in theirs and data != theirs[seq]:
                expect(False, f"{where}: seq {seq}: {data} vs replay {theirs[seq]}")

"""Narration: ``narrate(action, message, **fields)`` from anywhere inside a job.

The current job lives in a context variable, bound by the adapter around each handler with
``bind_job(sink)`` (and a request's correlation id, outside any job, with
``bind_job(None, correlation_id=...)``); nothing else sets it. Tasks the handler starts copy the
context (asyncio and anyio both do, and so does ``anyio.to_thread``), so a
line narrated deep in the call tree reaches the right job's stream without anyone passing a job id
around. Every narration also goes to Python ``logging`` (logger ``jobproto.narration``) with
``job_id``, ``correlation_id`` and ``action`` as record attributes, so one correlation id finds a
request in every service's log. Outside a job, narration goes to logging only.

Secrets are redacted before anything leaves the process: values of fields named like a secret
(password, token, api_key, authorization, ...) and secret-looking spans of messages (``Bearer ...``,
``password=...``, credentials in URLs, Hugging Face and OpenAI style keys).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from ._errors import LocalProtocolError
from ._events import Data, Event, Narration, Origin, Progress
from ._merge import Merge
from ._redact import redact, redact_text

__all__ = [
    "ContextFilter",
    "JobSink",
    "bind_job",
    "current_correlation_id",
    "current_job",
    "emit_data",
    "narrate",
    "progress",
    "redact",
    "redact_text",
    "set_checkpoint",
]

logger = logging.getLogger("jobproto.narration")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JobSink(Protocol):
    """What narration (and ``jobproto.relay``) needs of a job: its ids and a non-blocking ``emit``.

    Any object with these is a sink: the ASGI adapter's ``JobHandle``, or a sink of your own (a
    test's list, a job run by another framework).
    """

    @property
    def job_id(self) -> str: ...

    @property
    def correlation_id(self) -> str: ...

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        """Append ``event``, without blocking.

        ``origin`` is where the event came from when it is re-emitted from another job (the relay
        passes the downstream service, job id, seq and that event's own origin): it must be kept
        with the event, since it goes on the wire. ``merge`` is as in ``Job.emit``; a sink may
        ignore it.
        """


_current_job: ContextVar[JobSink | None] = ContextVar("jobproto_current_job", default=None)
_current_correlation: ContextVar[str | None] = ContextVar("jobproto_correlation", default=None)


@contextmanager
def bind_job(job: JobSink | None, *, correlation_id: str | None = None) -> Iterator[JobSink | None]:
    """Inside the block, ``job`` is the current job and ``correlation_id`` the current correlation.

    This is how an adapter hands narration its job: ``with bind_job(handle): await handler(...)``
    around a handler, or ``with bind_job(None, correlation_id=cid):`` around a request that has no
    job (its logging then carries the request's correlation id). A job's correlation id is its
    own: pass none with a job, or the same one. Tasks started inside the block copy the binding
    (asyncio and anyio copy the context), and leaving the block restores what was bound before.
    Bind and leave in the same task (the rule of ``ContextVar.reset``).
    """
    if job is not None:
        if correlation_id is not None and correlation_id != job.correlation_id:
            raise LocalProtocolError(
                f"job {job.job_id} has the correlation id {job.correlation_id!r},"
                f" not {correlation_id!r}"
            )
        correlation_id = job.correlation_id
    job_token = _current_job.set(job)
    correlation_token = _current_correlation.set(correlation_id)
    try:
        yield job
    finally:
        _current_correlation.reset(correlation_token)
        _current_job.reset(job_token)


def current_job() -> JobSink | None:
    """The job whose handler (or a task it started) is running, if any."""
    return _current_job.get()


def current_correlation_id() -> str | None:
    """The correlation id of the job or request being handled, if any."""
    job = _current_job.get()
    return job.correlation_id if job is not None else _current_correlation.get()


def _log(level: int, action: str, message: str, fields: Mapping[str, Any]) -> None:
    if not logger.isEnabledFor(level):
        return
    job = _current_job.get()
    extra = {
        "job_id": job.job_id if job is not None else None,
        "correlation_id": current_correlation_id(),
        "action": action,
        "fields": fields,
    }
    logger.log(level, "%s: %s", action, message, extra=extra)


def narrate(action: str, message: str, *, level: str = "info", **fields: Any) -> None:
    """Tell the current job's subscribers (and the log) what is happening. Never blocks.

    The arguments are checked here: a mistake raises ``TypeError``/``ValueError`` naming
    ``narrate()`` at the line that made it, instead of failing the job later.
    """
    for name, text in (("action", action), ("message", message)):
        if not isinstance(text, str):
            raise TypeError(f"narrate(): {name} must be a string, got {_shown(text)}")
    if level not in _LEVELS:
        raise ValueError(f"narrate(): level must be one of {sorted(_LEVELS)}, got {level!r}")
    message = redact_text(message)
    clean = redact(fields) if fields else {}
    for key, value in clean.items():
        _check_json("narrate()", f"field {key!r}", value)
    _log(_LEVELS[level], action, message, clean)
    job = _current_job.get()
    if job is not None:
        job.emit(Narration(action, message, level, clean))


def progress(
    action: str,
    current: float,
    total: float | None = None,
    *,
    unit: str = "",
    message: str = "",
) -> None:
    """Report how far a step has come on the current job's stream (logged at debug level).

    ``current`` and ``total`` are finite numbers (``total`` may be ``None``: unknown); the
    arguments are checked here and a mistake raises ``TypeError``/``ValueError`` naming
    ``progress()``, never a protocol-invalid event.
    """
    for name, text in (("action", action), ("unit", unit), ("message", message)):
        if not isinstance(text, str):
            raise TypeError(f"progress(): {name} must be a string, got {_shown(text)}")
    _check_number("current", current)
    if total is not None:
        _check_number("total", total)
    message = redact_text(message)
    _log(logging.DEBUG, action, message or f"{current}/{total} {unit}".strip(), {})
    job = _current_job.get()
    if job is not None:
        job.emit(Progress(action, current, total, unit, message))


def emit_data(payload: Any, *, merge: Merge | None = None) -> None:
    """Emit an operation-specific ``data`` event on the current job (no-op outside a job).

    ``payload`` is any JSON value (dicts, lists, tuples, strings, finite numbers, booleans,
    ``None``); anything else raises ``TypeError``/``ValueError`` naming ``emit_data()`` and where
    in the payload it is, here, not when the event is encoded. With ``merge`` (``concat_data``
    for streamed output), the event may join the previous one while no subscriber has read it yet
    (see ``Job.emit``).
    """
    # Per token in a worker: the common payload ({"text": str, "token_ids": [int]}) is checked
    # without leaving the loop below; anything else goes through the full walk.
    if type(payload) is dict:
        for value in payload.values():
            t = type(value)
            if t is str or t is int:
                continue
            if t is list:
                for item in value:
                    if type(item) is not int:
                        break
                else:
                    continue
            _check_json("emit_data()", "payload", payload)
            break
        else:
            for key in payload:
                if type(key) is not str:
                    _check_json("emit_data()", "payload", payload)
                    break
    else:
        _check_json("emit_data()", "payload", payload)
    job = _current_job.get()
    if job is not None:
        if merge is None:
            job.emit(Data(payload))
        else:
            job.emit(Data(payload), merge=merge)


def set_checkpoint(value: Mapping[str, Any] | None) -> None:
    """Record where the current job has got to, for whoever resumes it (no-op outside a job).

    With a shared job store, a job whose replica stops is adopted by another one, which calls
    the operation's ``resume`` with the last checkpoint stored (``Operations.operation(...,
    resume=fn)``). The checkpoint is stored with the job's next events, read in the same turn
    as them: set it right after the emit it describes, and it always matches the last event a
    client can have seen. ``value`` is a JSON object (checked here), or None to clear it. A sink
    without ``set_checkpoint`` (one process, nothing to resume) ignores it.
    """
    if value is not None:
        if not isinstance(value, Mapping):
            raise TypeError(
                f"set_checkpoint(): value must be a mapping or None, got {_shown(value)}"
            )
        _check_json("set_checkpoint()", "value", value)
    job = _current_job.get()
    setter = getattr(job, "set_checkpoint", None)
    if setter is not None:
        setter(value)


# -- argument checks -------------------------------------------------------------------------------

#: deeper than this is refused (a circular structure gets here too); json would raise RecursionError
MAX_DEPTH = 200


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"progress(): {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"progress(): {name} must be a finite number, got {value!r}")


def _check_json(call: str, what: str, value: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``call`` when ``value`` is not JSON."""
    problem = _json_problem(value, 0)
    if problem is not None:
        path, reason, kind = problem
        raise kind(f"{call}: {what}{path} is not JSON: {reason}")


def _json_problem(value: Any, depth: int) -> tuple[str, str, type[Exception]] | None:
    """None when json can encode ``value`` (with finite numbers); else (path, reason, kind)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return None
    if depth > MAX_DEPTH:
        return "", f"nested more than {MAX_DEPTH} levels deep (or circular)", ValueError
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return "", f"{value!r} (numbers must be finite)", ValueError
    if isinstance(value, (str, int)):  # subclasses: IntEnum, StrEnum
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            plain = isinstance(key, (str, int)) or key is None
            if not plain and not (isinstance(key, float) and math.isfinite(key)):
                return f"[{key!r}]", f"a key of type {type(key).__name__}", TypeError
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return f"[{key!r}]" + problem[0], problem[1], problem[2]
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return f"[{index}]" + problem[0], problem[1], problem[2]
        return None
    return "", f"{_shown(value)}", TypeError


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``correlation_id`` to every record logged inside a job or request.

    Attach it to a handler (``handler.addFilter(ContextFilter())``) and use ``%(correlation_id)s``
    in the format string.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = current_correlation_id() or "-"
        if getattr(record, "job_id", None) is None:
            job = _current_job.get()
            record.job_id = job.job_id if job is not None else "-"
        return True

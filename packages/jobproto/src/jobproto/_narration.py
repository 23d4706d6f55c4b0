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

import itertools
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from ._errors import LocalProtocolError
from ._events import Data, Event, Narration, Origin, Progress
from ._merge import Merge

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
]

logger = logging.getLogger("jobproto.narration")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

REDACTED = "***"

# A field is secret when one of its words is (``auth_token``, ``hf_token``, ``Authorization``), or
# two adjacent words are (``api_key``); ``max_tokens`` or ``passage`` are not.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "authorization",
        "authorisation",
        "auth",
        "cookie",
        "credential",
        "credentials",
        "apikey",
        "bearer",
    }
)
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("session", "id"), ("access", "key")}
)
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SECRET_TEXT = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?token|authorization)"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + REDACTED),
]


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


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _KEY_WORDS.findall(key)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-named fields and secret-looking strings masked."""
    if key and is_secret_key(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


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
    """Tell the current job's subscribers (and the log) what is happening. Never blocks."""
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {sorted(_LEVELS)}")
    message = redact_text(message)
    clean = redact(fields) if fields else {}
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
    """Report how far a step has come on the current job's stream (logged at debug level)."""
    message = redact_text(message)
    _log(logging.DEBUG, action, message or f"{current}/{total} {unit}".strip(), {})
    job = _current_job.get()
    if job is not None:
        job.emit(Progress(action, current, total, unit, message))


def emit_data(payload: Any, *, merge: Merge | None = None) -> None:
    """Emit an operation-specific ``data`` event on the current job (no-op outside a job).

    With ``merge`` (``concat_data`` for streamed output), the event may join the previous one
    while no subscriber has read it yet (see ``Job.emit``).
    """
    job = _current_job.get()
    if job is not None:
        if merge is None:
            job.emit(Data(payload))
        else:
            job.emit(Data(payload), merge=merge)


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

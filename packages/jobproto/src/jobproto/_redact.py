"""Redaction: secrets masked before anything leaves the process, on the stream and in the log.

Two things are masked (docs/protocol.md §7): values of fields named like a secret (password, token,
api_key, authorization, ...) and secret-looking spans of text (``Bearer ...``, ``password=...``,
credentials in URLs, Hugging Face and OpenAI style keys). ``redact`` and ``redact_text`` do it to
values; ``RedactingFilter`` does it to log records (their message, arguments and traceback text),
so a secret that reached an exception message is masked in the server's log as in the job's
``failed`` event. ``install_log_redaction()`` puts the filter on every logging handler configured
so far; jobproto's runner (``jobproto.server``) calls it, and anyone serving otherwise may.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "install_log_redaction",
    "is_secret_key",
    "redact",
    "redact_record",
    "redact_text",
]

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
# Each pattern runs on every log record (uvicorn's access log: request lines up to the 64 KiB head
# limit), so each must take time linear in the text (tests/test_redact.py tries adversarial text).
_SECRET_TEXT = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?token|authorization)"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
        ),
        r"\1\2" + REDACTED,
    ),
    # A URL's password: from :// (not from the scheme, whose repeated characters made the search
    # quadratic on text like "a.a.a..."; every scheme is still covered) through the user name and
    # a colon to the @. Each part stops at a character the next cannot take, so it is linear.
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + REDACTED),
]


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _KEY_WORDS.findall(key)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


#: ``redact`` masks whatever is nested deeper than this whole, so a circular structure ends (as
#: ``***``) instead of raising RecursionError; deeper than any JSON jobproto takes (narrate()'s
#: fields and emit_data()'s payload: 200 levels), so it is refused after redaction.
MAX_DEPTH = 256


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-named fields and secret-looking strings masked.

    What is nested more than ``MAX_DEPTH`` levels deep (a circular structure) is masked whole.
    """
    return _redacted(value, key, 0)


def _redacted(value: Any, key: str, depth: int) -> Any:
    if key and is_secret_key(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): _redacted(v, str(k), depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, "", depth + 1) for v in value]
    return value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in ``record``'s message, arguments, traceback and stack text, in place.

    The arguments are redacted one by one, so formatters that read them (uvicorn's access log)
    still find them; when a secret spans the message and an argument (``"token=%s"``) or two
    arguments, the record gets a template that renders as the redacted whole message and keeps
    its arguments, each redacted on its own (what a formatter that reads them gets). A traceback
    is formatted here (as the default ``Formatter`` would) and redacted into ``exc_text``, which
    ``logging.Formatter`` and its subclasses (uvicorn's) print; ``exc_info`` is then cleared (as
    ``logging.handlers.QueueHandler`` does), so formatters that would format the exception
    themselves (python-json-logger, Rich, Sentry) print ``exc_text`` or nothing, never the
    secret. Never raises: a message that cannot be formatted is left for its handler to report.
    """
    if getattr(record, "jobproto_redacted", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # its handler reports it; its traceback is still masked below
        message = clean = ""
    else:
        clean = redact_text(message)
    try:
        if clean != message:
            msg, args = record.msg, record.args
            if isinstance(msg, str):
                record.msg = redact_text(msg)
            if isinstance(args, tuple):
                record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in args)
            elif isinstance(args, Mapping):
                record.args = {
                    k: redact_text(v) if isinstance(v, str) else v for k, v in args.items()
                }
            if not _renders_as(record, clean):
                # The secret spans the template and an argument, or two arguments: the template
                # becomes the redacted text, with a "%.0s" (which prints nothing) for each of the
                # arguments, which stay (uvicorn's AccessFormatter unpacks its five).
                record.msg = _template_of(clean, record.args)
                record.__dict__.pop("color_message", None)  # uvicorn's other, unredacted template
                if not _renders_as(record, clean):
                    record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
            record.exc_info = None  # its text is in exc_text, redacted
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
    except Exception:  # a filter that raises would raise into the logging call
        return record
    record.jobproto_redacted = True
    return record


_PLAIN = logging.Formatter()


def _renders_as(record: logging.LogRecord, message: str) -> bool:
    try:
        return record.getMessage() == message
    except Exception:  # the redacted template no longer takes its arguments
        return False


def _template_of(message: str, args: object) -> str:
    """A template that renders as ``message`` with ``args`` (which it prints nothing of)."""
    template = message.replace("%", "%%")
    if isinstance(args, Mapping):  # a mapping may have keys the template does not name
        return template
    return template + "%.0s" * (len(args) if isinstance(args, tuple) else 1)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it sees (``redact_record``).

    On a handler it covers every record that handler writes::

        import logging

        from jobproto._redact import RedactingFilter

        handler = logging.StreamHandler()
        handler.addFilter(RedactingFilter())

    On a logger it covers only records logged on that very logger (Python's rule), which is why
    ``install_log_redaction`` puts it on handlers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_log_redaction() -> None:
    """Put a ``RedactingFilter`` on every handler logging has now (the root logger's and every
    other logger's, uvicorn's included); handlers that have one keep theirs. Call it after
    configuring logging (``logging.basicConfig``, ``dictConfig``)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())

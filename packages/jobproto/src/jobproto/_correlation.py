"""Identifiers: job ids, correlation ids, and W3C Trace Context header validation.

Job ids carry 128 random bits from ``secrets`` (more than a UUIDv4's 122), so they cannot be
guessed. A correlation id chosen by a client is kept when it is well formed (1-128 characters of
``[A-Za-z0-9._:-]``, safe in logs and headers) and replaced by a fresh one otherwise: a bad
correlation id is never a reason to refuse work. ``traceparent`` follows W3C Trace Context level 1,
section 3.2: version-format ``00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>``, all-zero ids
invalid, version ``ff`` invalid.
"""

from __future__ import annotations

import re
import secrets

__all__ = [
    "CORRELATION_HEADER",
    "accept_correlation_id",
    "is_valid_correlation_id",
    "is_valid_job_id",
    "is_valid_traceparent",
    "new_correlation_id",
    "new_job_id",
]

CORRELATION_HEADER = "X-Correlation-ID"

_CORRELATION_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_JOB_ID_RE = re.compile(r"job_[A-Za-z0-9_\-]{22}")
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def new_job_id() -> str:
    """``job_`` + 22 URL-safe characters = 128 random bits."""
    return "job_" + secrets.token_urlsafe(16)


def is_valid_job_id(value: str) -> bool:
    return _JOB_ID_RE.fullmatch(value) is not None


def new_correlation_id() -> str:
    return "corr_" + secrets.token_hex(12)


def is_valid_correlation_id(value: str) -> bool:
    return _CORRELATION_RE.fullmatch(value) is not None


def accept_correlation_id(value: str | None) -> str:
    """The client's correlation id when well formed, else a new one."""
    if value is not None and is_valid_correlation_id(value):
        return value
    return new_correlation_id()


def is_valid_traceparent(value: str) -> bool:
    m = _TRACEPARENT_RE.fullmatch(value.strip())
    if m is None:
        return False
    version, trace_id, parent_id, _flags, rest = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return False
    # Version 00 has exactly four fields; later versions may append more (forward compatibility).
    return not (version == "00" and rest)

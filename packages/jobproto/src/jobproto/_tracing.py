"""W3C Trace Context through OpenTelemetry's propagators.

A server keeps the ``traceparent``/``tracestate`` it was called with on the job, and runs the
handler inside a span whose parent is that context. Outbound jobproto calls made by the handler
inject the current context, so with an SDK configured a cascade queen -> hive -> worker is one
trace; with only the API installed the incoming context still travels unchanged. Whether an
SDK exports anything is ``jobproto.telemetry``'s business.

A job's span carries the service, operation, job id and correlation id, and at its end the job's
state (``jobproto.state``) and, for a failure, the failure code (``error.type``, status ERROR).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Status, StatusCode

from ._correlation import is_valid_traceparent
from ._events import Failed, Succeeded

__all__ = [
    "STATE_ATTRIBUTE",
    "TRACE_HEADERS",
    "inject",
    "job_span",
    "record_outcome",
    "trace_headers_from",
]

TRACE_HEADERS = ("traceparent", "tracestate")
#: the span attribute that says how the job ended: succeeded, failed or cancelled
STATE_ATTRIBUTE = "jobproto.state"


def trace_headers_from(headers: Mapping[str, str]) -> dict[str, str]:
    """The trace headers of a request worth keeping (a malformed ``traceparent`` is dropped)."""
    parent = headers.get("traceparent")
    if parent is None or not is_valid_traceparent(parent):
        return {}
    out = {"traceparent": parent.strip()}
    state = headers.get("tracestate")
    if state:
        out["tracestate"] = state
    return out


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to outbound headers."""
    propagate.inject(headers)


@contextmanager
def job_span(
    tracer: trace.Tracer,
    carrier: Mapping[str, str],
    service: str,
    operation: str,
    job_id: str,
    correlation_id: str,
) -> Iterator[trace.Span]:
    """Run the body as a server span continuing the caller's trace (named ``SERVICE
    OPERATION``); the body reports how the job ended with ``record_outcome``."""
    token = context.attach(propagate.extract(carrier))
    try:
        with tracer.start_as_current_span(
            f"{service} {operation}",
            kind=trace.SpanKind.SERVER,
            attributes={
                "jobproto.service": service,
                "jobproto.operation": operation,
                "jobproto.job_id": job_id,
                "jobproto.correlation_id": correlation_id,
            },
            # Only a fault of jobproto's own or a cancellation gets here (the service catches
            # what a handler raises): the first is an error, the second is not.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            except BaseException:
                span.set_attribute(STATE_ATTRIBUTE, "cancelled")
                raise
    finally:
        context.detach(token)


def record_outcome(span: trace.Span, outcome: Succeeded | Failed | None) -> None:
    """Put a job's outcome on its span: ``jobproto.state``, and for a failure its code as
    ``error.type`` with the span's status ERROR (None: the handler was cancelled)."""
    if not span.is_recording():
        return
    if isinstance(outcome, Failed):
        span.set_attributes({STATE_ATTRIBUTE: "failed", "error.type": outcome.code})
        span.set_status(Status(StatusCode.ERROR, outcome.code))
    elif isinstance(outcome, Succeeded):
        span.set_attribute(STATE_ATTRIBUTE, "succeeded")
    else:
        span.set_attribute(STATE_ATTRIBUTE, "cancelled")

"""W3C Trace Context through OpenTelemetry's propagators.

A server keeps the ``traceparent``/``tracestate`` it was called with on the job, and runs the
handler inside a span whose parent is that context. Outbound jobproto calls made by the handler
inject the current context, so with an SDK configured a cascade queen -> hive -> worker is one
trace; with only the API installed the incoming context still travels unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace

from ._correlation import is_valid_traceparent

__all__ = ["TRACE_HEADERS", "inject", "job_span", "trace_headers_from"]

TRACE_HEADERS = ("traceparent", "tracestate")


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
) -> Iterator[None]:
    """Run the body as a server span continuing the caller's trace."""
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
        ):
            yield
    finally:
        context.detach(token)

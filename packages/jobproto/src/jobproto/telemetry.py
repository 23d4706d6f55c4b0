"""Traces over OTLP/HTTP, when the standard OpenTelemetry variables ask for them.

Theory of operation
-------------------
jobproto always runs a job inside a span continuing its caller's W3C trace context
(``jobproto._tracing``), through the OpenTelemetry *API*. Without an SDK those spans cost
almost nothing and go nowhere. ``configure()`` is what a service's (or a command's) ``main()``
calls once at start-up: it reads the environment the OpenTelemetry specification defines and,
only when it asks for traces, installs the SDK's ``TracerProvider`` as the global provider, with
a ``BatchSpanProcessor`` feeding an OTLP/HTTP (protobuf) exporter. Otherwise it installs
nothing and imports nothing of the SDK.

Tracing is on when all of these hold (OpenTelemetry "SDK environment variables"):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (an http or
  https URL). Unlike the SDK, whose exporter would default to ``localhost:4318``, nothing is
  exported without one: tracing is opt-in;
- ``OTEL_SDK_DISABLED`` is not ``true``;
- ``OTEL_TRACES_EXPORTER`` is unset or names ``otlp`` (``none`` turns tracing off; another
  exporter is refused with a warning);
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` is unset or
  ``http/protobuf``: ``grpc`` and ``http/json`` are refused with a warning, tracing off.

The exporter reads the rest itself (headers, timeout, compression, certificates). The service
name is ``OTEL_SERVICE_NAME``, else the name the caller gives (``rbee-queen``...); the other
resource attributes come from ``OTEL_RESOURCE_ATTRIBUTES``. ``OTEL_SERVICE_NAME`` names this
process only: ``configure()`` takes it out of ``os.environ``, because every process this one
starts inherits its environment and should name itself.

Nothing here logs a header value or the exporter endpoint's path, query or user info
(``OTEL_EXPORTER_OTLP_HEADERS`` commonly holds an API key): only the endpoint's scheme, host
and port. ``Telemetry.shutdown()`` flushes the spans still queued, waiting a bounded time
(``traced()``, ``configure`` as a context manager, does so on the way out).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

__all__ = [
    "ENV_SERVICE_NAME",
    "SHUTDOWN_TIMEOUT",
    "Telemetry",
    "TracingChoice",
    "choose",
    "configure",
    "set_span_attributes",
    "traced",
]

logger = logging.getLogger("jobproto.telemetry")

ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
_SUPPORTED_PROTOCOL = "http/protobuf"
#: seconds a process waits at exit for its last spans to be exported (``Telemetry.shutdown``)
SHUTDOWN_TIMEOUT = 5.0


@attrs.frozen
class TracingChoice:
    """What the environment asks for: ``enabled`` or not, and why (``reason``).

    ``warning`` is set when the environment asked for traces in a way this cannot honour
    (another protocol or exporter, an endpoint that is no URL): worth telling the person.
    """

    enabled: bool
    reason: str
    service_name: str
    #: ``scheme://host:port`` of the endpoint: what may be logged of it
    endpoint_origin: str = ""
    warning: str | None = None


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL; None when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def choose(environ: Mapping[str, str], default_service_name: str) -> TracingChoice:
    """Whether ``environ`` asks for traces (a pure function of the variables)."""
    name = environ.get(ENV_SERVICE_NAME, "").strip() or default_service_name

    def off(reason: str, warning: str | None = None) -> TracingChoice:
        return TracingChoice(False, reason, name, warning=warning)

    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return off("OTEL_SDK_DISABLED=true")
    exporters = {
        item.strip().lower()
        for item in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if item.strip()
    }
    if "none" in exporters:
        return off("OTEL_TRACES_EXPORTER=none")
    variable, endpoint = next(
        ((key, environ[key]) for key in _ENDPOINTS if environ.get(key, "").strip()), ("", "")
    )
    if not endpoint:
        return off("no OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporters and "otlp" not in exporters:
        listed = ",".join(sorted(exporters))
        return off(
            f"OTEL_TRACES_EXPORTER={listed}",
            f"OTEL_TRACES_EXPORTER={listed}: only the otlp exporter is supported"
            " (OTLP over HTTP/protobuf); tracing is off",
        )
    for key in _PROTOCOLS:
        protocol = environ.get(key, "").strip().lower()
        if protocol:
            if protocol != _SUPPORTED_PROTOCOL:
                return off(
                    f"{key}={protocol}",
                    f"{key}={protocol} is not supported: traces are exported over OTLP"
                    f" {_SUPPORTED_PROTOCOL} only (set {key}={_SUPPORTED_PROTOCOL} and point"
                    " the endpoint at the collector's HTTP port, usually 4318); tracing is off",
                )
            break  # the signal-specific variable wins over the general one
    origin = _origin(endpoint)
    if origin is None:
        return off(
            f"{variable} is not an http(s) URL",
            f"{variable} is not an http:// or https:// URL; tracing is off",
        )
    return TracingChoice(True, f"{variable} is set", name, endpoint_origin=origin)


class _HeaderEntriesHidden(logging.Filter):
    """The SDK logs an entry of ``OTEL_EXPORTER_OTLP_HEADERS`` it cannot parse as it is, and
    such an entry may well be a credential: the warning stays, the entry goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = (
                "an entry of OTEL_EXPORTER_OTLP_HEADERS (or OTEL_EXPORTER_OTLP_TRACES_HEADERS) is"
                " not name=value and was left out (not shown: it may hold a secret); entries are"
                " comma-separated name=value pairs, values URL-encoded"
            )
            record.args = None
        return True


def _hide_header_entries() -> None:
    # opentelemetry.util.re parses the headers variable for the exporter
    sdk_logger = logging.getLogger("opentelemetry.util.re")
    if not any(isinstance(f, _HeaderEntriesHidden) for f in sdk_logger.filters):
        sdk_logger.addFilter(_HeaderEntriesHidden())


@attrs.define
class Telemetry:
    """The SDK's tracer provider that ``configure()`` installed."""

    provider: Any  # opentelemetry.sdk.trace.TracerProvider (the SDK is an optional extra)
    choice: TracingChoice
    _closed: bool = attrs.field(default=False, init=False)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export the spans queued so far; False when that did not finish in time."""
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT) -> bool:
        """Flush what is queued and stop exporting (idempotent); False when that took longer
        than ``timeout_s`` seconds, and the process may exit with spans unsent.

        The SDK's own shutdown waits as long as an export does, retries included (the export
        timeout, 10 s by default): bounded here, so that a collector that is down never holds
        up a process that was asked to stop (its stopper would escalate to SIGKILL).
        """
        if self._closed:
            return True
        self._closed = True
        worker = threading.Thread(
            target=self.provider.shutdown, name="jobproto-telemetry-shutdown", daemon=True
        )
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            logger.warning("tracing: spans not exported within %g s at exit are lost", timeout_s)
            return False
        return True


def configure(
    default_service_name: str,
    *,
    export_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry | None:
    """Install the OpenTelemetry SDK as the global tracer provider when the environment asks
    for traces (see the module's docstring); None (and nothing installed) otherwise.

    ``export_timeout`` (seconds) is the exporter's timeout per batch when neither
    ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` nor ``OTEL_EXPORTER_OTLP_TIMEOUT`` sets one: a
    command that exits at once wants a short wait for a collector that is down.
    """
    env = os.environ if environ is None else environ
    choice = choose(env, default_service_name)
    if environ is None:
        os.environ.pop(ENV_SERVICE_NAME, None)  # this process's own name (module docstring)
    if not choice.enabled:
        if choice.warning is not None:
            logger.warning("%s", choice.warning)
        else:
            logger.debug("tracing off: %s", choice.reason)
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError as exc:
        logger.warning(
            "tracing asked for (%s) but %s is not installed: pip install 'jobproto[otlp]';"
            " tracing is off",
            choice.reason,
            exc.name,
        )
        return None
    timeout = None
    if export_timeout is not None and not any(env.get(key, "").strip() for key in _TIMEOUTS):
        timeout = export_timeout
    _hide_header_entries()  # before the exporter reads the variable
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the attributes given here win over it.
    resource = Resource.create({SERVICE_NAME: choice.service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
    trace.set_tracer_provider(provider)
    logger.info(
        "tracing: spans of %s go over OTLP/HTTP to %s",
        choice.service_name,
        choice.endpoint_origin,
    )
    return Telemetry(provider, choice)


@contextmanager
def traced(
    default_service_name: str,
    *,
    export_timeout: float | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> Iterator[Telemetry | None]:
    """``configure()`` for the body, with the queued spans flushed when it ends (waiting at
    most ``shutdown_timeout`` seconds for that)."""
    telemetry = configure(default_service_name, export_timeout=export_timeout)
    try:
        yield telemetry
    finally:
        if telemetry is not None:
            telemetry.shutdown(shutdown_timeout)


def set_span_attributes(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set ``attributes`` on the current span (a job's handler: the job's span), leaving out
    None values. Costs next to nothing when no SDK records the span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({key: value for key, value in attributes.items() if value is not None})

"""jobproto.telemetry: when tracing is on, what it exports, and what a job's span says.

The choice is a pure function of the environment (table tests). Installing the SDK is global
to a process, so the tests that call ``configure()`` for real run it in a fresh interpreter,
exporting to a small OTLP/HTTP receiver on loopback in this test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from jobproto import JobFailed, Operations
from jobproto.asgi import ServiceSettings, create_app
from jobproto.client import JobClient, RemoteJobFailed
from jobproto.telemetry import choose, set_span_attributes
from jobproto.testing import serving

ENDPOINT = "http://127.0.0.1:4318"


# -- the choice --------------------------------------------------------------------------------


def test_off_without_an_endpoint_even_when_everything_else_is_set() -> None:
    choice = choose(
        {
            "OTEL_SERVICE_NAME": "x",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_RESOURCE_ATTRIBUTES": "a=b",
        },
        "rbee-queen",
    )
    assert not choice.enabled and choice.warning is None
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in choice.reason


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_on_with_either_endpoint_named_by_default_or_by_the_variable(variable: str) -> None:
    on = choose({variable: ENDPOINT}, "rbee-hive")
    assert on.enabled and on.service_name == "rbee-hive" and on.warning is None
    named = choose({variable: ENDPOINT, "OTEL_SERVICE_NAME": " mine "}, "rbee-hive")
    assert named.enabled and named.service_name == "mine"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"OTEL_SDK_DISABLED": "TRUE"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "otlp, none"}, "none"),
    ],
)
def test_turned_off_quietly_by_the_standard_switches(extra: dict[str, str], reason: str) -> None:
    choice = choose({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, **extra}, "rbee-worker")
    assert not choice.enabled and choice.warning is None
    assert reason in choice.reason


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc is not supported"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/json is not supported"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "x"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc",
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, "only the otlp exporter"),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_a_warning(
    extra: dict[str, str], said: str
) -> None:
    choice = choose({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, **extra}, "rbee-worker")
    assert not choice.enabled
    assert choice.warning is not None and said in choice.warning
    assert "tracing is off" in choice.warning


def test_the_traces_protocol_wins_over_the_general_one() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert choose(environ, "rbee-queen").enabled


@pytest.mark.parametrize("endpoint", ["collector:4318", "ftp://collector", "http://", "http://h:x"])
def test_an_endpoint_that_is_no_http_url_is_refused(endpoint: str) -> None:
    choice = choose({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}, "rbee-queen")
    assert not choice.enabled
    assert choice.warning is not None and "not an http:// or https:// URL" in choice.warning


def test_only_the_origin_of_the_endpoint_is_kept_for_logs() -> None:
    url = "https://user:s3cret@collector.example:4318/v1/traces?api_key=s3cret"
    choice = choose({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url}, "rbee-queen")
    assert choice.enabled
    assert choice.endpoint_origin == "https://collector.example:4318"


# -- configure() in a fresh interpreter ----------------------------------------------------------


@attrs.frozen
class Export:
    path: str
    headers: dict[str, str]
    request: ExportTraceServiceRequest


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every export request it is sent."""

    def __init__(self) -> None:
        self.exports: list[Export] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.exports.append(Export(self.path, headers, request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[dict[str, str], Any]]:
        """Every span received, with its resource's string attributes."""
        out = []
        for export in self.exports:
            for resource_spans in export.request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope.spans)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(5)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with only ``env`` (plus PATH) as its environment."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


PROBE = """
import json, logging, os, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from opentelemetry import trace
from jobproto.telemetry import traced
with traced("rbee-probe", export_timeout=5) as telemetry:
    with trace.get_tracer("probe").start_as_current_span("probe span"):
        pass
    print(json.dumps({
        "installed": telemetry is not None,
        "provider": type(trace.get_tracer_provider()).__module__,
        "sdk_imported": "opentelemetry.sdk" in sys.modules,
        "service_name_left": os.environ.get("OTEL_SERVICE_NAME"),
    }))
"""


def test_nothing_is_installed_or_exported_when_the_variables_are_unset() -> None:
    done = run_python(PROBE, {"OTEL_SERVICE_NAME": "rbee-probe-named"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # not even imported: the SDK is an optional extra, and tracing costs nothing when off
    assert report == {
        "installed": False,
        "provider": "opentelemetry.trace",
        "sdk_imported": False,
        "service_name_left": None,
    }


def test_spans_go_to_the_endpoint_with_the_resource_and_headers_but_logs_name_no_header(
    receiver: Receiver,
) -> None:
    secret = "s3cret-api-key-value"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        # the second entry is no name=value pair: the SDK would log it as it is
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={secret},{secret}-pasted-alone",
        "OTEL_SERVICE_NAME": "probe-service",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=overridden",
    }
    done = run_python(PROBE, env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["installed"] and report["provider"] == "opentelemetry.sdk.trace"
    # the name is this process's: a process it starts would not inherit it
    assert report["service_name_left"] is None
    # exported when traced() ended (the batch processor's delay is 5 s: this was the flush)
    assert [export.path for export in receiver.exports] == ["/v1/traces"]
    assert receiver.exports[0].headers["x-api-key"] == secret
    assert receiver.exports[0].headers["content-type"] == "application/x-protobuf"
    ((resource, span),) = receiver.spans()
    assert span.name == "probe span"
    assert resource["service.name"] == "probe-service"
    assert resource["deployment.environment"] == "test"
    # the log says where spans go, never the headers
    assert f"spans of probe-service go over OTLP/HTTP to {receiver.url}" in done.stderr
    assert "OTEL_EXPORTER_OTLP_HEADERS" in done.stderr and "not shown" in done.stderr
    assert secret not in done.stderr


def test_a_grpc_protocol_is_refused_with_a_warning_and_nothing_is_sent(
    receiver: Receiver,
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    done = run_python(PROBE, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["installed"] is False
    assert "WARNING:jobproto.telemetry:OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported" in (
        done.stderr
    )
    assert receiver.exports == []


def test_a_collector_that_never_answers_holds_up_the_exit_a_bounded_time() -> None:
    # a socket that listens and never accepts: the export waits for an answer until its own
    # timeout (60 s here), far beyond the 1 s shutdown bound of this process
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        code = PROBE.replace("export_timeout=5", "export_timeout=5, shutdown_timeout=1")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
        }
        done = run_python(code, env)  # its own timeout: 30 s
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["installed"] is True
    assert "spans not exported within 1 s at exit are lost" in done.stderr


# -- the attributes of spans ---------------------------------------------------------------------


def test_set_span_attributes_sets_on_the_current_span_and_leaves_out_none() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_span_attributes({"outside": 1})  # no current span: nothing happens, nothing raised
    with provider.get_tracer("t").start_as_current_span("s"):
        set_span_attributes({"a": 1, "b": "x", "gone": None})
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"a": 1, "b": "x"}


@attrs.frozen
class Outcome:
    code: str | None = None


@pytest.mark.anyio
async def test_a_job_span_says_how_the_job_ended_and_carries_what_the_handler_set() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ops = Operations()

    @ops.operation("work")
    async def work(params: Outcome) -> dict[str, int]:
        set_span_attributes({"gen_ai.usage.output_tokens": 7})
        if params.code is not None:
            raise JobFailed(params.code, "it did not work")
        return {"ok": 1}

    app = create_app(ops, ServiceSettings(service_name="svc"), tracer_provider=provider)
    async with serving(app) as url, JobClient(url) as client:
        done = await client.run("work", {})
        with pytest.raises(RemoteJobFailed):
            await client.run("work", {"code": "out_of_luck"})
        jobs = {job_id: handle.job for job_id, handle in app.state.jobs.handles.items()}
    ok, failed = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert done == {"ok": 1}
    assert ok.name == failed.name == "svc work"
    attributes = dict(ok.attributes or {})
    job = jobs[str(attributes.pop("jobproto.job_id"))]
    assert attributes == {
        "jobproto.service": "svc",
        "jobproto.operation": "work",
        "jobproto.correlation_id": job.correlation_id,
        "gen_ai.usage.output_tokens": 7,
        "jobproto.state": "succeeded",
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert (failed.attributes or {})["jobproto.job_id"] in set(jobs) - {job.id}
    assert (failed.attributes or {})["jobproto.state"] == "failed"
    assert (failed.attributes or {})["error.type"] == "out_of_luck"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "out_of_luck"

"""OpenTelemetry tracing across real processes: one ``rbee infer`` is one trace, and so is one
request to the queen's OpenAI-compatible API.

keeper (``rbee``) → queen → hive (the worker is spawned for this request) → worker, each a
process of its own exporting over OTLP/HTTP to a small receiver in this test (loopback, decoded
with opentelemetry-proto). Only the standard ``OTEL_*`` variables in the keeper's environment
turn it on; the queen, the hive and the worker inherit them.

This test has a queen and hive of its own (own directory, own free ports), not the session's.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from rbee_contracts import auth

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: the keeper's own name for its spans; the services it starts must not inherit it
KEEPER_NAME = "rbee-cli-under-test"
MAX_TOKENS = 4


@attrs.frozen
class Received:
    """One span as the receiver got it."""

    service: str
    resource: dict[str, Any]
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


class Receiver:
    """An OTLP/HTTP trace receiver on loopback (``POST /v1/traces``, protobuf)."""

    def __init__(self) -> None:
        self._spans: list[Received] = []
        self._paths: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer._take(self.path, ExportTraceServiceRequest.FromString(body))
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

    def _take(self, path: str, request: ExportTraceServiceRequest) -> None:
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    got.append(
                        Received(
                            service=resource.get("service.name", ""),
                            resource=resource,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            status=span.status.code,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self._paths.append(path)
            self._spans.extend(got)

    @property
    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return list(self._paths)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        thread.join(5)


def test_one_infer_is_one_trace_across_keeper_queen_hive_and_worker(
    e2e_base: Path, tiny_model: Path, kit: Any, receiver: Receiver
) -> None:
    root = e2e_base / "tracing"
    queen_port, hive_port = kit.free_ports(2)
    kit.write_config(root)
    env = kit.isolated_env(root, queen_port, hive_port)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME=KEEPER_NAME,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=e2e",
        # the services export within 0.2 s (the keeper flushes before it exits)
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    rbee = kit.Rbee(env, root)
    try:
        rbee.ok("queen", "start", timeout=90)
        rbee.ok("model", "register", "tiny", str(tiny_model))
        run = rbee.ok(
            "infer", "Once upon a time", "--model", "tiny", "--temperature", "0",
            "--max-tokens", str(MAX_TOKENS), "--raw", "--json", timeout=120,
        )  # fmt: skip
        final = run.final()
        result, job_id = final["result"], final["job_id"]

        def keeper_root() -> Received | None:
            return next((s for s in receiver.spans if s.name == "rbee infer"), None)

        # the keeper's span is there as soon as the command has exited: its flush
        keeper = keeper_root()
        assert keeper is not None, [s.name for s in receiver.spans]

        wanted = {"queen infer", "rbee-hive worker_spawn", "rbee-worker infer"}

        def in_trace() -> dict[str, Received] | None:
            spans = {s.name: s for s in receiver.spans if s.trace_id == keeper.trace_id}
            return spans if wanted <= set(spans) else None

        spans = kit.wait_until(in_trace, 30, "the services' spans of the infer trace")

        # one request to the OpenAI-compatible API, from a client with a trace of its own
        token = auth.read_token_file(root / "state" / "queen" / auth.KEEPER_TOKEN_FILE)
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        answer = httpx.post(
            f"http://127.0.0.1:{queen_port}/v1/completions",
            json={"model": "tiny", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS},
            headers={**auth.bearer(token), "traceparent": f"00-{trace_id}-{parent_id}-01"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]

        def api_trace() -> dict[str, Received] | None:
            got = {s.name: s for s in receiver.spans if s.trace_id == trace_id}
            return got if {"queen completion", "rbee-worker infer"} <= set(got) else None

        api = kit.wait_until(api_trace, 30, "the spans of the OpenAI request's trace")
    finally:
        survivors = kit.stop_and_check(rbee, root)
        assert not survivors, survivors
    assert set(receiver.paths) == {"/v1/traces"}

    queen, hive, worker = (spans[name] for name in sorted(wanted))
    # who is who: each service names itself; none inherited the keeper's OTEL_SERVICE_NAME
    assert keeper.service == KEEPER_NAME
    assert (queen.service, hive.service, worker.service) == (
        "rbee-queen",
        "rbee-hive",
        "rbee-worker",
    )

    # the tree: keeper → queen's job → (the hive's worker_spawn, the worker's infer)
    assert keeper.parent_id == ""
    assert queen.parent_id == keeper.span_id
    assert hive.parent_id == queen.span_id
    assert worker.parent_id == queen.span_id
    assert keeper.kind == Span.SPAN_KIND_CLIENT
    assert {queen.kind, hive.kind, worker.kind} == {Span.SPAN_KIND_SERVER}
    assert Status.STATUS_CODE_ERROR not in {s.status for s in (keeper, queen, hive, worker)}

    # one correlation id through the cascade; the job id the keeper printed is the queen's job
    correlation = keeper.attributes["jobproto.correlation_id"]
    for span in (queen, hive, worker):
        assert span.attributes["jobproto.correlation_id"] == correlation, span
        assert span.attributes["jobproto.state"] == "succeeded", span
    assert keeper.attributes["jobproto.job_id"] == queen.attributes["jobproto.job_id"] == job_id
    assert len({s.attributes["jobproto.job_id"] for s in (queen, hive, worker)}) == 3
    assert keeper.attributes["rbee.exit_code"] == 0

    # operations, model and token counts (OpenTelemetry's gen_ai conventions)
    assert keeper.attributes["jobproto.operation"] == "infer"
    assert keeper.attributes["gen_ai.request.model"] == "tiny"
    assert hive.attributes["jobproto.operation"] == "worker_spawn"
    for span in (queen, worker):
        attributes = span.attributes
        assert attributes["jobproto.operation"] == "infer"
        assert attributes["gen_ai.operation.name"] == "text_completion"
        assert attributes["gen_ai.request.model"] == "tiny"
        assert attributes["gen_ai.request.max_tokens"] == MAX_TOKENS
        assert attributes["gen_ai.usage.input_tokens"] == result["prompt_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] == result["completion_tokens"] > 0
        assert attributes["gen_ai.response.finish_reasons"] == [result["finish_reason"]]

    # the OpenAI request: the queen's completion job continues the client's trace
    completion, api_worker = api["queen completion"], api["rbee-worker infer"]
    assert completion.parent_id == parent_id
    assert api_worker.parent_id == completion.span_id
    assert completion.attributes["gen_ai.request.model"] == "tiny"
    assert completion.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert completion.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert api_worker.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]

    # the rest of each resource comes from OTEL_RESOURCE_ATTRIBUTES, in every process
    for span in (keeper, queen, hive, worker):
        assert span.resource["deployment.environment"] == "e2e", span

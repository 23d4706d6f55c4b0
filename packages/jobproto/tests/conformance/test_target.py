"""The check before a conformance run: a service that cannot be tested gets one message saying
what to do (``jobproto.conformance._target.check_target``), never a traceback."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobproto.conformance import conformance_operations
from jobproto.conformance.__main__ import MISSING_EXTRA, build_parser
from jobproto.conformance.__main__ import main as conformance_main
from jobproto.conformance._server import ThreadedServer
from jobproto.conformance._target import (
    CONFORMANCE_OPERATIONS,
    TargetUnfit,
    check_target,
    published_operations,
)

pytestmark = pytest.mark.conformance

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    with ThreadedServer() as url:
        yield url


@pytest.fixture(scope="module")
def without_test_operations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with operations of its own and not the conformance ones (own_service.py)."""
    port_file = tmp_path_factory.mktemp("own") / "port"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "own_service.py"), str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None, "own_service.py exited"
            assert time.monotonic() < deadline, "own_service.py did not listen within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text())}"
    finally:
        process.terminate()
        process.wait(10)


def test_the_reference_service_offers_the_test_operations(reference: str) -> None:
    doc = check_target(reference, None)
    assert set(CONFORMANCE_OPERATIONS) <= set(published_operations(doc))
    assert sorted(CONFORMANCE_OPERATIONS) == sorted(op.name for op in conformance_operations())


def test_a_service_without_them_is_told_how_to_mount_them(without_test_operations: str) -> None:
    with pytest.raises(TargetUnfit) as caught:
        check_target(without_test_operations, None)
    message = str(caught.value)
    assert "does not offer the conformance operations" in message
    assert "lacks burst, crash, echo, fail, wait" in message
    assert "ops.merge(conformance_operations())" in message
    assert "Keep them off in production" in message
    assert "own operations are not exercised" in message


def test_an_unreachable_service() -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(
            TargetUnfit, match=r"cannot reach http://127\.0\.0\.1:\d+/openapi\.json"
        ):
            check_target(f"http://127.0.0.1:{port}", None, timeout=5)


def test_a_service_that_needs_a_token() -> None:
    with ThreadedServer(token="the-token") as url:
        with pytest.raises(TargetUnfit, match="token was not given: pass --token-file"):
            check_target(url, None)
        with pytest.raises(TargetUnfit, match="token was refused"):
            check_target(url, "another-token")
        assert "echo" in published_operations(check_target(url, "the-token"))


def test_not_a_jobproto_service(reference: str) -> None:
    with pytest.raises(TargetUnfit, match=r"answered 404: is .+ a jobproto/1 service"):
        check_target(reference + "/v1/jobs/nothing-here", None)


def test_published_operations_reads_the_op_schemas() -> None:
    doc = {"components": {"schemas": {"Error": {}, "op_greet": {}, "op_echo": {}}}}
    assert published_operations(doc) == ["echo", "greet"]
    assert published_operations({}) == []


@contextmanager
def answering(status: int, body: bytes) -> Iterator[str]:
    """A server that answers every GET with ``status`` and the JSON ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    "doc",
    [
        {"info": None},
        {"info": "x"},
        {"info": []},
        {"info": {"version": "jobproto/1"}, "components": None},
        {"info": {"version": "jobproto/1"}, "components": "x"},
        {"info": {"version": "jobproto/1"}, "components": {"schemas": None}},
        {"info": {"version": "jobproto/1"}, "components": {"schemas": ["op_echo"]}},
        [],
        "jobproto/1",
    ],
)
def test_a_malformed_openapi_document_is_not_a_jobproto_service(doc: object) -> None:
    with answering(200, json.dumps(doc).encode()) as url:
        with pytest.raises(TargetUnfit, match=r"/openapi\.json does not describe a jobproto/1"):
            check_target(url, None)


def test_a_token_without_the_jobs_scope_is_told_so() -> None:
    refusal = {"error": {"code": "forbidden", "message": "'ci' may not use the job routes"}}
    with answering(403, json.dumps(refusal).encode()) as url:
        with pytest.raises(TargetUnfit) as caught:
            check_target(url, "a-token")
    message = str(caught.value)
    assert "'ci' may not use the job routes" in message
    assert "the jobs scope" in message


def test_the_command_with_a_malformed_openapi_document_says_so_in_one_line() -> None:
    with answering(200, b'{"info": null}') as url:
        done = subprocess.run(
            [sys.executable, "-m", "jobproto.conformance", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 4, done.stdout + done.stderr
    assert "does not describe a jobproto/1 service" in done.stdout + done.stderr
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_the_command_names_the_extra_when_jsonschema_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # jsonschema judges --own-operations' cases: the conformance extra installs it
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "jsonschema" else found(name, *a),
    )
    assert conformance_main(["--url", "http://127.0.0.1:9"]) == MISSING_EXTRA == 2
    err = capsys.readouterr().err
    assert "pip install 'jobproto[conformance]'" in err and "'jsonschema'" in err


def test_the_command_leaves_pytest_options_it_does_not_know_whole() -> None:
    # an abbreviation of one of its options, as pytest reads it, goes to pytest
    ns, extra = build_parser().parse_known_args(["--url", "http://x", "--ex", "--own", "--max"])
    assert extra == ["--ex", "--own", "--max"]
    assert ns.examples is None and not ns.own_operations and ns.max_body_bytes is None

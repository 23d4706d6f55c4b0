"""The check before a conformance run: a service that cannot be tested gets one message saying
what to do (``jobproto.conformance._target.check_target``), never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobproto.conformance import conformance_operations
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

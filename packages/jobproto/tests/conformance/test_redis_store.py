"""The conformance suite against the reference service keeping its jobs in a real Redis.

The suite shipped in the package runs (``python -m jobproto.conformance``, pytest in a child
process) with ``JOBPROTO_STORE_URL`` naming a loopback ``redis-server``: every reference target
it starts keeps its jobs there, in a namespace of its own: in-process (uvicorn in a thread of the
child) and over loopback (``python -m jobproto.conformance.server`` processes, with and without a
token), with the limits the suite knows (log size, subscribe timeout, retention, keepalive).
The reference server's own ``--store`` flag is checked too, with the suite run against its URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from jobproto.conformance._server import STORE_ENV, ServerProcess, settings_args
from jobproto.conformance.pytest_plugin import MAIN_SETTINGS

pytestmark = pytest.mark.conformance


def _suite(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobproto.conformance", *args, "-q", "-x"]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.timeout(900)
def test_the_shipped_suite_passes_against_redis_backed_reference_services(
    redis_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, STORE_ENV: redis_url}
    out = _suite([], env, tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
    keys = redis.Redis.from_url(redis_url).keys("jobproto-conformance-*:job:*")
    assert keys  # the jobs went to Redis, not to the servers' memory


@pytest.mark.timeout(600)
def test_the_reference_server_with_store_serves_the_suite_over_loopback(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != STORE_ENV}
    args = ["--store", redis_url, "--store-namespace", redis_namespace, "--replica", "ref"]
    server = ServerProcess.spawn([*args, *settings_args(MAIN_SETTINGS)], tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            created = http.post("/v1/jobs", json={"operation": "echo", "messages": ["hi"]})
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
        stored = redis.Redis.from_url(redis_url).hgetall(f"{redis_namespace}:job:{job_id}")
        assert stored[b"op"] == b"echo"
        out = _suite(["--url", server.url, "--examples", "20"], env_free, tmp_path)
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    finally:
        assert server.stop() == 0


def test_a_store_url_with_a_password_is_refused_on_the_command_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "jobproto.conformance.server"]
    command += ["--store", "redis://:hunter2@127.0.0.1:1/0", "--port", "0"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert STORE_ENV in out.stderr

"""``run_job`` creates the job and follows it in one request where the queen answers the create with
the job's stream, and in two (create, then the stream) where it answers JSON, with the same output.

The queen here is a jobproto app served on a loopback port, behind a recorder of the requests it
gets; "an older queen" is the same app with the request's ``Accept`` header taken away, so that it
answers the create with JSON as a service that predates create-and-stream does.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from jobproto.asgi import create_app
from jobproto.conformance import conformance_operations
from jobproto.testing import serving
from rbee_keeper.config import Settings, load_settings
from rbee_keeper.render import JsonRenderer
from rbee_keeper.runner import EXIT_FAILED, EXIT_OK, run_job

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class Recorder:
    """ASGI middleware: records ``(method, path)`` of each request; ``json_only`` drops the
    ``Accept`` header first."""

    def __init__(self, app: ASGIApp, *, json_only: bool) -> None:
        self.app = app
        self.json_only = json_only
        self.requests: list[tuple[str, str]] = []
        self.state = getattr(app, "state", None)  # serving() finds the job service here

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
            if self.json_only:
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept"]
                scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


def settings_for(url: str, home: Path) -> Settings:
    env = {"HOME": str(home), "RBEE_QUEEN_URL": url, "XDG_STATE_HOME": str(home / "state")}
    return load_settings(env=env, cwd=home)


async def run_echo(
    tmp_path: Path, *, json_only: bool, fields: dict[str, Any], operation: str = "echo"
) -> tuple[int, list[dict[str, Any]], list[tuple[str, str]]]:
    recorder = Recorder(create_app(conformance_operations()), json_only=json_only)
    out, err = io.StringIO(), io.StringIO()
    async with serving(recorder) as url:  # type: ignore[arg-type]
        code = await run_job(settings_for(url, tmp_path), JsonRenderer(out, err), operation, fields)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, lines, recorder.requests


def without_ids(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = {"job_id", "correlation_id", "timestamp", "elapsed_s"}
    return [{k: v for k, v in line.items() if k not in drop} for line in lines]


async def test_run_job_is_one_request_and_prints_what_two_did(tmp_path: Path) -> None:
    fields = {"messages": ["a", "b"], "result": {"ok": True}}
    code, lines, requests = await run_echo(tmp_path, json_only=False, fields=fields)
    assert code == EXIT_OK
    assert requests == [("POST", "/v1/jobs")]
    old_code, old_lines, old_requests = await run_echo(tmp_path, json_only=True, fields=fields)
    assert old_code == EXIT_OK
    assert [method for method, _ in old_requests] == ["POST", "GET"]
    assert old_requests[1][1].endswith("/stream")
    assert without_ids(lines) == without_ids(old_lines)
    assert lines[-1]["type"] == "result" and lines[-1]["result"] == {"ok": True}


async def test_a_failed_job_read_from_the_create_answer_exits_1(tmp_path: Path) -> None:
    fields = {"code": "boom", "message": "bad", "after": 1}
    code, lines, requests = await run_echo(
        tmp_path, json_only=False, fields=fields, operation="fail"
    )
    assert code == EXIT_FAILED
    assert requests == [("POST", "/v1/jobs")]
    assert any(line.get("type") == "failed" for line in lines), lines

"""The keeper reads jobproto's transport errors, not httpx's: a queen that cannot be reached or
drops the connection is "unreachable" (exit 3), never a failed job (exit 1)."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import anyio.abc
import pytest

from jobproto import ConnectFailed, TransportFailed
from rbee_keeper.config import Settings, load_settings
from rbee_keeper.render import HumanRenderer
from rbee_keeper.runner import EXIT_UNREACHABLE, call, report

pytestmark = pytest.mark.anyio

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"


def settings_for(url: str, home: Path) -> Settings:
    env = {"HOME": str(home), "RBEE_QUEEN_URL": url, "XDG_STATE_HOME": str(home / "state")}
    return load_settings(env=env, cwd=home)


async def test_a_queen_that_drops_every_connection_is_unreachable(tmp_path: Path) -> None:
    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        await stream.aclose()  # accepted, then closed before any answer

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    out, err = io.StringIO(), io.StringIO()
    settings = settings_for(f"http://127.0.0.1:{port}", tmp_path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hang_up)
        code = await call(
            settings,
            HumanRenderer(out, err, no_color=True),
            lambda client: client.status(JOB),
        )
        tg.cancel_scope.cancel()
    assert code == EXIT_UNREACHABLE
    assert f"the queen at http://127.0.0.1:{port} did not answer" in err.getvalue()


def test_report_tells_a_refused_connection_from_a_broken_one(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9", tmp_path)
    out, err = io.StringIO(), io.StringIO()
    renderer = HumanRenderer(out, err, no_color=True)
    refused = ConnectFailed("cannot connect for GET http://127.0.0.1:9/v1/jobs: ConnectError")
    assert report(renderer, refused, settings, None) == EXIT_UNREACHABLE
    assert "queen not running on 127.0.0.1:9" in err.getvalue()
    broken = TransportFailed("GET http://127.0.0.1:9/v1/jobs got no answer: ReadTimeout")
    assert report(renderer, broken, settings, None) == EXIT_UNREACHABLE
    assert "did not answer: GET http://127.0.0.1:9/v1/jobs got no answer: ReadTimeout" in (
        err.getvalue()
    )


def test_an_https_queen_url_without_a_port_is_told_with_port_443(tmp_path: Path) -> None:
    settings = settings_for("https://127.0.0.1", tmp_path)
    out, err = io.StringIO(), io.StringIO()
    refused = ConnectFailed("cannot connect for GET https://127.0.0.1/v1/jobs: ConnectError")
    report(HumanRenderer(out, err, no_color=True), refused, settings, None)
    assert "queen not running on 127.0.0.1:443" in err.getvalue()

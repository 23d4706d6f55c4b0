"""A local hive that fails to start: the job says the error in one line (a traceback's exception,
else the log's last line) and where the details are; the traceback, with the paths of its
frames, stays in the hive's log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from jobproto import JobEvent
from rbee_contracts import local_layout
from rbee_queen.hives import error_line

pytestmark = pytest.mark.anyio

#: a hive that cannot bind its port: a traceback whose frames name this file
FAILING_HIVE = """
import sys

def bind():
    raise OSError(98, "address already in use")

print("hive starting", flush=True)
if sys.argv[-1] != "--never":
    bind()
"""

#: a hive that prints a traceback (a failed heartbeat, say) and never registers
SILENT_HIVE = """
import time, traceback

def beat():
    raise ConnectionRefusedError(111, "Connection refused")

try:
    beat()
except OSError:
    traceback.print_exc()
print("  indented detail /internal/path/frames.py", flush=True)
time.sleep(60)
"""


def events_text(events: list[JobEvent]) -> str:
    return "\n".join(repr(e.event) for e in events)


async def run_start(c: Any, fakes: Any, **fields: Any) -> list[JobEvent]:
    created = await c.client.create("hive_start", {"hive": "x", "port": 0, **fields})
    events: list[JobEvent] = await fakes.collect(c.client, created.job_id)
    return events


async def test_a_hive_that_exits_with_a_traceback_fails_with_its_exception_only(
    cluster: Any, fakes: Any, tmp_path: Path
) -> None:
    script = tmp_path / "internal" / "failing_hive.py"
    script.parent.mkdir()
    script.write_text(FAILING_HIVE)
    state = tmp_path / "queen"
    async with cluster(hive_command=(sys.executable, str(script)), state_dir=state) as c:
        events = await run_start(c, fakes)
    failed = events[-1].event
    assert getattr(failed, "code", None) == "hive_exited", events
    message = str(getattr(failed, "message", ""))
    assert "OSError: [Errno 98] address already in use" in message
    assert "hive-x.log" in message and "rbee hive status" in message
    assert str(script) not in message and str(tmp_path) not in message
    told = events_text(events)  # the start narrates the command line, not what the hive printed
    for internal in ("Traceback", 'File "', "bind()"):
        assert internal not in told, internal
    # the details stay in the log, for its owner
    log = local_layout.hive_log(state, "x").read_text()
    assert "Traceback (most recent call last)" in log and str(script) in log


async def test_a_hive_that_never_registers_fails_without_its_traceback(
    cluster: Any, fakes: Any, tmp_path: Path
) -> None:
    script = tmp_path / "internal" / "silent_hive.py"
    script.parent.mkdir()
    script.write_text(SILENT_HIVE)
    async with cluster(hive_command=(sys.executable, str(script)), hive_start_timeout=1.5) as c:
        events = await run_start(c, fakes)
    failed = events[-1].event
    assert getattr(failed, "code", None) == "hive_start_timeout", events
    message = str(getattr(failed, "message", ""))
    assert "ConnectionRefusedError: [Errno 111] Connection refused" in message
    assert str(script) not in message and str(tmp_path) not in message
    told = events_text(events)
    for internal in ("Traceback", 'File "', "/internal/path", "beat()"):
        assert internal not in told, internal


UVICORN_BIND_FAILURE = """\
ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 9000): address in use
2026-12-02 16:01:26,027 ERROR asyncio: Task exception was never retrieved
future: <Task finished name='Task-2' coro=<Server.serve() done, defined at /x/server.py:88>>
Traceback (most recent call last):
  File "/x/server.py", line 1, in startup
OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 9000): address in use

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/x/server.py", line 192, in startup
    sys.exit(STARTUP_FAILURE)
SystemExit: 3
"""


def test_error_line_skips_how_the_process_exited() -> None:
    assert error_line(UVICORN_BIND_FAILURE) == (
        "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 9000):"
        " address in use"
    )


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        ("", ""),
        ("--- rbee: 2026-01-01 starting hive x: python -m rbee_hive.app\n", ""),
        (
            "starting\nERROR: [Errno 98] address already in use\n",
            "ERROR: [Errno 98] address already in use",
        ),
        (
            'Traceback (most recent call last):\n  File "/a/b.py", line 1, in <module>\n'
            "    f()\nValueError: bad\n",
            "ValueError: bad",
        ),
        (
            "Traceback (most recent call last):\n  File \"/x.py\", line 2\nKeyError: 'a'\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            'Traceback (most recent call last):\n  File "/x.py", line 4\n'
            "RuntimeError: no a\n",
            "RuntimeError: no a",
        ),
    ],
)
def test_error_line(tail: str, line: str) -> None:
    assert error_line(tail) == line

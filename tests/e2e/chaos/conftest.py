"""The reliability run: faults, load and generated input against real processes.

These tests are run by ``nox -s chaos`` (``pytest tests/e2e/chaos --reliability-report
docs/reliability.json``), not by ``nox -s tests``. They use the fixtures of tests/e2e/conftest.py.
Each test measures what happened and records it with the ``reliability`` fixture *before* it
asserts; when ``--reliability-report`` is given, the session writes the rows into that JSON file
and renders the Markdown report next to it (``reliability.md``, see report.py). A row whose test
failed afterwards is marked failed, and a test that failed before recording anything is listed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "rbee_chaos_report", Path(__file__).with_name("report.py")
)
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report
_spec.loader.exec_module(report)

_STARTED = time.monotonic()


@dataclass
class _Session:
    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    recorded: set[str] = field(default_factory=set)
    machine: dict[str, Any] = field(default_factory=dict)


_SESSION = _Session()


class Recorder:
    """What one test saw, for the report."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def record(
        self,
        *,
        case: str,
        kind: str,
        done: str,
        seen: dict[str, Any],
        ok: bool,
        image: str | None = None,
    ) -> None:
        if kind not in report.KINDS:
            raise ValueError(f"kind must be one of {sorted(report.KINDS)}, not {kind!r}")
        if any(row["case"] == case for row in _SESSION.rows):
            raise ValueError(f"case {case!r} is recorded twice")
        row: dict[str, Any] = {
            "case": case,
            "kind": kind,
            "done": done,
            "seen": dict(seen),
            "ok": bool(ok),
            "test": self.nodeid,
        }
        if image is not None:
            row["image"] = image
        _SESSION.rows.append(row)
        _SESSION.recorded.add(self.nodeid)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    """Records a row of docs/reliability.md (``record(case=, kind=, done=, seen=, ok=)``)."""
    return Recorder(request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    result = outcome.get_result()
    if result.failed:
        _SESSION.failed.add(item.nodeid)


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.getoption("--reliability-report", default=None):
        _SESSION.machine = report.machine()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = session.config.getoption("--reliability-report", default=None)
    if not target:
        return
    json_path = Path(target)
    rows = []
    for row in _SESSION.rows:
        if row["test"] in _SESSION.failed:
            row = {**row, "ok": False}
        rows.append(row)
    facts = {
        **_SESSION.machine,
        "command": report.command_line(),
        "took_s": round(time.monotonic() - _STARTED, 1),
        "tests_failed": len(_SESSION.failed),
        "failed_unrecorded": sorted(_SESSION.failed - _SESSION.recorded),
    }
    report.update(json_path, "chaos", rows, facts)
    report.render(json_path, json_path.with_suffix(".md"))

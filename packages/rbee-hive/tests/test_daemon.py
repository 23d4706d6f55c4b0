"""``python -m rbee_hive.daemon``: a detached hive's start, status and stop, and its log."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from rbee_hive import daemon


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code = daemon.main(list(argv))
    answer: dict[str, object] = json.loads(capsys.readouterr().out)
    assert code == (0 if answer["ok"] else 1)
    return answer


def test_start_makes_an_older_log_private_and_stop_ends_the_hive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    log = daemon.hive_log(state)
    log.parent.mkdir(parents=True)
    log.write_text("an older run\n")
    log.chmod(0o644)
    where = ("--state-dir", str(state))
    started = _run(
        capsys,
        *where,
        "start",
        "--hive-id=h1",
        "--queen-url=http://127.0.0.1:9",  # nobody there: the hive keeps trying, and runs
        "--port=0",
        f"--models-dir={tmp_path / 'models'}",
    )
    try:
        assert started["already_running"] is False and started["log"] == str(log)
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert log.read_text().startswith("an older run\n")
        assert _run(capsys, *where, "status")["running"] is True
    finally:
        stopped = _run(capsys, *where, "stop", "--grace=5")
    assert stopped["pid"] == started["pid"]
    assert _run(capsys, *where, "status")["running"] is False

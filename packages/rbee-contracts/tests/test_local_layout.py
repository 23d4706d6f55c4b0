"""The local hive layout under a queen's state dir (the keeper and the queen both read it)."""

from __future__ import annotations

from pathlib import Path

from rbee_contracts import local_layout


def test_a_local_hive_lives_under_the_queens_state_dir() -> None:
    state = Path("/state/queen")
    assert local_layout.hives_dir(state) == state / "hives"
    assert local_layout.hive_pid_file(state, "h1") == state / "hives" / "h1.pid"
    assert local_layout.hive_log(state, "h1") == state / "logs" / "hive-h1.log"
    assert local_layout.hive_state_dir(state, "h1") == state / "hives" / "h1"
    assert local_layout.hive_run_dir(state, "h1") == state / "hives" / "h1" / "run"


def test_the_hive_gets_longer_than_its_leftover_workers() -> None:
    assert local_layout.HIVE_STOP_GRACE > local_layout.WORKER_LEFTOVER_GRACE > 0

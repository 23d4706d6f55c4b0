"""The keeper↔queen contract on disk: where a queen keeps the hives it runs on its machine.

Under the queen's ``--state-dir`` (the keeper's ``{state_dir}/queen``), a local hive ``ID`` has

* its pid file ``hives/ID.pid`` (an ``rbee_process`` record; the queen writes and removes it),
* its log ``logs/hive-ID.log``,
* its own state dir ``hives/ID`` (the hive's ``--state-dir``), and in it
* its run dir ``hives/ID/run``: the pid files of the hive's workers (``rbee_hive.reaping``).

The keeper reads these to see what runs, and stops a hive through them when the queen cannot
(it was killed, or does not answer), with the queen's graces.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "HIVE_STOP_GRACE",
    "WORKER_LEFTOVER_GRACE",
    "hive_log",
    "hive_pid_file",
    "hive_run_dir",
    "hive_state_dir",
    "hives_dir",
]

#: how long a hive gets between SIGTERM and SIGKILL (the queen's default ``hive_stop_grace``,
#: and the keeper's when it stops a hive itself): longer than the hive's own 10 s for its workers
#: plus ``rbee_process.KILL_WAIT``
HIVE_STOP_GRACE = 25.0
#: the grace for the workers a killed hive left behind (they were orphaned already)
WORKER_LEFTOVER_GRACE = 5.0


def hives_dir(state_dir: Path) -> Path:
    """Where the local hives' pid files (``*.pid``) and state dirs are."""
    return state_dir / "hives"


def hive_pid_file(state_dir: Path, hive_id: str) -> Path:
    return hives_dir(state_dir) / f"{hive_id}.pid"


def hive_log(state_dir: Path, hive_id: str) -> Path:
    return state_dir / "logs" / f"hive-{hive_id}.log"


def hive_state_dir(state_dir: Path, hive_id: str) -> Path:
    """The hive's own ``--state-dir``."""
    return hives_dir(state_dir) / hive_id


def hive_run_dir(state_dir: Path, hive_id: str) -> Path:
    """Where the hive keeps its workers' pid files (its state dir's ``run``)."""
    return hive_state_dir(state_dir, hive_id) / "run"

"""Worker pid files: no orphans, even when the hive itself was killed.

Each worker run has a pid file ``{run_dir}/{worker_id}.json`` (``rbee_process.ProcessRecord``:
pid, start time, argv, log path) from the moment it is spawned until the supervisor has seen it
exit. A hive that was killed (SIGKILL, OOM) leaves them behind; the next hive on the same state
directory stops those workers' process groups before it starts anything (``reap_leftovers``),
and so does whoever killed the hive (the queen, or the keeper when the queen is gone:
``rbee_process.stop_pid_dir`` on the same directory). The start time in the record means a pid
reused by an unrelated program is never signalled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import rbee_process

__all__ = ["pid_file_path", "reap_leftovers"]

logger = logging.getLogger("rbee_hive.reaping")


def pid_file_path(run_dir: Path, worker_id: str) -> Path:
    return run_dir / f"{worker_id}.json"


def reap_leftovers(run_dir: Path, grace: float) -> None:
    """Stop the process groups of workers a previous hive left running (it was killed)."""
    for path, outcome, record in rbee_process.stop_pid_dir(run_dir, grace, "*.json"):
        if record is not None and outcome is not rbee_process.StopOutcome.NOT_RUNNING:
            logger.warning(
                "a previous hive left worker %s (process group %d) running: %s",
                path.stem,
                record.pid,
                outcome,
            )

"""Stopping a process group: SIGTERM, a grace period, SIGKILL, then whatever is left.

One termination goes through three steps, the same in its blocking (``terminate``) and its async
(``aterminate``) form:

1. SIGTERM to the process group the record's process leads (it leads one: it was spawned in a
   session of its own). Nothing is signalled when neither the process nor a member of its group
   that started after it is alive: a stale record is never acted on.
2. Wait, polling with a deadline, until the process has exited (or, when it was gone already,
   its whole group) or ``grace`` seconds have passed; our own exited children are reaped on the
   way. Otherwise SIGKILL to the group and wait again (``KILL_WAIT`` seconds at most: a process in
   uninterruptible sleep is not waited for forever).
3. SIGKILL to whatever the group still holds (what the process left behind, or a member that
   ignored SIGTERM), and wait until the group is empty (``KILL_WAIT`` at most).

Our own process group, and pid 1's, are never signalled. ``terminate`` reaps our exited child
only when asked (``reap=True``): a caller whose child something else waits for (the hive's
workers, which anyio waits for) must not take its exit status. ``aterminate`` scans the process
table in a worker thread, never on the event loop.

``kill_leftovers`` is step 3 alone (for an owner that waited for the leader itself),
``stop_pid_dir`` stops every process a directory of pid files names (the workers a killed hive
left behind), and ``stop_hive`` stops a hive by its pid file and then those workers (the queen
and, when the queen is gone, the keeper).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from ._record import ProcessRecord, alive, group_members, read_pid_file, reap

__all__ = [
    "StopOutcome",
    "aterminate",
    "kill_leftovers",
    "log_tail",
    "signal_group",
    "stop_hive",
    "stop_pid_dir",
    "stop_pid_file",
    "terminate",
    "wait_gone",
]

POLL = 0.05
#: the longest wait for a group after SIGKILL
KILL_WAIT = 5.0


class StopOutcome(enum.StrEnum):
    NOT_RUNNING = "not running"  # nothing of it was alive: nothing was signalled
    STOPPED = "stopped"  # it ended within the grace period after SIGTERM
    KILLED = "killed"  # it needed SIGKILL


def signal_group(pgid: int, sig: int) -> bool:
    """Signal the process group ``pgid``; False when it is gone (or is init's, ours or our own
    process's: those are refused)."""
    if pgid <= 1 or pgid == os.getpgrp() or pgid == os.getpid():
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class _Termination:
    """The steps of one termination, free of any waiting (the callers wait their own way).

    While the leader runs, the grace period is its own: a leader that ends on SIGTERM has
    stopped, and what it leaves in its group is killed after it. A group whose leader is gone
    already (a hive that was killed, leaving its workers) is waited for as a whole.
    """

    def __init__(self, record: ProcessRecord, reap: bool) -> None:
        self.record = record
        self.reap = reap
        self.leader = False

    def begin(self) -> bool:
        """Whether anything of it is alive (to be signalled at all)."""
        self.leader = alive(self.record, reap=self.reap)
        return self.leader or bool(group_members(self.record))

    def remaining(self) -> bool:
        """Whether what the grace period waits for is still alive (reaps our exited child)."""
        if self.leader:
            return alive(self.record, reap=self.reap)
        return bool(group_members(self.record))

    def send(self, sig: int) -> None:
        signal_group(self.record.pid, sig)

    def leftovers(self) -> bool:
        """SIGKILL to whatever the group still holds; whether anything was left."""
        if self.reap:
            reap(self.record.pid)
        return kill_leftovers(self.record)

    def group_alive(self) -> bool:
        return bool(group_members(self.record))


def kill_leftovers(record: ProcessRecord) -> bool:
    """SIGKILL to the group ``record`` led when it still has members that are its own
    (``group_members``: a group that merely has the same id is left alone); whether it had."""
    if not group_members(record):
        return False
    signal_group(record.pid, signal.SIGKILL)
    return True


def terminate(
    record: ProcessRecord,
    grace: float,
    *,
    on_term: Callable[[], None] | None = None,
    on_kill: Callable[[], None] | None = None,
    reap: bool = False,
) -> StopOutcome:
    """Stop the group ``record`` leads and wait for it (blocking); ``on_term`` runs just before
    the SIGTERM (only when something of it is alive), ``on_kill`` before a SIGKILL that the grace
    period made necessary; ``reap``: the process is our child that nothing else waits for."""
    steps = _Termination(record, reap)
    if record.pid == os.getpgrp() or not steps.begin():
        return StopOutcome.NOT_RUNNING
    if on_term is not None:
        on_term()
    steps.send(signal.SIGTERM)
    outcome = StopOutcome.STOPPED
    if not _wait_for(steps.remaining, grace):
        if on_kill is not None:
            on_kill()
        steps.send(signal.SIGKILL)
        _wait_for(steps.remaining, KILL_WAIT)
        outcome = StopOutcome.KILLED
    if steps.leftovers():
        _wait_for(steps.group_alive, KILL_WAIT)
    return outcome


async def aterminate(
    record: ProcessRecord,
    grace: float,
    *,
    on_term: Callable[[], None] | None = None,
    on_kill: Callable[[], None] | None = None,
    reap: bool = False,
) -> StopOutcome:
    """``terminate`` for an event loop: waits with ``anyio.sleep``, scans in a worker thread."""
    steps = _Termination(record, reap)
    if record.pid == os.getpgrp() or not await anyio.to_thread.run_sync(steps.begin):
        return StopOutcome.NOT_RUNNING
    if on_term is not None:
        on_term()
    steps.send(signal.SIGTERM)
    outcome = StopOutcome.STOPPED
    if not await _await_for(steps.remaining, grace):
        if on_kill is not None:
            on_kill()
        steps.send(signal.SIGKILL)
        await _await_for(steps.remaining, KILL_WAIT)
        outcome = StopOutcome.KILLED
    if await anyio.to_thread.run_sync(steps.leftovers):
        await _await_for(steps.group_alive, KILL_WAIT)
    return outcome


def _wait_for(busy: Callable[[], bool], within: float) -> bool:
    """Poll until ``busy()`` is false (True) or ``within`` seconds have passed (False)."""
    deadline = time.monotonic() + within
    while busy():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


async def _await_for(busy: Callable[[], bool], within: float) -> bool:
    with anyio.move_on_after(within):
        while await anyio.to_thread.run_sync(busy):
            await anyio.sleep(POLL)
        return True
    return False


def wait_gone(record: ProcessRecord, within: float) -> bool:
    """Wait (blocking, at most ``within`` seconds) until the process ``record`` names is gone."""
    return _wait_for(lambda: alive(record), within)


def stop_pid_file(
    path: Path,
    grace: float,
    *,
    on_kill: Callable[[], None] | None = None,
    reap: bool = False,
) -> tuple[StopOutcome, ProcessRecord | None]:
    """Stop the process ``path`` names (if it is still that process) and remove the pid file.

    Returns the outcome and the record the file held (None when there was no readable one).
    ``reap`` as in ``terminate``.
    """
    record = read_pid_file(path)
    outcome = StopOutcome.NOT_RUNNING
    if record is not None:
        outcome = terminate(record, grace, on_kill=on_kill, reap=reap)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return outcome, record


def stop_pid_dir(
    directory: Path, grace: float, pattern: str = "*.json"
) -> list[tuple[Path, StopOutcome, ProcessRecord | None]]:
    """``stop_pid_file`` for every pid file ``pattern`` matches in ``directory`` (blocking).

    For the pid files a killed owner left (a hive's workers): what each named, and how it ended.
    """
    stopped = []
    for path in sorted(directory.glob(pattern)):
        outcome, record = stop_pid_file(path, grace)
        stopped.append((path, outcome, record))
    return stopped


async def stop_hive(
    pid_file: Path,
    run_dir: Path,
    grace: float,
    *,
    worker_grace: float,
    record: ProcessRecord | None = None,
    on_term: Callable[[], None] | None = None,
    on_kill: Callable[[], None] | None = None,
    reap: bool = False,
) -> tuple[StopOutcome, ProcessRecord | None, list[tuple[Path, StopOutcome, ProcessRecord | None]]]:
    """Stop a hive by its pid file (``aterminate``, then the file goes), then the workers the pid
    files in its ``run_dir`` still name (``stop_pid_dir`` with ``worker_grace``): they run in
    sessions of their own, out of its group's reach, so a hive that was killed (or had died)
    leaves them. ``record``: the pid file's record, when the caller has read it already.

    Returns how the hive ended, its record (None without a readable pid file) and the workers'
    ``stop_pid_dir`` list. ``on_term``, ``on_kill`` and ``reap`` as in ``terminate``.
    """
    if record is None:
        record = await anyio.to_thread.run_sync(read_pid_file, pid_file)
    outcome = StopOutcome.NOT_RUNNING
    if record is not None:
        outcome = await aterminate(record, grace, on_term=on_term, on_kill=on_kill, reap=reap)

    def then_workers() -> list[tuple[Path, StopOutcome, ProcessRecord | None]]:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        return stop_pid_dir(run_dir, worker_grace)

    return outcome, record, await anyio.to_thread.run_sync(then_workers)


def log_tail(path: str | os.PathLike[str] | None, lines: int = 20, *, limit: int = 8192) -> str:
    """The last ``lines`` lines of a log file (of its last ``limit`` bytes); "" when unreadable."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

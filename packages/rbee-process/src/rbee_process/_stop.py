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

Our own process group is never signalled.
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

from ._record import ProcessRecord, group_members, process_of, read_pid_file, reap

__all__ = [
    "StopOutcome",
    "aterminate",
    "log_tail",
    "signal_group",
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
    """Signal the process group ``pgid``; False when it is gone (or is our own group)."""
    if pgid <= 0 or pgid == os.getpgrp():
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

    def __init__(self, record: ProcessRecord) -> None:
        self.record = record
        self.leader = process_of(record) is not None

    def anything(self) -> bool:
        return self.leader or bool(group_members(self.record))

    def remaining(self) -> bool:
        """Whether what the grace period waits for is still alive (reaps our exited child)."""
        if self.leader:
            return process_of(self.record) is not None
        return bool(group_members(self.record))

    def send(self, sig: int) -> None:
        signal_group(self.record.pid, sig)

    def leftovers(self) -> bool:
        """SIGKILL to whatever the group still holds; whether anything was left."""
        reap(self.record.pid)
        if not group_members(self.record):
            return False
        self.send(signal.SIGKILL)
        return True

    def group_alive(self) -> bool:
        return bool(group_members(self.record))


def terminate(
    record: ProcessRecord, grace: float, *, on_kill: Callable[[], None] | None = None
) -> StopOutcome:
    """Stop the group ``record`` leads and wait for it (blocking); ``on_kill`` runs before a
    SIGKILL that the grace period made necessary."""
    steps = _Termination(record)
    if record.pid == os.getpgrp() or not steps.anything():
        return StopOutcome.NOT_RUNNING
    steps.send(signal.SIGTERM)
    outcome = StopOutcome.STOPPED
    if not _wait(steps, grace):
        if on_kill is not None:
            on_kill()
        steps.send(signal.SIGKILL)
        _wait(steps, KILL_WAIT)
        outcome = StopOutcome.KILLED
    if steps.leftovers():
        _wait_for(steps.group_alive, KILL_WAIT)
    return outcome


async def aterminate(
    record: ProcessRecord, grace: float, *, on_kill: Callable[[], None] | None = None
) -> StopOutcome:
    """``terminate`` for an event loop: waits with ``anyio.sleep``."""
    steps = _Termination(record)
    if record.pid == os.getpgrp() or not steps.anything():
        return StopOutcome.NOT_RUNNING
    steps.send(signal.SIGTERM)
    outcome = StopOutcome.STOPPED
    if not await _await(steps, grace):
        if on_kill is not None:
            on_kill()
        steps.send(signal.SIGKILL)
        await _await(steps, KILL_WAIT)
        outcome = StopOutcome.KILLED
    if steps.leftovers():
        await _await_for(steps.group_alive, KILL_WAIT)
    return outcome


def _wait(steps: _Termination, within: float) -> bool:
    return _wait_for(steps.remaining, within)


def _wait_for(busy: Callable[[], bool], within: float) -> bool:
    """Poll until ``busy()`` is false (True) or ``within`` seconds have passed (False)."""
    deadline = time.monotonic() + within
    while busy():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


async def _await(steps: _Termination, within: float) -> bool:
    return await _await_for(steps.remaining, within)


async def _await_for(busy: Callable[[], bool], within: float) -> bool:
    with anyio.move_on_after(within):
        while busy():
            await anyio.sleep(POLL)
        return True
    return False


def wait_gone(record: ProcessRecord, within: float) -> bool:
    """Wait (blocking, at most ``within`` seconds) until the process ``record`` names is gone."""
    return _wait_for(lambda: process_of(record) is not None, within)


def stop_pid_file(
    path: Path, grace: float, *, on_kill: Callable[[], None] | None = None
) -> tuple[StopOutcome, ProcessRecord | None]:
    """Stop the process ``path`` names (if it is still that process) and remove the pid file.

    Returns the outcome and the record the file held (None when there was no readable one).
    """
    record = read_pid_file(path)
    outcome = StopOutcome.NOT_RUNNING
    if record is not None:
        outcome = terminate(record, grace, on_kill=on_kill)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return outcome, record


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

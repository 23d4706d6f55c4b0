"""Who a process is: its pid file, and whether the process a pid file names is still that one.

A pid alone names a process only until the process exits: the kernel then gives the number to
the next process that starts. So a pid file records the process's *start time* as the kernel
knows it (``psutil.Process.create_time()``: boot time plus the start tick, the same value every
time it is read during one boot). A pid file is trusted only while a process with that pid
exists, is not a zombie, and started at the recorded time. A record without a start time (the
process was gone before it could be read, or an older file) is trusted only while the process
runs the recorded command line. Anything else is *stale*: its process has exited, or its pid now
belongs to some unrelated program, which must never be signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "ProcessRecord",
    "alive",
    "group_members",
    "process_of",
    "read_pid_file",
    "reap",
    "write_pid_file",
]

#: how far apart two readings of one process's start time may be (one clock tick is 0.01 s)
START_TIME_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessRecord:
    """The identity of a process we started, as its pid file keeps it (JSON)."""

    pid: int
    #: ``psutil.Process.create_time()`` of the process (None when it could not be read)
    start_time: float | None
    argv: tuple[str, ...]
    log_path: str | None = None
    #: wall-clock time (``time.time()``) when it was spawned
    started_at: float = 0.0

    @classmethod
    def of(
        cls, pid: int, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None
    ) -> ProcessRecord:
        """The record of a process that was just started (reads its start time now)."""
        start_time: float | None
        try:
            start_time = float(psutil.Process(pid).create_time())
        except psutil.Error:
            start_time = None
        return cls(
            pid=pid,
            start_time=start_time,
            argv=tuple(argv),
            log_path=None if log_path is None else str(log_path),
            started_at=time.time(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "argv": list(self.argv),
            "log_path": self.log_path,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ProcessRecord | None:
        """The record in ``raw``; None when it is not one (a bare number, garbage)."""
        if not isinstance(raw, dict):
            return None
        pid = raw.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        start = raw.get("start_time", raw.get("create_time"))  # create_time: older keeper files
        argv = raw.get("argv", raw.get("command"))
        log_path = raw.get("log_path")
        started_at = raw.get("started_at")
        return cls(
            pid=pid,
            start_time=float(start) if isinstance(start, (int, float)) else None,
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            log_path=log_path if isinstance(log_path, str) else None,
            started_at=float(started_at) if isinstance(started_at, (int, float)) else 0.0,
        )


def write_pid_file(path: Path, record: ProcessRecord) -> None:
    """Write ``record`` to ``path`` atomically: a reader never sees half a pid file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_json()) + "\n")
    os.replace(tmp, path)


def read_pid_file(path: Path) -> ProcessRecord | None:
    """The record in ``path``; None when there is none or it cannot be one (it is stale)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return ProcessRecord.from_json(raw)


def reap(pid: int) -> int | None:
    """Collect ``pid`` if it is our child and has exited (so no zombie stays behind).

    Returns its exit code (a negative signal number when a signal ended it, as ``subprocess``
    says it), or None when it still runs or is not our child. Never call it for a child that
    something else waits for (``subprocess``, anyio): the exit status goes to the first waiter.
    """
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _cmdline_matches(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    cmdline, argv = list(cmdline), list(argv)
    if not argv:
        return False
    if cmdline == argv:
        return True
    # A script run through its #! line shows up as [interpreter, script path, args...]: compare
    # the arguments, and the script by name.
    tail = argv[1:]
    if len(cmdline) < len(argv) or cmdline[len(cmdline) - len(tail) :] != tail:
        return False
    head = cmdline[: len(cmdline) - len(tail)]
    return any(os.path.basename(part) == os.path.basename(argv[0]) for part in head)


def process_of(record: ProcessRecord) -> psutil.Process | None:
    """The live process ``record`` names, or None when it has exited or the pid is another's.

    Our own exited child is reaped on the way.
    """
    reap(record.pid)
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if record.start_time is not None:
            if abs(proc.create_time() - record.start_time) > START_TIME_TOLERANCE:
                return None  # the pid was reused
        elif not _cmdline_matches(proc.cmdline(), record.argv):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def alive(record: ProcessRecord) -> bool:
    """Whether the process ``record`` names still runs (and is that process)."""
    return process_of(record) is not None


def group_members(record: ProcessRecord) -> list[psutil.Process]:
    """The live processes of the group ``record`` leads, started no earlier than its leader.

    The leader may be gone already: a group lives on while any member does, and its id cannot be
    given to a new group meanwhile. The start time rules out a group that merely has the same id
    after the old one ended.
    """
    if record.start_time is None:
        if process_of(record) is None:
            return []  # no way to tell this group from a later one with the same id
        earliest = None
    else:
        earliest = record.start_time - START_TIME_TOLERANCE
        try:
            # A process holds the pid (even a zombie one): the group is ours only if it is ours.
            if abs(psutil.Process(record.pid).create_time() - record.start_time) > (
                START_TIME_TOLERANCE
            ):
                return []
        except psutil.NoSuchProcess:
            pass  # the leader is gone; its group may live on
        except psutil.Error:
            return []
    members: list[psutil.Process] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) != record.pid:
                continue
            if earliest is not None and proc.create_time() < earliest:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            members.append(proc)
    return members

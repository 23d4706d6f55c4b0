"""Who a process is: its pid file, and whether the process a pid file names is still that one.

A pid alone names a process only until the process exits: the kernel then gives the number to
the next process that starts. So a pid file records when the process started, as the kernel
knows it. On Linux that is the start time in clock ticks since boot (``/proc/<pid>/stat``, field
22) together with the boot id (``/proc/sys/kernel/random/boot_id``): both are fixed for the life
of the process and compared exactly, and neither moves when the wall clock is stepped (NTP, a
suspended laptop, ``date -s``). Where ``/proc`` is missing (not Linux) the record falls back to
``psutil.Process.create_time()`` compared within ``START_TIME_TOLERANCE``: that value is
wall-clock based, so a clock stepped further than the tolerance makes a live process read as
stale there (it is then left running, never a stranger signalled). A pid file is trusted only
while a process with that pid exists, is not a zombie, and started at the recorded time. A
record without any start time (the process was gone before it could be read, or an older file)
is trusted only while the process runs the recorded command line. Anything else is *stale*: its
process has exited, or its pid now belongs to some unrelated program, which must never be
signalled. A record of pid 1 or of this very process is never one.

A pid file is written atomically (a unique temporary file in the same directory, then
``os.replace``); ``pid_file_lock`` serializes the writers of one pid file, so that "is it running?
if not, start it and write its pid file" happens once (``start_once``, in ``_spawn``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "ProcessRecord",
    "alive",
    "group_members",
    "pid_file_lock",
    "process_of",
    "read_pid_file",
    "reap",
    "write_pid_file",
]

#: how far apart two readings of ``create_time()`` may be (the fallback where /proc is missing)
START_TIME_TOLERANCE = 0.05

_PROC = Path("/proc")


@functools.cache
def boot_id() -> str | None:
    """This boot's id (Linux); None where /proc has none. It cannot change while we run."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """The state (``/proc/<pid>/stat`` field 3, "Z" for a zombie) and when ``pid`` started, in
    clock ticks since boot (field 22), from one read of the file.

    None where /proc is missing (or unreadable); ``psutil.NoSuchProcess`` when /proc has no
    such process.
    """
    if boot_id() is None:
        return None
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # field 22 of the line, counting from the state (field 3)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22).

    None where /proc is missing; ``psutil.NoSuchProcess`` when /proc has no such process.
    """
    stat = _stat(pid)
    return None if stat is None else stat[1]


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessRecord:
    """The identity of a process we started, as its pid file keeps it (JSON)."""

    pid: int
    #: ``psutil.Process.create_time()`` of the process (None when it could not be read); the
    #: identity only where there are no start ticks (not Linux, or an older pid file)
    start_time: float | None
    argv: tuple[str, ...]
    log_path: str | None = None
    #: wall-clock time (``time.time()``) when it was spawned
    started_at: float = 0.0
    #: clock ticks since boot when it started (Linux), and the boot they count from
    start_ticks: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(
        cls, pid: int, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None
    ) -> ProcessRecord:
        """The record of a process that was just started (reads its start time now)."""
        start_time: float | None
        ticks: int | None
        try:
            start_time = float(psutil.Process(pid).create_time())
            ticks = start_ticks(pid)
        except psutil.Error:
            start_time, ticks = None, None
        return cls(
            pid=pid,
            start_time=start_time,
            argv=tuple(argv),
            log_path=None if log_path is None else str(log_path),
            started_at=time.time(),
            start_ticks=ticks,
            boot_id=None if ticks is None else boot_id(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "argv": list(self.argv),
            "log_path": self.log_path,
            "started_at": self.started_at,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ProcessRecord | None:
        """The record in ``raw``; None when it is not one (a bare number, garbage)."""
        if not isinstance(raw, dict):
            return None
        pid = raw.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
            return None  # never init, never ourselves
        start = raw.get("start_time", raw.get("create_time"))  # create_time: older keeper files
        argv = raw.get("argv", raw.get("command"))
        log_path = raw.get("log_path")
        started_at = raw.get("started_at")
        ticks = raw.get("start_ticks")
        boot = raw.get("boot_id")
        has_ticks = isinstance(ticks, int) and not isinstance(ticks, bool) and isinstance(boot, str)
        return cls(
            pid=pid,
            start_time=float(start) if isinstance(start, (int, float)) else None,
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            log_path=log_path if isinstance(log_path, str) else None,
            started_at=float(started_at) if isinstance(started_at, (int, float)) else 0.0,
            start_ticks=ticks if has_ticks else None,
            boot_id=boot if has_ticks else None,
        )

    @property
    def identified(self) -> bool:
        """Whether the record holds a start time (else only the command line can tell)."""
        return self.start_ticks is not None or self.start_time is not None


def write_pid_file(path: Path, record: ProcessRecord) -> None:
    """Write ``record`` to ``path`` atomically: a reader never sees half a pid file, and two
    writers never share a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record.to_json()) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def pid_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (``fcntl.flock``; blocking) while inside.

    Whoever checks, starts and records the process of one pid file holds it meanwhile, so two
    starters never both start one. The lock file stays (removing it would race a waiter).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


_reap = reap  # process_of's keyword hides the function


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


def _same_start(pid: int, record: ProcessRecord, ticks: int | None) -> bool | None:
    """Whether the process ``pid`` (which started at ``ticks``, as ``_stat`` read them) started
    when ``record`` says; None when it cannot tell.

    ``psutil.NoSuchProcess`` when there is no such process.
    """
    if record.start_ticks is not None and boot_id() is not None:
        if record.boot_id != boot_id():
            return False  # recorded during an earlier boot
        return ticks == record.start_ticks
    if record.start_time is not None:
        return bool(
            abs(psutil.Process(pid).create_time() - record.start_time) <= START_TIME_TOLERANCE
        )
    return None


def _started_since(proc: psutil.Process, record: ProcessRecord, ticks: int | None) -> bool:
    """Whether ``proc`` (which started at ``ticks``, as ``_stat`` read them) started no earlier
    than ``record``'s process (True when unknown)."""
    if record.start_ticks is not None and boot_id() is not None:
        return record.boot_id == boot_id() and ticks is not None and ticks >= record.start_ticks
    if record.start_time is not None:
        created = proc.create_time()
        return bool(created >= record.start_time - START_TIME_TOLERANCE)
    return True


def process_of(record: ProcessRecord, *, reap: bool = False) -> psutil.Process | None:
    """The live process ``record`` names, or None when it has exited or the pid is another's.

    With ``reap``, our own exited child is reaped on the way: only for a child nothing else
    waits for (``subprocess``, anyio would lose its exit status). A zombie is never alive.
    """
    if not alive(record, reap=reap):
        return None
    try:
        return psutil.Process(record.pid)
    except psutil.Error:
        return None


def alive(record: ProcessRecord, *, reap: bool = False) -> bool:
    """Whether the process ``record`` names still runs (and is that process); ``reap`` as in
    ``process_of``. On Linux one read of ``/proc/<pid>/stat`` tells (it runs in polls)."""
    if record.pid <= 1 or record.pid == os.getpid():
        return False  # never init, never ourselves
    if reap:
        _reap(record.pid)
    try:
        stat = _stat(record.pid)
        if stat is None:  # no /proc: psutil reads state and start time
            proc = psutil.Process(record.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            same = _same_start(record.pid, record, None)
        else:
            state, ticks = stat
            if state == "Z":
                return False
            same = _same_start(record.pid, record, ticks)
        if same is None:
            same = _cmdline_matches(psutil.Process(record.pid).cmdline(), record.argv)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return bool(same)  # else the pid was reused


def group_members(record: ProcessRecord) -> list[psutil.Process]:
    """The live processes of the group ``record`` leads, started no earlier than its leader.

    The leader may be gone already: a group lives on while any member does, and its id cannot be
    given to a new group meanwhile. The start time rules out a group that merely has the same id
    after the old one ended. Blocking (it scans every process): from an event loop, call it in a
    worker thread.
    """
    if record.pid <= 1 or record.pid == os.getpid():
        return []
    if not record.identified:
        if process_of(record) is None:
            return []  # no way to tell this group from a later one with the same id
    else:
        try:
            # A process holds the pid (even a zombie one): the group is ours only if it is ours.
            leader = _stat(record.pid) if record.start_ticks is not None else None
            if not _same_start(record.pid, record, None if leader is None else leader[1]):
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
            stat = _stat(proc.pid)  # state and start in one read (Linux)
            if stat is None:
                state, ticks = proc.status(), None
            else:
                state, ticks = stat
            if not _started_since(proc, record, ticks):
                continue
            if state in (psutil.STATUS_ZOMBIE, "Z"):
                continue
            members.append(proc)
    return members

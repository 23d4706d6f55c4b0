"""Starting a process detached: an argument list, its own session, output into a log file.

A detached process runs in a session of its own, so its process group id is its pid: signals go
to the group (whatever it starts goes with it) and a Ctrl+C in the starting terminal does not
reach it. Its stdin is /dev/null, stdout and stderr are appended to its log file, and SIGINT,
SIGTERM and SIGHUP are back at their defaults (the starter may handle them itself).

``spawn_detached`` uses ``os.posix_spawnp``, not ``subprocess.Popen``: a starter that does not
wait for the process (the keeper exits at once) would get a ResourceWarning from a ``Popen`` left
running when it is collected. ``posix_spawn`` has no ``chdir`` before Python 3.13, so a ``cwd`` is
reached through a short Python trampoline that changes directory and ``exec``s the argument list
(the process keeps its pid and start time; its command line becomes ``argv``). The command is
looked up before anything starts, so a missing one is a ``SpawnError`` with a ``cwd`` too. Where
``posix_spawn`` cannot start a new session (no ``POSIX_SPAWN_SETSID``) the trampoline calls
``os.setsid()`` itself.

``start_once`` is "start it unless its pid file names a live process", under the pid file's lock
(``pid_file_lock``): two starters at once start it once. A process whose pid file cannot be
written (or whose starter is interrupted before it is written) is killed: nothing runs unrecorded.

A process that reads our pipes (the hive reads its workers' stdout) is started by its owner's own
means with ``session_options()``: the same session, stdin and environment rules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._record import ProcessRecord, alive, pid_file_lock, read_pid_file, write_pid_file

__all__ = [
    "SpawnError",
    "child_env",
    "prepare_log",
    "session_options",
    "spawn_detached",
    "start_once",
]

#: a log may hold what a process printed about its work (paths, prompts in a traceback): its
#: owner's only, as its directory is
LOG_MODE = 0o600
LOG_DIR_MODE = 0o700

#: argv[1]: "1" to start a new session; argv[2]: a directory to change to ("" for none)
_TRAMPOLINE = (
    "import os, sys\n"
    "if sys.argv[1] == '1': os.setsid()\n"
    "if sys.argv[2]: os.chdir(sys.argv[2])\n"
    "os.execvp(sys.argv[3], sys.argv[3:])"
)


class SpawnError(OSError):
    """The process could not be started (the command is missing or not executable)."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours, unbuffered Python output, then ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if extra:
        env.update(extra)
    return env


def prepare_log(path: Path) -> Path:
    """Make ``path`` a log only its owner can read: its directory created 0700 when missing,
    the file created 0600, or changed to 0600 when it exists (a log of an older version)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=LOG_DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    try:
        os.fchmod(fd, LOG_MODE)
    finally:
        os.close(fd)
    return path


def session_options(
    env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` / ``anyio.open_process`` that start a child in
    its own session with stdin from /dev/null and ``child_env(env)``."""
    options: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "start_new_session": True,
        "env": child_env(env),
    }
    if cwd is not None:
        options["cwd"] = cwd
    return options


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pid_file: Path | None = None,
    label: str | None = None,
) -> ProcessRecord:
    """Start ``argv`` detached; write its pid file (when given) and return its record.

    ``env`` adds to our environment. A line ``--- rbee: TIME starting LABEL: ARGV`` goes into the
    log first, so the log of many runs tells them apart. ``SpawnError`` when it cannot start.
    """
    argv = list(argv)
    if not argv:
        raise ValueError("argv must not be empty")
    prepare_log(log_path)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with log_path.open("a") as log:
        log.write(f"--- rbee: {stamp} starting {label or argv[0]}: {shlex.join(argv)}\n")
    env_vars = child_env(env)
    _check_command(argv[0], env_vars.get("PATH"), cwd)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    setsid = True
    while True:
        if cwd is None and setsid:
            run = argv
        else:
            where = "" if cwd is None else os.fspath(cwd)
            run = [sys.executable, "-c", _TRAMPOLINE, "0" if setsid else "1", where, *argv]
        try:
            pid = os.posix_spawnp(
                run[0],
                run,
                env_vars,
                file_actions=actions,
                setsid=setsid,
                setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
                setsigmask=(),
            )
        except NotImplementedError:  # no POSIX_SPAWN_SETSID here: the trampoline does it
            if not setsid:
                raise SpawnError(errno.ENOSYS, f"cannot start {argv[0]}: no posix_spawn") from None
            setsid = False
            continue
        except OSError as exc:
            raise SpawnError(exc.errno, f"cannot start {argv[0]}: {exc.strerror}") from None
        break
    try:
        record = ProcessRecord.of(pid, argv, log_path)
        if pid_file is not None:
            write_pid_file(pid_file, record)
    except BaseException:
        # Unrecorded, nobody could stop it: it goes. It has not been waited for, so the pid and
        # its group are still its own.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise
    return record


def _check_command(command: str, path: str | None, cwd: str | os.PathLike[str] | None) -> None:
    """``SpawnError`` unless ``command`` names an executable file (as ``execvp`` would find it,
    a relative path from ``cwd``)."""
    if os.sep in command:
        target = command if cwd is None else os.path.join(cwd, command)
        found = os.path.isfile(target) and os.access(target, os.X_OK)
    else:
        found = shutil.which(command, path=path) is not None
    if not found:
        raise SpawnError(errno.ENOENT, f"cannot start {command}: {os.strerror(errno.ENOENT)}")


def start_once(
    pid_file: Path,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    label: str | None = None,
    reap_child: bool = False,
) -> tuple[ProcessRecord, bool]:
    """The process ``pid_file`` names when it is alive (False), else a new one started by
    ``spawn_detached`` (True); the check, the start and the pid file under ``pid_file_lock``.

    Blocking (it may wait for another starter): from an event loop, call it in a worker thread.
    ``reap_child`` as in ``process_of`` (for a starter whose earlier children may have exited).
    """
    with pid_file_lock(pid_file):
        record = read_pid_file(pid_file)
        if record is not None and alive(record, reap=reap_child):
            return record, False
        record = spawn_detached(
            argv, log_path=log_path, env=env, cwd=cwd, pid_file=pid_file, label=label
        )
        return record, True

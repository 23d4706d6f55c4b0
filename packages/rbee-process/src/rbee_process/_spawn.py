"""Starting a process detached: an argument list, its own session, output into a log file.

A detached process runs in a session of its own, so its process group id is its pid: signals go
to the group (whatever it starts goes with it) and a Ctrl+C in the starting terminal does not
reach it. Its stdin is /dev/null, stdout and stderr are appended to its log file, and SIGINT,
SIGTERM and SIGHUP are back at their defaults (the starter may handle them itself).

``spawn_detached`` uses ``os.posix_spawnp``, not ``subprocess.Popen``: a starter that does not
wait for the process (the keeper exits at once) would get a ResourceWarning from a ``Popen`` left
running when it is collected. ``posix_spawn`` has no ``chdir`` before Python 3.13, so a ``cwd`` is
reached through a short Python trampoline that changes directory and ``exec``s the argument list
(the process keeps its pid and start time; its command line becomes ``argv``).

A process that reads our pipes (the hive reads its workers' stdout) is started by its owner's own
means with ``session_options()``: the same session, stdin and environment rules.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._record import ProcessRecord, write_pid_file

__all__ = ["SpawnError", "child_env", "session_options", "spawn_detached"]

_CHDIR_EXEC = "import os, sys; os.chdir(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"


class SpawnError(OSError):
    """The process could not be started (the command is missing or not executable)."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours, unbuffered Python output, then ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if extra:
        env.update(extra)
    return env


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
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with log_path.open("a") as log:
        log.write(f"--- rbee: {stamp} starting {label or argv[0]}: {shlex.join(argv)}\n")
    run = argv if cwd is None else [sys.executable, "-c", _CHDIR_EXEC, os.fspath(cwd), *argv]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawnp(
            run[0],
            run,
            child_env(env),
            file_actions=actions,
            setsid=True,
            setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            setsigmask=(),
        )
    except OSError as exc:
        raise SpawnError(exc.errno, f"cannot start {argv[0]}: {exc.strerror}") from None
    record = ProcessRecord.of(pid, argv, log_path)
    if pid_file is not None:
        write_pid_file(pid_file, record)
    return record

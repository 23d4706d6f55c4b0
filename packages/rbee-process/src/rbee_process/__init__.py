"""rbee_process: the one way rbee starts, identifies, stops and reaps its background processes.

Used by the keeper (the local queen), the queen (the hives of its machine) and the hive (its
workers). ``_record`` is identity (pid files that record when the process started, their lock,
the alive check, reaping), ``_spawn`` starting (detached, its own session, output to a log; once
per pid file), ``_stop`` termination of a process group (SIGTERM, grace, SIGKILL, leftovers),
of a directory of pid files, and log tails.
"""

from ._record import (
    ProcessRecord,
    alive,
    group_members,
    pid_file_lock,
    process_of,
    read_pid_file,
    reap,
    write_pid_file,
)
from ._spawn import (
    SpawnError,
    child_env,
    prepare_log,
    session_options,
    spawn_detached,
    start_once,
)
from ._stop import (
    KILL_WAIT,
    StopOutcome,
    aterminate,
    kill_leftovers,
    log_tail,
    signal_group,
    stop_hive,
    stop_pid_dir,
    stop_pid_file,
    terminate,
    wait_gone,
)

__all__ = [
    "KILL_WAIT",
    "ProcessRecord",
    "SpawnError",
    "StopOutcome",
    "alive",
    "aterminate",
    "child_env",
    "group_members",
    "kill_leftovers",
    "log_tail",
    "pid_file_lock",
    "prepare_log",
    "process_of",
    "read_pid_file",
    "reap",
    "session_options",
    "signal_group",
    "spawn_detached",
    "start_once",
    "stop_hive",
    "stop_pid_dir",
    "stop_pid_file",
    "terminate",
    "wait_gone",
    "write_pid_file",
]

"""Hives on this machine: ``hive_start`` runs a hive process, ``hive_stop`` ends it.

A hive is started like the hive starts workers: an argument list (never a shell), its own
session and process group (``start_new_session``), stdout and stderr into
``{state_dir}/logs/hive-{id}.log``, and a pid file ``{state_dir}/hives/{id}.pid`` (JSON) so that a
queen restarted later can still stop it. The pid file records the process's start time (Linux
``/proc/<pid>/stat``), so a pid reused by some other program is never signalled.

The hive is a daemon: it outlives the job that started it and the queen too (it re-registers
with the next queen by itself). ``start`` returns once the hive has registered with this queen;
a hive that exits first, or does not register in time, is stopped and the job fails with the
last lines of its log. ``stop`` sends SIGTERM to the group, SIGKILL after the grace period, then
SIGKILL to whatever is left in the group: nothing the hive started in its group survives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs

from jobproto import JobFailed, narrate, progress

from .registry import HiveRegistry
from .settings import QueenSettings

__all__ = ["LocalHives", "PidFile"]

POLL = 0.05
LOG_TAIL_LINES = 20


@attrs.frozen
class PidFile:
    hive_id: str
    pid: int
    #: the process's start time in clock ticks since boot (None where /proc is missing)
    start_ticks: int | None
    started_at: float
    log: str
    command: list[str]


class LocalHives:
    def __init__(
        self,
        settings: QueenSettings,
        registry: HiveRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def pid_path(self, hive_id: str) -> Path:
        return self.settings.state_dir / "hives" / f"{hive_id}.pid"

    def log_path(self, hive_id: str) -> Path:
        return self.settings.state_dir / "logs" / f"hive-{hive_id}.log"

    # -- start -------------------------------------------------------------------------------------

    async def start(
        self,
        hive_id: str,
        *,
        port: int,
        queen_url: str,
        heartbeat: float | None = None,
        models_dir: str | None = None,
    ) -> dict[str, Any]:
        running = self.running(hive_id)
        if running is not None:
            narrate("hive_running", f"hive {hive_id} already runs (pid {running.pid})")
            await self._wait_registered(hive_id, since=0.0, proc=None, log=Path(running.log))
            return {**self._json(running), "already_running": True}
        hive_dir = self.settings.state_dir / "hives" / hive_id
        command = [
            *self.settings.hive_command,
            *("--host", "127.0.0.1", "--port", str(port), "--hive-id", hive_id),
            *("--queen-url", queen_url, "--state-dir", str(hive_dir)),
            *("--models-dir", models_dir or str(hive_dir / "models")),
            *(("--heartbeat", f"{heartbeat:g}") if heartbeat is not None else ()),
        ]
        log = self.log_path(hive_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        hive_dir.mkdir(parents=True, exist_ok=True)
        started_at = self.clock()
        narrate("hive_starting", f"starting hive {hive_id} (log: {log})", command=command)
        proc = _spawn(command, log)
        self._children[hive_id] = proc
        info = PidFile(hive_id, proc.pid, _start_ticks(proc.pid), started_at, str(log), command)
        _write_pid_file(self.pid_path(hive_id), info)
        try:
            await self._wait_registered(hive_id, since=started_at, proc=proc, log=log)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._terminate(hive_id, info, grace=1.0)
            raise
        narrate("hive_started", f"hive {hive_id} registered (pid {proc.pid})")
        return {**self._json(info), "already_running": False}

    async def _wait_registered(
        self, hive_id: str, *, since: float, proc: subprocess.Popen[bytes] | None, log: Path
    ) -> None:
        timeout = self.settings.hive_start_timeout
        began = time.monotonic()
        next_report = 1.0
        with anyio.move_on_after(timeout):
            while True:
                if hive_id in self.registry and self.registry.get(hive_id).last_seen >= since:
                    return
                if proc is not None and proc.poll() is not None:
                    raise JobFailed(
                        "hive_exited",
                        f"hive {hive_id} exited with status {proc.returncode} before it registered;"
                        f" the end of {log}:\n{_tail(log)}",
                    )
                waited = time.monotonic() - began
                if waited >= next_report:
                    progress(
                        "hive_start",
                        round(waited),
                        timeout,
                        unit="s",
                        message=f"waiting for hive {hive_id} to register",
                    )
                    next_report += 1.0
                await anyio.sleep(POLL)
        raise JobFailed(
            "hive_start_timeout",
            f"hive {hive_id} did not register with this queen within {timeout:g} s"
            f" (is its --queen-url right?); the end of {log}:\n{_tail(log)}",
        )

    # -- stop --------------------------------------------------------------------------------------

    async def stop(self, hive_id: str) -> dict[str, Any]:
        info = _read_pid_file(self.pid_path(hive_id))
        if info is None:
            if hive_id in self.registry:
                raise JobFailed(
                    "hive_not_local",
                    f"hive {hive_id} was not started by a queen on this machine (no pid file"
                    f" {self.pid_path(hive_id)}); stop it where it runs",
                )
            raise JobFailed("unknown_hive", f"no hive {hive_id!r} is known on this machine")
        if not self._alive(hive_id, info):
            narrate("hive_not_running", f"hive {hive_id} (pid {info.pid}) had already exited")
            how = "not running"
        else:
            how = await self._terminate(hive_id, info, grace=self.settings.hive_stop_grace)
        self._forget(hive_id)
        return {**self._json(info), "stopped": how}

    async def _terminate(self, hive_id: str, info: PidFile, *, grace: float) -> str:
        """SIGTERM the group, SIGKILL after ``grace``, then SIGKILL what is left; how it ended."""
        how = "terminated"
        if self._alive(hive_id, info):
            narrate(
                "hive_stopping",
                f"stopping hive {hive_id} (SIGTERM to process group"
                f" {info.pid}, SIGKILL after {grace:g} s)",
            )
            _signal_group(info.pid, signal.SIGTERM)
            if not await self._wait_exit(hive_id, info, grace):
                narrate(
                    "hive_killing",
                    f"hive {hive_id} ignored SIGTERM for {grace:g} s: SIGKILL",
                    level="warning",
                )
                _signal_group(info.pid, signal.SIGKILL)
                await self._wait_exit(hive_id, info, 5.0)
                how = "killed"
        _signal_group(info.pid, signal.SIGKILL)  # stragglers the hive left in its group
        self._forget(hive_id)
        return how

    async def _wait_exit(self, hive_id: str, info: PidFile, within: float) -> bool:
        with anyio.move_on_after(within):
            while self._alive(hive_id, info):
                await anyio.sleep(POLL)
            return True
        return False

    def _forget(self, hive_id: str) -> None:
        proc = self._children.pop(hive_id, None)
        if proc is not None:
            proc.poll()  # reap it if it has exited
        with contextlib.suppress(FileNotFoundError):
            self.pid_path(hive_id).unlink()
        self.registry.remove(hive_id)

    # -- inspection --------------------------------------------------------------------------------

    def running(self, hive_id: str) -> PidFile | None:
        """The pid file of the hive when its process still runs (a stale pid file is removed)."""
        info = _read_pid_file(self.pid_path(hive_id))
        if info is None:
            return None
        if self._alive(hive_id, info):
            return info
        proc = self._children.pop(hive_id, None)
        if proc is not None:
            proc.poll()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path(hive_id).unlink()
        return None

    def status(self, hive_id: str) -> dict[str, Any] | None:
        info = self.running(hive_id)
        return None if info is None else self._json(info)

    def _alive(self, hive_id: str, info: PidFile) -> bool:
        proc = self._children.get(hive_id)
        if proc is not None and proc.pid == info.pid:
            return proc.poll() is None  # our child: poll() also reaps it
        if not _pid_alive(info.pid):
            return False
        # Another process may have the pid now: only the one that started then is ours.
        return info.start_ticks is None or _start_ticks(info.pid) == info.start_ticks

    @staticmethod
    def _json(info: PidFile) -> dict[str, Any]:
        return {"hive_id": info.hive_id, "pid": info.pid, "log": info.log, "command": info.command}


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    # fork+exec returns at once; the child's own start-up is what start() then waits for.
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals the whole group
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    fields = _stat(pid)
    if fields is not None:
        return fields[0] != "Z"  # a zombie has exited; its parent has not reaped it yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_pid_file(path: Path, info: PidFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(attrs.asdict(info)))
    tmp.replace(path)  # atomic: a reader never sees half a pid file


def _read_pid_file(path: Path) -> PidFile | None:
    try:
        raw = json.loads(path.read_text())
        return PidFile(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

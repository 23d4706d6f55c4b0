"""The local queen and hive as background processes: start, find, wait for, stop.

Theory of operation
-------------------
``rbee infer`` and ``rbee queen start`` start the queen (and the hive of this machine) when they
are not running; ``rbee queen stop`` stops both. Each runs detached from the terminal in a session
of its own (so its process group id is its pid and a Ctrl+C in the terminal does not reach it),
with stdin from /dev/null and stdout/stderr appended to ``{state_dir}/logs/{name}.log``.

A pid file ``{state_dir}/{name}.pid`` records ``{"pid", "argv", "create_time"}`` (JSON). A pid
file is trusted only while a process with that pid exists, started at the recorded time and runs
the recorded command: a pid file left by a crash, or whose pid the kernel has since given to an
unrelated process, is *stale*, is removed, and nothing is signalled. Stopping sends SIGTERM to the
process group, waits ``stop_timeout`` seconds, then sends SIGKILL.

Services are spawned with ``os.posix_spawnp`` (``setsid``), not ``subprocess.Popen``: the keeper
does not wait for them, and a ``Popen`` left running warns (ResourceWarning) when it is collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import attrs
import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]

from jobproto import JobProtoError
from jobproto.client import JobClient

from .config import Settings

__all__ = [
    "Service",
    "ServiceError",
    "StopResult",
    "is_listening",
    "local_services",
    "running_pid",
    "spawn",
    "start_local",
    "stop",
    "wait_listening",
]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


class ServiceError(RuntimeError):
    """A local service could not be started or stopped; the message says what to look at."""


@attrs.frozen
class Service:
    """One local service: how to run it, where it answers, its pid file and log file."""

    name: str
    argv: tuple[str, ...]
    url: str
    pid_file: Path
    log_file: Path


@attrs.frozen
class StopResult:
    name: str
    #: "not running" | "stopped" | "killed"
    outcome: str
    pid: int | None = None
    stale: bool = False


def _bind_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


def is_local(url: str) -> bool:
    """Whether ``url`` names this machine, so that the keeper may start a service for it."""
    host, _ = _bind_address(url)
    return host in LOCAL_HOSTS or host == socket.gethostname()


def local_services(settings: Settings) -> tuple[Service, Service]:
    """The queen and the hive of this machine, as the settings describe them."""
    state = settings.state_dir
    queen_host, queen_port = _bind_address(settings.queen_url)
    queen = Service(
        "queen",
        (*settings.queen_command, "--host", queen_host, "--port", str(queen_port)),
        settings.queen_url,
        state / "queen.pid",
        state / "logs" / "queen.log",
    )
    hive_url = f"http://{settings.hive_host}:{settings.hive_port}"
    hive = Service(
        "hive",
        (
            *settings.hive_command,
            "--host",
            settings.hive_host,
            "--port",
            str(settings.hive_port),
            "--hive-id",
            settings.hive_id,
            "--queen-url",
            settings.queen_url,
            "--models-dir",
            str(settings.models_dir),
            # The hive keeps its own state (worker logs, locks) in a folder of its own.
            "--state-dir",
            str(state / "hive"),
        ),
        hive_url,
        state / "hive.pid",
        state / "logs" / "hive.log",
    )
    return queen, hive


# -- pid files ------------------------------------------------------------------------------------


def _read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: stale
    if not isinstance(raw, dict):
        # A bare number, as other tools write pid files: no command to check it against.
        return {"pid": raw} if isinstance(raw, int) else {}
    return raw


def _write_pid_file(path: Path, pid: int, argv: tuple[str, ...], create_time: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(json.dumps({"pid": pid, "argv": list(argv), "create_time": create_time}) + "\n")
    os.replace(tmp, path)


def _cmdline_matches(cmdline: list[str], argv: list[str]) -> bool:
    if cmdline == argv:
        return True
    # A script run through its #! line shows up as [interpreter, script path, args...]: compare
    # the arguments, and the script by name.
    tail = argv[1:]
    if len(cmdline) < len(argv) or cmdline[len(cmdline) - len(tail) :] != tail:
        return False
    head = cmdline[: len(cmdline) - len(tail)]
    return any(os.path.basename(part) == os.path.basename(argv[0]) for part in head)


def _process_of(record: dict[str, Any]) -> Any:
    """The ``psutil.Process`` a pid file names, or None when that process is gone or another."""
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        create_time = record.get("create_time")
        if isinstance(create_time, (int, float)) and abs(proc.create_time() - create_time) > 0.5:
            return None  # the pid was reused
        argv = record.get("argv")
        if not isinstance(argv, list) or not _cmdline_matches(proc.cmdline(), argv):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def running_pid(service: Service) -> int | None:
    """The pid of the running service per its pid file; a stale pid file is removed."""
    record = _read_pid_file(service.pid_file)
    if record is None:
        return None
    proc = _process_of(record)
    if proc is None:
        service.pid_file.unlink(missing_ok=True)
        return None
    return int(proc.pid)


# -- start ----------------------------------------------------------------------------------------


def spawn(service: Service) -> int:
    """Start ``service`` detached (own session, log file, pid file); return its pid."""
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with service.log_file.open("a") as log:
        log.write(f"--- rbee: {stamp} starting {service.name}: {' '.join(service.argv)}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (
            os.POSIX_SPAWN_OPEN,
            1,
            str(service.log_file),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o644,
        ),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawnp(
            service.argv[0],
            list(service.argv),
            env,
            file_actions=actions,
            setsid=True,
            # The keeper handles SIGINT itself; the service must get the default handlers back.
            setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            setsigmask=(),
        )
    except OSError as exc:
        raise ServiceError(
            f"cannot start the {service.name} ({service.argv[0]}: {exc.strerror}); "
            f"set {service.name}_command in the config file or RBEE_{service.name.upper()}_COMMAND"
        ) from None
    create_time: float | None
    try:
        create_time = float(psutil.Process(pid).create_time())
    except psutil.Error:
        create_time = None
    _write_pid_file(service.pid_file, pid, service.argv, create_time)
    return pid


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in text)


async def is_listening(url: str, limit: float = 2.0) -> bool:
    """Whether a jobproto service answers at ``url`` (``GET /v1/jobs?limit=1`` gives 200)."""
    try:
        async with JobClient(url, timeout=limit) as client:
            await client.list(limit=1)
    except JobProtoError:  # TransportFailed, a refusal, or not jobproto/1
        return False
    return True


async def wait_listening(service: Service, pid: int | None, limit: float) -> None:
    """Wait until ``service`` answers; ``ServiceError`` if its process ends or ``limit`` passes."""
    with anyio.move_on_after(limit):
        while True:
            if await is_listening(service.url, min(2.0, limit)):
                return
            if pid is not None and not _alive(pid):
                raise ServiceError(
                    f"the {service.name} exited while starting; its log {service.log_file} ends:\n"
                    + _log_tail(service.log_file)
                )
            await anyio.sleep(0.1)
    raise ServiceError(
        f"the {service.name} did not answer at {service.url} within {limit:g} s; "
        f"see {service.log_file}"
    )


def _mentions(value: Any, name: str) -> bool:
    if isinstance(value, dict):
        return name in value or any(_mentions(v, name) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, name) for v in value)
    return bool(value == name)


async def _wait_registered(settings: Settings, limit: float) -> bool:
    """Best effort: wait until the queen lists our hive (``GET /v1/hives``, docs/tiers.md)."""
    url = settings.queen_url + "/v1/hives"
    with anyio.move_on_after(limit):
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                try:
                    response = await http.get(url)
                    if response.status_code == 404:
                        return False  # a queen without the endpoint: nothing to wait for
                    if response.is_success and _mentions(response.json(), settings.hive_id):
                        return True
                except (httpx.HTTPError, ValueError):
                    pass
                await anyio.sleep(0.2)
    return False


async def start_local(settings: Settings, say: Callable[[str], None]) -> None:
    """Make sure the local queen and hive run: start whichever is not, and wait for them.

    A queen that already answers is left alone, and so is its hive setup. The queen must come up
    (``ServiceError`` otherwise); a hive that fails is reported through ``say`` and the queen's
    scheduler will explain what it cannot do without it.
    """
    queen, hive = local_services(settings)
    if await is_listening(queen.url):
        say(f"queen already running at {queen.url}")
    else:
        if not is_local(queen.url):
            raise ServiceError(
                f"the queen at {queen.url} is not on this machine, so rbee cannot start it"
            )
        pid = running_pid(queen)
        if pid is None:
            pid = spawn(queen)
            say(f"started queen (pid {pid}, log {queen.log_file})")
        else:
            say(f"queen is starting (pid {pid})")
        await wait_listening(queen, pid, settings.start_timeout)
        say(f"queen ready at {queen.url}")

    hive_pid = running_pid(hive)
    if hive_pid is not None or await is_listening(hive.url):
        return
    hive_pid = spawn(hive)
    say(f"started hive {settings.hive_id!r} (pid {hive_pid}, log {hive.log_file})")
    try:
        await wait_listening(hive, hive_pid, settings.start_timeout)
    except ServiceError as exc:
        say(f"warning: {exc}")
        return
    if await _wait_registered(settings, min(settings.start_timeout, 15.0)):
        say(f"hive {settings.hive_id!r} registered with the queen")


# -- stop -----------------------------------------------------------------------------------------


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        pgid = os.getpgid(pid)
        # Never signal our own group: a service is always the leader of a group of its own.
        if pgid == pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    try:
        # psutil reaps the process when it is our child, and polls otherwise.
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return not _alive(pid)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(service: Service, timeout: float) -> StopResult:
    """Stop the service named by its pid file: SIGTERM its group, SIGKILL after ``timeout``."""
    stale = service.pid_file.exists()
    pid = running_pid(service)
    if pid is None:
        return StopResult(service.name, "not running", stale=stale)
    _signal_group(pid, signal.SIGTERM)
    outcome = "stopped"
    if not _wait_gone(pid, timeout):
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
        outcome = "killed"
    # The leader is gone; whatever it left in its group (not its own-session children) goes too.
    if pid != os.getpgrp() and _group_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    service.pid_file.unlink(missing_ok=True)
    return StopResult(service.name, outcome, pid)

"""The local queen as a background process, and the local hive through it.

Theory of operation
-------------------
The keeper owns one process: the queen of this machine. ``rbee infer`` and ``rbee queen start``
start it when it does not answer, detached through ``rbee_process`` (an argument list, a session
of its own, stdin from /dev/null, output appended to ``{state_dir}/logs/queen.log``, a pid file
``{state_dir}/queen.pid`` that records its start time, so a pid the kernel has since given to an
unrelated process is never signalled).

The queen owns the hive of this machine (``rbee_queen.hives``): once the queen answers, the
keeper asks it for ``hive_start`` of the local hive (``hive_id``, ``hive_port``, ``models_dir``)
when the hive's pid file names no live process, and also of a live one when the keeper has just
started the queen: the queen answers ``already_running`` once that hive has registered with it
again, so a job sent next finds it. ``rbee infer`` does the same for a local hive that died under
a running queen. ``rbee hive start|stop`` are jobs on the queen too.
A live queen whose pid file records another ``--host``/``--port`` than ``queen_url`` is named
(``ServiceError``), not waited for. The keeper starts the queen with
``--state-dir {state_dir}/queen`` and the ``hive_command``, and ``model_roots`` in its
environment, which its local hives inherit (``Settings.queen_environment``); the queen keeps the
hive's pid file in ``{state_dir}/queen/hives/{id}.pid`` and its log in
``{state_dir}/queen/logs/hive-{id}.log``
(``rbee_contracts.local_layout``, which the queen follows too).

The keeper only reads the hive's pid file; the queen writes and removes it. Starting the queen
is "is it running? if not, start it and write its pid file" under the pid file's lock
(``rbee_process.start_once``), so two ``rbee infer`` at once start one queen.

``rbee queen stop`` asks the queen to stop its local hives (one ``hive_stop`` job per pid file
there), then stops the queen: SIGTERM to its process group, SIGKILL after ``stop_timeout``. A hive
whose pid file the queen left (the queen was killed, or did not answer) is then stopped the same
way, through ``rbee_process.stop_hive`` and the same pid file, with the queen's grace for a hive
(``local_layout.HIVE_STOP_GRACE``, longer than the hive's own for its workers); then the workers
that hive's pid files in ``{state_dir}/queen/hives/{id}/run`` still name (they run in sessions
of their own).
A ``{state_dir}/hive.pid`` that an earlier keeper wrote (it ran the hive itself) is stopped once
the same way, so nothing is left running either way.

Every request to the queen carries the keeper's token (``access``). The queen writes
``{state_dir}/queen/keeper.token`` as it starts, so after starting it the keeper waits until the
queen answers *and* accepts the token in that file (a file left by an earlier queen, whose secret
has since been replaced, is not accepted until the new queen has rewritten it).
``rbee queen rotate-secret`` (``rotate_secret``) stops the local queen and its hives (a hive a
gone queen left too), replaces ``{state_dir}/queen/secret`` and starts them again if the queen
was running: every token derived from the old secret stops working. The queen the keeper starts
does not get the keeper's own token (``RBEE_TOKEN``, ``RBEE_TOKEN_FILE``) in its environment.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import attrs

import rbee_process
from jobproto import JobProtoError, RequestError
from jobproto.client import HTTPStatusError, JobClient
from rbee_contracts import local_layout
from rbee_contracts.auth import (
    ENV_QUEEN_SECRET_FILE,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    KEEPER_TOKEN_FILE,
    LOOPBACK_NAMES,
    SECRET_FILE,
    is_loopback,
    is_own_address,
    is_wildcard,
    new_secret,
)
from rbee_contracts.queen_results import HiveStartResult, HiveStopResult
from rbee_contracts.reading import read_result

from .access import (
    REFUSALS,
    AccessError,
    QueenRefused,
    certificate_error,
    queen_client,
    refusal_message,
    token_is_configured,
)
from .config import Settings

__all__ = [
    "Service",
    "ServiceError",
    "StopResult",
    "describe",
    "hive_serves_https",
    "is_listening",
    "is_local",
    "local_hive_fields",
    "local_services",
    "probe",
    "queen_answers",
    "queen_secret_file",
    "queen_state_dir",
    "rotate_secret",
    "running_pid",
    "spawn",
    "start_local",
    "start_local_hive",
    "stop",
    "stop_local",
    "wait_listening",
    "with_port",
]


class ServiceError(RuntimeError):
    """A local service could not be started or stopped; the message says what to look at."""


@attrs.frozen
class Service:
    """One local process: how to run it, where it answers, its pid file and log file.

    The hive's ``argv`` is empty: the queen runs it (its pid file and log are the queen's).
    """

    name: str
    argv: tuple[str, ...]
    url: str
    pid_file: Path
    log_file: Path
    #: added to its environment when the keeper starts it (``Settings.queen_environment``)
    env: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class StopResult:
    name: str
    outcome: rbee_process.StopOutcome
    pid: int | None = None
    stale: bool = False


def _bind_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


def _flag(argv: tuple[str, ...] | list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (the last one), if any."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def _url(scheme: str, host: str, port: int | str) -> str:
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def with_port(url: str, port: int) -> str:
    """``url`` (a queen's base URL) with another port: ``rbee queen start --port``."""
    parts = urlsplit(url)
    host, _ = _bind_address(url)
    return _url(parts.scheme or "http", host, port) + parts.path.rstrip("/")


def hive_serves_https(argv: tuple[str, ...] | list[str]) -> bool:
    """Whether a hive run with ``argv`` serves HTTPS (it was given a certificate)."""
    return _flag(argv, "--tls-cert") is not None


def is_local(url: str) -> bool:
    """Whether ``url`` names this machine, so that the keeper may start a service for it.

    Loopback, the wildcard addresses and this machine's hostname are local; so is any other
    name or address that resolves only to addresses of this machine
    (``rbee_contracts.auth.is_own_address``): a queen meant for other machines listens on the
    address they reach, e.g. ``http://192.168.1.10:8500``.
    """
    host, _ = _bind_address(url)
    if host in LOOPBACK_NAMES or is_wildcard(host) or host == socket.gethostname():
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # a name that does not resolve is no machine we know
        return False
    return bool(infos) and all(is_own_address(info[0], info[4]) for info in infos)


def queen_state_dir(settings: Settings) -> Path:
    """The local queen's own state: its hives' pid files (``hives/``) and logs (``logs/``)."""
    return settings.state_dir / "queen"


def local_services(settings: Settings) -> tuple[Service, Service]:
    """The queen and the hive of this machine, as the settings describe them."""
    state = settings.state_dir
    queen_state = queen_state_dir(settings)
    queen_host, queen_port = _bind_address(settings.queen_url)
    queen = Service(
        "queen",
        (
            *settings.queen_command,
            *("--host", queen_host, "--port", str(queen_port)),
            *("--state-dir", str(queen_state), "--hive-port", str(settings.hive_port)),
            *("--hive-host", settings.hive_host),
            *("--hive-command", shlex.join(settings.hive_command)),
        ),
        settings.queen_url,
        state / "queen.pid",
        state / "logs" / "queen.log",
        settings.queen_environment(),
    )
    hive_pid_file = local_layout.hive_pid_file(queen_state, settings.hive_id)
    # The queen gives a hive that listens beyond loopback its own certificate
    # (``rbee_queen.hives``): the hive's recorded arguments say so, else the queen's.
    record = rbee_process.read_pid_file(hive_pid_file)
    if record is not None and rbee_process.alive(record):
        https = hive_serves_https(record.argv)
    else:
        https = _flag(settings.queen_command, "--tls-cert") is not None and not is_loopback(
            settings.hive_host
        )
    hive = Service(
        "hive",
        (),
        _url("https" if https else "http", settings.hive_host, settings.hive_port),
        hive_pid_file,
        local_layout.hive_log(queen_state, settings.hive_id),
    )
    return queen, hive


def running_pid(service: Service) -> int | None:
    """The pid of the running service per its pid file (only read: a stale one is replaced by
    the next start, or removed by a stop, and the hive's is the queen's)."""
    record = rbee_process.read_pid_file(service.pid_file)
    if record is not None and rbee_process.alive(record):
        return record.pid
    return None


# -- start ----------------------------------------------------------------------------------------


#: the keeper's credentials in its environment, which a service it starts does not get
KEEPER_ENV = (ENV_TOKEN, ENV_TOKEN_FILE)


def spawn(service: Service) -> tuple[rbee_process.ProcessRecord, bool]:
    """Start ``service`` detached (own session, log file, pid file) unless its pid file names a
    live process (under the pid file's lock); its record, and whether this call started it.
    The keeper's token (``KEEPER_ENV``) stays out of its environment."""
    try:
        record, fresh = rbee_process.start_once(
            service.pid_file,
            service.argv,
            log_path=service.log_file,
            # The keeper's token is not the queen's to hold (it derives its tokens from its
            # secret). rbee_process only adds to our environment, so those values are emptied,
            # which every reader takes as unset (auth.token_from_env).
            env={**dict.fromkeys(KEEPER_ENV, ""), **service.env},
            label=service.name,
        )
    except rbee_process.SpawnError as exc:
        raise ServiceError(
            f"cannot start the {service.name} ({service.argv[0]}: {exc.strerror}); "
            f"set {service.name}_command in the config file or RBEE_{service.name.upper()}_COMMAND"
        ) from None
    return record, fresh


async def _probe(client: JobClient) -> HTTPStatusError | bool:
    try:
        await client.list(limit=1)
    except HTTPStatusError as exc:
        return exc if exc.status in REFUSALS else False
    except JobProtoError as exc:
        if certificate_error(exc) is not None:
            raise  # it answers, with a certificate we do not trust: starting another won't help
        return False
    return True


async def probe(url: str, limit: float = 2.0) -> HTTPStatusError | bool:
    """Whether a jobproto service answers at ``url`` (``GET /v1/jobs?limit=1``), with no token:
    True (200, or HTTPS with a certificate this client cannot check), its refusal of the caller
    (401, 403, 421: it answers, but not to us), or False."""
    async with JobClient(url, timeout=limit) as client:
        try:
            return await _probe(client)
        except JobProtoError:  # a certificate this client does not trust: something answers
            return True


async def is_listening(url: str, limit: float = 2.0) -> bool:
    """Whether a jobproto service answers at ``url``, to us or with a refusal of the caller."""
    return await probe(url, limit) is not False


async def queen_answers(settings: Settings, limit: float = 2.0) -> HTTPStatusError | bool:
    """``probe`` of the queen with the keeper's token and TLS trust (read now)."""
    async with queen_client(settings, limit) as client:
        return await _probe(client)


def _exited(service: Service) -> ServiceError:
    tail = rbee_process.log_tail(service.log_file, 15)
    return ServiceError(
        f"the {service.name} exited while starting; its log {service.log_file} ends:\n"
        + "\n".join("    " + line for line in tail.splitlines())
    )


async def wait_listening(
    service: Service, record: rbee_process.ProcessRecord, limit: float
) -> None:
    """Wait until ``service`` answers; ``ServiceError`` if the process ``record`` names ends or
    ``limit`` passes."""
    with anyio.move_on_after(limit):
        while True:
            if await is_listening(service.url, min(2.0, limit)):
                return
            if not rbee_process.alive(record):
                raise _exited(service)
            await anyio.sleep(0.1)
    raise ServiceError(
        f"the {service.name} did not answer at {service.url} within {limit:g} s; "
        f"see {service.log_file}"
    )


async def wait_queen(
    settings: Settings, queen: Service, record: rbee_process.ProcessRecord
) -> None:
    """Wait until the queen ``record`` names answers and accepts the keeper's token.

    The token is read again on every try: the queen writes its keeper.token as it starts. A
    configured token that it refuses is final (``QueenRefused``); the default file may still be
    the one an earlier queen wrote, so a refusal of it is waited out until ``start_timeout``.
    """
    limit = settings.start_timeout
    answer: HTTPStatusError | bool = False
    with anyio.move_on_after(limit):
        while True:
            answer = await queen_answers(settings, min(2.0, limit))
            if answer is True:
                return
            if isinstance(answer, HTTPStatusError) and token_is_configured(settings):
                break
            if not rbee_process.alive(record):
                raise _exited(queen)
            await anyio.sleep(0.1)
    if isinstance(answer, HTTPStatusError):
        message = refusal_message(settings, answer.status, answer.code, answer.message)
        raise QueenRefused(answer.status, answer.code, message)
    raise ServiceError(
        f"the queen did not answer at {queen.url} within {limit:g} s; see {queen.log_file}"
    )


def local_hive_fields(settings: Settings) -> dict[str, Any]:
    """The ``hive_start`` fields of the local hive, whoever asks the queen for it."""
    return {
        "hive": settings.hive_id,
        "port": settings.hive_port,
        "models_dir": str(settings.models_dir),
    }


async def _start_hive(settings: Settings, say: Callable[[str], None]) -> None:
    """Ask the queen for ``hive_start`` of the local hive; a failure is a warning."""
    try:
        async with queen_client(settings, settings.start_timeout) as client:
            started = await client.run("hive_start", local_hive_fields(settings))
    except (JobProtoError, AccessError) as exc:
        say(f"warning: the queen could not start hive {settings.hive_id!r}: {exc}")
        return
    try:
        hive = read_result(started, HiveStartResult)
    except RequestError as exc:  # not the contract's answer
        say(f"warning: the queen answered hive_start of {settings.hive_id!r} with {exc.message}")
        return
    if hive.already_running:
        say(f"hive {settings.hive_id!r} already running (pid {hive.pid})")
        return
    say(f"started hive {settings.hive_id!r} (pid {hive.pid}, log {hive.log})")
    say(f"hive {settings.hive_id!r} registered with the queen")


def _check_elsewhere(queen: Service) -> None:
    """``ServiceError`` when the queen's pid file names a live queen that listens at another
    address than ``queen.url``: starting one is not possible (its pid file is taken), and waiting
    for it to answer at this URL would be in vain."""
    record = rbee_process.read_pid_file(queen.pid_file)
    if record is None or not rbee_process.alive(record):
        return
    wanted = (_flag(queen.argv, "--host"), _flag(queen.argv, "--port"))
    host, port = _flag(record.argv, "--host"), _flag(record.argv, "--port")
    if host is None or port is None or (host, port) == wanted:
        return
    scheme = "https" if _flag(record.argv, "--tls-cert") is not None else "http"
    raise ServiceError(
        f"the local queen (pid {record.pid}) runs at {_url(scheme, host, port)}, not at"
        f" {queen.url}: set queen_url to it, or `rbee queen stop` it first"
    )


async def start_local(
    settings: Settings,
    say: Callable[[str], None],
    *,
    queen_env: Mapping[str, str] | None = None,
) -> None:
    """Make sure the local queen runs, and that it runs the local hive; wait for both.

    A queen that already answers is left alone. The queen must come up (``ServiceError``
    otherwise); a hive that fails is reported through ``say``, and the queen's scheduler will
    explain what it cannot do without it. ``queen_env`` goes into the environment of a queen
    started here (``rbee queen start --redis-url``: ``RBEE_QUEEN_REDIS_URL``, never argv).
    """
    queen, hive = local_services(settings)
    if queen_env:
        queen = attrs.evolve(queen, env={**queen.env, **queen_env})
    answer = await queen_answers(settings)
    if isinstance(answer, HTTPStatusError):
        message = refusal_message(settings, answer.status, answer.code, answer.message)
        raise QueenRefused(answer.status, answer.code, message)
    started = not answer
    if answer:
        say(f"queen already running at {queen.url}")
        if queen_env:
            say("it keeps the settings it was started with: `rbee queen stop` it first")
    else:
        if not is_local(queen.url):
            raise ServiceError(
                f"the queen at {queen.url} is not on this machine, so rbee cannot start it"
            )
        _check_elsewhere(queen)
        record, fresh = await anyio.to_thread.run_sync(spawn, queen)
        if fresh:
            say(f"started queen (pid {record.pid}, log {queen.log_file})")
        else:
            say(f"queen is starting (pid {record.pid})")
        await wait_queen(settings, queen, record)
        say(f"queen ready at {queen.url}")
    await _ensure_hive(settings, hive, say, queen_started=started)


async def _ensure_hive(
    settings: Settings, hive: Service, say: Callable[[str], None], *, queen_started: bool
) -> None:
    """Ask the queen for ``hive_start`` of the local hive unless it runs and the queen knows it.

    A live hive is asked for too when the queen was just started: the queen reports it
    ``already_running`` once it has registered again, so that a job sent next finds it."""
    if running_pid(hive) is not None:
        if queen_started:
            await _start_hive(settings, say)
        return
    if await is_listening(hive.url):
        return  # something the queen did not start answers there
    await _start_hive(settings, say)


async def start_local_hive(settings: Settings, say: Callable[[str], None]) -> None:
    """Start the local hive through the answering queen when it does not run (``rbee infer``)."""
    _, hive = local_services(settings)
    await _ensure_hive(settings, hive, say, queen_started=False)


# -- stop -----------------------------------------------------------------------------------------


def stop(service: Service, timeout: float) -> StopResult:
    """Stop the service named by its pid file: SIGTERM its group, SIGKILL after ``timeout``."""
    existed = service.pid_file.exists()
    outcome, record = rbee_process.stop_pid_file(service.pid_file, timeout)
    return _stop_result(service.name, outcome, record, existed=existed)


def _stop_result(
    name: str,
    outcome: rbee_process.StopOutcome,
    record: rbee_process.ProcessRecord | None,
    *,
    existed: bool,
) -> StopResult:
    if outcome is rbee_process.StopOutcome.NOT_RUNNING:
        return StopResult(name, outcome, stale=existed)
    return StopResult(name, outcome, None if record is None else record.pid)


async def _ask_queen_to_stop(settings: Settings, hive_ids: list[str]) -> dict[str, StopResult]:
    """``hive_stop`` on the queen for each hive; what it answered (nothing when it could not)."""
    results: dict[str, StopResult] = {}
    try:
        limit = local_layout.HIVE_STOP_GRACE + rbee_process.KILL_WAIT + 10
        async with queen_client(settings, limit) as client:
            for hive_id in hive_ids:
                try:
                    done = await client.run("hive_stop", {"hive": hive_id})
                except JobProtoError:
                    continue  # e.g. it had no pid file after all: the keeper looks itself
                try:
                    stopped = read_result(done, HiveStopResult)
                except RequestError:  # not the contract's answer: the keeper looks itself
                    continue
                outcome = rbee_process.StopOutcome(stopped.stopped.value)
                pid = None if outcome is rbee_process.StopOutcome.NOT_RUNNING else stopped.pid
                results[hive_id] = StopResult("hive", outcome, pid)
    except (JobProtoError, AccessError):
        pass
    return results


async def stop_local(settings: Settings) -> dict[str, StopResult]:
    """Stop the local hives (through the queen while it answers), then the queen.

    Keys: ``"hive"`` (the local hive), ``"queen"``, and ``"hive ID"`` for any other hive the
    queen ran on this machine.
    """
    queen, hive = local_services(settings)
    queen_state = queen_state_dir(settings)
    hives_dir = local_layout.hives_dir(queen_state)

    def pid_files() -> dict[str, Path]:
        return {path.stem: path for path in sorted(hives_dir.glob("*.pid"))}

    results: dict[str, StopResult] = {}
    left = pid_files()
    if left and is_local(queen.url) and await is_listening(queen.url):
        results.update(await _ask_queen_to_stop(settings, list(left)))
    queen_result = await anyio.to_thread.run_sync(stop, queen, settings.stop_timeout)
    # Whatever the queen did not stop (it was gone, or did not answer) is stopped here, and so
    # are the workers of such a hive (sessions of their own: its group's SIGKILL missed them).
    for hive_id, path in pid_files().items():
        outcome, record, _ = await rbee_process.stop_hive(
            path,
            local_layout.hive_run_dir(queen_state, hive_id),
            local_layout.HIVE_STOP_GRACE,
            worker_grace=local_layout.WORKER_LEFTOVER_GRACE,
        )
        results[hive_id] = _stop_result("hive", outcome, record, existed=True)
    nothing = StopResult("hive", rbee_process.StopOutcome.NOT_RUNNING)
    local = results.pop(settings.hive_id, nothing)
    # The hive an earlier keeper ran itself (its pid file is the keeper's own, not the queen's).
    legacy = attrs.evolve(hive, pid_file=settings.state_dir / "hive.pid")
    if legacy.pid_file.exists():
        earlier = await anyio.to_thread.run_sync(stop, legacy, local_layout.HIVE_STOP_GRACE)
        if local.outcome is rbee_process.StopOutcome.NOT_RUNNING:
            local = earlier
    out = {"hive": local, "queen": queen_result}
    for hive_id, result in results.items():
        out[f"hive {hive_id}"] = result
    return out


def describe(result: StopResult) -> dict[str, Any]:
    """A stop's outcome as ``rbee queen stop`` prints it."""
    return {"outcome": str(result.outcome), "pid": result.pid}


# -- the queen's secret ---------------------------------------------------------------------------


def queen_secret_file(settings: Settings) -> Path:
    """The secret of the local queen: ``RBEE_QUEEN_SECRET_FILE``, else ``{queen_state}/secret``."""
    # the queen's own setting; the queen the keeper starts inherits it
    named = os.environ.get(ENV_QUEEN_SECRET_FILE, "").strip()
    if named:
        return Path(named).expanduser()
    return queen_state_dir(settings) / SECRET_FILE


async def rotate_secret(settings: Settings, say: Callable[[str], None]) -> bool:
    """Stop the local queen and its hives, write a new secret, start them again if the queen
    was running. Every token derived from the old secret stops working. Whether it restarted.

    The hives are stopped even when the queen is not running (by their pid files, as ``rbee
    queen stop`` does): a hive a gone queen left would keep the old tokens, and ``start_local``
    would leave it running, unable to join the new queen.
    """
    queen, _ = local_services(settings)
    was_running = running_pid(queen) is not None
    stopped = await stop_local(settings)
    if any(r.outcome is not rbee_process.StopOutcome.NOT_RUNNING for r in stopped.values()):
        say("stopped the local queen and its hives")
    path = queen_secret_file(settings)
    new_secret(path)
    # The old queen's keeper token is of no use now; the new queen writes the new one.
    (queen_state_dir(settings) / KEEPER_TOKEN_FILE).unlink(missing_ok=True)
    say(f"wrote a new secret to {path}: every token made from the old one no longer works")
    if was_running:
        await start_local(settings, say)
    return was_running

"""Hives on this machine: ``hive_start`` runs a hive process, ``hive_stop`` ends it.

The queen is the one owner of the hives of its machine (the keeper's ``rbee queen start``,
``rbee hive start|stop`` and ``rbee queen stop`` all ask it). A hive is started through
``rbee_process`` like every background process of rbee: an argument list (never a shell), its
own session and process group, stdout and stderr into ``{state_dir}/logs/hive-{id}.log``, and a
pid file ``{state_dir}/hives/{id}.pid`` that records its start time, so that a queen restarted
later (or the keeper, when the queen is gone) can still stop it, and a pid reused by some other
program is never signalled. The check "does it run already?", the start and the pid file happen
under the pid file's lock (``rbee_process.start_once``): two ``hive_start`` at once start one
hive, and the second reports it ``already_running``.

The hive is a daemon: it outlives the job that started it and the queen too (it re-registers with
the next queen by itself). ``start`` returns once the hive has registered with this queen; a hive
that exits first, or does not register in time, is stopped and the job fails with the error its log
ends with (one line: a traceback stays in the log, which is its owner's only). ``stop`` sends
SIGTERM to the group, SIGKILL after the grace period (``hive_stop_grace``, longer than the hive's
own grace for its workers), then SIGKILL to whatever is left in the group. The hive's workers run in
sessions of their own, out of the group's reach: a hive that stops normally stops them itself; after
one that had to be killed (or had died), the queen stops the workers its pid files in
``{state_dir}/hives/{id}/run`` still name (``rbee_process.stop_pid_dir``). The queen reaps its
exited hives whenever it looks at them, so none stays a zombie.

The hive's tokens (``rbee_contracts.auth``: its join token for the queen, the hive token it
accepts from the queen) go into its environment, never its argument list, which every user of the
machine can read in ``ps``; its log and pid file are its owner's only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import anyio
import attrs

import rbee_process
from jobproto import FieldError, JobFailed, narrate, progress
from rbee_contracts import local_layout
from rbee_contracts.auth import (
    ENV_HIVE_TOKEN,
    ENV_JOIN_TOKEN,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    hive_token,
    is_loopback,
    join_token,
)
from rbee_contracts.hive_cli import hive_argv
from rbee_contracts.queen_results import (
    HiveStartResult,
    HiveStopResult,
    LocalHiveProcess,
    StopOutcome,
)
from rbee_contracts.values import check_models_dir
from rbee_process import ProcessRecord

from .registry import HiveRegistry
from .security import allowed_hosts
from .settings import QueenSettings

__all__ = ["LocalHives", "error_line"]

POLL = 0.05
#: how far back from a log's end its error is looked for (a traceback's frames come after it)
ERROR_SEARCH_LINES = 200
#: the keeper's credential: never in a hive's environment
KEEPER_ENV = (ENV_TOKEN, ENV_TOKEN_FILE)


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

    def pid_path(self, hive_id: str) -> Path:
        return local_layout.hive_pid_file(self.settings.state_dir, hive_id)

    # -- start -------------------------------------------------------------------------------------

    async def start(
        self,
        hive_id: str,
        *,
        port: int,
        queen_url: str,
        heartbeat: float | None = None,
        models_dir: str | None = None,
    ) -> HiveStartResult:
        hive_dir = local_layout.hive_state_dir(self.settings.state_dir, hive_id)
        command = [
            *self.settings.hive_command,
            *hive_argv(  # --flag=VALUE: a value that starts with "-" is no flag
                host=self.settings.hive_host,
                port=port,
                hive_id=hive_id,
                queen_url=queen_url,
                state_dir=str(hive_dir),
                models_dir=models_dir or str(hive_dir / "models"),
                heartbeat=heartbeat,
                **self.tls_flags(),
            ),
        ]
        log = local_layout.hive_log(self.settings.state_dir, hive_id)
        hive_dir.mkdir(parents=True, exist_ok=True)
        started_at = self.clock()

        env = self.environment(hive_id)

        def start_once() -> tuple[ProcessRecord, bool]:
            return rbee_process.start_once(
                self.pid_path(hive_id),
                command,
                log_path=log,
                label=f"hive {hive_id}",
                reap_child=True,
                env=env,
            )

        try:
            record, fresh = await anyio.to_thread.run_sync(start_once)
        except rbee_process.SpawnError as exc:
            raise JobFailed("hive_exited", f"hive {hive_id} could not be started: {exc}") from None
        if not fresh:
            narrate("hive_running", f"hive {hive_id} already runs (pid {record.pid})")
            await self._wait_registered(hive_id, record, since=0.0, child=False)
            return HiveStartResult(**_fields(hive_id, record), already_running=True)
        narrate("hive_starting", f"started hive {hive_id} (log: {log})", command=command)
        try:
            await self._wait_registered(hive_id, record, since=started_at, child=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._terminate(hive_id, record, grace=1.0)
            raise
        narrate("hive_started", f"hive {hive_id} registered (pid {record.pid})")
        return HiveStartResult(**_fields(hive_id, record), already_running=False)

    def queen_url(self, requested: str | None, own: str) -> str:
        """The URL a hive started here reports to: this queen's own (``own``). A ``requested``
        one is taken only when it is this queen too: ``own``'s scheme and port, and a host name
        the queen answers for (``security.allowed_hosts``: loopback, its address, its public
        URL's host, ``--allowed-host``); else ``JobFailed("queen_url_not_allowed")``, as a hive
        of this machine must not send its join token (and take its orders) elsewhere."""
        if requested is None:
            return own
        want, got = urlsplit(own), urlsplit(requested)
        names = allowed_hosts(attrs.evolve(self.settings, allowed_hosts=()))
        if (
            got.scheme != want.scheme
            or _port(got) != _port(want)
            or (got.hostname or "") not in (names or ())
            or got.path.strip("/")
        ):
            raise JobFailed(
                "queen_url_not_allowed",
                f"queen_url: a hive on the queen's machine reports to this queen ({own}),"
                f" not {requested!r}",
            )
        return requested.rstrip("/")

    def models_dir(self, requested: str | None) -> str | None:
        """The models directory a hive started here is given: ``requested`` (``None``: the
        default, ``models`` in its state directory) when it is a directory of its own on this
        machine (``values.check_models_dir``: not ``/``, a system directory, nor the home
        directory of the user the queen and its hives run as), judged as written and with its
        symbolic links resolved, as the hive judges it at its start; else
        ``JobFailed("models_dir_not_allowed")`` before anything starts. The request's type says
        only that it is absolute: whose home it must not be depends on the machine."""
        if requested is None:
            return None
        for path in dict.fromkeys((requested, os.path.realpath(requested))):
            try:
                check_models_dir(path)
            except FieldError as exc:
                raise JobFailed("models_dir_not_allowed", exc.message) from None
        return requested

    def tls_flags(self) -> dict[str, str]:
        """TLS for a hive started here (paths, not secrets, so flags). It verifies the queen's
        HTTPS against the queen's CA, else the queen's own certificate (pinned); a hive that
        listens beyond loopback serves HTTPS with the queen's certificate and key (the same
        machine, the same names), which the queen verifies against its ``tls_ca``."""
        cert, key, ca = self.settings.tls_cert, self.settings.tls_key, self.settings.tls_ca
        if cert is None or key is None:
            return {} if ca is None else {"tls_ca": str(ca)}
        flags = {"tls_ca": str(ca or cert)}
        if not is_loopback(self.settings.hive_host):
            flags |= {"tls_cert": str(cert), "tls_key": str(key)}
        return flags

    def environment(self, hive_id: str) -> dict[str, str]:
        """What a hive started here gets in its environment, over the queen's own: its tokens
        (none without a secret), and never the keeper's (``RBEE_TOKEN``, ``RBEE_TOKEN_FILE``,
        which the queen inherits from its user's shell): ``rbee_process`` adds to the queen's
        environment and cannot take a name out, so those are emptied (empty is unset)."""
        env = dict.fromkeys(KEEPER_ENV, "")
        secret = self.settings.secret
        if secret is None:
            return env
        return env | {
            ENV_JOIN_TOKEN: join_token(secret, hive_id),
            ENV_HIVE_TOKEN: hive_token(secret, hive_id),
        }

    async def _wait_registered(
        self, hive_id: str, record: ProcessRecord, *, since: float, child: bool
    ) -> None:
        timeout = self.settings.hive_start_timeout
        log = record.log_path or local_layout.hive_log(self.settings.state_dir, hive_id)
        began = time.monotonic()
        next_report = 1.0
        with anyio.move_on_after(timeout):
            while True:
                if hive_id in self.registry and self.registry.get(hive_id).last_seen >= since:
                    return
                if child:
                    code = rbee_process.reap(record.pid)
                    if code is not None:
                        raise JobFailed(
                            "hive_exited",
                            f"hive {hive_id} exited with status {code} before it registered:"
                            f" {_error(log)}; {_details(log)}",
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
            f" (is its --queen-url right?); its last words: {_error(log)}; {_details(log)}",
        )

    # -- stop --------------------------------------------------------------------------------------

    async def stop(self, hive_id: str) -> HiveStopResult:
        record = rbee_process.read_pid_file(self.pid_path(hive_id))
        if record is None:
            if hive_id in self.registry:
                raise JobFailed(
                    "hive_not_local",
                    f"hive {hive_id} was not started by a queen on this machine (no pid file"
                    f" {self.pid_path(hive_id)}); stop it where it runs",
                )
            raise JobFailed("unknown_hive", f"no hive {hive_id!r} is known on this machine")
        how = await self._terminate(hive_id, record, grace=self.settings.hive_stop_grace)
        if how is rbee_process.StopOutcome.NOT_RUNNING:
            narrate("hive_not_running", f"hive {hive_id} (pid {record.pid}) had already exited")
        return HiveStopResult(**_fields(hive_id, record), stopped=StopOutcome(how.value))

    async def _terminate(
        self, hive_id: str, record: ProcessRecord, *, grace: float
    ) -> rbee_process.StopOutcome:
        """SIGTERM the group, SIGKILL after ``grace``, then SIGKILL what is left; how it ended."""

        def stopping() -> None:
            narrate(
                "hive_stopping",
                f"stopping hive {hive_id} (SIGTERM to process group"
                f" {record.pid}, SIGKILL after {grace:g} s)",
            )

        def killing() -> None:
            narrate(
                "hive_killing",
                f"hive {hive_id} ignored SIGTERM for {grace:g} s: SIGKILL",
                level="warning",
            )

        # Its workers are in sessions of their own: what a killed (or dead) hive left is ours.
        how, _, stopped = await rbee_process.stop_hive(
            self.pid_path(hive_id),
            local_layout.hive_run_dir(self.settings.state_dir, hive_id),
            grace,
            worker_grace=local_layout.WORKER_LEFTOVER_GRACE,
            record=record,
            on_term=stopping,
            on_kill=killing,
            reap=True,
        )
        self.registry.remove(hive_id)
        for path, outcome, _ in stopped:
            if outcome is not rbee_process.StopOutcome.NOT_RUNNING:
                narrate(
                    "hive_worker_leftover",
                    f"hive {hive_id} left worker {path.stem} running: {outcome}",
                    level="warning",
                )
        return how

    # -- inspection --------------------------------------------------------------------------------

    def running(self, hive_id: str) -> ProcessRecord | None:
        """The record of the hive when its process still runs (an exited child is reaped).

        A stale pid file is left for ``start_once`` to replace under its lock (removing it here
        could remove the one a concurrent start has just written) or for ``stop`` to remove.
        """
        record = rbee_process.read_pid_file(self.pid_path(hive_id))
        if record is not None and rbee_process.alive(record, reap=True):
            return record
        return None

    def status(self, hive_id: str) -> LocalHiveProcess | None:
        record = self.running(hive_id)
        return None if record is None else LocalHiveProcess(**_fields(hive_id, record))


def _fields(hive_id: str, record: ProcessRecord) -> dict[str, Any]:
    """The ``LocalHiveProcess`` fields of a hive's pid file record."""
    return {
        "hive_id": hive_id,
        "pid": record.pid,
        "log": record.log_path,
        "command": list(record.argv),
    }


def _port(url: SplitResult) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


#: lines of a traceback (or of rbee's own start stamp) that say nothing of what went wrong
_NOT_THE_ERROR = (
    "Traceback (",
    "During handling of the above exception",
    "The above exception was the direct cause",
    "+ Exception Group Traceback",
    "--- rbee:",
    # how a process ends after its error, not the error (uvicorn exits 3 after a failed bind)
    "SystemExit",
    "KeyboardInterrupt",
)


def error_line(tail: str) -> str:
    """What a failed process's log says went wrong, in one line: the last line that is not part
    of a traceback's frames (indented), nor its header, nor rbee's start stamp, nor how the
    process exited (``SystemExit: 3``). After a traceback that is its exception (``OSError:
    [Errno 98] address already in use``). "" when there is none. The frames (internal paths)
    stay in the log, for its owner."""
    for line in reversed(tail.splitlines()):
        text = line.rstrip()
        if text and not text[0].isspace() and not text.startswith(_NOT_THE_ERROR):
            return text[:500]
    return ""


def _error(log: str | Path) -> str:
    tail = rbee_process.log_tail(log, ERROR_SEARCH_LINES, limit=1 << 15)
    return error_line(tail) or "it printed nothing"


def _details(log: str | Path) -> str:
    # the log's name, not where the queen keeps it: `rbee hive status` shows the path
    return f"the details are in the hive's log {Path(log).name} (`rbee hive status` shows where)"

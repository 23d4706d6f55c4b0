"""Hives on other machines: install, start, stop, status and uninstall over SSH (``ssh``).

Each is one queen job that narrates its steps. On the host (paths under the SSH user's home):

* ``.local/share/rbee/venv``: the virtualenv ``hive_install`` makes with the host's ``python3``
  (``python`` in rbee's hosts file) and fills with ``rbee-hive`` and ``rbee-worker[extra]``,
  from the package index, or from wheels built on this machine and copied over SFTP into
  ``.local/share/rbee/wheels`` (always for rbee's own distributions when they are not published;
  for every dependency too when ``offline``: the host then needs no index at all);
* ``.config/rbee/hive/join.token`` and ``hive.token`` (0600, written over SFTP by
  ``hive_start``): the hive finds them through ``RBEE_JOIN_TOKEN_FILE`` and
  ``RBEE_HIVE_TOKEN_FILE``; a token is never on a command line. When this queen serves HTTPS,
  ``queen-ca.pem`` there too: its ``tls_ca``, else its own certificate (pinned), which the hive
  verifies the queen with (``--tls-ca``);
* ``.local/state/rbee/hive``: the hive's state, its pid file and its log
  (``python -m rbee_hive.daemon``).

The hive reaches the queen at ``hive_start``'s ``queen_url``, else the host's ``queen_url`` in
rbee's hosts file, else this queen's own URL (its ``public_url``, else the address it binds)
unless that is a loopback one, as it is when the queen binds 127.0.0.1 or 0.0.0.0: then the
queen's scheme and port at the address this machine has on its SSH connection to the host (the
one on the route there). A hive with ``tls_cert`` and ``tls_key`` in the hosts file (paths on
the host) serves HTTPS with them; the queen verifies it against its own ``tls_ca``.

``hive_start`` returns once the hive has registered with this queen; a hive that exits first, or
does not register in time, is stopped and the job fails with the end of its log.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio

from jobproto import JobFailed, RequestError, narrate, progress
from rbee_contracts import auth
from rbee_contracts.hive_cli import DaemonAnswer, hive_optional_flags
from rbee_contracts.queen_results import (
    HiveInstallResult,
    HiveStartResult,
    HiveStopResult,
    HiveUninstallResult,
    HostView,
    LocalHiveProcess,
    StopOutcome,
)
from rbee_contracts.reading import read_result

from .hives import error_line
from .registry import HiveRegistry
from .settings import QueenSettings
from .ssh import HostEntry, Machine, SSHError, SSHHosts, SSHSettings
from .wheelhouse import BuildError, Target, Wheelhouse

__all__ = ["RemoteHives", "daemon_start_argv", "hive_queen_url"]

VENV = PurePosixPath(".local/share/rbee/venv")
WHEELS = PurePosixPath(".local/share/rbee/wheels")
STATE = PurePosixPath(".local/state/rbee/hive")
TOKENS = PurePosixPath(".config/rbee/hive")
#: longest a remote pip install may take (seconds)
INSTALL_LIMIT = 1800.0
#: seconds between looks at a starting hive's process on its host
STATUS_EVERY = 2.0
POLL = 0.1


class RemoteHives:
    def __init__(
        self,
        settings: QueenSettings,
        registry: HiveRegistry,
        ssh: SSHSettings | None = None,
        *,
        queen_url: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.registry = registry
        #: this queen's own URL (``Queen.url``: its public URL, else where it is bound)
        self.queen_url = queen_url
        self.hosts = SSHHosts(ssh)
        self.wheelhouse = Wheelhouse(settings.state_dir / "wheels")

    def host_views(self) -> list[HostView]:
        try:
            hosts = self.hosts.hosts()
        except SSHError:
            return []  # a broken hosts file must not break hive_list; hive_install says why
        return [HostView(h.alias, h.hostname, h.port, h.user) for h in hosts.values()]

    def _secret(self) -> bytes:
        """The queen's secret, from which the hive's tokens derive. A queen without one checks no
        tokens and has none to give: a hive there could neither join it nor be called by it."""
        if self.settings.secret is None:
            raise JobFailed(
                "queen_without_secret",
                "this queen has no secret, so a hive on another machine could not join it:"
                " manage remote hives through `rbee-queen` (it always has one)",
            )
        return self.settings.secret

    def _connect(self, alias: str) -> AbstractAsyncContextManager[Machine]:
        self._secret()
        narrate("ssh_connect", f"connecting to {alias} over SSH")
        return self.hosts.connect(alias)

    # -- install -----------------------------------------------------------------------------------

    async def install(self, alias: str, *, extra: str | None, offline: bool) -> HiveInstallResult:
        packages = ["rbee-hive", f"rbee-worker[{extra}]" if extra else "rbee-worker"]
        try:
            async with self._connect(alias) as machine:
                target = await self._python(machine)
                venv = machine.home / VENV
                await self._make_venv(machine, venv)
                own = await self._own_wheels(offline)
                if own is None:
                    narrate("hive_install", f"installing {' '.join(packages)} from the index")
                    requirements = [_pinned(p) for p in packages]
                    source = "index"
                    find_links: list[str] = []
                else:
                    requirements, find_links = await self._copy_wheels(
                        machine, own, packages, target, offline
                    )
                    source = "wheels"
                await self._pip_install(machine, venv, requirements, find_links, offline)
        except (SSHError, BuildError) as exc:
            raise _failed(exc) from None
        narrate("hive_installed", f"rbee-hive is installed on {alias} in {venv}")
        return HiveInstallResult(alias, str(venv), packages, source, offline)

    async def _python(self, machine: Machine) -> Target:
        python = machine.entry.python
        probe = (
            "import sys, os; print(sys.version_info[0], sys.version_info[1], os.uname().machine)"
        )
        done = await machine.run([python, "-c", probe])
        if done.exit_status != 0:
            raise JobFailed(
                "remote_python",
                f"{python} does not run on {machine.entry.alias}: {done.stderr.strip()[-500:]}"
                f" (set python for it in {self.hosts.settings.hosts_file})",
            )
        major, minor, arch = done.stdout.split()
        target = Target((int(major), int(minor)), arch)
        if target.version < (3, 11):
            raise JobFailed(
                "remote_python",
                f"{python} on {machine.entry.alias} is Python {major}.{minor}; rbee-hive needs"
                f" 3.11 or newer (set python for it in {self.hosts.settings.hosts_file})",
            )
        narrate("remote_python", f"{machine.entry.alias}: Python {major}.{minor} on {arch}")
        return target

    async def _make_venv(self, machine: Machine, venv: PurePosixPath) -> None:
        if await machine.exists(venv / "bin" / "python"):
            narrate("venv", f"the virtualenv {venv} exists")
            return
        narrate("venv", f"creating the virtualenv {venv}")
        await machine.makedirs(venv.parent, 0o755)
        done = await machine.run([machine.entry.python, "-m", "venv", str(venv)], limit=300)
        if done.exit_status != 0:
            raise JobFailed(
                "remote_venv",
                f"`python -m venv` failed on {machine.entry.alias} (Debian and Ubuntu need the"
                f" python3-venv package): {done.stderr.strip()[-800:]}",
            )

    async def _own_wheels(self, offline: bool) -> list[Path] | None:
        narrate("wheels", "finding rbee's own distributions")
        own = await self.wheelhouse.own_wheels(offline=offline)
        if own is not None:
            narrate("wheels", f"rbee's wheels: {', '.join(p.name for p in own)}")
        return own

    async def _copy_wheels(
        self,
        machine: Machine,
        own: list[Path],
        packages: list[str],
        target: Target,
        offline: bool,
    ) -> tuple[list[str], list[str]]:
        """Copy the wheels; the requirements and find-links the host's pip gets."""
        wheels = list(own)
        if offline:
            narrate("wheels", "downloading the dependencies here for a host without an index")
            names = {p.name for p in own}
            deps = await self.wheelhouse.dependencies(_requirements(own, packages), target)
            wheels += [p for p in deps if p.name not in names]
        remote = machine.home / WHEELS
        await machine.run(["rm", "-rf", "--", str(remote)])
        await machine.makedirs(remote)
        for n, path in enumerate(wheels, 1):
            await machine.put(path, remote / path.name)
            progress("copy_wheels", n, len(wheels), unit="wheels", message=path.name)
        narrate("wheels", f"copied {len(wheels)} wheels to {machine.entry.alias}:{remote}")
        return _requirements([remote / p.name for p in own], packages), [str(remote)]

    async def _pip_install(
        self,
        machine: Machine,
        venv: PurePosixPath,
        requirements: list[str],
        find_links: list[str],
        offline: bool,
    ) -> None:
        argv = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        argv += ["install", "--upgrade", "--quiet"]
        if offline:
            argv.append("--no-index")
        for link in find_links:
            argv += ["--find-links", link]
        argv += requirements
        narrate("pip_install", f"on {machine.entry.alias}: {shlex.join(argv)}")
        done = await machine.run(argv, limit=INSTALL_LIMIT)
        if done.exit_status != 0:
            output = (done.stdout + done.stderr).strip().splitlines()[-20:]
            raise JobFailed(
                "remote_install",
                f"pip install failed on {machine.entry.alias} (exit status {done.exit_status}):\n"
                + "\n".join(output),
            )

    # -- start -------------------------------------------------------------------------------------

    async def start(
        self,
        alias: str,
        hive_id: str,
        *,
        port: int,
        queen_url: str | None,
        bind: str | None,
        heartbeat: float | None,
        models_dir: str | None,
    ) -> HiveStartResult:
        try:
            async with self._connect(alias) as machine:
                return await self._start(
                    machine, hive_id, port, queen_url, bind, heartbeat, models_dir
                )
        except SSHError as exc:
            raise _failed(exc) from None

    async def _start(
        self,
        machine: Machine,
        hive_id: str,
        port: int,
        explicit_queen_url: str | None,
        bind: str | None,
        heartbeat: float | None,
        models_dir: str | None,
    ) -> HiveStartResult:
        alias = machine.entry.alias
        python = machine.home / VENV / "bin" / "python"
        if not await machine.exists(python):
            raise JobFailed(
                "hive_not_installed",
                f"no hive is installed on {alias} (no {python}):"
                f" `rbee hive install --host {alias}` first",
            )
        secret = self._secret()
        tokens = machine.home / TOKENS
        await machine.write_private(tokens / "join.token", auth.join_token(secret, hive_id) + "\n")
        await machine.write_private(tokens / "hive.token", auth.hive_token(secret, hive_id) + "\n")
        narrate("hive_tokens", f"wrote the hive's tokens to {alias}:{tokens} (mode 0600)")
        queen_url = hive_queen_url(
            explicit_queen_url, machine.entry, self.queen_url(), machine.local_address
        )
        tls_ca = await self._copy_queen_ca(machine)
        bind = bind or machine.entry.hive_host or machine.peer_address
        public_url = None
        if auth.is_wildcard(bind):
            # Bound to every interface, the hive would name itself by its host name: it is
            # reached where SSH reached its machine.
            if port == 0:
                raise JobFailed(
                    "hive_port_required",
                    f"a hive on {alias} that binds {bind} needs a port (not 0) for its URL",
                )
            scheme = "https" if machine.entry.tls_cert else "http"
            public_url = f"{scheme}://{_url_host(machine.peer_address)}:{port}"
        argv = daemon_start_argv(
            python,
            machine.home / STATE,
            hive_id=hive_id,
            queen_url=queen_url,
            bind=bind,
            port=port,
            heartbeat=heartbeat,
            models_dir=models_dir,
            public_url=public_url,
            tls_cert=machine.entry.tls_cert,
            tls_key=machine.entry.tls_key,
            tls_ca=None if tls_ca is None else str(tls_ca),
        )
        env = {
            auth.ENV_JOIN_TOKEN_FILE: str(tokens / "join.token"),
            auth.ENV_HIVE_TOKEN_FILE: str(tokens / "hive.token"),
        }
        started_at = time.time()
        answer = await self._daemon(machine, argv, env=env)
        if not answer.ok:
            log = PurePosixPath(answer.log)
            raise JobFailed(
                "hive_exited",
                f"hive {hive_id} could not be started on {alias}: {await _error(machine, log)};"
                f" the details are in its log {alias}:{log}",
            )
        fresh = not answer.already_running
        process = _process(hive_id, alias, answer)
        if fresh:
            narrate(
                "hive_starting",
                f"started hive {hive_id} on {alias} (pid {process.pid}, bound to {bind}:{port},"
                f" log {process.log}); waiting for it to register with {queen_url}",
            )
        else:
            narrate("hive_running", f"hive {hive_id} already runs on {alias} (pid {process.pid})")
        # The hive names itself by the address it binds (or its public URL): a hive beating
        # under this id from any other host is not the one started here.
        expect = urlsplit(public_url).hostname if public_url else bind
        try:
            await self._wait_registered(
                machine, hive_id, since=started_at if fresh else 0.0, host=expect or bind
            )
        except BaseException:
            if fresh:
                with anyio.CancelScope(shield=True):
                    await self._stop(machine, hive_id, grace=2.0)
            raise
        narrate("hive_started", f"hive {hive_id} on {alias} registered")
        return HiveStartResult(
            hive_id,
            process.pid,
            process.log,
            process.command,
            host=alias,
            already_running=not fresh,
        )

    async def _copy_queen_ca(self, machine: Machine) -> PurePosixPath | None:
        """When this queen serves HTTPS: its CA (else its own certificate, pinned) on the host,
        for the hive to verify the queen with; None when it serves plain HTTP."""
        if self.settings.tls_cert is None:
            return None
        local = self.settings.tls_ca or self.settings.tls_cert
        remote = machine.home / TOKENS / "queen-ca.pem"
        await machine.write_private(remote, await anyio.Path(local).read_text())
        narrate("hive_tls", f"copied the queen's CA ({local}) to {machine.entry.alias}:{remote}")
        return remote

    async def _wait_registered(
        self, machine: Machine, hive_id: str, *, since: float, host: str
    ) -> None:
        """Until hive ``hive_id`` has beaten since ``since`` with a URL on ``host``."""
        host = host.strip("[]").lower()
        timeout = self.settings.hive_start_timeout
        began = time.monotonic()
        next_look = STATUS_EVERY
        log = machine.home / STATE / "logs" / "hive.log"
        with anyio.move_on_after(timeout):
            while True:
                if hive_id in self.registry:
                    record = self.registry.get(hive_id)
                    if record.last_seen >= since and url_host(record.url) == host:
                        return
                waited = time.monotonic() - began
                if waited >= next_look:
                    next_look += STATUS_EVERY
                    status = await self._daemon(machine, self._daemon_argv(machine, "status"))
                    if not status.running:
                        raise JobFailed(
                            "hive_exited",
                            f"hive {hive_id} exited on {machine.entry.alias} before it"
                            f" registered: {await _error(machine, log)}; the details are in its"
                            f" log {machine.entry.alias}:{log}",
                        )
                    progress(
                        "hive_start",
                        round(waited),
                        timeout,
                        unit="s",
                        message=f"waiting for hive {hive_id} to register",
                    )
                await anyio.sleep(POLL)
        other = ""
        if hive_id in self.registry and url_host(self.registry.get(hive_id).url) != host:
            other = (
                f" (a hive {hive_id} at {self.registry.get(hive_id).url} is registered: not the"
                f" one on {host})"
            )
        raise JobFailed(
            "hive_start_timeout",
            f"hive {hive_id} on {machine.entry.alias} did not register with this queen within"
            f" {timeout:g} s{other} (can it reach the queen URL? can the queen reach the address"
            f" it binds?); its log {machine.entry.alias}:{log} says: {await _error(machine, log)}",
        )

    # -- stop, status, uninstall -------------------------------------------------------------------

    async def stop(self, alias: str, hive_id: str) -> HiveStopResult:
        try:
            async with self._connect(alias) as machine:
                answer = await self._stop(machine, hive_id, grace=self.settings.hive_stop_grace)
        except SSHError as exc:
            raise _failed(exc) from None
        if answer.pid is None:
            raise JobFailed("hive_not_running", f"no hive runs on {alias} (no live pid file)")
        return HiveStopResult(
            **_fields(_process(hive_id, alias, answer)),
            stopped=_stopped(answer),
        )

    async def _stop(self, machine: Machine, hive_id: str, *, grace: float) -> DaemonAnswer:
        narrate("hive_stopping", f"stopping hive {hive_id} on {machine.entry.alias}")
        answer = await self._daemon(
            machine,
            self._daemon_argv(machine, "stop", "--grace", repr(grace)),
            limit=grace + 60,
        )
        self.registry.remove(hive_id)
        for worker in answer.leftover_workers:
            narrate(
                "hive_worker_leftover",
                f"hive {hive_id} left worker {worker} running: stopped",
                level="warning",
            )
        narrate("hive_stopped", f"hive {hive_id} on {machine.entry.alias}: {answer.stopped}")
        return answer

    async def process(self, alias: str, hive_id: str) -> LocalHiveProcess | None:
        """The hive's process on ``alias`` when it runs (None when it does not)."""
        try:
            async with self._connect(alias) as machine:
                if not await machine.exists(machine.home / VENV / "bin" / "python"):
                    raise JobFailed("hive_not_installed", f"no hive is installed on {alias}")
                answer = await self._daemon(machine, self._daemon_argv(machine, "status"))
        except SSHError as exc:
            raise _failed(exc) from None
        return _process(hive_id, alias, answer) if answer.running else None

    async def uninstall(self, alias: str, hive_id: str, *, purge: bool) -> HiveUninstallResult:
        try:
            async with self._connect(alias) as machine:
                stopped = StopOutcome.NOT_RUNNING
                if await machine.exists(machine.home / VENV / "bin" / "python"):
                    answer = await self._stop(machine, hive_id, grace=self.settings.hive_stop_grace)
                    stopped = _stopped(answer)
                self.registry.remove(hive_id)
                paths = [VENV, WHEELS, TOKENS] + ([STATE] if purge else [])
                removed = [str(machine.home / path) for path in paths]
                done = await machine.run(["rm", "-rf", "--", *removed])
                if done.exit_status != 0:
                    raise JobFailed(
                        "remote_uninstall",
                        f"removing {' '.join(removed)} on {alias} failed: {done.stderr[-500:]}",
                    )
        except SSHError as exc:
            raise _failed(exc) from None
        narrate("hive_uninstalled", f"removed {', '.join(removed)} from {alias}")
        return HiveUninstallResult(alias, hive_id, stopped, removed)

    # -- the daemon on the host --------------------------------------------------------------------

    def _daemon_argv(self, machine: Machine, *action: str) -> list[str]:
        python = machine.home / VENV / "bin" / "python"
        state = machine.home / STATE
        return [str(python), "-m", "rbee_hive.daemon", "--state-dir", str(state), *action]

    async def _daemon(
        self,
        machine: Machine,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        limit: float = 60.0,
    ) -> DaemonAnswer:
        done = await machine.run(argv, env=env, limit=limit)
        lines = done.stdout.strip().splitlines()
        try:
            answer = read_result(json.loads(lines[-1]), DaemonAnswer) if lines else None
        except (json.JSONDecodeError, RequestError):
            answer = None
        if answer is None:
            raise JobFailed(
                "remote_daemon",
                f"`rbee_hive.daemon {argv[5] if len(argv) > 5 else ''}` on {machine.entry.alias}"
                f" gave no answer (exit status {done.exit_status}): {done.stderr.strip()[-800:]}",
            )
        return answer


def hive_queen_url(explicit: str | None, entry: HostEntry, own_url: str, local_address: str) -> str:
    """The URL a hive on ``entry``'s host reaches this queen at (see the module's docstring):
    ``own_url`` is the queen's own, ``local_address`` this machine's on the SSH connection."""
    if explicit:
        return explicit
    if entry.queen_url:
        return entry.queen_url.rstrip("/")
    own = urlsplit(own_url)
    if not auth.is_loopback(own.hostname or ""):
        return own_url
    port = "" if own.port is None else f":{own.port}"
    return f"{own.scheme}://{_url_host(local_address)}{port}"


def daemon_start_argv(
    python: PurePosixPath,
    state: PurePosixPath,
    *,
    hive_id: str,
    queen_url: str,
    bind: str,
    port: int,
    heartbeat: float | None = None,
    models_dir: str | None = None,
    public_url: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
) -> list[str]:
    """``python -m rbee_hive.daemon start`` on the host, with the hive's own flags after ``--``
    (``--flag=VALUE``: a value that starts with "-" is no flag). Paths and URLs only: the tokens
    go by file."""
    argv = [str(python), "-m", "rbee_hive.daemon", "--state-dir", str(state)]
    argv += ["start", "--hive-id", hive_id, "--queen-url", queen_url]
    argv += ["--host", bind, "--port", str(port)]
    if heartbeat is not None:
        argv += ["--heartbeat", repr(heartbeat)]
    if models_dir is not None:
        argv += ["--models-dir", models_dir]
    hive_args = hive_optional_flags(
        public_url=public_url, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca
    )
    return [*argv, "--", *hive_args] if hive_args else argv


def url_host(url: str) -> str:
    """The host of ``url``, lower case, an IPv6 literal without its brackets."""
    return urlsplit(url).hostname or ""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _fields(process: LocalHiveProcess) -> dict[str, Any]:
    return {
        "hive_id": process.hive_id,
        "pid": process.pid,
        "log": process.log,
        "command": process.command,
        "host": process.host,
    }


def _stopped(answer: DaemonAnswer) -> StopOutcome:
    if answer.stopped is None:
        raise JobFailed("remote_daemon", "`rbee_hive.daemon stop` did not say how the hive ended")
    return answer.stopped


def _process(hive_id: str, alias: str, answer: DaemonAnswer) -> LocalHiveProcess:
    return LocalHiveProcess(hive_id, answer.pid or 0, answer.log, answer.command, host=alias)


async def _error(machine: Machine, log: PurePosixPath) -> str:
    """What the hive's log on ``machine`` says went wrong, in one line (its frames, with their
    internal paths, stay in the log)."""
    return error_line(await machine.read_tail(log)) or "its log is empty or missing"


def _pinned(package: str) -> str:
    """``rbee-hive`` → ``rbee-hive==VERSION`` (this queen's version of it)."""
    name = package.partition("[")[0]
    return f"{package}=={importlib.metadata.version(name)}"


def _requirements(wheels: list[Path] | list[PurePosixPath], packages: list[str]) -> list[str]:
    """rbee's wheel files as pip requirements; ``rbee-worker``'s with the extra asked for."""
    extra = packages[1].partition("[")[2]  # "transformers]" or ""
    return [
        f"{path}[{extra}" if extra and path.name.startswith("rbee_worker-") else str(path)
        for path in wheels
    ]


def _failed(exc: Exception) -> JobFailed:
    return JobFailed(getattr(exc, "code", "remote_failed"), str(exc))

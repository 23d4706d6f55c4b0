"""Hives on other machines without an SSH server: the choices ``remote_hives`` and ``ssh`` make
(which queen URL a hive gets, which flags its daemon gets, which known_hosts is read) and the
refusals that come before any connection."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
import trustme

import rbee_hive.app
import rbee_queen.remote_hives
from jobproto import JobFailed, converter
from jobproto.client import JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_contracts import auth
from rbee_contracts.hive_cli import DaemonAnswer, hive_argv
from rbee_contracts.queen_results import StopOutcome
from rbee_contracts.records import Heartbeat
from rbee_queen.app import create_app
from rbee_queen.queen import Queen
from rbee_queen.registry import HiveRegistry, Registration
from rbee_queen.remote_hives import RemoteHives
from rbee_queen.settings import QueenSettings
from rbee_queen.ssh import (
    HostEntry,
    RemoteResult,
    SSHError,
    SSHHosts,
    SSHSettings,
    load_hosts,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("operation", "fields"),
    [
        ("hive_install", {"host": "nowhere.invalid"}),
        ("hive_start", {"host": "nowhere.invalid", "hive": "h1"}),
        ("hive_stop", {"host": "nowhere.invalid", "hive": "h1"}),
        ("hive_uninstall", {"host": "nowhere.invalid"}),
    ],
)
async def test_a_queen_without_a_secret_refuses_remote_hives(
    tmp_path: Path, operation: str, fields: dict[str, Any]
) -> None:
    # No secret, no tokens: a hive there could neither join this queen nor be called by it.
    settings = QueenSettings(state_dir=tmp_path / "queen")
    async with serving(create_app(settings)) as url, JobClient(url) as client:
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run(operation, fields)
    assert failed.value.code == "queen_without_secret"
    assert not (tmp_path / "queen" / auth.SECRET_FILE).exists()  # and none was made up


# -- hive_start's choices, with a host that answers without SSH ----------------------------------


def _answer(answer: DaemonAnswer) -> str:
    """The daemon's line of JSON, as ``python -m rbee_hive.daemon`` prints it."""
    return json.dumps(converter.unstructure(answer))


class FakeMachine:
    """What ``RemoteHives`` uses of ``ssh.Machine``; its daemon refuses to start, so that
    ``_start`` ends right after it has written the files and run the daemon's command."""

    def __init__(self, entry: HostEntry, local_address: str = "192.0.2.10") -> None:
        self.entry = entry
        self.home = PurePosixPath("/home/me")
        self.peer_address = "192.0.2.20"
        self.local_address = local_address
        self.files: dict[PurePosixPath, str] = {}
        self.commands: list[list[str]] = []

    async def exists(self, path: PurePosixPath) -> bool:
        return True

    async def write_private(self, path: PurePosixPath, text: str) -> None:
        self.files[path] = text

    async def run(self, argv: Any, *, env: Any = None, limit: float = 0.0) -> RemoteResult:
        self.commands.append(list(argv))
        return RemoteResult(1, _answer(DaemonAnswer(ok=False, error="refused", log="")), "")

    async def read_tail(self, path: PurePosixPath, limit: int = 0, lines: int = 0) -> str:
        return ""


async def _daemon_command(
    tmp_path: Path, machine: FakeMachine, *, queen_url: str | None = None, **settings: Any
) -> list[str]:
    queen = Queen(QueenSettings(state_dir=tmp_path / "queen", secret=bytes(32), **settings))
    remote = RemoteHives(
        queen.settings,
        queen.registry,
        SSHSettings(hosts_file=tmp_path / "none.toml"),
        queen_url=lambda: queen.url,
    )
    with pytest.raises(JobFailed) as failed:
        await remote._start(machine, "h1", 9000, queen_url, None, None, None)  # type: ignore[arg-type]
    assert failed.value.code == "hive_exited"
    [command] = [c for c in machine.commands if "start" in c]
    return command


def _flag(command: list[str], name: str) -> str | None:
    after = command[command.index("--") + 1 :] if "--" in command else []
    values = [a.partition("=")[2] for a in after if a.startswith(f"--{name}=")]
    if values:
        return values[0]
    return command[command.index(f"--{name}") + 1] if f"--{name}" in command else None


@pytest.mark.parametrize(
    ("queen_host", "public_url"),
    [("127.0.0.1", None), ("0.0.0.0", None), ("127.0.0.1", "http://127.0.0.1:8500")],
)
async def test_a_remote_hive_reaches_the_queen_at_the_address_on_the_ssh_route(
    tmp_path: Path, queen_host: str, public_url: str | None
) -> None:
    # The queen's own URL is loopback here: from the host, that is the host itself.
    machine = FakeMachine(HostEntry("gpu1"), local_address="192.0.2.10")
    command = await _daemon_command(tmp_path, machine, host=queen_host, public_url=public_url)
    assert _flag(command, "queen-url") == "http://192.0.2.10:8500"
    assert _flag(command, "tls-ca") is None and _flag(command, "tls-cert") is None


async def test_the_queen_url_of_the_request_then_of_hosts_toml_then_the_queens_own_wins(
    tmp_path: Path,
) -> None:
    entry = HostEntry("gpu1", queen_url="http://queen.lan:8500")
    public = {"public_url": "http://203.0.113.5:8500"}
    asked = await _daemon_command(
        tmp_path, FakeMachine(entry), queen_url="http://asked:1", **public
    )
    assert _flag(asked, "queen-url") == "http://asked:1"
    configured = await _daemon_command(tmp_path, FakeMachine(entry), **public)
    assert _flag(configured, "queen-url") == "http://queen.lan:8500"
    published = await _daemon_command(tmp_path, FakeMachine(HostEntry("gpu1")), **public)
    assert _flag(published, "queen-url") == "http://203.0.113.5:8500"
    # a queen bound to an address the host reaches, not loopback: its own URL, as bound
    bound = await _daemon_command(tmp_path, FakeMachine(HostEntry("gpu1")), host="203.0.113.9")
    assert _flag(bound, "queen-url") == "http://203.0.113.9:8500"
    ipv6 = await _daemon_command(tmp_path, FakeMachine(HostEntry("gpu1"), local_address="fd00::1"))
    assert _flag(ipv6, "queen-url") == "http://[fd00::1]:8500"


@pytest.mark.parametrize("with_ca", [True, False])
async def test_a_remote_hive_of_an_https_queen_gets_its_ca_and_the_hosts_certificate(
    tmp_path: Path, with_ca: bool
) -> None:
    ca_made = trustme.CA()
    issued = ca_made.issue_cert("queen.lan")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "queen.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "queen.key"))
    ca_made.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    entry = HostEntry("gpu1", tls_cert="/etc/rbee/hive.pem", tls_key="/etc/rbee/hive.key")
    machine = FakeMachine(entry)
    command = await _daemon_command(
        tmp_path,
        machine,
        tls_cert=tmp_path / "queen.pem",
        tls_key=tmp_path / "queen.key",
        tls_ca=tmp_path / "ca.pem" if with_ca else None,
    )
    assert _flag(command, "queen-url") == "https://192.0.2.10:8500"
    ca = _flag(command, "tls-ca")
    assert ca is not None
    sent = (tmp_path / ("ca.pem" if with_ca else "queen.pem")).read_text()
    assert machine.files[PurePosixPath(ca)] == sent
    assert _flag(command, "tls-cert") == "/etc/rbee/hive.pem"
    assert _flag(command, "tls-key") == "/etc/rbee/hive.key"
    key = (tmp_path / "queen.key").read_text()
    assert key not in "".join(machine.files.values())  # the queen's key stays here


async def test_a_hive_bound_to_every_interface_is_named_by_the_address_ssh_reached(
    tmp_path: Path,
) -> None:
    machine = FakeMachine(HostEntry("gpu1", hive_host="0.0.0.0"))
    command = await _daemon_command(tmp_path, machine)
    assert _flag(command, "host") == "0.0.0.0"
    assert _flag(command, "public-url") == "http://192.0.2.20:9000"


def test_hosts_toml_takes_the_hives_certificate_and_key_together(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[hosts.gpu1]\ntls_cert = "/c.pem"\ntls_key = "/k.pem"\n')
    assert load_hosts(hosts)["gpu1"].tls_cert == "/c.pem"
    hosts.write_text('[hosts.gpu1]\ntls_cert = "/c.pem"\n')
    with pytest.raises(SSHError, match="go together"):
        load_hosts(hosts)


class StartingMachine(FakeMachine):
    """A host whose daemon starts the hive; ``beat`` is called as it does (a heartbeat)."""

    def __init__(self, entry: HostEntry, beat: Callable[[], None]) -> None:
        super().__init__(entry)
        self.beat = beat

    async def run(self, argv: Any, *, env: Any = None, limit: float = 0.0) -> RemoteResult:
        self.commands.append(list(argv))
        action = next(a for a in ("start", "status", "stop") if a in argv)
        answer = DaemonAnswer(ok=True, pid=4242, log="/h.log")
        if action == "start":
            answer = attrs.evolve(answer, already_running=False)
            self.beat()
        elif action == "status":
            answer = attrs.evolve(answer, running=True)
        else:
            answer = attrs.evolve(answer, stopped=StopOutcome.STOPPED)
        return RemoteResult(0, _answer(answer), "")


@pytest.mark.parametrize(
    ("url", "registers"), [("http://192.0.2.20:9000", True), ("http://198.51.100.7:9000", False)]
)
async def test_hive_start_waits_for_the_hive_on_the_host_it_started(
    tmp_path: Path, url: str, registers: bool
) -> None:
    registry = HiveRegistry()
    remote = RemoteHives(
        QueenSettings(state_dir=tmp_path, secret=bytes(32), hive_start_timeout=0.5),
        registry,
        SSHSettings(hosts_file=tmp_path / "none.toml"),
        queen_url=lambda: "http://192.0.2.10:8500",
    )

    def beat() -> None:  # whoever beats under the id as the hive starts on 192.0.2.20
        registry.register(Registration("h1", Heartbeat(url=url)), time.time() + 1)

    machine = StartingMachine(HostEntry("gpu1"), beat)
    start = remote._start(machine, "h1", 9000, None, None, None, None)  # type: ignore[arg-type]
    if registers:
        assert (await start).pid == 4242
        return
    with pytest.raises(JobFailed) as failed:
        await start
    assert failed.value.code == "hive_start_timeout"
    assert "198.51.100.7" in str(failed.value)
    assert any("stop" in c for c in machine.commands)  # the hive it started is stopped again


# -- ssh: host keys ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_reading_the_host_key_of_a_silent_host_gives_up(tmp_path: Path) -> None:
    # The port accepts connections (the kernel's backlog) and never says a word, as a host
    # behind a black hole does: the job must not wait for its key forever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        hosts = SSHHosts(SSHSettings(hosts_file=tmp_path / "none.toml", connect_timeout=0.5))
        error = await hosts._host_key_error(
            HostEntry("gpu1", port=port), "127.0.0.1", {"config": None, "port": port}, "unknown"
        )
    assert "(could not be read)" in str(error)


def test_the_ssh_configs_known_hosts_file_is_the_one_read(tmp_path: Path) -> None:
    mine = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu1\n  UserKnownHostsFile {mine} /nonexistent/known_hosts\n")
    settings = SSHSettings(
        hosts_file=tmp_path / "none.toml",
        ssh_config=config,
        known_hosts=tmp_path / "default_known_hosts",
    )
    hosts = SSHHosts(settings)
    assert hosts.known_hosts_files("gpu1") == [mine, Path("/nonexistent/known_hosts")]
    assert hosts.known_hosts_files("other") == [settings.known_hosts]


@pytest.mark.parametrize(
    ("port", "scan"), [(22, "ssh-keyscan gpu1"), (2222, "ssh-keyscan -p 2222 gpu1")]
)
async def test_the_keyscan_line_names_a_port_only_when_it_is_not_22(
    tmp_path: Path, port: int, scan: str
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu1\n  UserKnownHostsFile {tmp_path / 'mine'}\n")
    hosts = SSHHosts(
        SSHSettings(hosts_file=tmp_path / "none.toml", ssh_config=config, connect_timeout=0.5)
    )
    options = {"config": [str(config)], "port": port}
    error = await hosts._host_key_error(HostEntry("gpu1"), "gpu1", options, "unknown")
    assert f"`{scan} >> {tmp_path / 'mine'}`" in str(error)


def test_uninstall_purge_says_what_it_removes() -> None:
    # --purge removes the hive's state dir; the models directory is not in it and stays.
    from click.testing import CliRunner

    from rbee_keeper.cli import rbee

    shown = CliRunner().invoke(rbee, ["hive", "uninstall", "--help"], terminal_width=200).output
    purge = " ".join(shown[shown.index("--purge") :].split())
    assert "~/.local/state/rbee/hive" in purge
    assert "models stay" in purge
    assert "models, logs" not in purge


class CrashedMachine(FakeMachine):
    """A host whose hive died at start with a traceback in its log."""

    async def read_tail(self, path: PurePosixPath, limit: int = 0, lines: int = 0) -> str:
        return (
            "--- rbee: 2026-01-01 00:00:00 starting hive h1: python -m rbee_hive.app\n"
            "Traceback (most recent call last):\n"
            '  File "/opt/venv/lib/python3.11/site-packages/jobproto/server.py", line 9, in run\n'
            "    server.run()\n"
            "OSError: [Errno 98] address already in use\n"
        )


async def test_a_hive_that_failed_on_its_host_is_said_in_one_line_without_its_frames(
    tmp_path: Path,
) -> None:
    queen = Queen(QueenSettings(state_dir=tmp_path / "queen", secret=bytes(32)))
    remote = RemoteHives(
        queen.settings,
        queen.registry,
        SSHSettings(hosts_file=tmp_path / "none.toml"),
        queen_url=lambda: queen.url,
    )
    machine = CrashedMachine(HostEntry("gpu1"))
    with pytest.raises(JobFailed) as failed:
        await remote._start(machine, "h1", 9000, None, None, None, None)  # type: ignore[arg-type]
    message = failed.value.message
    assert "OSError: [Errno 98] address already in use" in message
    assert "Traceback" not in message and "site-packages" not in message
    assert "gpu1:" in message  # where the details are


class ExitedMachine(StartingMachine):
    """A host whose hive starts, then exits before it registers, its log ending with ``log``."""

    def __init__(self, entry: HostEntry, log: str) -> None:
        super().__init__(entry, lambda: None)
        self.log = log

    async def run(self, argv: Any, *, env: Any = None, limit: float = 0.0) -> RemoteResult:
        if "status" in argv:
            self.commands.append(list(argv))
            return RemoteResult(0, _answer(DaemonAnswer(ok=True, running=False, log="")), "")
        return await super().run(argv, env=env, limit=limit)

    async def read_tail(self, path: PurePosixPath, limit: int = 0, lines: int = 0) -> str:
        return self.log


async def test_a_remote_hive_refusing_its_models_dir_fails_the_job_in_one_readable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queen takes any absolute ``models_dir`` for a hive on ``host`` (the home directory
    there is not the queen's); the hive judges it at its start, and the job says the hive's
    refusal, not a traceback."""
    home = str(Path.home())  # what the hive on that machine is given, as its own home
    argv = hive_argv(
        host="127.0.0.1",
        port=0,
        hive_id="h1",
        queen_url="http://127.0.0.1:9",
        state_dir=str(tmp_path / "hive"),
        models_dir=home,
        heartbeat=None,
    )
    monkeypatch.setattr(rbee_hive.app.logging, "basicConfig", lambda **_: None)
    with pytest.raises(SystemExit):
        rbee_hive.app.main(argv)
    printed = capsys.readouterr().err
    monkeypatch.setattr(rbee_queen.remote_hives, "STATUS_EVERY", 0.1)
    remote = RemoteHives(
        QueenSettings(state_dir=tmp_path / "queen", secret=bytes(32), hive_start_timeout=10.0),
        HiveRegistry(),
        SSHSettings(hosts_file=tmp_path / "none.toml"),
        queen_url=lambda: "http://192.0.2.10:8500",
    )
    machine = ExitedMachine(HostEntry("gpu1"), printed)
    with pytest.raises(JobFailed) as failed:
        await remote._start(machine, "h1", 9000, None, None, None, home)  # type: ignore[arg-type]
    assert failed.value.code == "hive_exited"
    message = failed.value.message
    assert "'models_dir' must be a directory of its own for models" in message
    assert repr(home) in message and "gpu1:" in message
    assert "Traceback" not in message
    assert any(_flag(c, "models-dir") == home for c in machine.commands if "start" in c)

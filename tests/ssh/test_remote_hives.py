"""Hives on another machine, for real: an OpenSSH server on 127.0.0.2 with a user of its own
(``sshd.py``), and a queen in this process that installs, starts, looks at, stops and
uninstalls a hive there through its operations (``hive_install``, ``hive_start --host`` ...).

The install (a venv on the "machine", rbee's wheels built here, every dependency downloaded
here and copied: ``offline``) is the slow part, done once for the module. The client side reads
a person's files: ``$HOME/.ssh/config`` with a ``Host`` alias and the ``UserKnownHostsFile``
that has the machine's key, and rbee's ``$XDG_CONFIG_HOME/rbee/hosts.toml``; ``XDG_CACHE_HOME``
stays the real one, so pip and uv keep their caches across runs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from jobproto import JobEvent
from jobproto.client import JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_contracts import auth
from rbee_queen.app import create_app
from rbee_queen.settings import QueenSettings

sys.path.insert(0, str(Path(__file__).parent))
from sshd import SSHServer, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(900)]

ALIAS = "machine1"
SECRET = bytes(range(32))


@attrs.frozen
class Setup:
    server: SSHServer
    client_home: Path
    state_dir: Path


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    reason = unavailable()
    if reason is not None:
        pytest.fail(f"these tests need a real sshd: {reason}")
    # Not under pytest's tmp dir (0700, root's): the machine's user must reach its home.
    base = Path(tempfile.mkdtemp(prefix="rbee-ssh-"))
    base.chmod(0o755)
    server = SSHServer.start(base / "machine1", alias=ALIAS, address="127.0.0.2")
    client_home = base / "client-home"
    (client_home / ".ssh").mkdir(parents=True, mode=0o700)
    # The host's key is in the file the SSH config names (UserKnownHostsFile), not in
    # ~/.ssh/known_hosts (empty): the queen looks where ssh would.
    config = server.ssh_config.read_text().replace(
        str(server.known_hosts), str(_known(client_home))
    )
    (client_home / ".ssh" / "config").write_text(config)
    shutil.copy(server.known_hosts, _known(client_home))
    (client_home / ".ssh" / "known_hosts").write_text("")
    hosts = client_home / ".config" / "rbee" / "hosts.toml"
    hosts.parent.mkdir(parents=True)
    # rbee's table: the interpreter of the machine (its ~/.ssh/config entry says where it is)
    hosts.write_text(f'[hosts.{ALIAS}]\npython = "/usr/bin/python3"\n')
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(client_home))
        mp.setenv("XDG_CONFIG_HOME", str(client_home / ".config"))
        mp.setenv("XDG_CACHE_HOME", cache)
        mp.delenv("RBEE_HOSTS_FILE", raising=False)
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        try:
            yield Setup(server, client_home, base / "queen-state")
        finally:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)


def _known(client_home: Path) -> Path:
    return client_home / ".ssh" / "known_hosts.machines"


def _settings(setup: Setup, **more: Any) -> QueenSettings:
    # a queen that checks tokens (and has them to give): the hive must present its join token
    more.setdefault("secret", SECRET)
    more.setdefault("hive_start_timeout", 60.0)
    return QueenSettings(state_dir=setup.state_dir, **more)


@contextlib.asynccontextmanager
async def queen(setup: Setup, **more: Any) -> AsyncIterator[tuple[JobClient, str]]:
    settings = _settings(setup, **more)
    async with serving(create_app(settings)) as url:
        async with JobClient(url, token=auth.keeper_token(SECRET)) as client:
            yield client, url


async def _run(client: JobClient, operation: str, seen: list[str], **fields: Any) -> Any:
    def note(event: Any) -> None:
        if isinstance(event, JobEvent):
            seen.append(str(event))

    return await client.run(operation, fields, on_event=note)


@pytest.fixture(scope="module")
def installed(setup: Setup) -> dict[str, Any]:
    """``hive_install`` once: offline, so every wheel is built or downloaded here and copied."""

    async def install() -> dict[str, Any]:
        async with queen(setup) as (client, _):
            seen: list[str] = []
            result: dict[str, Any] = await _run(
                client, "hive_install", seen, host=ALIAS, offline=True
            )
            return {"result": result, "events": seen}

    return anyio.run(install)


def _tokens() -> list[str]:
    return [auth.join_token(SECRET, ALIAS), auth.hive_token(SECRET, ALIAS)]


def _cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


async def test_install_puts_a_venv_with_the_hive_on_the_machine(
    setup: Setup, installed: dict[str, Any]
) -> None:
    result = installed["result"]
    venv = setup.server.home / ".local/share/rbee/venv"
    assert result["host"] == ALIAS
    assert result["venv"] == str(venv)
    assert result["source"] == "wheels" and result["offline"] is True
    assert (venv / "bin" / "python").exists()
    assert list((setup.server.home / ".local/share/rbee/wheels").glob("rbee_hive-*.whl"))
    events = "\n".join(installed["events"])
    assert "pip_install" in events and "--no-index" in events


async def test_start_status_stop_a_hive_on_the_machine(
    setup: Setup, installed: dict[str, Any]
) -> None:
    async with queen(setup) as (client, url):
        seen: list[str] = []
        started = await _run(
            client, "hive_start", seen, host=ALIAS, hive=ALIAS, port=0, queen_url=url
        )
        assert started["host"] == ALIAS and started["already_running"] is False
        pid = started["pid"]
        assert pid in setup.server.user_pids()  # it runs as the machine's user
        hives = await _run(client, "hive_list", [])
        [hive] = [h for h in hives["hives"] if h["hive_id"] == ALIAS]
        assert hive["url"].startswith("http://127.0.0.2:")  # bound where SSH reached it
        assert [h["alias"] for h in hives["hosts"]] == [ALIAS]

        status = await _run(client, "hive_status", [], host=ALIAS, hive=ALIAS)
        assert status["state"] == "up" and status["process"]["pid"] == pid

        # the tokens are in 0600 files, never on a command line or in the log
        tokens_dir = setup.server.home / ".config/rbee/hive"
        for name in ("join.token", "hive.token"):
            assert (tokens_dir / name).stat().st_mode & 0o777 == 0o600
        log = anyio.Path(started["log"])
        assert (await log.stat()).st_mode & 0o777 == 0o600
        visible = [*_cmdlines(setup.server.user_pids()), await log.read_text(), *seen]
        for token in _tokens():
            assert not any(token in text for text in visible)

        again = await _run(client, "hive_start", [], host=ALIAS, hive=ALIAS, queen_url=url)
        assert again["already_running"] is True and again["pid"] == pid

        stopped = await _run(client, "hive_stop", [], host=ALIAS, hive=ALIAS)
        assert stopped["stopped"] == "stopped" and stopped["pid"] == pid
        assert pid not in setup.server.user_pids()
        assert ALIAS not in [h["hive_id"] for h in (await _run(client, "hive_list", []))["hives"]]


async def test_a_hive_that_cannot_register_fails_with_its_log(
    setup: Setup, installed: dict[str, Any]
) -> None:
    async with queen(setup, hive_start_timeout=5.0) as (client, _):
        with pytest.raises(RemoteJobFailed) as failed:
            # nobody listens there: the hive never registers, and the job says so
            await _run(
                client,
                "hive_start",
                [],
                host=ALIAS,
                hive=ALIAS,
                port=0,
                queen_url="http://127.0.0.1:9",
                heartbeat=0.2,
            )
    assert failed.value.code in ("hive_start_timeout", "hive_exited")
    assert "hive.log" in str(failed.value)
    assert not [c for c in _cmdlines(setup.server.user_pids()) if "rbee_hive.app" in c]


async def test_an_unknown_host_key_fails_with_its_fingerprint(setup: Setup) -> None:
    known_hosts = _known(setup.client_home)
    saved = known_hosts.read_text()
    known_hosts.write_text("")
    try:
        async with queen(setup) as (client, _):
            with pytest.raises(RemoteJobFailed) as failed:
                await _run(client, "hive_status", [], host=ALIAS, hive=ALIAS)
    finally:
        known_hosts.write_text(saved)
    pub = setup.server.host_key_pub.read_text().split()[1]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(pub)).digest()).decode().rstrip("=")
    assert failed.value.code == "host_key_unknown"
    assert f"SHA256:{digest}" in str(failed.value)
    assert f"ssh-keyscan -p {setup.server.port} 127.0.0.2 >> {known_hosts}`" in str(failed.value)


async def test_uninstall_removes_the_venv_and_tokens(
    setup: Setup, installed: dict[str, Any]
) -> None:
    home = setup.server.home
    async with queen(setup) as (client, _):
        result = await _run(client, "hive_uninstall", [], host=ALIAS)
        assert result["hive_id"] == ALIAS
        assert str(home / ".local/share/rbee/venv") in result["removed"]
        assert not (home / ".local/share/rbee/venv").exists()
        assert not (home / ".config/rbee/hive").exists()
        with pytest.raises(RemoteJobFailed) as failed:
            await _run(client, "hive_start", [], host=ALIAS, hive=ALIAS)
        assert failed.value.code == "hive_not_installed"

"""SSH to the machines a queen runs hives on (asyncssh, from the queen's own process).

A host is named by an alias. Where it is comes from two places, as ``ssh`` would find it:

* the user's ``~/.ssh/config`` (``Host``, ``HostName``, ``Port``, ``User``, ``IdentityFile``:
  asyncssh reads it with ``config=``), and
* rbee's own table, ``{config}/rbee/hosts.toml`` (``$XDG_CONFIG_HOME``, else ``~/.config``;
  ``RBEE_HOSTS_FILE`` names another file), whose values win over the SSH config's::

      [hosts.gpu1]
      hostname = "10.0.0.5"        # else the alias, as ~/.ssh/config resolves it
      port = 22
      user = "me"
      identity_file = "~/.ssh/id_ed25519"
      python = "python3"           # the remote interpreter that creates the hive's venv
      hive_host = "10.0.0.5"       # the address the hive binds (default: the one SSH reached)
      queen_url = "http://10.0.0.1:8500"   # how the hive reaches this queen (default: this
                                           # machine's address on the SSH connection)
      tls_cert = "/etc/rbee/hive.pem"      # the hive serves HTTPS with these (paths on the
      tls_key = "/etc/rbee/hive.key"       # host; both or neither)

Host keys are checked against ``known_hosts`` (the SSH config's ``UserKnownHostsFile`` for the
host, else ``~/.ssh/known_hosts``), never accepted silently: an unknown or changed key is
``HostKeyError`` with the key's SHA-256 fingerprint and what to do.

A remote command is an argument list, quoted with ``shlex.join`` for the remote shell; secrets
never go on a command line (another user there reads ``ps``): they go into files over SFTP, mode
0600, and the command gets their paths.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import asyncssh
import attrs

__all__ = [
    "HostEntry",
    "HostKeyError",
    "Machine",
    "RemoteResult",
    "SSHError",
    "SSHSettings",
    "load_hosts",
]

#: ``hosts.toml`` keys of one host
_HOST_KEYS = frozenset(
    (
        "hostname",
        "port",
        "user",
        "identity_file",
        "python",
        "hive_host",
        "queen_url",
        "tls_cert",
        "tls_key",
    )
)


class SSHError(Exception):
    """A host could not be reached, logged into or configured; the message says what to do."""

    code = "ssh_failed"


class HostKeyError(SSHError):
    """The host's key is not in known_hosts (or differs from the one there)."""

    code = "host_key_unknown"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def default_hosts_file() -> Path:
    override = os.environ.get("RBEE_HOSTS_FILE")
    return Path(override) if override else _config_home() / "rbee" / "hosts.toml"


@attrs.frozen
class HostEntry:
    """One host of rbee's table; None: what ``~/.ssh/config`` (or the default) says."""

    alias: str
    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    python: str = "python3"
    hive_host: str | None = None
    queen_url: str | None = None
    #: the certificate and key (paths on the host) the hive serves HTTPS with
    tls_cert: str | None = None
    tls_key: str | None = None


@attrs.frozen
class SSHSettings:
    """Where the SSH side of the queen reads its configuration (defaults: the user's)."""

    hosts_file: Path = attrs.field(factory=default_hosts_file, converter=Path)
    ssh_config: Path = attrs.field(factory=lambda: Path.home() / ".ssh" / "config", converter=Path)
    known_hosts: Path = attrs.field(
        factory=lambda: Path.home() / ".ssh" / "known_hosts", converter=Path
    )
    connect_timeout: float = 20.0


def load_hosts(path: Path) -> dict[str, HostEntry]:
    """The ``[hosts.ALIAS]`` tables of ``path`` ({} when the file does not exist)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SSHError(f"cannot read the hosts file {path}: {exc}") from None
    extra = set(raw) - {"hosts"}
    if extra:
        raise SSHError(f"{path}: unknown table(s) {sorted(extra)}; hosts go in [hosts.ALIAS]")
    hosts: dict[str, HostEntry] = {}
    for alias, table in (raw.get("hosts") or {}).items():
        if not isinstance(table, dict):
            raise SSHError(f"{path}: hosts.{alias} must be a table")
        unknown = set(table) - _HOST_KEYS
        if unknown:
            raise SSHError(
                f"{path}: hosts.{alias} has unknown key(s) {sorted(unknown)}"
                f" (known: {sorted(_HOST_KEYS)})"
            )
        for key, value in table.items():
            want = int if key == "port" else str
            if not isinstance(value, want) or isinstance(value, bool):
                raise SSHError(f"{path}: hosts.{alias}.{key} must be a {want.__name__}")
        if ("tls_cert" in table) != ("tls_key" in table):
            raise SSHError(f"{path}: hosts.{alias}: tls_cert and tls_key go together")
        hosts[alias] = HostEntry(alias, **table)
    return hosts


@attrs.frozen
class RemoteResult:
    exit_status: int
    stdout: str
    stderr: str


class Machine:
    """One SSH connection to a host, with its SFTP session and the remote user's home."""

    def __init__(
        self,
        entry: HostEntry,
        conn: asyncssh.SSHClientConnection,
        sftp: asyncssh.SFTPClient,
        home: PurePosixPath,
    ) -> None:
        self.entry = entry
        self.conn = conn
        self.sftp = sftp
        self.home = home

    @property
    def peer_address(self) -> str:
        """The address SSH reached the host at (a hive there is reachable at it too)."""
        return str(self.conn.get_extra_info("peername")[0])

    @property
    def local_address(self) -> str:
        """This machine's address as the host sees it (a queen there would be reached at it)."""
        return str(self.conn.get_extra_info("sockname")[0])

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        limit: float = 120.0,
    ) -> RemoteResult:
        """Run ``argv`` on the host (through ``env`` for variables: sshd accepts few by itself).

        The remote shell sees ``shlex.join(argv)``: each argument arrives as one word, whatever
        it holds. Variables are paths and names only, never a secret.
        """
        words = list(argv)
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        try:
            with anyio.fail_after(limit):
                done = await self.conn.run(shlex.join(words), check=False)
        except TimeoutError:
            raise SSHError(
                f"{shlex.join(words)} on {self.entry.alias} ran past {limit:g} s"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise SSHError(f"running {words[0]} on {self.entry.alias} failed: {exc}") from exc
        return RemoteResult(
            exit_status=done.exit_status if done.exit_status is not None else -1,
            stdout=_text(done.stdout),
            stderr=_text(done.stderr),
        )

    async def makedirs(self, path: PurePosixPath, mode: int = 0o700) -> None:
        await self.sftp.makedirs(
            str(path), attrs=asyncssh.SFTPAttrs(permissions=mode), exist_ok=True
        )

    async def write_private(self, path: PurePosixPath, text: str) -> None:
        """Write ``text`` to ``path`` with mode 0600 (its directory 0700): a new file, created
        0600 (never readable by others, not even for a moment), renamed over the old one."""
        await self.makedirs(path.parent)
        await self.sftp.chmod(str(path.parent), 0o700)
        part = path.with_name(f".{path.name}.part")
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
        async with self.sftp.open(
            str(part), flags, attrs=asyncssh.SFTPAttrs(permissions=0o600)
        ) as f:
            await f.write(text)
        await self.sftp.chmod(str(part), 0o600)  # a leftover .part from before keeps its mode
        await self.sftp.posix_rename(str(part), str(path))

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        await self.sftp.put(str(local), str(remote))

    async def exists(self, path: PurePosixPath) -> bool:
        return bool(await self.sftp.exists(str(path)))

    async def read_tail(self, path: PurePosixPath, limit: int = 8192, lines: int = 20) -> str:
        """The last ``lines`` lines of a remote file ("" when unreadable)."""
        try:
            async with self.sftp.open(str(path), "rb") as f:
                size = (await self.sftp.stat(str(path))).size or 0
                await f.seek(max(0, size - limit))
                data = await f.read()
        except (OSError, asyncssh.Error):
            return ""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return "\n".join(text.splitlines()[-lines:])


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class SSHHosts:
    """The hosts a queen can reach: rbee's table over the user's SSH config and known_hosts."""

    def __init__(self, settings: SSHSettings | None = None) -> None:
        self.settings = settings or SSHSettings()

    def hosts(self) -> dict[str, HostEntry]:
        return load_hosts(self.settings.hosts_file)

    def entry(self, alias: str) -> HostEntry:
        """The host's entry in rbee's table, else one that leaves all to ``~/.ssh/config``."""
        return self.hosts().get(alias) or HostEntry(alias)

    def _config(self) -> list[str] | None:
        config = self.settings.ssh_config
        return [str(config)] if config.exists() else None

    def known_hosts_files(self, host: str) -> list[Path]:
        """Where ``host``'s key is looked up: the SSH config's ``UserKnownHostsFile`` for it when
        set (as ``ssh`` does), else ``known_hosts`` of the settings."""
        resolved = asyncssh.SSHClientConnectionOptions(
            host=host, config=self._config(), known_hosts=None
        ).config
        named = resolved.get("UserKnownHostsFile")
        if isinstance(named, list) and named:
            return [Path(os.path.expanduser(str(path))) for path in named]
        return [self.settings.known_hosts]

    def _known_hosts(self, host: str) -> asyncssh.SSHKnownHosts:
        paths = [path for path in self.known_hosts_files(host) if path.exists()]
        if not paths:
            return asyncssh.import_known_hosts("")  # none known: every key is unknown
        try:
            return asyncssh.read_known_hosts([str(path) for path in paths])
        except (OSError, ValueError) as exc:
            raise SSHError(f"cannot read {' or '.join(map(str, paths))}: {exc}") from None

    def _options(self, entry: HostEntry, host: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "known_hosts": self._known_hosts(host),
            "config": self._config(),
            "connect_timeout": self.settings.connect_timeout,
        }
        if entry.port is not None:
            options["port"] = entry.port
        if entry.user is not None:
            options["username"] = entry.user
        if entry.identity_file is not None:
            options["client_keys"] = [os.path.expanduser(entry.identity_file)]
        return options

    @asynccontextmanager
    async def connect(self, alias: str) -> AsyncIterator[Machine]:
        entry = self.entry(alias)
        host = entry.hostname or alias
        options = self._options(entry, host)
        try:
            conn = await asyncssh.connect(host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise await self._host_key_error(entry, host, options, str(exc)) from None
        except asyncssh.PermissionDenied as exc:
            raise SSHError(
                f"{alias}: SSH login refused ({exc.reason}); check User and IdentityFile for"
                f" {alias} in {self.settings.ssh_config} or {self.settings.hosts_file}"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise SSHError(f"cannot connect to {alias} ({host}) over SSH: {exc}") from None
        try:
            async with conn, conn.start_sftp_client() as sftp:
                home = PurePosixPath(await sftp.realpath("."))
                yield Machine(entry, conn, sftp, home)
        except asyncssh.Error as exc:
            raise SSHError(f"SSH session with {alias} failed: {exc}") from None

    async def _host_key_error(
        self, entry: HostEntry, host: str, options: dict[str, Any], why: str
    ) -> HostKeyError:
        # Where ssh went, as the SSH config resolves the alias (HostName, Port) under our table.
        resolved = asyncssh.SSHClientConnectionOptions(
            host=host, config=options["config"], known_hosts=None
        ).config
        address = str(resolved.get("Hostname", host))
        port = int(str(options.get("port") or resolved.get("Port", 22)))
        # The key is read (no login) only to tell the person which key they would accept; within
        # the connect timeout, as every connection is (a black-holed host never answers).
        timeout = self.settings.connect_timeout
        fingerprint = "(could not be read)"
        with anyio.move_on_after(timeout + 1.0):
            try:
                key = await asyncssh.get_server_host_key(
                    address,
                    port,
                    options=asyncssh.SSHClientConnectionOptions(
                        config=options["config"], connect_timeout=timeout
                    ),
                )
                fingerprint = key.get_fingerprint("sha256") if key is not None else "(none offered)"
            except (OSError, asyncssh.Error):
                pass
        scan = shlex.join(["ssh-keyscan", *([] if port == 22 else ["-p", str(port)]), address])
        known_hosts = self.known_hosts_files(host)[0]
        return HostKeyError(
            f"the host key of {entry.alias} ({address}, port {port}) is not trusted: {why}."
            f" It offers the key with fingerprint {fingerprint}. If that is the host's key (ask"
            f" its owner, or run `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there),"
            f" accept it with `{scan} >> {known_hosts}` (or log in once with"
            f" `ssh {entry.alias}` and answer yes) and try again. A key that changed may mean"
            f" someone is in between: check it before you replace the old one"
        )

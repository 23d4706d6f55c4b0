"""A real OpenSSH server on a loopback address, for tests of hives on "other machines".

``SSHServer.start(base)`` makes everything in ``base``: a host key, a user key, a system user for
the "machine" (``useradd``, home under ``base``), an ``sshd_config`` that lets only that user in
with that key, and a client side (``known_hosts`` with the host key, an ``ssh_config`` with a
``Host`` alias) that the queen reads like a person's ``~/.ssh``. ``sshd -D`` runs in a process
group of its own on a free port of the loopback address asked for (127.0.0.2 and 127.0.0.3 are
two "machines" on one Linux host) and is stopped by its pid. ``netns=NAME`` runs it inside that
network namespace instead (``ip netns exec``), on the namespace's address and on ``port`` (22
unless given: every port of a namespace is its own).

``known_hosts`` names the host as OpenSSH writes it: ``addr`` on port 22, ``[addr]:port`` on any
other port (OpenSSH and asyncssh look a port-22 host up by its plain name only).

``ensure_sshd()`` installs OpenSSH's server from Debian's packages when ``/usr/sbin/sshd`` is
missing and we are root (``apt-get update`` first; each step bounded in time): CI's machine is
a fresh one. A machine where neither works cannot run these tests; ``unavailable()`` says why.

sshd insists on being run by its absolute path, as root (to switch to the user), with host keys
and its config not writable by others; the user's home and ``.ssh`` must not be group-writable.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
APT_TIMEOUT = 600


def ensure_sshd() -> str | None:
    """None when sshd is there (installed now if need be), else why these tests cannot run."""
    if SSHD.exists():
        return None
    if os.geteuid() != 0:
        return f"{SSHD} is missing and only root can install openssh-server"
    if shutil.which("apt-get") is None:
        return f"{SSHD} is missing and there is no apt-get to install openssh-server"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, timeout=APT_TIMEOUT, check=False)
        if done.returncode != 0:
            return f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-500:]}"
    return None if SSHD.exists() else "openssh-server installed no /usr/sbin/sshd"


def unavailable() -> str | None:
    """Why an sshd with a user of its own cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "sshd must run as root to log a test user in (and useradd needs root)"
    if shutil.which("useradd") is None:
        return "no useradd to create the test machine's user"
    return ensure_sshd()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def known_hosts_name(address: str, port: int) -> str:
    """The host as a known_hosts line names it (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT)."""
    return address if port == 22 else f"[{address}]:{port}"


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@dataclass
class SSHServer:
    """One sshd: where it listens, who may log in, and the client files that reach it."""

    address: str
    port: int
    user: str
    home: Path
    #: the client's side: ~/.ssh/config, ~/.ssh/known_hosts, the user's private key
    ssh_config: Path
    known_hosts: Path
    identity: Path
    #: the host's public key (to put into a known_hosts) and the server's log
    host_key_pub: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        base: Path,
        *,
        alias: str,
        address: str = "127.0.0.2",
        netns: str | None = None,
        port: int | None = None,
    ) -> SSHServer:
        """Everything under ``base``, whose parents the new user must be able to enter.

        sshd listens on ``address``: in this namespace on ``port`` (a free one unless given), or
        inside the network namespace ``netns`` (whose address ``address`` is) on ``port``
        (default 22), reached from here through the namespace's link.
        """
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)  # sshd's StrictModes: the user's home's parents too
        server_dir = base / "server"
        client_dir = base / "client"
        for d in (server_dir, client_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        host_key = server_dir / "host_ed25519"
        _keygen(host_key, "rbee-test-host")
        identity = client_dir / "id_ed25519"
        _keygen(identity, "rbee-test-user")

        user = f"rbee{os.getpid() % 100000}{alias[:8]}".replace("-", "")[:30]
        home = base / "home"
        subprocess.run(
            # password "*": none works, yet the account is not locked (sshd refuses a locked one)
            ["useradd", "-p", "*", "-d", str(home), "--create-home", "-s", "/bin/sh", user],
            check=True,
            capture_output=True,
            timeout=30,
        )
        entry = pwd.getpwnam(user)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text((identity.with_suffix(".pub")).read_text())
        authorized.chmod(0o600)
        os.chmod(home, 0o755)
        for path in (ssh_dir, authorized):
            os.chown(path, entry.pw_uid, entry.pw_gid)

        if port is None:
            port = 22 if netns is not None else free_port(address)
        config = server_dir / "sshd_config"
        log = server_dir / "sshd.log"
        config.write_text(
            f"Port {port}\n"
            f"ListenAddress {address}\n"
            f"HostKey {host_key}\n"
            f"PidFile {server_dir / 'sshd.pid'}\n"
            f"AllowUsers {user}\n"
            "AuthenticationMethods publickey\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin no\n"
            "StrictModes yes\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        config.chmod(0o600)
        known_hosts = client_dir / "known_hosts"
        host_pub = host_key.with_suffix(".pub")
        key_type, key_data = host_pub.read_text().split()[:2]
        known_hosts.write_text(f"{known_hosts_name(address, port)} {key_type} {key_data}\n")
        ssh_config = client_dir / "config"
        ssh_config.write_text(
            f"Host {alias}\n"
            f"  HostName {address}\n"
            f"  Port {port}\n"
            f"  User {user}\n"
            f"  IdentityFile {identity}\n"
            f"  UserKnownHostsFile {known_hosts}\n"
        )
        server = cls(
            address=address,
            port=port,
            user=user,
            home=home,
            ssh_config=ssh_config,
            known_hosts=known_hosts,
            identity=identity,
            host_key_pub=host_pub,
            log=log,
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        with log.open("ab") as out:
            # sshd re-executes itself by argv[0], which must be absolute; `ip netns exec`
            # runs it by that path (no fork: the pid is sshd's)
            prefix = ["ip", "netns", "exec", netns] if netns is not None else []
            server.process = subprocess.Popen(
                [*prefix, str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server._wait_listening()
        return server

    def _wait_listening(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen within {within} s: {self.log.read_text()[-2000:]}")

    def user_pids(self) -> list[int]:
        """Pids of every live process the machine's user runs now (a zombie, ended but not yet
        reaped by a container's init, runs nothing)."""
        uid = pwd.getpwnam(self.user).pw_uid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                    if entry.stat().st_uid == uid and state != "Z":
                        pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Stop sshd (its group), then whatever the user still runs, then remove the user."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for pid in self.user_pids():  # the user's processes, by pid (a hive a test left)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", self.user], capture_output=True, timeout=30, check=False)

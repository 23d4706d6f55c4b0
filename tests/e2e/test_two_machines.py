"""Hives on two machines, managed over SSH through the ``rbee`` command only.

The machines are network namespaces joined to the queen's by veth pairs, or distinct loopback
addresses where namespaces cannot be made (``tests/e2e/machines.py``; the mode is printed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: a listener that prints the port it got, then answers each connection with its own address
ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    c.sendall(("%s %s\\n" % (sys.argv[1], peer[0])).encode())
    c.close()
"""


def _port_from(log: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.strip():
            return int(text.split()[0])
        time.sleep(0.05)
    pytest.fail(f"no port in {log}: {log.read_text() if log.exists() else ''}")


def _ask(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=10) as sock:
        return sock.makefile().readline().strip()


def test_each_machine_has_its_own_address_and_reaches_the_queen(
    machines: Any, tmp_path: Path
) -> None:
    """The root namespace (the queen's) reaches each machine at its address, and each machine
    reaches the queen's address; in netns mode a machine cannot bind the other's address."""
    print(f"mode: {machines.mode}")
    assert len({m.address for m in machines}) == len(machines.machines)
    # the queen's side: a listener on the queen's address, asked from each machine
    queen_log = tmp_path / "queen-side.log"
    queen_side = machines.spawn(
        machines.root,
        [sys.executable, "-c", ECHO_SERVER, machines.queen_host],
        log=queen_log,
    )
    queen_port = _port_from(queen_log)
    for machine in machines:
        log = tmp_path / f"{machine.name}.log"
        machines.spawn(machine, [sys.executable, "-c", ECHO_SERVER, machine.address], log=log)
        # from the queen's side to the machine: the machine sees the queen's side's address
        answer = _ask(machine.address, _port_from(log))
        served_by, peer = answer.split()
        assert served_by == machine.address
        if machines.mode == "netns":
            assert peer == machine.gateway
        # from the machine to the queen: the queen sees the machine's own address
        ask = (
            "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),10);"
            "print(s.makefile().readline().strip())"
        )
        done = machines.run(
            machine, [sys.executable, "-c", ask, machines.queen_host, str(queen_port)]
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [machines.queen_host, machine.address]
    if machines.mode == "netns":
        # a machine has only its own address: binding the other's fails there
        other = machines[1].address
        bind = f"import socket;socket.socket().bind(({json.dumps(other)},0))"
        done = machines.run(machines[0], [sys.executable, "-c", bind])
        assert done.returncode != 0 and "Cannot assign requested address" in done.stderr
    assert queen_side.poll() is None


# -- hives on the two machines, through `rbee` -----------------------------------------------------


def _sshd_module() -> Any:
    """``tests/ssh/sshd.py``: the OpenSSH server of the SSH tests (a module, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "rbee_e2e_sshd", Path(__file__).parents[1] / "ssh" / "sshd.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _start_sshd(sshd: Any, machine: Any, base: Path) -> Any:
    """sshd on ``machine``: in its namespace on port 22, as on a real machine (known_hosts then
    names the plain address), or on a free port of its loopback address."""
    return sshd.SSHServer.start(
        base, alias=machine.name, address=machine.address, netns=machine.netns
    )


def _free_ports_on(host: str, n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class TwoMachines:
    env: dict[str, str]
    root: Path
    servers: dict[str, Any]
    queen_url: str


def _rbee(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``rbee ARGS`` (the console script next to this interpreter) in ``env``."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "rbee"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _queen_pid(state: Path) -> int | None:
    """The pid in the queen's pid file, if the file is there."""
    pid_file = state / "queen.pid"
    return int(json.loads(pid_file.read_text())["pid"]) if pid_file.exists() else None


@pytest.fixture(scope="module")
def two_machines(machines: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMachines]:
    """sshd on each machine, a client home whose ``~/.ssh`` reaches both, and an isolated rbee
    whose queen listens where both machines reach it."""
    sshd = _sshd_module()
    reason = sshd.unavailable()
    if reason is not None:
        pytest.fail(f"the two-machine test needs a real sshd: {reason}")
    # Not under pytest's tmp dir (0700, root's): each machine's user must reach its home.
    base = Path(tempfile.mkdtemp(prefix="rbee-2m-"))
    os.chmod(base, 0o755)
    servers: dict[str, Any] = {}
    root = base / "client"
    state = root / "state"
    env: dict[str, str] = {}
    try:
        for machine in machines:
            servers[machine.name] = _start_sshd(sshd, machine, base / machine.name)
        ssh = root / "home" / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        (ssh / "config").write_text("".join(s.ssh_config.read_text() for s in servers.values()))
        (ssh / "known_hosts").write_text(
            "".join(s.known_hosts.read_text() for s in servers.values())
        )
        (root / "config" / "rbee").mkdir(parents=True)
        (root / "config" / "rbee" / "hosts.toml").write_text(
            "".join(f'[hosts.{name}]\npython = "/usr/bin/python3"\n' for name in servers)
        )
        (port,) = _free_ports_on(machines.queen_host, 1)
        queen_url = f"http://{machines.queen_host}:{port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RBEE_", "XDG_CONFIG", "XDG_STATE", "XDG_DATA", "HF_", "SSH_"))
        }
        env.update(
            HOME=str(root / "home"),
            XDG_CONFIG_HOME=str(root / "config"),
            XDG_STATE_HOME=str(root / "xdg-state"),
            XDG_DATA_HOME=str(root / "xdg-data"),
            RBEE_QUEEN_URL=queen_url,
            RBEE_HIVE_PORT=str(_free_ports_on("127.0.0.1", 1)[0]),
            RBEE_STATE_DIR=str(state),
            RBEE_MODELS_DIR=str(root / "models"),
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
        )
        # The queen listens where both machines reach it, started as the README says: with
        # RBEE_QUEEN_URL on an address of this machine that they reach (in netns mode not
        # loopback), `rbee queen start` starts it there; the keeper reads the token it writes.
        started = _rbee(env, "queen", "start")
        assert started.returncode == 0, started.stderr
        assert f"queen ready at {queen_url}" in started.stderr, started.stderr
        queen_pid = _queen_pid(state)
        assert queen_pid is not None
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(queen_pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert (machines.queen_host, port) in listening, listening
        token = (state / "queen" / "keeper.token").read_text().strip()
        hives = httpx.get(
            queen_url + "/v1/hives", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert hives.is_success, hives.text
        yield TwoMachines(env, root, servers, queen_url)
        stopped = _rbee(env, "queen", "stop", "--json")
        assert stopped.returncode == 0, stopped.stderr
        outcome = json.loads(stopped.stdout)
        assert outcome["queen"] == {"outcome": "stopped", "pid": queen_pid}, outcome
        assert outcome["hive"]["outcome"] == "stopped", outcome  # the queen's local hive
        assert not psutil.pid_exists(queen_pid) or (
            psutil.Process(queen_pid).status() == psutil.STATUS_ZOMBIE
        )
    finally:
        if _queen_pid(state) is not None:  # a failure above left the queen (and hives) running
            _rbee(env, "queen", "stop")
            left = _queen_pid(state)
            if left is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(left, signal.SIGKILL)
        for server in servers.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _routed_hive(result: Any) -> str:
    """The hive the queen narrated routing ``rbee infer`` to."""
    hives = re.findall(r"routed: worker \S+ on hive (\S+)", result.out + result.err)
    assert hives, f"no routing narrated:\n{result}"
    return str(hives[-1]).strip("'\".,")


def _hives(rbee: Any) -> dict[str, dict[str, Any]]:
    return {h["hive_id"]: h for h in rbee.result("hive", "list")["hives"]}


@pytest.mark.timeout(900)
def test_hives_on_two_machines_through_rbee(
    machines: Any, two_machines: TwoMachines, tiny_model: Path, kit: Any
) -> None:
    """Install and start a hive on each machine over SSH, route ``infer`` to the machine that has
    the model, move work when that machine's hive dies, stop and uninstall: all through ``rbee``.

    The workers run the SYNTHETIC engine (the installs carry no torch: two offline installs of
    torch and transformers would take many minutes on two cores); every process, hop and SSH
    session is real, and the model directory is the real tiny model's.
    """
    print(f"machines: {machines.mode}")
    rbee = kit.Rbee(two_machines.env, two_machines.root)
    names = [m.name for m in machines]
    m1, m2 = names
    for name in names:
        installed = rbee.result("hive", "install", "--host", name, "--offline", timeout=600)
        assert installed["host"] == name, installed
    for machine in machines:
        rbee.result("hive", "start", "--host", machine.name, "--hive", machine.name, timeout=120)

    def both() -> dict[str, dict[str, Any]] | None:
        hives = _hives(rbee)
        return hives if {m1, m2} <= set(hives) else None

    known = kit.wait_until(both, 60, "both hives")
    for machine in machines:
        assert known[machine.name]["url"].startswith(f"http://{machine.address}:"), known
        assert known[machine.name]["state"] == "up"

    def put_model(name: str) -> None:
        server = two_machines.servers[name]
        target = server.home / ".local/share/rbee/models/tiny2m"  # the hive's model root
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tiny_model, target)
        for path in [target, *target.rglob("*")]:
            os.chown(path, *_owner(server.home))
        # a directory in the model root is a model of the hive: no registration
        listed = rbee.result("model", "list", "--hive", name)
        assert "tiny2m" in json.dumps(listed), listed
        rbee.result(
            "worker",
            "spawn",
            "--model",
            "tiny2m",
            "--engine",
            "synthetic",
            "--hive",
            name,
            timeout=120,
        )

    # the model on m1 only: infer goes to m1
    put_model(m1)
    first = rbee.ok("infer", "hello", "--model", "tiny2m", "--max-tokens", "4", timeout=120)
    assert _routed_hive(first) == m1, str(first)
    # on m2 too; then m1's hive dies (its machine drops off the network, or its process dies)
    put_model(m2)
    if machines.mode == "netns":
        subprocess_run(["ip", "link", "set", f"rb{os.getpid()}{m1}a", "down"])
    else:
        status = rbee.result("hive", "status", "--host", m1, "--hive", m1)
        os.kill(int(status["process"]["pid"]), 9)
    kit.wait_until(lambda: _hives(rbee)[m1]["state"] != "up", 90, f"{m1} marked down")
    for _ in range(2):
        moved = rbee.ok("infer", "hello", "--model", "tiny2m", "--max-tokens", "4", timeout=120)
        assert _routed_hive(moved) == m2, str(moved)
    if machines.mode == "netns":
        subprocess_run(["ip", "link", "set", f"rb{os.getpid()}{m1}a", "up"])
        kit.wait_until(lambda: _hives(rbee)[m1]["state"] == "up", 90, f"{m1} back up")
    # status: each hive with its address and the age of its last heartbeat
    status = rbee.result("status")
    for machine in machines:
        [hive] = [h for h in status["hives"] if h["hive_id"] == machine.name]
        assert hive["url"].startswith(f"http://{machine.address}:")
        assert hive["seconds_since_seen"] >= 0
    shown = rbee.ok("status").out
    for machine in machines:
        assert machine.address in shown, shown
    for name in names:
        rbee.result("hive", "stop", "--host", name, "--hive", name, timeout=120)
        removed = rbee.result("hive", "uninstall", "--host", name, timeout=120)
        assert removed["hive_id"] == name
        home = two_machines.servers[name].home
        assert not (home / ".local/share/rbee/venv").exists()
        assert not two_machines.servers[name].user_pids()


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def subprocess_run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr

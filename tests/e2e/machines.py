"""Two "machines" on one host: each with its own network address, both reaching the queen.

As root (CAP_NET_ADMIN), each machine is a network namespace joined to the root namespace by a
veth pair (iproute2)::

    root namespace (the queen)             namespace rbee<pid>-m1
      rb<pid>m1a  10.A.B.1/30  ──veth──   rb<pid>m1b  10.A.B.2/30  (default route via .1)
      rb<pid>m2a  10.A.B.5/30  ──veth──   rb<pid>m2b  10.A.B.6/30  (default route via .5)

``10.A.B.0/24`` is one that no interface or route of the host uses. The queen listens on the
first machine's gateway (``Machines.queen_host``); the second machine reaches that address through
its default route (the root namespace owns it, so nothing is forwarded). A process runs "on" a
machine with ``ip netns exec NAME ...`` (``Machine.argv``).

Where namespaces cannot be made (not root, no CAP_NET_ADMIN, no iproute2) the machines are
distinct loopback addresses, 127.0.0.2 and 127.0.0.3, in the one namespace, and the queen listens
on 127.0.0.1: each machine still has an address of its own, but nothing separates their networks.
``Machines.mode`` says which ("netns" or "loopback"); the fixture prints it.

Teardown kills only the process groups started through ``Machines.spawn``, then whatever still
runs inside the namespaces the fixture made (nothing else can be in them), and deletes the
namespaces, which deletes the veth pairs with them. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

__all__ = ["Machine", "Machines", "machines", "make_machines"]

#: seconds any one ``ip`` command may take
IP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Machine:
    """One machine: its name, its address, and (netns mode) the namespace it lives in."""

    name: str
    #: the machine's own address: its services listen here, the queen reaches them here
    address: str
    #: the address of the queen's side as seen from this machine (the veth peer in the root ns)
    gateway: str
    #: the network namespace (None in loopback mode)
    netns: str | None = None

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this machine."""
        if self.netns is None:
            return list(argv)
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Machines:
    """The machines of one test run, and the processes started on them."""

    mode: str
    machines: list[Machine]
    #: where the queen listens so that every machine reaches it
    queen_host: str
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> Machine:
        """The queen's side (the root namespace) as a machine, to start processes there too."""
        return Machine("root", self.queen_host, self.queen_host)

    def __getitem__(self, index: int) -> Machine:
        return self.machines[index]

    def __iter__(self) -> Iterator[Machine]:
        return iter(self.machines)

    def spawn(
        self,
        machine: Machine,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``machine`` in a process group of its own (killed at teardown);
        its output goes to ``log`` (else nowhere)."""
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
            proc = subprocess.Popen(
                machine.argv(argv),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def run(
        self, machine: Machine, argv: Sequence[str], timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``machine`` to its end (bounded by ``timeout``)."""
        return subprocess.run(
            machine.argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def kill_started(self) -> list[int]:
        """Kill the process groups started through ``spawn``; the pids that were still alive."""
        alive = [p for p in self._procs if p.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        return [p.pid for p in alive]


# -- making them -----------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of the host's addresses and routes (to pick one that clashes with none)."""
    used: list[ipaddress.IPv4Network] = []
    addrs = json.loads(_ip("-j", "-4", "addr").stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route").stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = [ipaddress.ip_network(f"10.{a}.{b}.0/24") for a in range(200, 250) for b in (77,)]
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in used):
            return net
    raise OSError("no free 10.x.y.0/24 for the test machines")


def _netns_possible() -> str | None:
    """Why network namespaces cannot be made here (None: they can be)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no iproute2 (`ip`)"
    return None


@contextlib.contextmanager
def _netns_machines(names: Sequence[str]) -> Iterator[Machines]:
    tag = f"{os.getpid()}"
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    made_ns: list[str] = []
    made_links: list[str] = []
    machines: list[Machine] = []
    try:
        for i, name in enumerate(names):
            ns = f"rbee{tag}-{name}"
            outer, inner = f"rb{tag}{name}a", f"rb{tag}{name}b"
            gateway, address = str(hosts[4 * i]), str(hosts[4 * i + 1])
            _ip("netns", "add", ns)
            made_ns.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made_links.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("addr", "add", f"{gateway}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "route", "add", "default", "via", gateway)
            machines.append(Machine(name, address, gateway, ns))
        yield Machines("netns", machines, queen_host=machines[0].gateway)
    finally:
        for ns in made_ns:
            _ip("netns", "del", ns, check=False)
        for link in made_links:  # gone with their namespace; this only catches a half-made pair
            _ip("link", "del", link, check=False)


def _leftovers_in(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split()]


@contextlib.contextmanager
def make_machines(names: Sequence[str] = ("m1", "m2")) -> Iterator[Machines]:
    """The machines: namespaces where possible, loopback addresses otherwise."""
    why_not = _netns_possible()
    if why_not is None:
        try:
            context = _netns_machines(names)
            machines = context.__enter__()
        except OSError as exc:
            why_not = str(exc)
        else:
            try:
                yield machines
            finally:
                machines.kill_started()
                stray: dict[str, list[int]] = {}
                for machine in machines:
                    assert machine.netns is not None
                    deadline = time.monotonic() + 10
                    pids = _leftovers_in(machine.netns)
                    while pids and time.monotonic() < deadline:
                        time.sleep(0.2)
                        pids = _leftovers_in(machine.netns)
                    if pids:
                        stray[machine.name] = pids
                        for pid in pids:  # only processes inside our own namespace
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                context.__exit__(None, None, None)
            if stray:
                pytest.fail(f"processes were left running on the test machines: {stray}")
            return
    print(f"test machines: loopback addresses ({why_not})")
    loop = [Machine(name, f"127.0.0.{i + 2}", "127.0.0.1") for i, name in enumerate(names)]
    machines = Machines("loopback", loop, queen_host="127.0.0.1")
    try:
        yield machines
    finally:
        machines.kill_started()


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    """Two machines, ``m1`` and ``m2``, for one test module."""
    with make_machines() as made:
        print(
            f"test machines ({made.mode}): "
            + ", ".join(f"{m.name}={m.address}" for m in made)
            + f"; queen on {made.queen_host}"
        )
        yield made

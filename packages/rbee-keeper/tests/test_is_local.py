"""Which queen URLs name this machine (``is_local``), so that ``rbee queen start`` may start it.

A queen meant for other machines listens on an address they reach; that address is this
machine's own, so the keeper starts the queen there as it does on loopback. Another machine's
address, a broadcast or multicast address (Linux lets a socket bind to those), and a name that
does not resolve are not this machine.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import Result

import rbee_process
from rbee_keeper.services import is_local

Invoke = Callable[..., Result]
FAKE = str(Path(__file__).with_name("fake_queen.py"))


def own_unicast(version: int) -> list[str]:
    """This machine's non-loopback unicast addresses of IP ``version`` (no link-local: those
    need a zone in a URL)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(addr.address.partition("%")[0])
            if ip.version == version and not (ip.is_loopback or ip.is_link_local):
                found.append(str(ip))
    return found


def own_ipv4() -> str:
    addresses = own_unicast(4)
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    return addresses[0]


def url(host: str, port: int = 8500) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.5", "localhost", "::1", "0.0.0.0", "::", socket.gethostname()]
)
def test_loopback_wildcard_and_the_hostname_are_local(host: str) -> None:
    assert is_local(url(host))


def test_an_address_of_this_machine_is_local() -> None:
    addresses = own_unicast(4) + own_unicast(6)
    if not addresses:
        pytest.skip("this machine has no non-loopback address")
    for address in addresses:
        assert is_local(url(address)), address


def test_another_machines_address_is_not_local() -> None:
    own = set(own_unicast(4))
    # documentation networks (RFC 5737): none of them is this machine's unless listed above
    others = [a for a in ("198.51.100.23", "203.0.113.9", "192.0.2.77") if a not in own]
    assert others
    for address in others:
        assert not is_local(url(address)), address
    assert not is_local(url("2001:db8::77"))


def test_broadcast_and_multicast_are_not_local() -> None:
    # Linux binds a socket to these; no queen can be reached there
    assert not is_local(url("255.255.255.255"))
    assert not is_local(url("224.0.0.1"))
    assert not is_local(url("ff02::1"))
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and addr.broadcast:
                assert not is_local(url(addr.broadcast)), addr.broadcast


def test_a_name_that_does_not_resolve_is_not_local() -> None:
    assert not is_local("http://no-such-machine.invalid:8500")


# -- rbee queen start on such an address ----------------------------------------------------------


@pytest.fixture
def state(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The fake queen and hive as the local services; anything left running is killed (and the
    test fails)."""
    state = tmp_path / "state" / "rbee"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("RBEE_HIVE_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("RBEE_QUEEN_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("RBEE_HIVE_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("RBEE_START_TIMEOUT", "20")
    monkeypatch.setenv("RBEE_STOP_TIMEOUT", "5")
    yield state
    leftovers = []
    for pid_file in state.rglob("*.pid"):
        record = rbee_process.read_pid_file(pid_file)
        if record is not None and rbee_process.alive(record):
            leftovers.append(record.pid)
            rbee_process.terminate(record, grace=0.1)
    assert not leftovers, f"processes left behind: {leftovers}"


def test_queen_start_listens_on_an_address_of_this_machine(state: Path, invoke: Invoke) -> None:
    address = own_ipv4()
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = sock.getsockname()[1]
    queen_url = f"http://{address}:{port}"
    started = invoke("queen", "start", RBEE_QUEEN_URL=queen_url)
    try:
        assert started.exit_code == 0, started.stderr
        assert f"queen ready at {queen_url}" in started.stderr
        record = rbee_process.read_pid_file(state / "queen.pid")
        assert record is not None
        argv = list(record.argv)
        assert argv[argv.index("--host") + 1] == address
        # it listens there, not on loopback
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(record.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert (address, port) in listening, listening
    finally:
        stopped = invoke("queen", "stop", "--json", RBEE_QUEEN_URL=queen_url)
    assert stopped.exit_code == 0, stopped.stderr
    assert json.loads(stopped.stdout)["queen"]["outcome"] == "stopped"


def test_queen_start_refuses_another_machines_address(state: Path, invoke: Invoke) -> None:
    started = invoke("queen", "start", RBEE_QUEEN_URL="http://198.51.100.23:8500")
    assert started.exit_code != 0
    assert "not on this machine" in started.stderr
    assert not (state / "queen.pid").exists()

"""Hives on two machines, managed over SSH through the ``rbee`` command only.

The machines are network namespaces joined to the queen's by veth pairs, or distinct loopback
addresses where namespaces cannot be made (``tests/e2e/machines.py``; the mode is printed).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

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

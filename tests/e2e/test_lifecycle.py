"""The local services' life through ``rbee``: started on demand by ``rbee infer``, found by
``rbee queen start``, and stopped by ``rbee queen stop`` with nothing left behind.

This test has a queen and hive of its own (own directory, own free ports), not the session's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_autostart_then_queen_stop_leaves_no_process(
    e2e_base: Path, tiny_model: Path, kit: Any
) -> None:
    root = e2e_base / "lifecycle"
    queen_port, hive_port = kit.free_ports(2)
    kit.write_config(root)
    rbee = kit.Rbee(kit.isolated_env(root, queen_port, hive_port), root)
    state = root / "state"
    try:
        # nothing runs yet: the keeper says so, and how to fix it
        down = rbee.fails(3, "status")
        assert "queen not running on 127.0.0.1" in down.err and "rbee queen start" in down.err

        # `rbee infer` starts the queen and hive, then fails on the unknown model (exit 1)
        first = rbee.fails(1, "infer", "hi", "--model", "synth-life", timeout=90)
        assert "rbee: started queen (pid" in first.err, str(first)
        assert "rbee: started hive 'localhost' (pid" in first.err
        assert "hive 'localhost' registered with the queen" in first.err
        assert "no_capacity" in first.err and "'synth-life'" in first.err

        # `rbee queen start` finds them running; nothing new is started
        started = rbee.ok("queen", "start", "--json")
        assert "queen already running" in started.err
        pids = started.final()
        queen_pid, hive_pid = pids["queen"]["pid"], pids["hive"]["pid"]
        assert pids["queen"]["url"] == f"http://127.0.0.1:{queen_port}"
        assert pids["hive"]["url"] == f"http://127.0.0.1:{hive_port}"
        # the keeper's pid file is the queen's; the queen's is the hive's
        hive_pid_file = state / "queen" / "hives" / "localhost.pid"
        assert (state / "queen.pid").is_file() and hive_pid_file.is_file()
        assert (state / "logs" / "queen.log").is_file()

        # a worker (and the processes it runs) under the hive
        rbee.ok("model", "register", "synth-life", str(tiny_model))
        worker = rbee.result("worker", "spawn", "-m", "synth-life", "--engine", "synthetic")
        served = rbee.ok("infer", "hi", "--model", "synth-life", "--max-tokens", "2")
        assert served.out == "The quick\n"
        everything: set[int] = set()
        for pid in (queen_pid, hive_pid, worker["pid"]):
            everything |= kit.tree(pid)
        assert {queen_pid, hive_pid, worker["pid"]} <= everything

        stopped = rbee.ok("queen", "stop", "--json").final()
        assert stopped == {
            "hive": {"outcome": "stopped", "pid": hive_pid},
            "queen": {"outcome": "stopped", "pid": queen_pid},
        }
        # gone at once: the hive stops its workers before it exits, and stop waits for it
        alive = [pid for pid in everything if kit.alive(pid)]
        assert not alive, [psutil.Process(pid).cmdline() for pid in alive]
        assert not kit.mentioning(str(root)), kit.describe(kit.mentioning(str(root)))
        assert not (state / "queen.pid").exists() and not hive_pid_file.exists()

        # stopping again is harmless; the queen is down again
        again, status = rbee.batch(["queen", "stop", "--json"], ["status"])
        assert again.final() == {
            "hive": {"outcome": "not running", "pid": None},
            "queen": {"outcome": "not running", "pid": None},
        }
        assert status.code == 3, str(status)
    finally:
        survivors = kit.stop_and_check(rbee, root)
        assert not survivors, survivors

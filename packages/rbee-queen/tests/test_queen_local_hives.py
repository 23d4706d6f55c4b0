"""``hive_start`` / ``hive_stop`` with a FAKE hive command: a small jobproto server that registers.

The fake takes the real hive's flags, serves one operation, heartbeats to the queen from a thread,
and starts a child in its own process group (which ignores SIGTERM: only the queen's final
SIGKILL to the group ends it). ``FAKE_HIVE_MODE`` makes it misbehave: ``ignore_term`` (the hive
itself ignores SIGTERM), ``exit`` (dies before registering), ``silent`` (never registers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

import rbee_process
from jobproto.client import RemoteJobFailed

pytestmark = pytest.mark.anyio

FAKE_HIVE = r"""
import argparse, json, os, signal, subprocess, sys, threading, time

import attrs
import httpx

from jobproto import Operations
from jobproto.asgi import ServiceSettings, create_app
from jobproto.server import serve

p = argparse.ArgumentParser()
for flag in ("--host", "--hive-id", "--queen-url", "--models-dir", "--state-dir"):
    p.add_argument(flag, required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--heartbeat", type=float, default=5.0)
args = p.parse_args()
mode = os.environ.get("FAKE_HIVE_MODE", "")
print(f"fake hive {args.hive_id} starting ({mode or 'normal'})", flush=True)
if mode == "exit":
    print("fake hive: cannot open the models directory", flush=True)
    sys.exit(3)


@attrs.frozen
class Nothing:
    pass


ops = Operations()


@ops.operation("worker_list")
async def worker_list(params: Nothing) -> dict:
    return {"workers": []}


def beat(port: int) -> None:
    body = {"hive_id": args.hive_id, "url": f"http://127.0.0.1:{port}", "models": [],
            "workers": [], "capabilities": {}, "heartbeat_interval": args.heartbeat}
    with httpx.Client() as http:
        while True:
            try:
                http.put(f"{args.queen_url}/v1/hives/{args.hive_id}", json=body)
            except httpx.HTTPError as exc:
                print(f"heartbeat failed: {exc!r}", flush=True)
            time.sleep(args.heartbeat)


def ready(port: int) -> None:
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    with open(os.path.join(args.state_dir, "child.json"), "w") as f:
        json.dump({"child": child.pid, "hive": os.getpid()}, f)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode != "silent":
        threading.Thread(target=beat, args=(port,), daemon=True).start()
    print(f"fake hive listening on {port}", flush=True)


serve(create_app(ops, ServiceSettings(service_name="fake-hive")), args.host, args.port,
      on_ready=ready)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def fake_hive_command(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "fake_hive.py"
    script.write_text(FAKE_HIVE)
    return (sys.executable, str(script))


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a failed test left running: killed by process group at teardown."""
    yield
    for found in tmp_path.rglob("child.json"):
        pids = json.loads(found.read_text())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pids["hive"], signal.SIGKILL)
        for pid in (pids["hive"], pids["child"]):
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def bound(c: Any) -> str:
    """The served queen's URL, once the queen knows the port it listens on (``rbee-queen`` learns
    it when bound): a hive started here may report to this queen only."""
    c.app.state.queen.bound_port = urlsplit(c.queen_url).port
    assert c.app.state.queen.url == c.queen_url
    return str(c.queen_url)


def started_pids(state_dir: Path, hive_id: str) -> dict[str, int]:
    found = json.loads((state_dir / "hives" / hive_id / "child.json").read_text())
    return {"hive": found["hive"], "child": found["child"]}


async def test_hive_start_waits_for_registration_and_hive_stop_leaves_nothing(
    cluster: Any, fake_hive_command: tuple[str, ...], tmp_path: Path, leftovers: None
) -> None:
    state = tmp_path / "queen"
    async with cluster(hive_command=fake_hive_command, state_dir=state) as c:
        started = await c.client.run(
            "hive_start", hive="local1", port=0, queen_url=bound(c), heartbeat=0.2
        )
        pids = started_pids(state, "local1")
        async with httpx.AsyncClient() as http:
            (listed,) = (await http.get(f"{c.queen_url}/v1/hives")).json()["hives"]
        status = await c.client.run("hive_status", hive="local1")
        again = await c.client.run("hive_start", hive="local1", port=0, queen_url=bound(c))
        # the hive is reachable through the queen like any other
        assert await c.client.run("worker_list") == {"workers": []}
        stopped = await c.client.run("hive_stop", hive="local1")
        hives_after = (await c.client.run("hive_list"))["hives"]
    assert started["pid"] == pids["hive"] and started["already_running"] is False
    assert again["already_running"] is True and again["pid"] == pids["hive"]
    assert listed["hive_id"] == "local1" and listed["state"] == "up"
    assert status["process"]["pid"] == pids["hive"]
    assert started["command"][:2] == list(fake_hive_command)
    assert any(arg.startswith("--queen-url=") for arg in started["command"])
    log = state / "logs" / "hive-local1.log"
    assert "fake hive local1 starting" in log.read_text()
    assert stopped["stopped"] == "stopped"
    assert not (state / "hives" / "local1.pid").exists()
    assert hives_after == []
    assert not alive(pids["hive"])
    assert not alive(pids["child"])  # it ignored SIGTERM: the group's SIGKILL ended it


async def test_hive_stop_escalates_to_sigkill(
    cluster: Any,
    fake_hive_command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    leftovers: None,
) -> None:
    monkeypatch.setenv("FAKE_HIVE_MODE", "ignore_term")
    state = tmp_path / "queen"
    async with cluster(hive_command=fake_hive_command, state_dir=state, hive_stop_grace=0.5) as c:
        await c.client.run("hive_start", hive="stubborn", port=0, queen_url=bound(c))
        pids = started_pids(state, "stubborn")
        events: list[Any] = []
        stopped = await c.client.run("hive_stop", hive="stubborn", on_event=events.append)
    assert stopped["stopped"] == "killed"
    actions = [getattr(e.event, "action", None) for e in events]
    assert actions[:2] == ["hive_stopping", "hive_killing"]
    assert not alive(pids["hive"]) and not alive(pids["child"])


async def test_a_hive_that_exits_early_fails_the_start_with_its_log(
    cluster: Any,
    fake_hive_command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_HIVE_MODE", "exit")
    async with cluster(hive_command=fake_hive_command) as c:
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("hive_start", hive="broken", port=0, queen_url=bound(c))
    assert info.value.code == "hive_exited"
    assert "exited with status 3 before it registered" in info.value.message
    assert "cannot open the models directory" in info.value.message


async def test_a_hive_that_never_registers_is_stopped(
    cluster: Any,
    fake_hive_command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    leftovers: None,
) -> None:
    monkeypatch.setenv("FAKE_HIVE_MODE", "silent")
    state = tmp_path / "queen"
    async with cluster(
        hive_command=fake_hive_command, state_dir=state, hive_start_timeout=3.0
    ) as c:
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("hive_start", hive="mute", port=0, queen_url=bound(c))
    assert info.value.code == "hive_start_timeout"
    assert "did not register with this queen within 3 s" in info.value.message
    # (a machine so slow that the fake never got to start its child has no child.json)
    found = list((state / "hives").rglob("child.json"))
    for pid in [p for f in found for p in json.loads(f.read_text()).values()]:
        assert not alive(pid)
    assert not (state / "hives" / "mute.pid").exists()


async def test_stopping_a_hive_this_machine_does_not_run(cluster: Any, fakes: Any) -> None:
    remote = fakes.Hive("far")
    async with cluster([remote]) as c:
        await remote.register(c.queen_url)
        with pytest.raises(RemoteJobFailed) as not_local:
            await c.client.run("hive_stop", hive="far")
        with pytest.raises(RemoteJobFailed) as unknown:
            await c.client.run("hive_stop", hive="nowhere")
    assert not_local.value.code == "hive_not_local"
    assert unknown.value.code == "unknown_hive"


async def test_a_pid_file_whose_pid_is_another_process_is_not_signalled(
    cluster: Any, tmp_path: Path
) -> None:
    # A pid file left by an earlier queen whose hive is gone; its pid now belongs to a stranger.
    stranger = rbee_process.spawn_detached(
        [sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "stranger.log"
    )
    try:
        assert stranger.start_time is not None
        state = tmp_path / "queen"
        reused = rbee_process.ProcessRecord(stranger.pid, stranger.start_time - 50, ("rbee-hive",))
        rbee_process.write_pid_file(state / "hives" / "gone.pid", reused)
        async with cluster(state_dir=state) as c:
            status = await c.client.run("hive_stop", hive="gone")
        assert status["stopped"] == "not running" and status["pid"] == stranger.pid
        assert rbee_process.alive(stranger)  # never signalled
        assert not (state / "hives" / "gone.pid").exists()
    finally:
        assert rbee_process.terminate(stranger, grace=5) is rbee_process.StopOutcome.STOPPED


async def test_a_restarted_queen_stops_the_hive_an_earlier_queen_started(
    cluster: Any, fake_hive_command: tuple[str, ...], tmp_path: Path, leftovers: None
) -> None:
    state = tmp_path / "queen"
    async with cluster(hive_command=fake_hive_command, state_dir=state) as first:
        await first.client.run(
            "hive_start", hive="kept", port=0, queen_url=bound(first), heartbeat=0.2
        )
    pids = started_pids(state, "kept")
    assert alive(pids["hive"])  # the hive outlives the queen that started it
    async with cluster(hive_command=fake_hive_command, state_dir=state) as second:
        stopped = await second.client.run("hive_stop", hive="kept")
    assert stopped["pid"] == pids["hive"] and stopped["stopped"] == "stopped"
    assert not alive(pids["hive"]) and not alive(pids["child"])


async def test_a_started_hive_listens_on_the_queens_hive_host(
    cluster: Any, fake_hive_command: tuple[str, ...], tmp_path: Path, leftovers: None
) -> None:
    # rbee's `hive_host` setting reaches the hive through the queen (`--hive-host`)
    state = tmp_path / "queen"
    async with cluster(hive_command=fake_hive_command, state_dir=state, hive_host="127.0.0.2") as c:
        started = await c.client.run("hive_start", hive="h", port=0, queen_url=bound(c))
        await c.client.run("hive_stop", hive="h")
    command = started["command"]
    assert "--host=127.0.0.2" in command  # every value in --flag=VALUE form (hive_cli)


async def test_two_hive_starts_at_once_start_one_hive(
    cluster: Any, fake_hive_command: tuple[str, ...], tmp_path: Path, leftovers: None
) -> None:
    # The check, the spawn and the pid file are one step under the pid file's lock: the second
    # start finds the first one's hive instead of starting another one nobody manages.
    state = tmp_path / "queen"
    results: list[Any] = []
    async with cluster(hive_command=fake_hive_command, state_dir=state) as c:

        async def start() -> None:
            results.append(
                await c.client.run(
                    "hive_start", hive="twice", port=0, queen_url=bound(c), heartbeat=0.2
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            tg.start_soon(start)
        pids = started_pids(state, "twice")
        stopped = await c.client.run("hive_stop", hive="twice")
    assert sorted(r["already_running"] for r in results) == [False, True]
    assert {r["pid"] for r in results} == {pids["hive"]}
    assert "fake hive twice starting" in (state / "logs" / "hive-twice.log").read_text()
    assert (state / "logs" / "hive-twice.log").read_text().count("fake hive twice starting") == 1
    assert stopped["stopped"] == "stopped"
    assert not alive(pids["hive"])


async def test_hive_stop_stops_the_workers_the_hive_left(
    cluster: Any, fake_hive_command: tuple[str, ...], tmp_path: Path, leftovers: None
) -> None:
    # A worker runs in a session of its own: the SIGKILL to the hive's group never reaches it.
    # The hive's pid files for its workers ({hive state}/run) name what it left behind.
    state = tmp_path / "queen"
    worker = rbee_process.spawn_detached(
        [sys.executable, "-c", "import time; time.sleep(120)"], log_path=tmp_path / "worker.log"
    )
    try:
        run = state / "hives" / "orphaning" / "run"
        rbee_process.write_pid_file(run / "w1.json", worker)
        async with cluster(hive_command=fake_hive_command, state_dir=state) as c:
            await c.client.run(
                "hive_start", hive="orphaning", port=0, queen_url=bound(c), heartbeat=0.2
            )
            stopped = await c.client.run("hive_stop", hive="orphaning")
        assert stopped["stopped"] == "stopped"
        assert not rbee_process.alive(worker)
        assert list(run.iterdir()) == []
    finally:
        rbee_process.terminate(worker, grace=1, reap=True)
        rbee_process.reap(worker.pid)

"""A second hive registers by heartbeat; killed, it goes down in bounded time, and its workers are
no longer routed to (even though they still run and answer)."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import pytest

from rbee_contracts import auth

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HEARTBEAT = 0.5
TIMEOUT_BEATS = 3  # the queen's default --hive-timeout-beats


def _hives(cluster: Any) -> dict[str, dict[str, Any]]:
    """``rbee hive list --json``."""
    return {h["hive_id"]: h for h in cluster.rbee.result("hive", "list")["hives"]}


def _queen_sees(cluster: Any, hive_id: str) -> dict[str, Any]:
    """One hive as the queen sees it now (``GET /v1/hives``: quick enough to poll)."""
    hives = {h["hive_id"]: h for h in cluster.get(cluster.queen_url + "/v1/hives")["hives"]}
    return dict(hives.get(hive_id, {}))


def test_a_killed_hive_goes_down_and_its_workers_are_not_routed_to(cluster: Any, kit: Any) -> None:
    rbee = cluster.rbee
    root = cluster.root / "h2"
    argv = [
        kit.PYTHON,
        "-m",
        "rbee_hive.app",
        "--hive-id",
        "h2",
        "--queen-url",
        cluster.queen_url,
        "--port",
        "0",
        "--heartbeat",
        str(HEARTBEAT),
        "--models-dir",
        str(root / "models"),
        "--state-dir",
        str(root / "state"),
        "--stop-grace",
        "3",
    ]
    orphan_pid: int | None = None
    # the hive is the leader of a process group of its own (Running starts a new session)
    # a hive the user runs by hand: its tokens in its environment, as `rbee hive start` passes them
    env = {
        **rbee.env,
        "RBEE_JOIN_TOKEN": auth.join_token(cluster.secret, "h2"),
        "RBEE_HIVE_TOKEN": auth.hive_token(cluster.secret, "h2"),
    }
    with kit.Running(argv, env, cluster.root) as h2:
        try:
            line = h2.wait_for(
                lambda r: re.search(r"RBEE_HIVE_LISTENING (\{.*\})", r.out), 30, "hive h2"
            )
            h2_url = json.loads(line.group(1))["url"]
            kit.wait_until(lambda: _queen_sees(cluster, "h2"), 30, "h2 to register")
            hive = _hives(cluster)["h2"]
            assert hive["state"] == "up", hive
            assert hive["url"] == h2_url and hive["heartbeat_interval"] == HEARTBEAT

            # a model and a (synthetic) worker on h2 only; the queen routes to it
            cluster.register("on-h2", hive="h2")
            worker = cluster.spawn_synthetic("on-h2", "--hive", "h2")
            orphan_pid = worker["pid"]
            served = rbee.ok("infer", "hi", "--model", "on-h2", "--max-tokens", "3")
            assert served.out == "The quick brown\n", str(served)
            assert re.search(rf"routed: worker {worker['worker_id']} on hive h2", served.err)

            # with two hives up, a listing answers for both, each row naming its hive
            listed = rbee.result("worker", "list")["workers"]
            assert {(w["hive_id"], w["worker_id"]) for w in listed} >= {
                ("h2", worker["worker_id"])
            }, listed

            # SIGKILL the hive's process group: no goodbye, its heartbeats just stop. Its worker
            # is in a session of its own and survives, still answering.
            os.killpg(h2.pid, signal.SIGKILL)
            h2.wait(timeout=30)
            assert kit.alive(worker["pid"])

            # down once silent for timeout-beats x interval (1.5 s); a queen that never marks it
            # down fails at this deadline
            kit.wait_until(
                lambda: _queen_sees(cluster, "h2")["state"] == "down",
                30,
                "h2 to be marked down",
                interval=0.05,
            )
            hives = _hives(cluster)
            assert hives["h2"]["state"] == "down", hives["h2"]
            assert hives["h2"]["seconds_since_seen"] > TIMEOUT_BEATS * HEARTBEAT, hives["h2"]
            assert hives["localhost"]["state"] == "up"

            # h2's worker still runs and is healthy, but is not routed to
            assert cluster.get(worker["url"] + "/health")["status"] == "ok"
            anywhere, on_h2, status, local = rbee.batch(
                ["infer", "hi", "--model", "on-h2", "--max-tokens", "3"],
                ["infer", "hi", "--model", "on-h2", "--max-tokens", "3", "--hive", "h2"],
                ["status", "--json"],
                ["worker", "list", "--json"],  # one hive up again: it needs no --hive
            )
            assert anywhere.code == 1 and "no_capacity" in anywhere.err, str(anywhere)
            assert "no hive that is up has it" in anywhere.err
            assert on_h2.code == 1 and "hive 'h2' is down" in on_h2.err, str(on_h2)
            workers = {w["worker_id"]: w for w in status.final()["result"]["workers"]}
            assert workers[worker["worker_id"]]["hive_state"] == "down"
            assert local.code == 0, str(local)
            jobs = cluster.get(worker["url"] + "/v1/jobs", hive="h2", worker=worker["worker_id"])[
                "jobs"
            ]
            assert len(jobs) == 1 and jobs[0]["state"] == "succeeded", jobs  # the one before
        finally:
            if orphan_pid is not None and kit.alive(orphan_pid):
                # nobody supervises it any more: it goes with its process group
                os.killpg(orphan_pid, signal.SIGKILL)
                kit.wait_until(lambda: not kit.alive(orphan_pid), 30, "h2's worker to exit")

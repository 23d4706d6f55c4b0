"""Things going wrong mid-stream: a worker killed while it streams, and Ctrl+C on ``rbee infer``.

Both use a slow synthetic worker (20 tokens/s, ``--engine-arg tokens_per_second=20``), so a
request for hundreds of tokens is still streaming when the test acts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import anyio
import pytest

from jobproto import Data, JobEvent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RATE = 20


def test_a_worker_killed_mid_stream_fails_the_request_and_is_restarted(
    cluster: Any, kit: Any
) -> None:
    rbee = cluster.rbee
    cluster.register("slow-crash")
    try:
        worker_id = cluster.spawn_synthetic("slow-crash", rate=RATE)["worker_id"]
        # its process, as `rbee worker list --json` reports it
        old_pid = {w["worker_id"]: w["pid"] for w in cluster.workers()}[worker_id]

        # every state the hive gives the worker from the kill on, sampled every 20 ms
        seen: list[tuple[str, int]] = []
        stop_watching = threading.Event()

        def watch() -> None:
            while not stop_watching.is_set():
                for w in cluster.hive_workers():
                    if w["worker_id"] == worker_id:
                        state = (w["state"], w["restarts"])
                        if not seen or seen[-1] != state:
                            seen.append(state)
                time.sleep(0.02)

        with rbee.start("infer", "go", "--model", "slow-crash", "--max-tokens", "400") as run:
            run.wait_for(lambda r: "fox" in r.out, 30, "the first tokens")
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            os.kill(old_pid, signal.SIGKILL)
            # no hang: the request fails (a request left waiting on the dead worker would still
            # run at this deadline), naming the worker and why
            failed = run.wait(timeout=60)
        assert failed.code == 1, str(failed)
        assert "The quick brown fox" in failed.out  # what had streamed stays on stdout
        assert "rbee: job failed: downstream_unavailable:" in failed.err, str(failed)
        assert f"worker:{worker_id}" in failed.err and "unavailable" in failed.err

        # the hive restarts it: restarting -> ready, one restart, a new process
        try:
            restarted = kit.wait_until(
                lambda: [
                    w
                    for w in cluster.hive_workers()
                    if w["worker_id"] == worker_id and w["state"] == "ready" and w["restarts"] == 1
                ],
                60,
                "the worker to be restarted",
            )[0]
        finally:
            stop_watching.set()
            watcher.join(5)
        assert ("restarting", 0) in seen or ("restarting", 1) in seen, seen
        assert seen[-1] == ("ready", 1), seen
        assert restarted["pid"] != old_pid and restarted["last_exit"] == -signal.SIGKILL
        assert not kit.alive(old_pid)
        listed = {w["worker_id"]: w for w in cluster.workers()}  # `rbee worker list` agrees
        assert listed[worker_id]["state"] == "ready" and listed[worker_id]["restarts"] == 1

        # once the queen has heard of the new process (next heartbeat), requests go to it
        kit.wait_until(
            lambda: any(
                w["worker_id"] == worker_id
                and w["pid"] == restarted["pid"]
                and w["state"] == "ready"
                for w in cluster.queen_workers()
            ),
            30,
            "the queen to learn of the restarted worker",
        )
        again = rbee.ok("infer", "go", "--model", "slow-crash", "--max-tokens", "5")
        assert again.out == "The quick brown fox jumps\n", str(again)
        assert again.routed() == [worker_id]
        assert [w["worker_id"] for w in cluster.hive_workers() if w["model"] == "slow-crash"] == [
            worker_id
        ]
    finally:
        cluster.cleanup("slow-crash")


def test_ctrl_c_cancels_the_generation_on_the_worker(cluster: Any, kit: Any) -> None:
    rbee = cluster.rbee
    cluster.register("slow-cancel")
    try:
        worker = cluster.spawn_synthetic("slow-cancel", rate=RATE)
        url, wid = worker["url"], worker["worker_id"]
        args = ("infer", "go", "--model", "slow-cancel", "--max-tokens", "1000", "--json")
        with rbee.start(*args) as run:
            first = run.wait_for(
                lambda r: [x for x in r.lines() if x.get("type") == "data"], 30, "the first tokens"
            )[0]
            queen_job = first["job_id"]
            worker_job = first["origin"]["job_id"]  # the worker's own job, relayed
            assert first["origin"]["service"] == f"worker:{worker['worker_id']}"
            assert cluster.get(url + "/v1/worker", worker=wid)["in_flight"] == 1

            run.signal(signal.SIGINT)  # Ctrl+C
            interrupted = run.wait(timeout=20)
        assert interrupted.code == 130, str(interrupted)
        assert f"rbee: cancelling job {queen_job}" in interrupted.err
        assert interrupted.final() == {
            "type": "error",
            "code": "interrupted",
            "message": "cancelled",
            "field": None,
            "exit_code": 130,
        }

        # the cancel reached the engine: the worker's job is cancelled and nothing is in flight
        job = kit.wait_until(
            lambda: (
                (j := cluster.get(f"{url}/v1/jobs/{worker_job}", worker=wid))["state"] != "running"
                and j
            ),
            30,
            "the worker's job to end",
        )
        assert job["state"] == "cancelled", job
        kit.wait_until(
            lambda: cluster.get(url + "/v1/worker", worker=wid)["in_flight"] == 0,
            30,
            "no request in flight",
        )
        # generation stopped short: the worker's job holds fewer than the 1000 tokens asked for
        # (its log replays to its end: a finished job's stream is finite)
        tokens = _tokens_of(cluster, url, wid, worker_job)
        assert 0 < tokens < 1000, tokens
        status = rbee.result("jobs", "status", queen_job)
        assert status["state"] == "cancelled", status
    finally:
        cluster.cleanup("slow-cancel")


def _tokens_of(cluster: Any, url: str, worker_id: str, job_id: str) -> int:
    """The number of tokens in the data events of a finished job (on the service at ``url``,
    worker ``worker_id`` of the local hive: it takes its own token)."""

    async def count() -> int:
        async with cluster.client(url, worker=worker_id) as client:
            counts = [
                len(item.event.payload["token_ids"])
                async for item in client.events(job_id)
                if isinstance(item, JobEvent) and isinstance(item.event, Data)
            ]
        return sum(counts)

    return anyio.run(count)


def test_a_request_during_a_restart_waits_for_the_worker_instead_of_spawning(
    cluster: Any, kit: Any
) -> None:
    rbee = cluster.rbee
    cluster.register("slow-restart")
    try:
        worker_id = cluster.spawn_synthetic("slow-restart", rate=RATE)["worker_id"]
        old_pid = {w["worker_id"]: w["pid"] for w in cluster.workers()}[worker_id]
        os.kill(old_pid, signal.SIGKILL)
        # at once, before the hive has restarted it (and maybe before the queen has heard)
        again = rbee.ok("infer", "go", "--model", "slow-restart", "--max-tokens", "5")
        assert again.out == "The quick brown fox jumps\n", str(again)
        assert again.routed() == [worker_id]
        assert [w["worker_id"] for w in cluster.hive_workers() if w["model"] == "slow-restart"] == [
            worker_id
        ]
    finally:
        cluster.cleanup("slow-restart")

"""The queen routes a request to the least busy worker of its model.

(A burst of requests for a model without a worker starting exactly one worker is in
``test_infer.py``: it needs the real model, since the queen spawns with the ``auto`` engine.)
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_a_request_goes_to_the_idle_worker_not_the_busy_one(cluster: Any) -> None:
    rbee = cluster.rbee
    cluster.register("synth-sched")
    try:
        spawns = rbee.batch(
            *(
                [
                    "worker",
                    "spawn",
                    "-m",
                    "synth-sched",
                    "--engine",
                    "synthetic",
                    "--engine-arg",
                    "tokens_per_second=20",
                    "--json",
                ]
                for _ in range(2)
            )
        )
        ids = {spawn.final()["result"]["worker_id"] for spawn in spawns}
        assert len(ids) == 2, [str(s) for s in spawns]

        # a long request (200 tokens at 20/s) keeps one of them busy
        args = ("infer", "go", "--model", "synth-sched")
        with rbee.start(*args, "--max-tokens", "200") as long:
            long.wait_for(lambda r: "fox" in r.out, 30, "the long request's tokens")
            (busy,) = long.wait_for(lambda r: r.err and _routed(r.err), 30, "its routing")
            assert busy in ids

            status = rbee.result("status")
            in_flight = {
                w["worker_id"]: w["in_flight"]
                for w in status["workers"]
                if w["model"] == "synth-sched"
            }
            assert in_flight == {w: int(w == busy) for w in ids}, status["workers"]

            short = rbee.ok(*args, "--max-tokens", "3")
            (other,) = short.routed()
            assert other in ids and other != busy, str(short)
            assert f"routed: worker {other} on hive localhost (0 other requests in flight)" in (
                short.err
            )
            assert short.out == "The quick brown\n"
            assert long.proc.poll() is None  # still streaming on the busy one

            long.signal(signal.SIGINT)
            assert long.wait(timeout=20).code == 130
    finally:
        cluster.cleanup("synth-sched")


def _routed(err: str) -> list[str]:
    return re.findall(r"routed: worker (\S+) on hive", err)

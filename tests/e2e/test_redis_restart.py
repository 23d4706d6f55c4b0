"""A queen whose Redis server restarts (append-only file on): while Redis is away the queen says so
with the documented error, it does not die, and once Redis is back it serves again, with the jobs
it had stored before.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _frames(events: list[Any]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(e.type, e.seq, e.envelope) for e in events]


def test_a_queen_reports_a_redis_restart_and_serves_again_after_it(
    queen_replicas: Any, kit: Any
) -> None:
    reps = queen_replicas
    queen = reps.queen("a")
    # a job stored before the restart, run to its end
    old = reps.job(queen, "hive_list")
    old_events = reps.read(queen.url + old["sse_url"])
    assert old_events[-1].type == "succeeded", old_events[-1].envelope
    old_status = httpx.get(queen.url + old["status_url"], headers=reps.headers, timeout=10).json()
    assert old_status["state"] == "succeeded"

    reps.redis.stop()
    refused = httpx.post(
        f"{queen.url}/v1/jobs", json={"operation": "hive_list"}, headers=reps.headers, timeout=30
    )
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.headers.get("retry-after") == "1"
    error = refused.json()
    assert set(error) == {"error"} and error["error"]["code"] == "store_unavailable", error
    assert error["error"]["message"].startswith("the job store is unavailable"), error
    assert reps.password not in refused.text
    # a stored job is not gone because the store is away: it is unavailable, or still known
    status = httpx.get(queen.url + old["status_url"], headers=reps.headers, timeout=30)
    assert status.status_code in (200, 503), status.text
    if status.status_code == 503:
        assert status.json()["error"]["code"] == "store_unavailable"
    assert queen.running.proc.poll() is None, queen.running.err  # the queen lives on

    reps.redis.start()

    def creates() -> dict[str, Any] | None:
        response = httpx.post(
            f"{queen.url}/v1/jobs",
            json={"operation": "hive_list"},
            headers=reps.headers,
            timeout=30,
        )
        if response.status_code == 503:
            return None
        assert response.status_code == 201, response.text
        return dict(response.json())

    new = kit.wait_until(creates, 30, "the queen to create jobs again", interval=0.2)
    assert reps.read(queen.url + new["sse_url"])[-1].type == "succeeded"
    # what was stored before the restart: the same status, the same events
    again = httpx.get(queen.url + old["status_url"], headers=reps.headers, timeout=10)
    assert again.status_code == 200 and again.json() == old_status
    assert _frames(reps.read(queen.url + old["sse_url"])) == _frames(old_events)
    listed = httpx.get(f"{queen.url}/v1/jobs", headers=reps.headers, timeout=10).json()
    assert {old["job_id"], new["job_id"]} <= {j["job_id"] for j in listed["jobs"]}
    # the queen said what happened, and never with the password
    output = queen.running.out + queen.running.err
    assert reps.password not in output

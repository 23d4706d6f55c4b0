"""The queen that runs an ``infer`` dies mid-generation; another replica takes the job over and the
client, reconnecting to that one, gets every token exactly once.

Two queens (replicas ``a`` and ``b``) on one Redis server (append-only file on), one secret; a
hive registered with ``a`` and its synthetic worker, slowed down (``tokens_per_second``) so that
the generation is still running when ``a`` goes. The ``infer`` is created on ``a`` and a few
tokens read from ``a``'s stream; then ``a``'s process group gets SIGKILL, and the client reads
the rest from ``b`` with ``Last-Event-ID`` = the last seq it had. ``b`` adopts the job once
``a``'s lease lapses and resumes the relay from the worker's job where ``a`` had stored it.

What the client got is compared with the worker job's own log, read from the worker with its
token: the same tokens, each once, in order, from the one worker job (the generation was never
started again).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

#: the worker's tokens per second, and the tokens asked for: about eight seconds of generation,
#: longer than a lease (5 s) plus the time a replica takes to notice it lapsed
RATE = 25
TOKENS = 200
#: tokens read from replica a before it is killed
BEFORE = 20


def _data(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type == "data"]


def test_a_killed_replica_s_infer_goes_on_through_another_every_token_once(
    queen_replicas: Any, tiny_model: Any
) -> None:
    reps = queen_replicas
    a = reps.queen("a")
    b = reps.queen("b")
    reps.hive(a)
    reps.run(a, "model_register", name="tiny", path=str(tiny_model))
    worker = reps.run(
        a,
        "worker_spawn",
        model="tiny",
        engine="synthetic",
        engine_args={"tokens_per_second": str(RATE)},
    )
    assert worker["state"] == "ready", worker

    created = reps.job(a, "infer", model="tiny", prompt="go", max_tokens=TOKENS)
    job_id = created["job_id"]
    stream = f"/v1/jobs/{job_id}/stream"
    before = reps.read(a.url + stream, stop=lambda evs: len(_data(evs)) >= BEFORE)
    assert len(_data(before)) == BEFORE, [e.type for e in before]
    last = before[-1].seq

    a.kill()
    killed = time.monotonic()
    # what a had stored when it died (b sends it at once; what comes after, b relays itself)
    stored = httpx.get(f"{b.url}/v1/jobs/{job_id}", headers=reps.headers, timeout=10).json()
    after = reps.read(b.url + stream, headers={"Last-Event-ID": str(last)})
    moved = next((e.at for e in after if e.type == "data" and e.seq > stored["last_seq"]), None)
    if moved is not None:
        print(f"failover: the stream moved again {moved - killed:.2f} s after the kill")

    # the client's view: every seq of the queen's job once, in order, through its end
    events = before + after
    assert [e.seq for e in events] == list(range(events[0].seq, events[-1].seq + 1))
    assert after[0].seq == last + 1
    assert after[-1].type == "succeeded", after[-1].envelope
    result = after[-1].envelope["payload"]["result"]

    # the tokens came from one worker job, which was never started again
    data = _data(events)
    origins = {(e.envelope["origin"]["service"], e.envelope["origin"]["job_id"]) for e in data}
    assert len(origins) == 1, origins
    ((service, worker_job),) = origins
    assert service == f"worker:{worker['worker_id']}"
    headers = reps.worker_headers(worker["worker_id"])
    listed = httpx.get(f"{worker['url']}/v1/jobs", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert [j["job_id"] for j in listed.json()["jobs"]] == [worker_job]

    # ... and equal the worker job's own log, token for token
    own = reps.read(f"{worker['url']}/v1/jobs/{worker_job}/stream", headers=headers)
    assert own[-1].type == "succeeded"
    mine = [(e.envelope["origin"]["seq"], e.envelope["payload"]) for e in data]
    theirs = [(e.seq, e.envelope["payload"]) for e in _data(own)]
    assert mine == theirs
    ids = [i for e in data for i in e.envelope["payload"]["token_ids"]]
    text = "".join(e.envelope["payload"]["text"] for e in data)
    assert len(ids) == TOKENS == result["completion_tokens"]
    assert text == result["text"] == own[-1].envelope["payload"]["result"]["text"]

    # replica b tells the same story
    status = httpx.get(f"{b.url}/v1/jobs/{job_id}", headers=reps.headers, timeout=10).json()
    assert status["state"] == "succeeded" and status["last_seq"] == events[-1].seq, status

"""The queen is the one judge of parameters, end to end: a value the worker or the hive would
refuse is refused by the real queen with a 422 (``rbee`` exits 5 with the queen's message), and
no job exists, nothing is routed and no worker is spawned.

One refused value of every ``infer`` parameter the command line can send, and of
``worker_spawn``'s ``model``, ``engine_args`` and ``hive``, goes through ``rbee``; the fields the
command line cannot send wrong (``engine`` is a choice there, ``device`` and ``worker_id`` have no
flag, ``prompt`` and ``messages`` are built by it) go to the queen's ``POST /v1/jobs`` directly.
Among them, values the hive or the worker refused only after routing or spawn, before the queen
knew their rules: an engine argument the synthetic engine does not take (the worker exited at its
start), a device that names a GPU twice (the hive's placement refused it), a queen URL with no
host (the hive's settings refused it). All of them run at once
against the session's one queen and hive.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: (rbee arguments, the words of the queen's refusal that rbee must print)
CLI_REFUSALS: list[tuple[list[str], str]] = [
    (["infer", "hi", "-m", "tiny", "--stop", ""], "'stop' must not contain empty strings"),
    (["infer", "hi", "-m", "tiny", "--max-tokens", "0"], "max_tokens"),
    (["infer", "hi", "-m", "tiny", "--temperature=-1"], "temperature"),
    (["infer", "hi", "-m", "tiny", "--top-p", "0"], "'top_p' must be in (0, 1]"),
    (["infer", "hi", "-m", "tiny", "--top-k=-1"], "top_k"),
    (["infer", "hi", "-m", "tiny", "--seed=-1"], "seed"),
    (["infer", "hi", "-m", "../tiny"], "'model' must be a model name"),
    (["infer", "hi", "-m", "tiny", "--hive", "-nohive"], "'hive' must be 1-63"),
    (["worker", "spawn", "-m", "org/tiny"], "'model' must be 1-128"),
    (["worker", "spawn", "-m", "tiny", "--engine-arg", "bad key=1"], "'engine_args' must map"),
    (
        ["worker", "spawn", "-m", "tiny", "--engine", "synthetic", "--engine-arg", "bogus=1"],
        "which the synthetic engine does not take",
    ),
    (["worker", "spawn", "-m", "tiny", "--hive", "-nohive"], "'hive' must be 1-63"),
]

#: (job fields sent straight to the queen, the field its 422 names)
API_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"operation": "infer", "model": "tiny"}, "prompt"),
    ({"operation": "infer", "model": "tiny", "messages": []}, "messages"),
    ({"operation": "worker_spawn", "model": "tiny", "engine": "llamacpp"}, "engine"),
    ({"operation": "worker_spawn", "model": "tiny", "device": "gpu"}, "device"),
    ({"operation": "worker_spawn", "model": "tiny", "max_concurrency": 0}, "max_concurrency"),
    ({"operation": "worker_spawn", "model": "tiny", "worker_id": "w..1"}, "worker_id"),
    ({"operation": "worker_spawn", "model": "tiny", "device": "cuda:0,0"}, "device"),
    ({"operation": "hive_start", "hive": "h9", "queen_url": "http://:9000"}, "queen_url"),
]


def job_ids(cluster: Any) -> set[str]:
    jobs = cluster.get(cluster.queen_url + "/v1/jobs?limit=100")["jobs"]
    return {job["job_id"] for job in jobs}


def test_refused_values_exit_5_with_the_queens_422_and_spawn_nothing(cluster: Any) -> None:
    workers_before = {w["worker_id"] for w in cluster.hive_workers()}
    jobs_before = job_ids(cluster)

    commands = [
        [*args, "--no-autostart"] if args[0] == "infer" else args for args, _ in CLI_REFUSALS
    ]
    results = cluster.rbee.batch(*commands)
    headers = cluster.headers(cluster.queen_url)
    with httpx.Client(base_url=cluster.queen_url, timeout=10, headers=headers) as http:
        answers = [http.post("/v1/jobs", json=body) for body, _ in API_REFUSALS]

    for result, (_, words) in zip(results, CLI_REFUSALS, strict=True):
        assert result.code == 5, str(result)
        assert words in result.err, str(result)
    for answer, (body, field) in zip(answers, API_REFUSALS, strict=True):
        assert answer.status_code == 422, (body, answer.text)
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("validation_error", field), body
    assert job_ids(cluster) == jobs_before
    assert {w["worker_id"] for w in cluster.hive_workers()} == workers_before

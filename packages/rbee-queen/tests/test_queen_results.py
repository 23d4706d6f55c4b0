"""The queen's own results are the shared types (``rbee_contracts.queen_results``), field for field.

Each result is read back with ``read_result`` (which drops keys the type does not know) and
unstructured again: equal to what the queen sent only when the queen sent exactly the
contract's fields, with values of the contract's types.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import rbee_process
from jobproto import converter
from rbee_contracts.lifecycle import HiveState
from rbee_contracts.queen_results import (
    HiveDetail,
    HiveListResult,
    HiveStatusResult,
    LocalHiveProcess,
    StatusResult,
    StopOutcome,
    UnregisteredHive,
)
from rbee_contracts.reading import read_result


def exactly(raw: Any, cls: type) -> Any:
    """``raw`` as ``cls``, checked to carry no field the contract lacks (and to miss none)."""
    typed = read_result(raw, cls)
    assert converter.unstructure(typed) == raw
    return typed


def test_the_hive_stop_outcome_is_rbee_process_outcome() -> None:
    # hive_stop sends rbee_process's outcome as the contract's: one set of values for both
    assert {o.value for o in StopOutcome} == {o.value for o in rbee_process.StopOutcome}


@pytest.mark.anyio
async def test_status_hive_list_and_hive_status_are_the_contract_types(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1", models=("tiny",))
    async with cluster([hive]) as c:
        await hive.add_worker("w1")
        await hive.register(c.queen_url)
        status = await c.client.run("status")
        hives = await c.client.run("hive_list")
        one = await c.client.run("hive_status", hive="h1")
        async with httpx.AsyncClient(base_url=c.queen_url) as http:
            served = (await http.get("/v1/hives")).json()
            served_one = (await http.get("/v1/hives/h1")).json()
    typed = exactly(status, StatusResult)
    assert [h.state for h in typed.hives] == [HiveState.UP]
    assert [(w.worker_id, w.hive_id, w.hive_state) for w in typed.workers] == [
        ("w1", "h1", HiveState.UP)
    ]
    assert exactly(hives, HiveListResult).hives[0].workers[0].worker_id == "w1"
    detail = exactly(one, HiveStatusResult)
    assert detail.state is HiveState.UP and detail.process is None
    assert [h.hive_id for h in exactly(served, HiveListResult).hives] == ["h1"]
    assert exactly(served_one, HiveDetail).hive_id == "h1"


@pytest.mark.anyio
async def test_a_local_hive_that_has_not_registered_has_a_process_and_no_state(
    cluster: Any,
) -> None:
    process = LocalHiveProcess("late", 4321, "/tmp/hive-late.log", ["rbee-hive"])
    async with cluster() as c:
        c.queen.local_hives.status = lambda hive_id: process if hive_id == "late" else None
        status = await c.client.run("hive_status", hive="late")
    assert "state" not in status
    assert exactly(status, UnregisteredHive) == UnregisteredHive("late", process)


@pytest.mark.anyio
async def test_status_lists_the_jobs_in_flight_but_not_itself(cluster: Any, fakes: Any) -> None:
    async with cluster([]) as c:
        waiting = await c.client.create("hive_list")  # queued: nobody streams it yet
        status = await c.client.run("status")
        await c.client.cancel(waiting.job_id)
    jobs = {j["job_id"]: j["operation"] for j in status["jobs"]}
    assert jobs == {waiting.job_id: "hive_list"}

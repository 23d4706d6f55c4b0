"""The registry and the scheduler's choices: pure, no event loop, time passed in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobproto import RequestError
from rbee_contracts.lifecycle import HiveState, WorkerState
from rbee_contracts.records import WorkerRecord
from rbee_queen.decisions import HiveInfo, NoCapacity, SpawnDecision, pick_worker, place
from rbee_queen.registry import HiveRegistry, WorkerView, parse_registration


def body(hive_id: str = "h1", **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hive_id": hive_id,
        "url": f"http://127.0.0.1:9000/{hive_id}",
        "capabilities": {"cpu_cores": 4},
        "workers": [],
        "models": ["tiny"],
        "free_memory_bytes": 1 << 30,
        "heartbeat_interval": 1.0,
    }
    out.update(over)
    return out


def worker(wid: str, model: str = "tiny", state: str = "ready", pid: int = 1) -> dict[str, Any]:
    return {
        "worker_id": wid,
        "model": model,
        "state": state,
        "url": f"http://127.0.0.1:9100/{wid}",
        "pid": pid,
    }


# -- registration ----------------------------------------------------------------------------------


def test_registration_parses_the_contract_body() -> None:
    reg = parse_registration("h1", body(workers=[worker("w1")], extra_field_from_newer_hive=1))
    assert reg.hive_id == "h1"
    assert reg.heartbeat.models == ["tiny"]
    assert reg.workers[0].worker_id == "w1"
    assert reg.workers[0].pid == 1
    assert reg.workers[0].state is WorkerState.READY
    assert reg.heartbeat.heartbeat_interval == 1.0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (body(url=None), "url"),
        (body(url="ftp://x"), "url"),
        (body(hive_id="other"), "hive_id"),
        (body(heartbeat_interval=0), "heartbeat_interval"),
        (body(heartbeat_interval="5"), "heartbeat_interval"),
        (body(free_memory_bytes=True), "free_memory_bytes"),
        (body(free_memory_bytes=-1), "free_memory_bytes"),
        (body(models="tiny"), "models"),
        (body(models=[3]), "models[0]"),
        (body(workers=[{"model": "tiny"}]), "workers[0].worker_id"),
        (body(workers=["w1"]), "workers[0]"),
        (body(capabilities=[]), "capabilities"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_registration("h1", raw)
    assert info.value.status == 422
    assert info.value.field == field
    assert info.value.to_json()["error"]["code"] == "validation_error"


def test_register_is_idempotent_and_heartbeats_replace() -> None:
    reg = HiveRegistry(timeout_beats=3)
    assert reg.register(parse_registration("h1", body()), now=100.0) is True
    assert reg.register(parse_registration("h1", body(models=["a", "b"])), now=101.0) is False
    (hive,) = reg.hives()
    assert hive.heartbeat.models == ["a", "b"]
    assert (hive.first_seen, hive.last_seen) == (100.0, 101.0)


def test_a_hive_is_down_after_the_missed_beats_and_up_again_with_the_next() -> None:
    reg = HiveRegistry(timeout_beats=3)
    reg.register(parse_registration("h1", body(workers=[worker("w1")])), now=0.0)
    hive = reg.get("h1")
    assert reg.state(hive, 3.0) == "up"
    assert reg.state(hive, 3.01) == "down"
    assert [w.routable for w in reg.workers(3.01)] == [False]
    assert pick_worker(reg.workers(3.01), "tiny") is None
    reg.register(parse_registration("h1", body(workers=[worker("w1")])), now=10.0)
    assert pick_worker(reg.workers(10.0), "tiny") is not None


@given(
    interval=st.floats(0.1, 60.0),
    beats=st.integers(1, 10),
    silence=st.floats(0.0, 1000.0),
)
def test_state_is_up_exactly_within_beats_times_interval(
    interval: float, beats: int, silence: float
) -> None:
    reg = HiveRegistry(timeout_beats=beats)
    reg.register(parse_registration("h", body("h", heartbeat_interval=interval)), now=0.0)
    expected = "up" if silence <= beats * interval else "down"
    assert reg.state(reg.get("h"), silence) == expected


def test_in_flight_counts_and_least_busy_choice() -> None:
    reg = HiveRegistry()
    reg.register(parse_registration("h1", body(workers=[worker("a"), worker("b")])), now=0.0)
    reg.acquire(("h1", "a"))
    assert pick_worker(reg.workers(0.0), "tiny").worker_id == "b"  # type: ignore[union-attr]
    reg.acquire(("h1", "b"))
    reg.acquire(("h1", "b"))
    assert pick_worker(reg.workers(0.0), "tiny").worker_id == "a"  # type: ignore[union-attr]
    assert reg.in_flight() == 3
    for _ in range(3):
        reg.release(("h1", "b"))
    assert reg.in_flight(("h1", "b")) == 0
    assert pick_worker(reg.workers(0.0), "other-model") is None


@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["ready", "starting", "failed"]))))
def test_pick_worker_is_the_least_busy_routable(specs: list[tuple[int, str]]) -> None:
    views = [
        WorkerView(
            "h",
            HiveState.UP,
            WorkerRecord(f"w{i}", "tiny", WorkerState(state), url=f"http://127.0.0.1:{9100 + i}"),
            n,
            None,
        )
        for i, (n, state) in enumerate(specs)
    ]
    chosen = pick_worker(views, "tiny")
    ready = [v for v in views if v.record.state == "ready"]
    if not ready:
        assert chosen is None
    else:
        assert chosen is not None and chosen.in_flight == min(v.in_flight for v in ready)


def test_unhealthy_incarnations_are_skipped_until_the_worker_restarts() -> None:
    reg = HiveRegistry()
    reg.register(parse_registration("h1", body(workers=[worker("w1", pid=1)])), now=0.0)
    (view,) = reg.workers(0.0)
    reg.set_health(view.incarnation, False)
    assert pick_worker(reg.workers(0.0), "tiny") is None
    reg.register(parse_registration("h1", body(workers=[worker("w1", pid=2)])), now=1.0)
    (view,) = reg.workers(1.0)
    assert view.healthy is None and pick_worker([view], "tiny") is view


def test_noted_workers_serve_until_the_hive_reports_them() -> None:
    reg = HiveRegistry(timeout_beats=3)
    reg.register(parse_registration("h1", body()), now=0.0)
    reg.note_worker(
        "h1", WorkerRecord("w9", "tiny", WorkerState.READY, url="http://127.0.0.1:9109"), now=0.5
    )
    assert [w.worker_id for w in reg.workers(0.5)] == ["w9"]
    # heartbeats sent before the spawn finished do not list it, or list it starting: still noted
    reg.register(parse_registration("h1", body()), now=1.0)
    assert [w.worker_id for w in reg.workers(1.0)] == ["w9"]
    reg.register(parse_registration("h1", body(workers=[worker("w9", state="starting")])), 1.5)
    assert [(w.worker_id, w.record.state) for w in reg.workers(1.5)] == [("w9", "ready")]
    # the hive reports it (now its word counts) ...
    reg.register(parse_registration("h1", body(workers=[worker("w9", state="failed")])), now=2.0)
    assert [w.record.state for w in reg.workers(2.0)] == ["failed"]
    # ... and a noted worker the hive never reports is dropped after the timeout
    reg.note_worker(
        "h1", WorkerRecord("ghost", "tiny", WorkerState.READY, url="http://127.0.0.1:9110"), now=2.0
    )
    reg.register(parse_registration("h1", body()), now=6.0)
    assert [w.worker_id for w in reg.workers(6.0)] == []


# -- placement -------------------------------------------------------------------------------------


def info(hive_id: str, **over: Any) -> HiveInfo:
    fields: dict[str, Any] = {
        "hive_id": hive_id,
        "state": "up",
        "seconds_since_seen": 1.0,
        "models": frozenset({"tiny"}),
        "local_name": "tiny",
        "free_memory_bytes": 8 << 30,
        "model_size": 1 << 30,
    }
    fields.update(over)
    return HiveInfo(**fields)


def reason(result: SpawnDecision | NoCapacity) -> str:
    assert isinstance(result, NoCapacity), result
    return result.reason


def test_place_prefers_a_hive_with_the_model_and_the_most_memory() -> None:
    hives = [info("a", free_memory_bytes=2 << 30), info("b", free_memory_bytes=4 << 30)]
    assert place(hives, "tiny") == SpawnDecision("b", "tiny", download=False)
    assert place(hives, "tiny", hive="a") == SpawnDecision("a", "tiny", download=False)


def test_place_says_why_nothing_can_serve() -> None:
    assert "no hive is registered" in reason(place([], "tiny"))
    assert "'zz' is not registered" in reason(place([info("a")], "tiny", hive="zz"))
    down = [info("a", state="down", seconds_since_seen=42), info("b", state="down")]
    assert "all 2 registered hives are down" in reason(place(down, "tiny"))
    assert "a: last heard 42 s ago" in reason(place(down, "tiny"))
    unknown = reason(place([info("a", local_name="llama")], "llama"))
    assert "no hive that is up has it (a: tiny)" in unknown
    assert "no Hugging Face repo id" in unknown
    small = reason(place([info("a", free_memory_bytes=1 << 20, model_size=2 << 30)], "tiny"))
    assert "not enough memory" in small and "it needs 2.0 GiB" in small


def test_place_downloads_a_repo_id_nobody_has() -> None:
    hives = [info("a", models=frozenset(), local_name="org/m")]
    assert place(hives, "org/m") == SpawnDecision("a", "org/m", download=True)
    no_net = [info("a", models=frozenset(), local_name="org/m", can_download=False)]
    assert "no hive can download it" in reason(place(no_net, "org/m"))

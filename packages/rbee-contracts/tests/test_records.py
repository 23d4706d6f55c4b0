"""The worker record and the heartbeat: Hypothesis round trips through jobproto.converter, and
the queen's tolerant parsing (unknown keys ignored, known keys checked)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobproto import RequestError, converter
from rbee_contracts.ids import HIVE_ID_PATTERN, NAME_PATTERN
from rbee_contracts.lifecycle import WorkerState
from rbee_contracts.records import Heartbeat, WorkerRecord, parse_heartbeat, parse_worker_record

names = st.from_regex(NAME_PATTERN, fullmatch=True).filter(
    lambda s: ".." not in s and s != "catalog.json"
)
urls = st.builds(lambda p: f"http://127.0.0.1:{p}", st.integers(1, 65535))
text = st.text(max_size=20)

records = st.builds(
    WorkerRecord,
    worker_id=names,
    model=st.text(min_size=1, max_size=20),
    state=st.sampled_from(WorkerState),
    engine=text,
    url=st.none() | urls,
    pid=st.none() | st.integers(1, 1 << 22),
    restarts=st.integers(0, 100),
    started_at=st.none() | st.just("2026-01-01T00:00:00.000Z"),
    last_exit=st.none() | st.integers(-64, 255),
    error=st.none() | text,
    device=st.none() | st.sampled_from(["cpu", "cuda", "cuda:0,1"]),
    gpus=st.lists(st.integers(0, 7), max_size=4),
    log_path=st.none() | text,
)

heartbeats = st.builds(
    Heartbeat,
    url=urls,
    hive_id=st.none() | st.from_regex(HIVE_ID_PATTERN, fullmatch=True),
    capabilities=st.dictionaries(st.text(max_size=8), st.integers() | text, max_size=3),
    workers=st.lists(records, max_size=3),
    models=st.lists(st.text(min_size=1, max_size=10), max_size=3),
    free_memory_bytes=st.none() | st.integers(0, 1 << 40),
    heartbeat_interval=st.floats(0.1, 300),
)


@given(records)
def test_worker_record_round_trips(record: WorkerRecord) -> None:
    wire = json.loads(json.dumps(converter.unstructure(record)))
    assert wire["state"] == record.state.value
    assert converter.structure(wire, WorkerRecord) == record
    assert parse_worker_record(wire) == record


@given(heartbeats)
def test_heartbeat_round_trips(beat: Heartbeat) -> None:
    wire = json.loads(json.dumps(converter.unstructure(beat)))
    assert converter.structure(wire, Heartbeat) == beat
    assert parse_heartbeat(beat.hive_id or "h1", wire) == beat


def hive_body(**over: Any) -> dict[str, Any]:
    """What a hive sends today (rbee_hive.hive.HiveService.heartbeat_body, one worker)."""
    body: dict[str, Any] = {
        "hive_id": "localhost",
        "url": "http://127.0.0.1:9000",
        "capabilities": {"cpu_cores": 4, "ram_free_bytes": 1 << 30, "gpus": []},
        "workers": [
            {
                "worker_id": "tiny-a1b2c3",
                "model": "tiny",
                "engine": "transformers",
                "url": "http://127.0.0.1:40001",
                "pid": 1234,
                "state": "ready",
                "restarts": 0,
                "started_at": "2026-01-01T00:00:00.000Z",
                "last_exit": None,
                "error": None,
                "device": None,
                "gpus": [],
                "log_path": "/tmp/logs/tiny-a1b2c3.log",
            }
        ],
        "models": ["tiny"],
        "free_memory_bytes": 1 << 30,
        "heartbeat_interval": 5.0,
    }
    body.update(over)
    return body


def test_the_hives_body_of_today_parses_and_unknown_keys_are_ignored() -> None:
    body = hive_body(from_a_newer_hive=1)
    body["workers"][0]["also_new"] = True
    beat = parse_heartbeat("localhost", body)
    assert beat.workers[0].state is WorkerState.READY
    assert beat.workers[0].log_path == "/tmp/logs/tiny-a1b2c3.log"


@pytest.mark.parametrize(
    ("hive_id", "body", "field"),
    [
        ("localhost", hive_body(url="ftp://x"), "url"),
        ("localhost", hive_body(hive_id="other"), "hive_id"),
        ("x" * 64, hive_body(hive_id=None), "hive_id"),
        ("localhost", hive_body(heartbeat_interval=0), "heartbeat_interval"),
        ("localhost", hive_body(free_memory_bytes=-1), "free_memory_bytes"),
        ("localhost", hive_body(models=[""]), "models"),
        (
            "localhost",
            hive_body(workers=[{"worker_id": "w", "model": "m", "state": "x"}]),
            "workers[0].state",
        ),
        (
            "localhost",
            hive_body(workers=[{"worker_id": "w", "model": "m", "state": "ready", "url": "nope"}]),
            "workers[0].url",
        ),
        # bounds: an interval that kept a silent hive up forever, counts and sizes
        ("localhost", hive_body(heartbeat_interval=1e300), "heartbeat_interval"),
        ("localhost", hive_body(heartbeat_interval=0.05), "heartbeat_interval"),
        ("localhost", hive_body(heartbeat_interval=300.5), "heartbeat_interval"),
        ("localhost", hive_body(models=[f"m{i}" for i in range(4097)]), "models"),
        ("localhost", hive_body(models=["m" * 257]), "models"),
        ("localhost", hive_body(url="http://127.0.0.1/" + "x" * 2048), "url"),
        (
            "localhost",
            hive_body(
                workers=[
                    {"worker_id": f"w{i}", "model": "m", "state": "starting"} for i in range(257)
                ]
            ),
            "workers",
        ),
        (
            "localhost",
            hive_body(
                workers=[{"worker_id": "w", "model": "m", "state": "failed", "error": "e" * 4097}]
            ),
            "workers[0].error",
        ),
    ],
)
def test_bad_heartbeats_are_422_naming_the_field(hive_id: str, body: Any, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_heartbeat(hive_id, body)
    assert info.value.status == 422
    assert info.value.field == field


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.9:40001",  # another machine
        "http://localhost:40001",  # the same machine by another name is still another host
        "http://127.0.0.2:40001",
    ],
)
def test_a_worker_url_off_the_hives_host_is_refused(url: str) -> None:
    body = hive_body()
    ok = {**body["workers"][0], "worker_id": "ok"}
    body["workers"] = [ok, {**ok, "worker_id": "far", "url": url}]
    with pytest.raises(RequestError) as info:
        parse_heartbeat("localhost", body)
    assert (info.value.status, info.value.field) == (422, "workers[1].url")
    assert url in info.value.message and "127.0.0.1" in info.value.message


def test_the_bounds_themselves_are_accepted() -> None:
    body = hive_body(
        heartbeat_interval=300,
        models=[f"m{i}" for i in range(4096)],
        workers=[{"worker_id": f"w{i}", "model": "m", "state": "starting"} for i in range(256)],
    )
    beat = parse_heartbeat("localhost", body)
    assert (len(beat.models), len(beat.workers)) == (4096, 256)
    assert parse_heartbeat("localhost", hive_body(heartbeat_interval=0.1)).heartbeat_interval == 0.1

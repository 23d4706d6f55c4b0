"""The renderers on their own: events in, text out (no server, no event loop)."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from jobproto import (
    Data,
    Event,
    Failed,
    Gap,
    JobEvent,
    JobState,
    Narration,
    Origin,
    Progress,
    Succeeded,
    UnknownEvent,
)
from rbee_keeper.render import (
    HumanRenderer,
    JsonRenderer,
    format_age,
    format_bytes,
    infer_summary,
    service_of,
    show_value,
)

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"


def ev(seq: int, event: Event, origin: Origin | None = None) -> JobEvent:
    return JobEvent(seq, JOB, "corr", 1_700_000_000.0, event, origin)


def human() -> tuple[HumanRenderer, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return HumanRenderer(out, err, no_color=True), out, err


def test_service_of_is_the_innermost_origin() -> None:
    assert service_of(ev(1, Data(1))) == "queen"
    relayed = Origin("hive", "j2", 4, Origin("worker", "j3", 2))
    assert service_of(ev(1, Data(1), relayed)) == "worker"
    assert service_of(ev(1, Data(1), Origin("hive", "j2", 4))) == "hive"


def test_narration_progress_and_tokens() -> None:
    renderer, out, err = human()
    worker = Origin("worker", "j3", 2)
    renderer.event(ev(1, Narration("load", "loading [weights]", "warning"), worker))
    renderer.event(ev(2, Progress("model_download", 512, 1024, "bytes")))
    renderer.event(ev(3, Progress("model_download", 1024, 1024, "bytes")))
    renderer.event(ev(4, Progress("worker_start", 2.0, None, "s", "waiting for /ready")))
    renderer.event(ev(4, Progress("load", 20.5, 300, "s"), Origin("hive", "j2", 1)))
    renderer.event(ev(5, Data({"text": "Hel", "token_ids": [1]})))
    renderer.event(ev(6, Data({"text": "lo", "token_ids": [2]})))
    renderer.event(ev(7, Data({"other": True})))
    renderer.event(ev(8, UnknownEvent("future", {"x": 1})))
    renderer.event(Gap(after=8, first_available=12))
    result = {"completion_tokens": 2, "tokens_per_s": 20.0, "ttft_ms": 50, "finish_reason": "stop"}
    renderer.succeeded("infer", result, JOB, 0.5)
    assert out.getvalue() == 'Hello\n{"other": true}\n'
    text = err.getvalue()
    assert "[worker] load: loading [weights]" in text  # markup-like text stays as it is
    assert "[queen] model_download" in text and "1.0/1.0 kB" in text
    assert "[queen] worker_start: waiting for /ready" in text and "2.0 s" in text
    assert "[hive] load" in text and "20.5 s (limit 300 s)" in text
    assert "[queen] future:" in text
    assert "3 events of this job were lost" in text
    assert "2 tokens, 20.0 tok/s, first token 50 ms, 0.50 s, finish stop" in text


def test_infer_result_without_data_events_still_prints_the_text() -> None:
    renderer, out, _ = human()
    renderer.succeeded("infer", {"text": "all at once", "completion_tokens": 3}, JOB, 1.0)
    assert out.getvalue() == "all at once\n"


def test_results_and_failures() -> None:
    renderer, out, err = human()
    renderer.succeeded(
        "model_list",
        {"models": [{"name": "tiny", "size_bytes": 3 << 30}], "hives": [], "note": None},
        JOB,
        0.1,
    )
    assert "tiny" in out.getvalue() and "3.0 GiB" in out.getvalue()
    assert "hives: none" in out.getvalue()
    renderer.ended(JobState.FAILED, JOB, "busy", "queue full")
    assert "job failed: busy: queue full" in err.getvalue()
    assert JOB in err.getvalue()


def test_infer_summary_tolerates_missing_fields() -> None:
    assert infer_summary({}, 1.234) == "1.23 s"
    assert infer_summary({"completion_tokens": 1, "model": "m"}, 2) == "1 tokens, 2.00 s, model m"


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 << 40) == "5.0 TiB"


def test_json_renderer_writes_json_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = JsonRenderer(out, err)
    renderer.event(ev(1, Narration("a", "b"), Origin("hive", "j2", 7)))
    renderer.event(Gap(after=1, first_available=3))
    renderer.event(ev(4, Succeeded({"ok": True})))
    renderer.succeeded("status", {"ok": True}, JOB, 0.25)
    renderer.ended(JobState.FAILED, JOB, "boom", "it broke")
    renderer.event(ev(5, Failed("boom", "it broke")))
    renderer.error("refused", exit_code=5, code="validation_error", field="max_tokens")
    lines: list[dict[str, Any]] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["type"] for line in lines] == [
        "narration",
        "gap",
        "succeeded",
        "result",
        "result",
        "failed",
        "error",
    ]
    assert lines[0]["origin"] == {"service": "hive", "job_id": "j2", "seq": 7}
    assert lines[0]["payload"]["action"] == "a"
    assert lines[3]["result"] == {"ok": True} and lines[3]["elapsed_s"] == 0.25
    assert lines[4]["error"] == {"code": "boom", "message": "it broke"}
    assert lines[6]["field"] == "max_tokens" and lines[6]["exit_code"] == 5
    assert "refused" in err.getvalue()


def test_a_table_starts_with_the_identifying_columns_whatever_the_key_order() -> None:
    # A service may send a record's keys in any order (a record type's field order changes):
    # the table still starts with the worker's id, model, engine, url, pid and state.
    out = io.StringIO()
    console = Console(file=out, width=200, no_color=True)
    row = {"restarts": 0, "state": "ready", "pid": 7, "url": "http://h:1", "engine": "synthetic"}
    show_value(console, {"workers": [{**row, "model": "tiny", "worker_id": "w1"}]})
    header = [w for w in out.getvalue().splitlines()[1].split() if w.isidentifier()]
    assert header == ["worker_id", "model", "engine", "url", "pid", "state", "restarts"]


def test_a_job_table_shows_the_operation_before_the_state() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, no_color=True)
    show_value(console, {"jobs": [{"state": "running", "operation": "infer", "job_id": JOB}]})
    header = [w for w in out.getvalue().splitlines()[1].split() if w.isidentifier()]
    assert header == ["job_id", "operation", "state"]


def test_status_shows_each_hive_with_its_address_and_heartbeat_age() -> None:
    renderer, out, _ = human()
    hive = {
        "hive_id": "gpu1",
        "url": "https://10.0.0.7:9000",
        "state": "up",
        "last_seen": "2024-01-01T00:00:00Z",
        "seconds_since_seen": 2.25,
        "heartbeat_interval": 5.0,
        "capabilities": {"gpus": [{"name": "H200"}]},
        "models": ["tiny"],
        "free_memory_bytes": 2 << 30,
    }
    late = dict(hive, hive_id="cpu1", url="http://10.0.0.8:9000", seconds_since_seen=300.0)
    status = {"hives": [hive, late], "workers": [], "models": {}, "in_flight": 0, "jobs": []}
    renderer.succeeded("status", status, JOB, 0.1)
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "hive_id" in line)
    assert header.split()[:6] == ["hive_id", "┃", "address", "┃", "state", "┃"]
    assert "heartbeat" in header and "capabilities" not in header
    gpu1 = next(line for line in lines if line.startswith("gpu1"))
    assert "https://10.0.0.7:9000" in gpu1 and "2.2 s ago" in gpu1 and "2.0 GiB" in gpu1
    cpu1 = next(line for line in lines if line.startswith("cpu1"))
    assert "5 min ago" in cpu1
    # --json keeps the queen's result as it is
    raw = io.StringIO()
    JsonRenderer(raw, io.StringIO()).succeeded("status", status, JOB, 0.1)
    assert json.loads(raw.getvalue())["result"] == status
    assert format_age(7200) == "2.0 h ago"


def test_status_shows_workers_in_a_table_that_fits_a_terminal() -> None:
    renderer, out, _ = human()
    worker = {
        "hive_id": "localhost",
        "worker_id": "tiny-f16394",
        "model": "tiny",
        "engine": "transformers",
        "url": "http://127.0.0.1:40151",
        "pid": 24912,
        "state": "ready",
        "restarts": 0,
        "started_at": "2026-12-02T16:38:45Z",
        "last_exit": None,
        "error": None,
        "device": None,
        "gpus": [],
        "log_path": "/home/me/.local/state/rbee/queen/hives/localhost/logs/tiny-f16394.log",
        "hive_state": "up",
        "in_flight": 0,
        "healthy": True,
    }
    status = {"hives": [], "workers": [worker], "models": {}, "in_flight": 0, "jobs": []}
    renderer.succeeded("status", status, JOB, 0.1)
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "worker_id" in line)
    assert "log_path" not in header and "started_at" not in header and "gpus" not in header
    assert "http://127.0.0.1:40151" in text  # the URL is no longer cut short
    assert max(len(line) for line in text.splitlines()) <= 160

"""Operations forwarded to a hive: relayed on the user's one job, with the hive resolved."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from jobproto import Failed, Narration, Progress, Succeeded
from jobproto.client import HTTPStatusError, JobClient, RemoteJobFailed

pytestmark = pytest.mark.anyio


async def test_forwarded_op_relays_hive_events_on_one_queen_job(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", models=("tiny", "small"))
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        job = await c.client.create("model_list", correlation_id="corr-forward-1")
        events = await fakes.collect(c.client, job.job_id)
        async with JobClient(hive.url) as hive_client:
            (hive_job,) = (await hive_client.list()).jobs
    assert {e.job_id for e in events} == {job.job_id}  # one job id for the user
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    relayed = [e for e in events if e.origin is not None]
    assert relayed and all(e.origin.service == "hive:h1" for e in relayed)
    assert {e.origin.job_id for e in relayed} == {hive_job.job_id}
    assert any(isinstance(e.event, Narration) and e.event.message == "2 models" for e in relayed)
    assert hive_job.correlation_id == "corr-forward-1"
    result = events[-1].event
    assert isinstance(result, Succeeded)
    assert [m["name"] for m in result.result["models"]] == ["tiny", "small"]
    assert hive.calls["model_list"] == 1


async def test_the_only_hive_is_used_when_none_is_named(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("solo")
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        await c.client.run("model_register", name="mine", path="/tmp/mine")
        listing = await c.client.run("worker_list")
        download_events: list[Any] = []
        await c.client.run("model_download", repo_id="org/m", on_event=download_events.append)
        deleted = await c.client.run("model_delete", name="mine", hive="solo")
    assert listing == {"workers": []}
    assert deleted["name"] == "mine"
    assert hive.calls["model_register"] == 1 and hive.calls["model_download"] == 1
    progress = [e.event for e in download_events if isinstance(e.event, Progress)]
    assert [p.current for p in progress] == [0, 50, 100]


async def test_model_import_and_a_gguf_download_are_relayed_with_their_fields(
    cluster: Any, fakes: Any
) -> None:
    a, b = fakes.Hive("a"), fakes.Hive("b")
    async with cluster([a, b]) as c:
        await a.register(c.queen_url)
        await b.register(c.queen_url)
        events: list[Any] = []
        imported = await c.client.run(
            "model_import",
            name="smol",
            path="/srv/gguf/smol.Q4_1.gguf",
            dtype="bfloat16",
            hive="b",
            on_event=events.append,
        )
        await c.client.run(
            "model_download",
            repo_id="org/smol-gguf",
            file="sub/smol.Q4_1.gguf",
            dtype="float16",
            hive="a",
        )
        with pytest.raises(RemoteJobFailed) as ambiguous:
            await c.client.run("model_import", name="x", path="/srv/gguf/x.gguf")
    assert (imported["name"], imported["source"]) == ("smol", "gguf")
    assert imported["source_file"] == "smol.Q4_1.gguf"
    (params,) = b.imports
    assert (params.name, params.path, params.dtype) == (
        "smol",
        "/srv/gguf/smol.Q4_1.gguf",
        "bfloat16",
    )
    assert a.calls["model_import"] == 0
    (download,) = a.downloads
    assert (download.repo_id, download.file, download.dtype) == (
        "org/smol-gguf",
        "sub/smol.Q4_1.gguf",
        "float16",
    )
    # the hive's narration and progress, relayed on the one job
    relayed = [e for e in events if e.origin is not None and e.origin.service == "hive:b"]
    assert any(isinstance(e.event, Narration) and e.event.action == "import" for e in relayed)
    assert [e.event.current for e in relayed if isinstance(e.event, Progress)] == [0, 2, 4]
    assert ambiguous.value.code == "hive_required"


async def test_two_hives_and_none_named_lists_every_hive(cluster: Any, fakes: Any) -> None:
    a, b = fakes.Hive("a", models=("tiny",)), fakes.Hive("b", models=("big", "tiny"))
    async with cluster([a, b]) as c:
        await a.add_worker("wa")
        await b.add_worker("wb", "big")
        await a.register(c.queen_url)
        await b.register(c.queen_url)
        workers = await c.client.run("worker_list")
        models = await c.client.run("model_list")
        with pytest.raises(RemoteJobFailed) as ambiguous:
            await c.client.run("model_delete", name="tiny")  # not a listing: name the hive
        with pytest.raises(RemoteJobFailed) as unknown:
            await c.client.run("worker_list", hive="zz")
        only_b = await c.client.run("worker_list", hive="b")
    assert [(w["hive_id"], w["worker_id"], w["hive_state"]) for w in workers["workers"]] == [
        ("a", "wa", "up"),
        ("b", "wb", "up"),
    ]
    assert [(m["hive_id"], m["name"]) for m in models["models"]] == [
        ("a", "tiny"),
        ("b", "big"),
        ("b", "tiny"),
    ]
    assert workers["skipped"] == [] and models["skipped"] == []
    assert [w["worker_id"] for w in only_b["workers"]] == ["wb"]
    assert ambiguous.value.code == "hive_required"
    assert "2 hives are registered (a (up), b (up)): name one with `hive`" in (
        ambiguous.value.message
    )
    assert unknown.value.code == "unknown_hive"
    assert "'zz' is not registered (registered: a, b)" in unknown.value.message
    assert (a.calls["worker_list"], b.calls["worker_list"]) == (1, 2)


async def test_listing_every_hive_skips_a_down_one_and_says_so(cluster: Any, fakes: Any) -> None:
    # quiet's 0.1 s beat makes it down 0.1 s after its one registration; loud's 2 s beat keeps it
    # up through the test even when a busy machine delays its beats (0.1 s left no margin)
    quiet, loud = fakes.Hive("quiet", heartbeat=0.1), fakes.Hive("loud", heartbeat=2.0)
    async with cluster([quiet, loud], hive_timeout_beats=1) as c:
        await quiet.add_worker("wq")
        await loud.add_worker("wl")
        await quiet.register(c.queen_url)  # ... and never again
        async with anyio.create_task_group() as tg:
            await tg.start(loud.beat, c.queen_url)
            await anyio.sleep(0.3)  # > 1 beat of 0.1 s
            job = await c.client.create("worker_list")
            events = await fakes.collect(c.client, job.job_id)
            tg.cancel_scope.cancel()
    narrated = [e.event.message for e in events if isinstance(e.event, Narration)]
    assert any(m.startswith("hive quiet is down") and "skipped" in m for m in narrated)
    result = events[-1].event
    assert isinstance(result, Succeeded)
    assert [w["worker_id"] for w in result.result["workers"]] == ["wl"]
    assert result.result["skipped"] == ["quiet"]
    assert quiet.calls["worker_list"] == 0


async def test_no_hive_registered_fails_no_hive(cluster: Any) -> None:
    async with cluster() as c:
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("model_list")
    assert info.value.code == "no_hive"


async def test_hive_failures_keep_their_code(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        job = await c.client.create("model_delete", name="nope")
        events = await fakes.collect(c.client, job.job_id)
    failed = events[-1].event
    assert isinstance(failed, Failed)
    assert failed.code == "model_not_found"
    assert failed.message == "hive:h1: no model 'nope'"


async def test_spawn_and_stop_through_the_queen_update_its_picture(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1", spawn_delay=0.0)
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        record = await c.client.run("worker_spawn", model="tiny", worker_id="w7")
        workers = (await c.client.run("status"))["workers"]
        # no hive named: the queen knows which hive reported w7
        await c.client.run("worker_stop", worker_id="w7")
        after = (await c.client.run("status"))["workers"]
    assert record["worker_id"] == "w7" and record["state"] == "ready"
    assert [(w["worker_id"], w["hive_id"]) for w in workers] == [("w7", "h1")]
    assert after == []
    assert hive.spawned[0].worker_id == "w7"


async def test_parameters_are_validated_before_a_job_exists(cluster: Any) -> None:
    async with cluster() as c:
        with pytest.raises(HTTPStatusError) as neither:
            await c.client.create("infer", model="tiny")
        with pytest.raises(HTTPStatusError) as both:
            await c.client.create(
                "infer", model="tiny", prompt="x", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(HTTPStatusError) as bad_hive:
            await c.client.create("worker_list", hive="../etc")
        with pytest.raises(HTTPStatusError) as no_model:
            await c.client.create("worker_spawn")
    for err in (neither, both, bad_hive, no_model):
        assert err.value.status == 422
    assert "'prompt' must be given, or 'messages' (exactly one of them)" in neither.value.message
    assert (neither.value.field, both.value.field) == ("prompt", "messages")
    assert bad_hive.value.field == "hive"
    assert no_model.value.field == "model"


async def test_status_and_hive_list(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", models=("tiny", "big"))
    async with cluster([hive]) as c:
        await hive.add_worker("w1")
        await hive.register(c.queen_url)
        status = await c.client.run("status")
        hives = await c.client.run("hive_list")
        one = await c.client.run("hive_status", hive="h1")
    assert status["models"] == {"tiny": ["h1"], "big": ["h1"]}
    assert [w["worker_id"] for w in status["workers"]] == ["w1"]
    assert status["in_flight"] == 0
    assert status["jobs"] == []  # nothing else in flight, and the status job is not news
    assert [h["hive_id"] for h in hives["hives"]] == ["h1"]
    assert one["state"] == "up" and one["process"] is None
    assert [w["worker_id"] for w in one["workers"]] == ["w1"]

"""Downloads through huggingface_hub's ``snapshot_download`` from a FAKE hub on loopback
(``rbee_hive.testing.fake_hub``): progress, an interrupted file resumed with a Range request,
files kept across attempts, a single flight for concurrent requests, cancellation, and errors
that say what they tried to reach.

Where a test needs a download still running when it acts, the hub holds a file's body until the
test has seen what it waits for (``hub.hold``/``hub.release``): no test guesses a duration."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobproto import JobEvent, Narration, Progress
from jobproto.client import RemoteJobFailed
from rbee_hive.settings import HiveSettings

Settings = Callable[..., HiveSettings]

FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 256}',
    "tokenizer.json": b'{"version": "1.0"}' + b" " * 3000,
    "model.safetensors": os.urandom(300_000),
}
REPO = "rbee-test/tiny-llama"


def check_files(model_dir: Path) -> None:
    for name, data in FILES.items():
        assert (
            hashlib.sha256((model_dir / name).read_bytes()).digest()
            == hashlib.sha256(data).digest()
        )


@pytest.mark.anyio
async def test_download_with_progress(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    async with fake_hub() as (hub_url, hub):
        sha = hub.add(REPO, FILES)
        settings = make_settings(hf_endpoint=hub_url)
        async with start_hive(settings) as h:
            # The weights stay on the wire until a progress sample of the running download has
            # reached the job: then they flow.
            hub.hold("model.safetensors")

            def release_on_progress(event: JobEvent) -> None:
                if isinstance(event.event, Progress):
                    hub.release()

            result, events = await kit.run_job(
                h.client, "model_download", release_on_progress, repo_id=REPO
            )
            assert result == {
                "name": "tiny-llama",
                "size_bytes": sum(len(d) for d in FILES.values()),
                "source": "huggingface",
                "path": str(settings.models_dir / "tiny-llama"),
                "revision": sha,
                "repo_id": REPO,
                "source_file": None,  # a GGUF import's only
                "sha256": None,
            }
            check_files(settings.models_dir / "tiny-llama")
            listed, _ = await kit.run_job(h.client, "model_list")
            assert listed["models"] == [result]

            total = sum(len(d) for d in FILES.values())
            steps = kit.progresses(events, "model_download")
            assert steps and all(p.unit == "B" and p.total == total for p in steps)
            assert [p.current for p in steps] == sorted(p.current for p in steps)
            assert steps[-1].current == total and "done" in steps[-1].message
            assert any("/s" in p.message and "ETA" in p.message for p in steps[:-1])
            said = " | ".join(n.message for n in kit.narrations(events, "model_download"))
            assert f"downloading {REPO}@{sha[:12]} (3 files)" in said

            # Downloaded into the hive's own cache, never the user's.
            assert not (Path(os.environ["HF_HOME"]) / "hub").exists()

            # A second download finds everything in place: no file is fetched again.
            before = len(hub.file_gets("model.safetensors"))
            again, _ = await kit.run_job(h.client, "model_download", repo_id=REPO)
            assert again == result
            assert len(hub.file_gets("model.safetensors")) == before

            # A downloaded model is deleted with its files.
            await kit.run_job(h.client, "model_delete", name="tiny-llama")
            assert not (settings.models_dir / "tiny-llama").exists()


@pytest.mark.anyio
async def test_an_interrupted_file_resumes_with_a_range_request(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any, caplog: Any
) -> None:
    # huggingface_hub writes (and so can resume from) whole 10 MiB chunks: a 12 MiB file cut
    # after 11 MiB resumes from 10 MiB.
    chunk = 10 * 1024 * 1024
    big = {**FILES, "model.safetensors": os.urandom(12 * 1024 * 1024)}
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, big)
        hub.cut_once["model.safetensors"] = 11 * 1024 * 1024  # then the connection is dropped
        settings = make_settings(hf_endpoint=hub_url)
        async with start_hive(settings) as h:
            result, events = await kit.run_job(
                h.client, "model_download", repo_id=REPO, name="tiny"
            )
        assert hub.file_gets("model.safetensors") == [None, f"bytes={chunk}-"]
        data = (settings.models_dir / "tiny" / "model.safetensors").read_bytes()
        assert data == big["model.safetensors"]
        total = sum(len(d) for d in big.values())
        assert result["size_bytes"] == total
        # The resumed bytes are not counted twice.
        assert all(p.current <= total for p in kit.progresses(events, "model_download"))


@pytest.mark.anyio
async def test_a_failed_download_keeps_completed_files_for_the_next_attempt(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        hub.fail.add("model.safetensors")
        settings = make_settings(hf_endpoint=hub_url)
        target = settings.models_dir / "tiny"
        # A partial file left by a hive that was killed mid-download (never reusable: unique name).
        stale = (
            target / ".cache" / "huggingface" / "download" / "model.safetensors.abc.x.incomplete"
        )
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"junk")
        async with start_hive(settings) as h:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, name="tiny")
            assert exc.value.code == "download_failed"
            # The error says what it tried to reach: the hub, the repository, the file.
            assert f"{REPO}@main from {hub_url} failed" in exc.value.message
            assert f"{hub_url}/{REPO}/resolve/" in exc.value.message
            assert "model.safetensors" in exc.value.message
            assert not stale.exists()
            assert (target / "config.json").read_bytes() == FILES["config.json"]
            # An unfinished download is not a model.
            listed, _ = await kit.run_job(h.client, "model_list")
            assert listed["models"] == []
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "worker_spawn", model="tiny")
            assert exc.value.code == "model_not_found"

            hub.fail.clear()
            await kit.run_job(h.client, "model_download", repo_id=REPO, name="tiny")
        check_files(target)
        assert len(hub.file_gets("config.json")) == 1  # kept from the first attempt
        assert len(hub.file_gets("tokenizer.json")) == 1
        assert not list(target.rglob("*.incomplete"))


@pytest.mark.anyio
async def test_concurrent_downloads_of_one_model_share_one(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        # The download stays in flight until one of the two jobs has joined the other's.
        hub.hold("model.safetensors")
        settings = make_settings(hf_endpoint=hub_url)
        async with start_hive(settings) as h:
            results: list[Any] = []
            joined: list[Any] = []

            def release_on_join(event: JobEvent) -> None:
                if isinstance(event.event, Narration) and "joining" in event.event.message:
                    hub.release()

            async def download() -> None:
                result, events = await kit.run_job(
                    h.client, "model_download", release_on_join, repo_id=REPO
                )
                results.append(result)
                joined.append(events)

            async with anyio.create_task_group() as tg:
                tg.start_soon(download)
                tg.start_soon(download)
        assert len(results) == 2 and results[0] == results[1]
        for name in FILES:
            assert len(hub.file_gets(name)) == 1, name
        infos = [p for m, p, _ in hub.requests if "/revision/" in p]
        assert len(infos) == 1
        # Both jobs saw the download's progress.
        assert all(kit.progresses(events, "model_download") for events in joined)
        assert any(
            "joining the running download" in n.message
            for events in joined
            for n in kit.narrations(events, "model_download")
        )


@pytest.mark.anyio
async def test_cancelling_the_only_download_job_stops_the_download(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        hub.hold("model.safetensors")  # the download cannot finish before the cancel
        settings = make_settings(hf_endpoint=hub_url)
        async with start_hive(settings) as h:
            created = await h.client.create("model_download", repo_id=REPO, name="tiny")
            async for item in h.client.events(created.job_id):
                if getattr(item.event, "action", None) == "model_download":
                    await h.client.cancel(created.job_id)
                if getattr(item, "terminal", False):
                    break
            assert (await h.client.status(created.job_id)).state == "cancelled"
            # The download's thread stops at its next chunk and removes its partial file.
            hub.release()
            await kit.wait_for(lambda: not h.hive.catalog._flights, 30.0)
            await kit.wait_for(
                lambda: not list((settings.models_dir / "tiny").rglob("*.incomplete")), 30.0
            )
            # Nothing is left half-done: the next download completes.
            await kit.run_job(h.client, "model_download", repo_id=REPO, name="tiny")
        check_files(settings.models_dir / "tiny")


@pytest.mark.anyio
async def test_a_hub_that_does_not_answer_is_named_in_the_error(
    start_hive: Any, hf_isolated: None, make_settings: Settings, kit: Any
) -> None:
    with socket.socket() as sock:  # a port nothing listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with start_hive(make_settings(hf_endpoint=endpoint)) as h:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, name="tiny")
    assert exc.value.code == "download_failed"
    assert f"downloading {REPO}@main from {endpoint} failed" in exc.value.message
    assert f"({endpoint}/api/models/{REPO}/revision/main" in exc.value.message
    assert "ConnectError" in exc.value.message


@pytest.mark.anyio
async def test_hub_errors_have_codes(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any
) -> None:
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        async with start_hive(make_settings(hf_endpoint=hub_url)) as h:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id="rbee-test/nothing")
            assert exc.value.code == "repo_not_found"
            assert f"'rbee-test/nothing' on {hub_url}" in exc.value.message
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, revision="v9")
            assert exc.value.code == "revision_not_found"
            # A name already taken by a registered model is not overwritten.
            other = h.hive.settings.model_roots[-1] / "other"
            other.mkdir(parents=True)
            await kit.run_job(h.client, "model_register", name="taken", path=str(other))
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, name="taken")
            assert exc.value.code == "model_exists"
            # So is a directory someone put into the models directory by hand.
            handmade = h.hive.settings.models_dir / "handmade"
            handmade.mkdir()
            (handmade / "weights.bin").write_bytes(b"mine")
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, name="handmade")
            assert exc.value.code == "model_exists"
            assert (handmade / "weights.bin").read_bytes() == b"mine"
    assert json.loads((h.hive.settings.models_dir / "catalog.json").read_text())[
        "models"
    ].keys() == {"taken"}


@pytest.mark.anyio
async def test_hive_shutdown_does_not_wait_for_a_stalled_download(
    start_hive: Any,
    fake_hub: Any,
    make_settings: Settings,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rbee_hive.models

    monkeypatch.setattr(rbee_hive.models, "SHUTDOWN_GRACE", 0.3)
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        hub.hold("model.safetensors")  # the hub answers, then says nothing until released
        settings = make_settings(hf_endpoint=hub_url)
        # A hive that waited for the download would wait for as long as the hub holds the file:
        # until this deadline, which only such a hive reaches.
        with anyio.fail_after(30):
            async with start_hive(settings) as h:
                created = await h.client.create("model_download", repo_id=REPO, name="tiny")
                async for item in h.client.events(created.job_id):
                    if getattr(item.event, "message", "").startswith("downloading"):
                        break
        hub.release()
        # The abandoned thread stops at its next chunk and cleans up after itself.
        await kit.wait_for(
            lambda: not list((settings.models_dir / "tiny").rglob("*.incomplete")), 30.0
        )
    catalog = settings.models_dir / "catalog.json"
    assert not catalog.exists() or "tiny" not in json.loads(catalog.read_text())["models"]


@pytest.mark.anyio
async def test_an_error_outside_the_hub_requests_names_the_configured_hub(
    start_hive: Any,
    fake_hub: Any,
    make_settings: Settings,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rbee_hive.downloads

    def broken(download_dir: Path) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(rbee_hive.downloads, "remove_stale_partials", broken)
    async with fake_hub() as (hub_url, hub):
        hub.add(REPO, FILES)
        async with start_hive(make_settings(hf_endpoint=hub_url)) as h:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, name="tiny")
    assert exc.value.code == "download_failed"
    assert f"downloading {REPO}@main from {hub_url} failed" in exc.value.message
    assert "OSError: disk on fire" in exc.value.message


@pytest.mark.anyio
async def test_the_fake_hubs_control_takes_only_a_bounded_object_of_known_keys(
    fake_hub: Any,
) -> None:
    import httpx

    from rbee_hive.testing.fake_hub import MAX_CONTROL_BYTES

    async with fake_hub() as (hub_url, hub), httpx.AsyncClient(base_url=hub_url) as http:
        answer = await http.post("/_control", json={"cut_once": {"a.bin": 5}})
        assert answer.status_code == 200 and hub.cut_once == {"a.bin": 5}
        refused = [
            b"[]",
            b"not json",
            b'{"fail": []}',
            b'{"cut_once": []}',
            b'{"cut_once": {"a.bin": "5"}}',
            b'{"cut_once": {"a.bin": -1}}',
            b'{"cut_once": {}, "pad": "' + b"x" * MAX_CONTROL_BYTES + b'"}',
        ]
        for body in refused:
            answer = await http.post("/_control", content=body)
            assert answer.status_code == 400, body[:40]
            assert answer.json()["error"]["code"] == "invalid_control", body[:40]
        assert hub.cut_once == {"a.bin": 5}

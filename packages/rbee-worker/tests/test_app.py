"""The worker app served by real uvicorn on a loopback port, driven with ``JobClient``."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from jobproto import Cancelled, Data, JobEvent, Narration
from jobproto.client import HTTPStatusError, JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_worker.app import create_app
from rbee_worker.engines.transformers import TransformersEngine
from rbee_worker.settings import WorkerSettings


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[tuple[JobClient, httpx.AsyncClient]]:
    """Serve ``app`` on a loopback port; a job client and a plain HTTP client for it."""
    async with serving(app) as url, JobClient(url) as client:
        async with httpx.AsyncClient(base_url=url) as http:
            yield client, http


async def wait_ready(http: httpx.AsyncClient) -> dict[str, Any]:
    with anyio.fail_after(20):
        while (response := await http.get("/ready")).status_code != 200:
            await anyio.sleep(0.02)
    body: dict[str, Any] = response.json()
    return body


async def wait_for(http: httpx.AsyncClient, **expected: Any) -> None:
    """Poll /v1/worker until it shows ``expected``."""
    with anyio.fail_after(10):
        while True:
            info = (await http.get("/v1/worker")).json()
            if all(info[k] == v for k, v in expected.items()):
                return
            await anyio.sleep(0.01)


def synthetic(**engine_args: str) -> WorkerSettings:
    return WorkerSettings(engine="synthetic", worker_id="w-test", engine_args=engine_args)


@pytest.mark.anyio
async def test_infer_end_to_end(tiny_model: Path) -> None:
    settings = WorkerSettings(model=str(tiny_model), engine="transformers", device="cpu")
    events: list[Any] = []
    async with served(create_app(settings)) as (client, http):
        ready = await wait_ready(http)
        assert ready["ready"] is True and ready["engine"] == "transformers"
        assert ready["model"] == "tiny" and ready["load_seconds"] >= 0
        result = await client.run(
            "infer", prompt="The bees", max_tokens=16, temperature=0, on_event=events.append
        )
        chat = await client.run(
            "infer",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=4,
            temperature=0,
        )
        info = (await http.get("/v1/worker")).json()
    data = [e.event.payload for e in events if isinstance(e.event, Data)]
    assert data, "tokens arrive as data events"
    assert all(set(d) == {"text", "token_ids"} for d in data)
    assert "".join(d["text"] for d in data) == result["text"]
    assert sum(len(d["token_ids"]) for d in data) == result["completion_tokens"]
    assert set(result) == {
        "text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_s",
        "model",
        "engine",
    }
    assert result["finish_reason"] in {"stop", "length"}
    assert result["model"] == "tiny" and result["engine"] == "transformers"
    assert result["prompt_tokens"] > 1 and result["ttft_ms"] > 0 and result["tokens_per_s"] > 0
    assert chat["completion_tokens"] >= 1 and chat["prompt_tokens"] > result["prompt_tokens"] - 5
    assert info == {
        "worker_id": settings.worker_id,
        "model": "tiny",
        "engine": "transformers",
        "state": "ready",
        "in_flight": 0,
        "queued": 0,
        "max_concurrency": 1,
        "max_queue": 16,
    }


@pytest.mark.anyio
async def test_ready_is_503_while_loading_then_200() -> None:
    # The load begins when the test says (as the command does once it listens), so the checks
    # of "loading" never race the load.
    app = create_app(synthetic(load_seconds="0.5"), load_on_startup=False)
    async with served(app) as (client, http):
        loading = await http.get("/ready")
        assert loading.status_code == 503
        assert loading.json() == {"ready": False, "state": "loading", "error": None}
        assert (await http.get("/health")).json() == {"status": "ok"}
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run("infer", prompt="hi", max_tokens=3)
        assert failed.value.code == "model_not_ready"
        app.state.runtime.begin_loading()
        ready = await wait_ready(http)
        assert ready == {"ready": True, "model": "synthetic", "engine": "synthetic",
                         "load_seconds": ready["load_seconds"]}  # fmt: skip
        assert ready["load_seconds"] >= 0.45
        result = await client.run("infer", prompt="hi", max_tokens=3)
        assert result["engine"] == "synthetic" and result["completion_tokens"] == 3


@pytest.mark.anyio
async def test_with_a_token_every_path_but_health_needs_it() -> None:
    token = "rbee_h_" + "E" * 43
    settings = WorkerSettings(engine="synthetic", worker_id="w-auth", token=token)
    assert token not in repr(settings)
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/health")).status_code == 200
        for path in ("/ready", "/v1/worker", "/v1/jobs", "/openapi.json"):
            for headers in ({}, {"Authorization": "Bearer " + "E" * 50}):
                refused = await http.get(path, headers=headers)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"]["code"] == "unauthorized"
        bearer = {"Authorization": f"Bearer {token}"}
        posted = await http.post("/v1/jobs", json={"operation": "infer", "prompt": "hi"})
        assert posted.status_code == 401
        with anyio.fail_after(20):
            while (await http.get("/ready", headers=bearer)).status_code != 200:
                await anyio.sleep(0.02)
        rebound = await http.get("/ready", headers={**bearer, "Host": "evil.example"})
        assert rebound.status_code == 421
        async with JobClient(url, token=token) as client:
            result = await client.run("infer", prompt="hi", max_tokens=3)
        assert result["completion_tokens"] == 3


@pytest.mark.anyio
async def test_a_failed_load_is_reported(tmp_path: Path) -> None:
    settings = WorkerSettings(model=str(tmp_path / "missing"), engine="transformers")
    async with served(create_app(settings)) as (client, http):
        with anyio.fail_after(20):
            while (response := await http.get("/ready")).json()["state"] == "loading":
                await anyio.sleep(0.02)
        assert response.status_code == 503
        assert response.json()["state"] == "failed" and response.json()["error"]
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run("infer", prompt="hi")
        assert failed.value.code == "model_not_ready"
        assert "failed to load" in failed.value.message
        assert (await http.get("/v1/worker")).json()["state"] == "failed"


@pytest.mark.anyio
async def test_busy_when_the_queue_is_full() -> None:
    settings = WorkerSettings(
        engine="synthetic",
        max_concurrency=1,
        max_queue=1,
        engine_args={"tokens_per_second": "20"},
    )
    narrations: list[str] = []
    async with served(create_app(settings)) as (client, http):
        await wait_ready(http)
        running = await client.create("infer", prompt="a", max_tokens=1000)
        waiting = await client.create("infer", prompt="b", max_tokens=1000)
        first_token = anyio.Event()

        async def follow(job_id: str) -> None:
            async with aclosing(client.events(job_id)) as events:
                async for item in events:
                    event = item.event if isinstance(item, JobEvent) else None
                    if isinstance(event, Data):
                        first_token.set()
                    if isinstance(event, Narration):
                        narrations.append(event.message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, running.job_id)
            await first_token.wait()
            tg.start_soon(follow, waiting.job_id)
            await wait_for(http, in_flight=1, queued=1)
            with pytest.raises(RemoteJobFailed) as refused:
                await client.run("infer", prompt="c", max_tokens=5)
            assert refused.value.code == "busy"
            assert "max_queue 1" in refused.value.message
            await client.cancel(running.job_id)
            await wait_for(http, in_flight=1, queued=0)  # the waiting one got the slot
            await client.cancel(waiting.job_id)
        await wait_for(http, in_flight=0, queued=0)
        assert (await client.status(running.job_id)).state == "cancelled"
    assert any("queued with 0 request(s) ahead" in n for n in narrations)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ({}, "prompt"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "top_k": -1}, "top_k"),
    ({"prompt": "hi", "seed": -1}, "seed"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "hi", "n": 2}, "n"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
]


@pytest.mark.anyio
async def test_invalid_requests_are_422_with_the_field() -> None:
    # One server for every case: each is refused before any job exists.
    async with served(create_app(synthetic())) as (client, _):
        for fields, field in INVALID:
            with pytest.raises(HTTPStatusError) as refused:
                await client.create("infer", fields)
            error = refused.value
            assert (error.status, error.code) == (422, "validation_error"), fields
            assert error.field == field, fields


@pytest.mark.anyio
async def test_max_tokens_over_the_model_context_fails() -> None:
    async with served(create_app(synthetic(max_model_len="64"))) as (client, http):
        await wait_ready(http)
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run("infer", prompt="hi", max_tokens=65)
    assert failed.value.code == "invalid_request"


class FragileEngine(TransformersEngine):
    """The real engine, whose model raises on its third forward pass after loading."""

    def _load(self) -> None:
        super()._load()
        model, calls = self._model, 0

        def forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
            return model(*args, **kwargs)

        self._model = forward


@pytest.mark.anyio
async def test_engine_death_fails_jobs_and_health(tiny_model: Path) -> None:
    settings = WorkerSettings(model=str(tiny_model), engine="transformers")
    engine = FragileEngine(str(tiny_model), device="cpu")
    async with served(create_app(settings, engine=engine)) as (client, http):
        await wait_ready(http)
        assert (await http.get("/health")).status_code == 200
        with pytest.raises(RemoteJobFailed) as died:
            await client.run("infer", prompt="hi", max_tokens=10)
        assert died.value.code == "engine_dead"
        assert "device-side assert" in died.value.message
        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert "device-side assert" in health.json()["reason"]
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["state"] == "failed"
        with pytest.raises(RemoteJobFailed) as again:
            await client.run("infer", prompt="hi", max_tokens=10)
        assert again.value.code == "engine_dead"


@pytest.mark.anyio
async def test_cancelling_the_job_stops_generation(tiny_model: Path) -> None:
    engine = TransformersEngine(str(tiny_model), device="cpu")
    settings = WorkerSettings(model=str(tiny_model), engine="transformers")
    async with served(create_app(settings, engine=engine)) as (client, http):
        await wait_ready(http)
        job = await client.create("infer", prompt="Tell me a story", max_tokens=480, temperature=0)
        tokens, terminal = 0, None
        steps_at_cancel = steps_after = -1
        async with aclosing(client.events(job.job_id)) as events:
            async for item in events:
                assert isinstance(item, JobEvent)
                if isinstance(item.event, Data) and steps_at_cancel < 0:
                    tokens += len(item.event.payload["token_ids"])
                    if tokens >= 5:
                        steps_at_cancel = engine.steps
                        status = await client.cancel(job.job_id)
                        steps_after = engine.steps
                        # DELETE answers once the job ended: the generation was cut short.
                        assert status.state == "cancelled"
                if item.terminal:
                    terminal = item.event
        # Cut short (a finished generation would end Succeeded). How many steps the decode
        # thread makes while DELETE travels depends on the machine's load: not asserted.
        assert isinstance(terminal, Cancelled)
        assert 5 <= steps_at_cancel <= steps_after
        # The handler, and with it the decode thread, had stopped when DELETE answered: no step
        # after that (a thread still running would show within these 0.2 s).
        await anyio.sleep(0.2)
        assert engine.steps == steps_after
        await wait_for(http, in_flight=0)


def fake_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine is ``Box`` (FQDN ``box.lan``) at 192.168.1.10."""

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        if host not in ("Box", "box.lan"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.10", 0))]

    monkeypatch.setattr(socket, "gethostname", lambda: "Box")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "box.lan")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.anyio
async def test_a_worker_bound_to_every_interface_answers_to_this_machines_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # its hive names it by this machine's name in its URL (the queen calls it by that name)
    with monkeypatch.context() as patch:
        fake_machine(patch)
        app = create_app(WorkerSettings(engine="synthetic", host="0.0.0.0"), load_on_startup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        for host in ("box", "box.lan", "192.168.1.10", "127.0.0.1"):
            assert (await http.get(f"http://{host}:1/health")).status_code == 200, host
        assert (await http.get("http://evil.example:1/health")).status_code == 421


@pytest.mark.anyio
async def test_a_worker_refuses_its_hives_token_and_another_workers() -> None:
    from rbee_contracts.auth import bearer, hive_token, worker_token

    hive = hive_token(bytes(range(32)), "h1")
    own = worker_token(hive, "w1")
    settings = WorkerSettings(engine="synthetic", worker_id="w1", token=own)
    app = create_app(settings, load_on_startup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for token in (hive, worker_token(hive, "w2")):
            assert (await http.get("/v1/jobs", headers=bearer(token))).status_code == 401
        assert (await http.get("/v1/jobs", headers=bearer(own))).status_code == 200

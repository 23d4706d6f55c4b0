"""The OpenAI-compatible API in front of a REAL worker (``rbee_worker``'s app with its synthetic
engine, served in-process; a FAKE hive reports it): its text, stop strings and seeds through the
official client, the engine's refusal of penalties as a 400, and an abandoned stream stopping the
worker's generation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import openai
import pytest

from jobproto import JobState
from jobproto.testing import serving
from rbee_contracts.lifecycle import WorkerState
from rbee_contracts.records import WorkerRecord
from rbee_worker.app import create_app as create_worker_app
from rbee_worker.engines.synthetic import SYNTHETIC_TOKENS
from rbee_worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio


class RealWorker:
    """A real worker as the FAKE hive reports it (``FakeHive.workers`` holds it)."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app
        self.stopped = anyio.Event()

    def record(self) -> WorkerRecord:
        return WorkerRecord(
            worker_id="syn",
            model="tiny",
            engine="synthetic",
            url=self.url,
            pid=4242,
            state=WorkerState.READY,
            started_at="2026-01-01T00:00:00.000Z",
        )


@asynccontextmanager
async def synthetic(
    cluster: Any, fakes: Any, rate: float = 0.0, **settings: Any
) -> AsyncIterator[tuple[Any, RealWorker]]:
    app = create_worker_app(
        WorkerSettings(
            engine="synthetic",
            model_name="tiny",
            engine_args={"tokens_per_second": f"{rate:g}"},
        )
    )
    hive = fakes.Hive("h1")
    async with serving(app) as url, cluster([hive], **settings) as c:
        worker = RealWorker(url, app)
        hive.workers["syn"] = worker
        await hive.register(c.queen_url)
        yield c, worker


def text_of(n: int) -> str:
    return "".join(SYNTHETIC_TOKENS[i % len(SYNTHETIC_TOKENS)] for i in range(n))


async def test_chat_and_text_through_a_real_worker(cluster: Any, fakes: Any) -> None:
    async with synthetic(cluster, fakes) as (c, _):
        api = openai.AsyncOpenAI(base_url=f"{c.queen_url}/v1", api_key="unused", max_retries=0)
        async with api:
            chat = await api.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=5,
                n=2,
                seed=3,
            )
            stopped = await api.completions.create(
                model="tiny", prompt="hi", max_tokens=50, stop=[" fox"]
            )
            stream = await api.completions.create(
                model="tiny", prompt="hi", max_tokens=40, stream=True
            )
            streamed = "".join([ch.choices[0].text async for ch in stream if ch.choices])
    assert [ch.message.content for ch in chat.choices] == [text_of(5)] * 2
    assert [ch.finish_reason for ch in chat.choices] == ["length", "length"]
    assert chat.usage is not None and chat.usage.completion_tokens == 10
    assert chat.usage.prompt_tokens > 0
    assert stopped.choices[0].text == "The quick brown"
    assert stopped.choices[0].finish_reason == "stop"
    assert streamed == text_of(40)


async def test_a_penalty_the_engine_cannot_apply_is_a_400(cluster: Any, fakes: Any) -> None:
    async with synthetic(cluster, fakes) as (c, _):
        api = openai.AsyncOpenAI(base_url=f"{c.queen_url}/v1", api_key="unused", max_retries=0)
        async with api:
            with pytest.raises(openai.BadRequestError) as info:
                await api.completions.create(
                    model="tiny", prompt="hi", frequency_penalty=0.5, stream=True
                )
            # a zero penalty asks for nothing: accepted
            done = await api.completions.create(
                model="tiny", prompt="hi", presence_penalty=0, max_tokens=2
            )
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "invalid_request"
    assert "penalties" in info.value.body["message"]
    assert done.choices[0].text == text_of(2)


async def test_an_abandoned_stream_stops_the_generation(cluster: Any, fakes: Any) -> None:
    # 20 tokens a second for 4000 tokens: only a cancel ends it within the test
    async with synthetic(cluster, fakes, rate=20.0, abandon_grace=0.3) as (c, worker):
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 4000, "stream": True}
        async with httpx.AsyncClient(base_url=c.queen_url) as http:
            async with http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200, await response.aread()
                job_id = response.headers["x-rbee-job-id"]
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # the first chunk: then the client goes
        queen_job = c.app.state.jobs.handles[job_id].job
        worker_jobs = worker.app.state.jobs.handles

        def ended() -> bool:
            return queen_job.finished and all(h.job.finished for h in worker_jobs.values())

        with anyio.fail_after(10):
            while not ended():
                await anyio.sleep(0.05)
    assert queen_job.state is JobState.CANCELLED
    assert queen_job.cancel_reason is not None and "abandoned" in queen_job.cancel_reason
    (worker_job,) = [h.job for h in worker_jobs.values()]
    assert worker_job.state is JobState.CANCELLED

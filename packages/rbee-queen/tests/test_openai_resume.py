"""A streamed completion cut mid-way: resumed from its completion route (``starting_after``,
``Last-Event-ID``) or from its jobproto stream, nothing repeated or missing; a completion nobody
reads any more is cancelled after the grace period, and its worker job with it.

The FAKE worker (``conftest``) holds its generation after the first token while its ``gate`` is
set, so a test can cut a stream at a known place."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import openai
import pytest

from jobproto import JobState

pytestmark = pytest.mark.anyio

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def parse(block: str) -> tuple[int | None, str]:
    """One SSE event: its ``id`` (None: none) and its ``data``."""
    seq, data = None, []
    for line in block.split("\n"):
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: "):
            data.append(line[6:])
    return seq, "\n".join(data)


async def events(response: httpx.Response) -> AsyncIterator[tuple[int | None, str]]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if "data: " in block:  # not a comment, nor jobproto's opening ``retry:``
                yield parse(block)


def content(data: str) -> str:
    chunk = json.loads(data)
    # a chat chunk's delta, or a text completion's text
    return "".join(
        c.get("text") or c.get("delta", {}).get("content") or "" for c in chunk["choices"]
    )


@asynccontextmanager
async def held(cluster: Any, fakes: Any, **settings: Any) -> AsyncIterator[Any]:
    """A queen with one FAKE worker whose generations wait after their first token."""
    hive = fakes.Hive("h1")
    async with cluster([hive], **settings) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        worker.gate = anyio.Event()
        yield c, worker


async def first_chunk(http: httpx.AsyncClient) -> tuple[str, int, str]:
    """Start a streamed chat completion, read up to its first content chunk and cut the
    connection: the job id, that chunk's id and the text read."""
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        job_id = r.headers["x-rbee-job-id"]
        text = ""
        async for seq, data in events(r):
            assert seq is not None
            text += content(data)
            if text:
                return job_id, seq, text
    raise AssertionError("the stream ended before its first token")


async def rest(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> tuple[str, list[str]]:
    """The text of a resumed stream, and its raw data lines after the content."""
    text, tail = "", []
    async with http.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for _, data in events(r):
            if data == "[DONE]":
                tail.append(data)
                break
            chunk = json.loads(data)
            text += content(data)
            if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                tail.append(chunk["choices"][0]["finish_reason"])
    return text, tail


@pytest.mark.parametrize("how", ["starting_after", "last_event_id"])
async def test_a_cut_stream_resumes_where_it_stopped(cluster: Any, fakes: Any, how: str) -> None:
    async with held(cluster, fakes) as (c, worker), httpx.AsyncClient(base_url=c.queen_url) as http:
        job_id, seq, head = await first_chunk(http)
        worker.gate.set()
        url = f"/v1/chat/completions/chatcmpl-{job_id}?stream=true"
        if how == "starting_after":
            tail_text, tail = await rest(http, f"{url}&starting_after={seq}", {})
        else:
            tail_text, tail = await rest(http, url, {"Last-Event-ID": str(seq)})
        whole = await http.get(f"/v1/chat/completions/chatcmpl-{job_id}")
    assert head == "w0 " and tail_text == "w1 w2 "  # nothing repeated, nothing missing
    assert tail == ["length", "[DONE]"]
    body = whole.json()
    assert body["choices"][0]["message"]["content"] == head + tail_text
    assert body["id"] == f"chatcmpl-{job_id}" and body["usage"]["completion_tokens"] == 3


async def test_the_jobproto_stream_of_a_completion_resumes_too(cluster: Any, fakes: Any) -> None:
    async with held(cluster, fakes) as (c, worker), httpx.AsyncClient(base_url=c.queen_url) as http:
        job_id, seq, head = await first_chunk(http)
        worker.gate.set()
        deltas = []
        async with http.stream(
            "GET", f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": str(seq)}
        ) as r:
            async for _, data in events(r):
                event = json.loads(data)
                if event["type"] == "data":
                    deltas.append(event["payload"])
    assert head + "".join(d["text"] for d in deltas) == "w0 w1 w2 "
    assert {d["index"] for d in deltas} == {0}


async def test_resuming_from_the_start_and_refusals(cluster: Any, fakes: Any) -> None:
    async with held(cluster, fakes) as (c, worker), httpx.AsyncClient(base_url=c.queen_url) as http:
        worker.gate.set()
        async with client(c.queen_url) as api:
            done = await api.completions.create(model="tiny", prompt="hi", max_tokens=2)
        job_id = done.id.removeprefix("cmpl-")
        text, tail = await rest(http, f"/v1/completions/{done.id}?stream=true", {})
        wrong_kind = await http.get(f"/v1/chat/completions/chatcmpl-{job_id}")
        unknown = await http.get("/v1/completions/cmpl-nothing")
        past = await http.get(f"/v1/completions/{done.id}?stream=true&starting_after=999")
        bad = await http.get(f"/v1/completions/{done.id}?stream=true&starting_after=-1")
        extra = await http.get(f"/v1/completions/{done.id}?limit=1")
        head = await http.head(f"/v1/completions/{done.id}")
    assert text == "w0 w1 " == done.choices[0].text
    assert tail == ["length", "[DONE]"]
    assert wrong_kind.status_code == unknown.status_code == 404
    assert (past.status_code, past.json()["error"]["code"]) == (400, "invalid_cursor")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"
    assert (extra.status_code, extra.json()["error"]["param"]) == (400, "limit")
    assert head.status_code == 200 and head.headers["x-rbee-job-id"] == job_id


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def wait_for(condition: Any, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.05)


def worker_states(worker: Any) -> list[JobState]:
    return [h.job.state for h in worker.app.state.jobs.handles.values()]


@pytest.mark.parametrize("stream", [True, False])
async def test_an_abandoned_completion_is_cancelled_with_its_worker_job(
    cluster: Any, fakes: Any, stream: bool
) -> None:
    async with held(cluster, fakes, abandon_grace=0.3) as (c, worker):
        service = c.app.state.jobs
        async with httpx.AsyncClient(base_url=c.queen_url) as http:
            if stream:
                job_id, _, _ = await first_chunk(http)
            else:

                async def ask() -> None:
                    await http.post("/v1/chat/completions", json=CHAT)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask)
                    await worker.started.wait()
                    tg.cancel_scope.cancel()  # the client leaves while it waits
                (job_id,) = service.handles
        handle = service.handles[job_id]
        await wait_for(lambda: handle.job.finished)
        await wait_for(lambda: worker_states(worker) == [JobState.CANCELLED])
    assert handle.job.state is JobState.CANCELLED
    assert handle.job.cancel_reason.startswith("abandoned")


async def test_a_reader_back_within_the_grace_keeps_the_completion(
    cluster: Any, fakes: Any
) -> None:
    async with held(cluster, fakes, abandon_grace=2.0) as (c, worker):
        async with httpx.AsyncClient(base_url=c.queen_url) as http:
            job_id, seq, head = await first_chunk(http)
            url = f"/v1/chat/completions/chatcmpl-{job_id}?stream=true&starting_after={seq}"
            async with http.stream("GET", url) as r:
                # reading again, well past the grace period: the job still runs
                handle = c.app.state.jobs.handles[job_id]
                await anyio.sleep(2.5)
                assert handle.job.state is JobState.RUNNING
                worker.gate.set()
                text = "".join([content(d) async for _, d in events(r) if d != "[DONE]"])
    assert head + text == "w0 w1 w2 "
    assert handle.job.state is JobState.SUCCEEDED


async def test_resuming_after_the_last_chunk_gets_done_and_ends(cluster: Any, fakes: Any) -> None:
    # a client that read the finish chunk but lost the connection before ``[DONE]``
    async with held(cluster, fakes) as (c, worker), httpx.AsyncClient(base_url=c.queen_url) as http:
        worker.gate.set()
        last = None
        async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            job_id = r.headers["x-rbee-job-id"]
            async for seq, data in events(r):
                if data == "[DONE]":
                    break
                last = seq
        assert last is not None
        url = f"/v1/chat/completions/chatcmpl-{job_id}?stream=true&starting_after={last}"
        with anyio.fail_after(10):  # it ends by itself, without waiting on keepalives
            text, tail = await rest(http, url, {})
    assert (text, tail) == ("", ["[DONE]"])

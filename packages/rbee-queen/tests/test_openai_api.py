"""The OpenAI-compatible API on the queen, driven by the official ``openai`` client (sync and
async, streamed and not, chat and text completions) against a served queen and FAKE hives and
workers (``conftest``), plus its refusals and its ids."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import openai
import pytest

from jobproto.testing import serving
from rbee_contracts.auth import keeper_token
from rbee_queen.app import create_app as create_queen_app
from rbee_queen.openai_api import OpenAIErrorShape
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))


def client(url: str, key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **kw)


async def test_models_lists_what_the_hives_have(cluster: Any, fakes: Any) -> None:
    async with cluster([fakes.Hive("h1", models=("tiny", "other"))]) as c:
        await c.hives["h1"].register(c.queen_url)
        async with client(c.queen_url) as api:
            models = await api.models.list()
            one = await api.models.retrieve("tiny")
            with pytest.raises(openai.NotFoundError):
                await api.models.retrieve("llama")
    assert [m.id for m in models.data] == ["other", "tiny"]
    assert one == models.data[1]
    assert {(m.object, m.owned_by) for m in models.data} == {("model", "rbee")}
    assert all(m.created > 0 for m in models.data)


async def test_a_chat_completion_with_the_sync_client(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        sync = openai.OpenAI(base_url=f"{c.queen_url}/v1", api_key="unused", max_retries=0)

        def call() -> Any:
            with sync:
                return sync.chat.completions.with_raw_response.create(
                    model="tiny",
                    messages=[
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    ],
                    max_tokens=2,
                    temperature=0,
                    user="someone",
                )

        raw = await anyio.to_thread.run_sync(call)
        done = raw.parse()
    job_id = raw.headers["x-rbee-job-id"]
    assert done.id == f"chatcmpl-{job_id}" and done.object == "chat.completion"
    assert done.model == "tiny"
    (choice,) = done.choices
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant", "w0 w1 ")
    assert choice.finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (1, 2)
    assert done.usage.total_tokens == 3
    (params,) = worker.params
    assert params.messages is not None
    assert [(m.role, m.content) for m in params.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    assert (params.max_tokens, params.temperature, params.prompt) == (2, 0.0, None)


async def test_a_text_completion_streamed_with_usage(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        async with client(c.queen_url) as api:
            stream = await api.completions.create(
                model="tiny",
                prompt="once upon",
                stream=True,
                stream_options={"include_usage": True},
                stop="\n",
                seed=7,
            )
            chunks = [chunk async for chunk in stream]
    text_chunks = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].text for ch in text_chunks) == "w0 w1 w2 "
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.choices[0].finish_reason is None for ch in text_chunks[:-1])
    assert all(ch.usage is None for ch in chunks[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1, 3, 4)
    (params,) = worker.params
    # OpenAI's default max_tokens of a text completion is 16
    assert (params.prompt, params.stop, params.seed, params.max_tokens) == (
        "once upon",
        ["\n"],
        7,
        16,
    )


async def test_n_chat_choices_streamed_each_with_its_seed(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        async with client(c.queen_url) as api:
            stream = await api.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                n=3,
                seed=40,
                max_completion_tokens=2,
                stream=True,
            )
            chunks = [chunk async for chunk in stream]
            whole = await api.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=1
            )
    texts: dict[int, str] = {}
    roles: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        (choice,) = chunk.choices
        if choice.delta.role is not None:
            roles.setdefault(choice.index, []).append(choice.delta.role)
        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        if choice.finish_reason is not None:
            finish[choice.index] = choice.finish_reason
    assert texts == {0: "w0 w1 ", 1: "w0 w1 ", 2: "w0 w1 "}
    assert roles == {0: ["assistant"], 1: ["assistant"], 2: ["assistant"]}
    assert finish == {0: "length", 1: "length", 2: "length"}
    assert sorted(p.seed for p in worker.params[:3]) == [40, 41, 42]
    assert [ch.index for ch in whole.choices] == [0, 1]
    assert [ch.message.content for ch in whole.choices] == ["w0 ", "w0 "]
    assert whole.usage is not None and whole.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("kind", "extra", "param", "code"),
    [
        ("chat", {"logprobs": True}, "logprobs", "unsupported_parameter"),
        ("chat", {"tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
        ("chat", {"logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
        ("chat", {"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown_parameter"),
        ("chat", {"temperature": 2.5}, "temperature", "invalid_value"),
        ("chat", {"n": 9}, "n", "invalid_value"),
        ("chat", {"top_p": 0}, "top_p", "validation_error"),
        ("chat", {"max_completion_tokens": 0}, "max_completion_tokens", "validation_error"),
        ("chat", {"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ("text", {"echo": True}, "echo", "unsupported_parameter"),
        ("text", {"suffix": "end"}, "suffix", "unsupported_parameter"),
        ("text", {"best_of": 3}, "best_of", "unsupported_parameter"),
        ("text", {"stop": ["x", ""]}, "stop", "validation_error"),
    ],
)
async def test_a_parameter_rbee_cannot_honour_is_a_400_naming_it(
    cluster: Any, fakes: Any, kind: str, extra: dict[str, Any], param: str, code: str
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        async with client(c.queen_url) as api:
            with pytest.raises(openai.BadRequestError) as info:
                if kind == "chat":
                    msgs: Any = [{"role": "user", "content": "hi"}]
                    await api.chat.completions.create(model="tiny", messages=msgs, **extra)
                else:
                    await api.completions.create(model="tiny", prompt="hi", **extra)
        jobs = await c.client.list()
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]
    assert worker.params == [] and list(jobs.jobs) == []  # refused before any job


async def test_an_unknown_model_is_a_404_model_not_found(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        async with client(c.queen_url) as api:
            with pytest.raises(openai.NotFoundError) as info:
                await api.chat.completions.create(
                    model="llama", messages=[{"role": "user", "content": "hi"}], stream=True
                )
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("invalid_request", openai.BadRequestError),
        ("busy", openai.RateLimitError),
        ("engine_dead", openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_failure_before_the_first_token_is_an_http_error(
    cluster: Any, fakes: Any, code: str, error: type[Exception], stream: bool
) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        worker = await hive.add_worker("w1")
        await hive.register(c.queen_url)
        worker.fail_with = code
        async with client(c.queen_url) as api:
            with pytest.raises(error) as info:
                await api.completions.create(model="tiny", prompt="hi", stream=stream)
    assert isinstance(info.value, openai.APIStatusError)
    expected = {"invalid_request": 400, "busy": 429, "engine_dead": 503}[code]
    assert info.value.status_code == expected
    assert isinstance(info.value.body, dict) and info.value.body["code"] == code
    assert "the engine died" in info.value.body["message"]


async def test_the_keeper_token_is_the_api_key(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1", secret=SECRET)
    async with cluster([hive], secret=SECRET) as c:
        await hive.add_worker("w1")
        await hive.register(c.queen_url)
        async with client(c.queen_url, key="wrong") as api:
            with pytest.raises(openai.AuthenticationError):
                await api.completions.create(model="tiny", prompt="hi")
        # a hive's join token is known to the queen, but opens no completions
        async with httpx.AsyncClient(base_url=c.queen_url) as http:
            join = hive.token
            refused = await http.post(
                "/v1/completions",
                json={"model": "tiny", "prompt": "hi"},
                headers={"Authorization": f"Bearer {join}"},
            )
        async with client(c.queen_url, key=keeper_token(SECRET)) as api:
            done = await api.completions.create(model="tiny", prompt="hi", max_tokens=1)
    assert done.choices[0].text == "w0 "
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"


async def test_a_body_that_is_not_json_or_too_big_is_refused(cluster: Any, fakes: Any) -> None:
    async with cluster([fakes.Hive("h1")]) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        await c.hives["h1"].register(c.queen_url)
        headers = {"Content-Type": "application/json"}
        broken = await http.post("/v1/chat/completions", content=b"{", headers=headers)
        huge = await http.post(
            "/v1/completions", content=json.dumps({"prompt": "x" * (2 << 20)}), headers=headers
        )
        plain = await http.post("/v1/completions", content=b"{}")
        listed = await http.post("/v1/completions", json=["model"])
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "payload_too_large")
    assert plain.status_code == 415
    assert listed.status_code == 400 and set(listed.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


async def test_refusals_before_the_routes_get_openais_error_shape(tmp_path: Any) -> None:
    app = create_queen_app(QueenSettings(state_dir=tmp_path, secret=SECRET))
    if not any(m.cls is OpenAIErrorShape for m in app.user_middleware):
        app.add_middleware(OpenAIErrorShape)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        async with client(url, key="wrong") as api:
            with pytest.raises(openai.AuthenticationError) as info:
                await api.models.list()
        keeper = {"Authorization": f"Bearer {keeper_token(SECRET)}"}
        missing = await http.get("/v1/chat/completions/a/b", headers=keeper)
        jobs = await http.get("/v1/jobs")  # not an OpenAI route: jobproto's shape
    body = info.value.body
    assert isinstance(body, dict) and body.pop("message")
    assert body == {"type": "invalid_request_error", "param": None, "code": "unauthorized"}
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert jobs.status_code == 401 and "type" not in jobs.json()["error"]

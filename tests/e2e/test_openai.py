"""The queen's OpenAI-compatible API on the session's real cluster (``rbee queen start``, the tiny
model on a transformers worker), driven by the official ``openai`` client: greedy output through
the API is what ``rbee infer --temperature 0`` gives for the same prompt, streamed or not, chat
or text; a streamed completion cut after its first chunk resumes with nothing repeated or lost.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAX_TOKENS = 12


def api(cluster: Any) -> openai.OpenAI:
    # the keeper's token is the API key
    return openai.OpenAI(
        base_url=f"{cluster.queen_url}/v1", api_key=cluster.keeper_token, max_retries=0
    )


def rbee_text(cluster: Any, prompt: str, *, raw: bool) -> tuple[str, dict[str, Any]]:
    args = ["infer", prompt, "--model", "tiny", "--temperature", "0"]
    args += ["--max-tokens", str(MAX_TOKENS), "--json"]
    run = cluster.rbee.ok(*args, *(["--raw"] if raw else []), timeout=180)
    final = run.final()
    assert final["type"] == "result" and final["state"] == "succeeded", final
    return "".join(p["text"] for p in run.data()), final["result"]


def test_models_lists_the_registered_model(cluster: Any) -> None:
    with api(cluster) as client:
        ids = [m.id for m in client.models.list().data]
    assert "tiny" in ids


def test_greedy_text_completion_equals_rbee_infer(cluster: Any) -> None:
    prompt = "Once upon a time"
    expected, result = rbee_text(cluster, prompt, raw=True)
    with api(cluster) as client:
        done = client.completions.create(
            model="tiny", prompt=prompt, temperature=0, max_tokens=MAX_TOKENS
        )
        stream = client.completions.create(
            model="tiny",
            prompt=prompt,
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    (choice,) = done.choices
    assert choice.text == expected and expected
    assert choice.finish_reason == result["finish_reason"]
    assert done.usage is not None
    assert done.usage.prompt_tokens == result["prompt_tokens"]
    assert done.usage.completion_tokens == result["completion_tokens"]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == result["completion_tokens"]


def test_greedy_chat_completion_equals_rbee_infer(cluster: Any) -> None:
    prompt = "Write one sentence about bees."
    expected, result = rbee_text(cluster, prompt, raw=False)
    with api(cluster) as client:
        done = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_completion_tokens=MAX_TOKENS,
        )
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    (choice,) = done.choices
    assert choice.message.content == expected == streamed
    assert choice.finish_reason == result["finish_reason"]
    assert done.usage is not None and done.usage.prompt_tokens == result["prompt_tokens"]


def test_a_cut_stream_resumes_with_nothing_repeated_or_lost(cluster: Any) -> None:
    prompt = "The bees leave the hive at dawn and"
    expected, _ = rbee_text(cluster, prompt, raw=True)
    body = {
        "model": "tiny",
        "prompt": prompt,
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {cluster.keeper_token}"}
    with httpx.Client(base_url=cluster.queen_url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            job_id = response.headers["x-rbee-job-id"]
            for line in response.iter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: "):
                    head = json.loads(line[6:])["choices"][0]["text"]
                    break  # cut after the first chunk
        url = f"/v1/completions/cmpl-{job_id}?stream=true&starting_after={seq}"
        tail = []
        with http.stream("GET", url) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    break
                if line.startswith("data: "):
                    tail += [c["text"] for c in json.loads(line[6:])["choices"]]
    assert head + "".join(tail) == expected

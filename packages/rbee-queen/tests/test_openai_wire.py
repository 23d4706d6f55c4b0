"""The OpenAI wire format without I/O: requests read into ``completion`` fields, the merge of
one choice's deltas, the seeds of the choices, jobproto's error body reshaped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobproto import structure_params
from rbee_contracts.completion import CompletionParams, choice_fields, merge_choice_deltas
from rbee_contracts.infer import SEED_LIMIT
from rbee_queen.openai_wire import CHAT, TEXT, OpenAIError, openai_error_body, parse_request


def test_deltas_merge_within_one_choice_only() -> None:
    a = {"index": 0, "text": "He", "token_ids": [1]}
    b = {"index": 0, "text": "llo", "token_ids": [2]}
    other = {"index": 1, "text": "x", "token_ids": [3]}
    assert merge_choice_deltas(a, b) == {"index": 0, "text": "Hello", "token_ids": [1, 2]}
    assert merge_choice_deltas(a, other) is None
    assert merge_choice_deltas({"text": "a"}, {"text": "b"}) is None  # no index: not ours
    assert merge_choice_deltas({**a, "index": True}, {**b, "index": True}) is None


def test_each_choice_gets_its_own_seed_and_only_the_workers_fields() -> None:
    params = structure_params(
        {"model": "tiny", "prompt": "hi", "n": 3, "seed": SEED_LIMIT - 2, "hive": "h1"},
        CompletionParams,
    )
    seeds = [choice_fields(params, i)["seed"] for i in range(3)]
    assert seeds == [SEED_LIMIT - 2, SEED_LIMIT - 1, 0]  # wraps below the limit
    fields = choice_fields(params, 0)
    assert "model" not in fields and "hive" not in fields and "n" not in fields
    unseeded = structure_params({"model": "tiny", "prompt": "hi"}, CompletionParams)
    assert "seed" not in choice_fields(unseeded, 1)


def test_a_chat_request_becomes_a_completion_job() -> None:
    parsed = parse_request(
        CHAT,
        {
            "model": "tiny",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None, "name": "bot"},
            ],
            "max_completion_tokens": 5,
            "stop": "END",
            "seed": -1,
            "top_k": -1,
            "presence_penalty": 0,
            "frequency_penalty": 0.5,
            "logprobs": False,
            "tools": [],
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u",
        },
    )
    assert parsed.job == {
        "operation": "completion",
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a\nb"},
            {"role": "assistant", "content": ""},
        ],
        "max_tokens": 5,
        "stop": ["END"],
        "seed": SEED_LIMIT - 1,
        "frequency_penalty": 0.5,
    }
    assert parsed.stream and parsed.include_usage
    structure_params({k: v for k, v in parsed.job.items() if k != "operation"}, CompletionParams)


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        (TEXT, {"model": "m", "prompt": ["a", "b"]}, "prompt"),
        (TEXT, {"model": "m", "prompt": [1, 2]}, "prompt"),
        (TEXT, {"model": "m"}, "prompt"),
        (TEXT, {"prompt": "a"}, "model"),
        (CHAT, {"model": "m", "messages": []}, "messages"),
        (CHAT, {"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]},
            "messages[0].tool_calls",
        ),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": True}, "n"),
        (
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "1"},
            "temperature",
        ),
        (
            CHAT,
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
    ],
)
def test_a_request_rbee_cannot_serve_is_refused_naming_the_parameter(
    kind: Any, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_request(kind, body)
    assert info.value.status == 400 and info.value.param == param


def test_jobprotos_error_body_in_openais_shape() -> None:
    jobproto = json.dumps({"error": {"code": "forbidden", "message": "no", "field": "x"}})
    assert json.loads(openai_error_body(403, jobproto.encode())) == {
        "error": {"message": "no", "type": "permission_error", "param": "x", "code": "forbidden"}
    }
    shaped = OpenAIError(400, "bad", param="n").body()
    assert openai_error_body(400, json.dumps(shaped).encode()) == json.dumps(shaped).encode()
    assert openai_error_body(500, b"not json") == b"not json"

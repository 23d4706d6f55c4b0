"""Presence and frequency penalties: the contract's bounds, the transformers engine against a
reference loop written from OpenAI's definition, and the synthetic engine's refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from jobproto.client import JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_contracts.infer import InferParams
from rbee_worker.app import create_app
from rbee_worker.engines import Delta, GenerationRequest, InvalidRequest, create_engine
from rbee_worker.engines.transformers import TransformersEngine, sample_token
from rbee_worker.settings import WorkerSettings

PROMPTS = ["The bees leave the hive at dawn", "Hello", "Tell me a story"]


async def run(engine: Any, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


@pytest.fixture(scope="module")
async def engine(tiny_model: Path) -> TransformersEngine:
    built = create_engine("transformers", model=str(tiny_model), device="cpu")
    assert isinstance(built, TransformersEngine)
    await built.load()
    return built


def reference_greedy(
    reference: tuple[Any, Any], prompt: str, tokens: int, frequency: float, presence: float
) -> list[int]:
    """Greedy decoding with OpenAI's penalties, written out from their definition: the whole
    sequence through the model at each step (no cache), then ``logit[t] -= frequency * count[t] +
    presence * (count[t] > 0)`` over the tokens generated so far, then the largest."""
    import torch

    model, tokenizer = reference
    ids = list(tokenizer(prompt).input_ids)
    generated: list[int] = []
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=torch.tensor([ids + generated])).logits[0, -1].float()
            for token in set(generated):
                logits[token] -= frequency * generated.count(token) + presence
            generated.append(int(torch.argmax(logits)))
            if generated[-1] == eos:
                break
    return generated


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("frequency", "presence"),
    [(0.0, 0.0), (2.0, 0.0), (0.0, 2.0), (0.3, 0.1), (-0.4, 0.0)],
    ids=["off", "frequency", "presence", "both", "negative"],
)
async def test_greedy_penalties_follow_the_openai_definition(
    engine: TransformersEngine,
    reference: tuple[Any, Any],
    frequency: float,
    presence: float,
) -> None:
    for prompt in PROMPTS:
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=24,
            temperature=0,
            frequency_penalty=frequency,
            presence_penalty=presence,
        )
        expected = reference_greedy(reference, prompt, 24, frequency, presence)
        assert ids_of(await run(engine, request)) == expected, prompt


@pytest.mark.anyio
async def test_a_strong_frequency_penalty_forbids_repeating_a_token(
    engine: TransformersEngine,
) -> None:
    # The tiny model's logits span less than 2, so a penalty of 2 puts every token it has
    # produced below every token it has not.
    for prompt in PROMPTS:
        plain = ids_of(
            await run(engine, GenerationRequest(prompt=prompt, max_tokens=24, temperature=0))
        )
        assert len(set(plain)) < len(plain), "the premise: greedy decoding repeats itself"
        penalized = GenerationRequest(
            prompt=prompt, max_tokens=24, temperature=0, frequency_penalty=2.0
        )
        ids = ids_of(await run(engine, penalized))
        assert len(ids) == 24 and len(set(ids)) == 24, prompt
        # It is deterministic: the same request, the same tokens.
        assert ids_of(await run(engine, penalized)) == ids
        # A negative penalty does the opposite: the first token forever.
        again = GenerationRequest(prompt=prompt, max_tokens=24, temperature=0, frequency_penalty=-2)
        assert set(ids_of(await run(engine, again))) == {plain[0]}


def test_penalties_apply_to_the_raw_logits_before_temperature() -> None:
    import torch

    logits = torch.tensor([1.0, 0.9, 0.0])
    counts = torch.tensor([1.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(0)

    def pick(**fields: Any) -> int:
        request = GenerationRequest(prompt="x", **fields)
        return sample_token(logits, request, generator, counts)

    assert pick(temperature=0) == 0
    # 1.0 - 0.5 < 0.9: the penalty moves greedy to the next token.
    assert pick(temperature=0, frequency_penalty=0.5) == 1
    assert pick(temperature=0, presence_penalty=0.5) == 1
    # Before temperature as in vLLM: at temperature 0.1 the scores are 5 and 9, not 9.5 and 9.
    assert pick(temperature=0.1, top_k=1, frequency_penalty=0.5) == 1
    # Counts multiply the frequency penalty, not the presence penalty.
    counts[0] = 3.0
    assert pick(temperature=0, presence_penalty=0.05) == 0
    assert pick(temperature=0, frequency_penalty=0.05) == 1


@pytest.mark.anyio
async def test_the_synthetic_engine_refuses_penalties() -> None:
    engine = create_engine("synthetic", model=None)
    for fields in ({"presence_penalty": 0.5}, {"frequency_penalty": -1.0}):
        request = GenerationRequest(prompt="hi", max_tokens=3, **fields)
        with pytest.raises(InvalidRequest, match="does not apply penalties"):
            await run(engine, request)
    zero = GenerationRequest(prompt="hi", max_tokens=3, presence_penalty=0, frequency_penalty=0)
    assert len(ids_of(await run(engine, zero))) == 3


@pytest.mark.anyio
async def test_the_worker_publishes_the_penalties_and_fails_them_on_the_synthetic_engine() -> None:
    settings = WorkerSettings(engine="synthetic", worker_id="w-penalties")
    async with serving(create_app(settings)) as url, JobClient(url) as client:
        async with httpx.AsyncClient(base_url=url) as http:
            with anyio.fail_after(20):
                while (await http.get("/ready")).status_code != 200:
                    await anyio.sleep(0.02)
            schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
            published = schema["op_infer"]["properties"]
            for field in ("presence_penalty", "frequency_penalty"):
                assert published[field] == {
                    "type": "number",
                    "minimum": -2,
                    "maximum": 2,
                    "default": 0,
                }
            refused = await http.post(
                "/v1/jobs", json={"operation": "infer", "prompt": "hi", "presence_penalty": 2.5}
            )
            assert refused.status_code == 422
            assert refused.json()["error"]["field"] == "presence_penalty"
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run("infer", prompt="hi", max_tokens=5, frequency_penalty=1.5)
        assert failed.value.code == "invalid_request"
        assert "does not apply penalties" in failed.value.message
        ok = await client.run("infer", prompt="hi", max_tokens=5, frequency_penalty=0)
        assert ok["completion_tokens"] == 5


def test_the_contract_bounds_the_penalties() -> None:
    params = InferParams(prompt="x", presence_penalty=-2, frequency_penalty=2)
    assert (params.presence_penalty, params.frequency_penalty) == (-2, 2)
    assert InferParams(prompt="x").presence_penalty == 0
    assert InferParams(prompt="x").frequency_penalty == 0
    for field in ("presence_penalty", "frequency_penalty"):
        for bad in (2.01, -2.5, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=field):
                InferParams(prompt="x", **{field: bad})

"""The synthetic benchmark engine: exact token counts, rate, stop strings, abort."""

from __future__ import annotations

import time

import anyio
import pytest

from rbee_worker.engines import Delta, GenerationRequest, InvalidRequest, create_engine
from rbee_worker.engines.synthetic import SYNTHETIC_TOKENS, SyntheticEngine


async def run(engine: SyntheticEngine, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def synthetic(**args: str) -> SyntheticEngine:
    engine = create_engine("synthetic", model=None, engine_args=args)
    assert isinstance(engine, SyntheticEngine)
    return engine


@pytest.mark.anyio
async def test_emits_exactly_max_tokens_of_fixed_text() -> None:
    deltas = await run(synthetic(), GenerationRequest(prompt="hi", max_tokens=25))
    assert sum(len(d.token_ids) for d in deltas) == 25
    text = "".join(d.text for d in deltas)
    assert text == "".join(SYNTHETIC_TOKENS[i % len(SYNTHETIC_TOKENS)] for i in range(25))
    assert deltas[-1].finish_reason == "length"
    assert synthetic().name == "synthetic"


@pytest.mark.anyio
async def test_rate_is_respected() -> None:
    engine = synthetic(tokens_per_second="200")
    started = time.perf_counter()
    deltas = await run(engine, GenerationRequest(prompt="hi", max_tokens=41))
    elapsed = time.perf_counter() - started
    assert sum(len(d.token_ids) for d in deltas) == 41
    # 40 intervals at 200/s: at least 0.2 s (less a little clock granularity), not flat out. No
    # upper bound: a loaded machine may take any time.
    assert elapsed >= 0.18


@pytest.mark.anyio
async def test_stop_string_and_abort() -> None:
    engine = synthetic()
    deltas = await run(engine, GenerationRequest(prompt="hi", max_tokens=50, stop=(" fox",)))
    assert "".join(d.text for d in deltas) == "The quick brown"
    assert deltas[-1].finish_reason == "stop"

    slow = synthetic(tokens_per_second="50")
    request = GenerationRequest(prompt="hi", max_tokens=1000, request_id="a")
    reasons = []
    async with slow.stream(request) as stream:
        async for delta in stream:
            await slow.abort("a")
            reasons.append(delta.finish_reason)
    assert reasons[-1] == "abort" and len(reasons) <= 3


@pytest.mark.anyio
async def test_loading_takes_load_seconds() -> None:
    engine = synthetic(load_seconds="0.1")
    started = time.perf_counter()
    await engine.load()
    assert time.perf_counter() - started >= 0.09


@pytest.mark.anyio
async def test_prompt_over_max_model_len() -> None:
    engine = synthetic(max_model_len="4")
    with pytest.raises(InvalidRequest):
        await run(engine, GenerationRequest(prompt="one two three four", max_tokens=1))
    deltas = await run(engine, GenerationRequest(prompt="one", max_tokens=100))
    assert sum(len(d.token_ids) for d in deltas) == 3


def test_engine_args_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown engine arg"):
        synthetic(tokens_per_secnd="5")
    with pytest.raises(ValueError, match="not a number"):
        synthetic(tokens_per_second="fast")
    with pytest.raises(ValueError, match=">= 0"):
        synthetic(tokens_per_second="-1")
    with pytest.raises(ValueError, match="integer"):
        synthetic(max_model_len="1.5")


@pytest.mark.anyio
async def test_cancelling_a_flat_out_stream() -> None:
    engine = synthetic(max_model_len=str(10**9 + 10))
    count = 0
    with anyio.move_on_after(0.05):
        async with engine.stream(GenerationRequest(prompt="hi", max_tokens=10**9)) as stream:
            async for delta in stream:
                count += len(delta.token_ids)
    assert 0 < count < 10**9

"""The transformers engine on the tiny model, against transformers' own ``generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from rbee_worker.engines import (
    ChatTurn,
    Delta,
    EngineDead,
    GenerationRequest,
    InvalidRequest,
    create_engine,
)
from rbee_worker.engines.transformers import TransformersEngine


async def loaded(tiny_model: Path, **kwargs: Any) -> TransformersEngine:
    engine = create_engine("transformers", model=str(tiny_model), device="cpu", **kwargs)
    assert isinstance(engine, TransformersEngine)
    await engine.load()
    return engine


async def run(engine: TransformersEngine, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def tokens(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def prompt_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """What the request's prompt tokenizes to, computed with transformers' own calls."""
    if request.messages is None:
        return list(tokenizer(request.prompt).input_ids)
    conversation = [{"role": m.role, "content": m.content} for m in request.messages]
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


GREEDY = [
    GenerationRequest(prompt="The bees leave the hive at dawn", max_tokens=24, temperature=0),
    GenerationRequest(prompt="Hello, how are you today?", max_tokens=24, temperature=0),
    GenerationRequest(
        messages=[
            ChatTurn("system", "You are a helpful assistant."),
            ChatTurn("user", "Write one sentence about bees."),
        ],
        max_tokens=24,
        temperature=0,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("request_", GREEDY, ids=["prompt", "question", "chat"])
async def test_greedy_tokens_equal_transformers_generate(
    tiny_model: Path, reference: tuple[Any, Any], request_: GenerationRequest
) -> None:
    import torch

    model, tokenizer = reference
    engine = await loaded(tiny_model)
    deltas = await run(engine, request_)
    ids = tokens(deltas)
    text = "".join(d.text for d in deltas)

    prompt = prompt_ids(tokenizer, request_)
    inputs = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=request_.max_tokens,
        )
    expected = out[0, len(prompt) :].tolist()
    assert ids == expected
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
    assert deltas[-1].prompt_tokens == len(prompt)
    assert deltas[-1].finish_reason == (
        "stop" if expected[-1] == tokenizer.eos_token_id else "length"
    )


@pytest.mark.anyio
async def test_seeded_sampling_is_reproducible(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)

    async def sample(seed: int) -> list[int]:
        request = GenerationRequest(
            prompt="Once upon a time",
            max_tokens=32,
            temperature=0.9,
            top_k=50,
            top_p=0.9,
            seed=seed,
        )
        return tokens(await run(engine, request))

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again
    assert first != other


@pytest.mark.anyio
async def test_top_k_1_is_greedy(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    greedy = await run(engine, GenerationRequest(prompt="Bees", max_tokens=16, temperature=0))
    top1 = await run(
        engine, GenerationRequest(prompt="Bees", max_tokens=16, temperature=1.5, top_k=1, seed=3)
    )
    # Compare the token sequence, not its grouping: a reader that lags takes several deltas as
    # one, so how tokens are grouped into deltas depends on timing.
    assert tokens(greedy) == tokens(top1)


@pytest.mark.anyio
async def test_max_tokens_ends_with_length(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    deltas = await run(engine, GenerationRequest(prompt="Hello", max_tokens=5, temperature=0))
    assert sum(len(d.token_ids) for d in deltas) == 5
    assert deltas[-1].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])


@pytest.mark.anyio
async def test_stop_string_ends_with_stop(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    base = GenerationRequest(prompt="The bees leave the hive at dawn", max_tokens=24, temperature=0)
    full = "".join(d.text for d in await run(engine, base))
    # A stop string from the middle of what greedy decoding says anyway.
    stop = full[8:11]
    assert len(stop) == 3
    stopped = await run(engine, attrs_evolve(base, stop=(stop,)))
    text = "".join(d.text for d in stopped)
    assert stopped[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]
    assert stop not in text


@pytest.mark.anyio
async def test_cancelling_stops_the_decode_loop(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    request = GenerationRequest(prompt="Tell me a story", max_tokens=480, temperature=0)
    seen = 0
    steps_at_cancel = 0
    with anyio.CancelScope() as scope:
        async with engine.stream(request) as deltas:
            async for delta in deltas:
                seen += len(delta.token_ids)
                assert delta.finish_reason is None, "the premise: a long generation"
                if seen >= 5:
                    steps_at_cancel = engine.steps
                    scope.cancel()
                    await anyio.sleep(1)  # cancelled here, inside the stream block
    assert scope.cancelled_caught
    # Leaving the block waited for the thread: no step after that (a thread still running would
    # show within these 0.2 s). How many steps it made between the cancel and its next check of
    # the flag depends on the machine's load: not asserted.
    steps_after = engine.steps
    assert 5 <= steps_at_cancel <= steps_after
    await anyio.sleep(0.2)
    assert engine.steps == steps_after
    # The engine serves the next request as usual.
    assert (await run(engine, GenerationRequest(prompt="Hi", max_tokens=3)))[-1].finish_reason


@pytest.mark.anyio
async def test_abort_by_request_id(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    request = GenerationRequest(prompt="Tell me", max_tokens=480, temperature=0, request_id="r1")
    reasons = []
    async with engine.stream(request) as deltas:
        async for delta in deltas:
            if delta.finish_reason is None:
                await engine.abort("r1")
            reasons.append(delta.finish_reason)
    assert reasons[-1] == "abort"
    assert len(reasons) < 100


@pytest.mark.anyio
async def test_prompt_longer_than_the_model_is_refused(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        await run(engine, GenerationRequest(prompt="bees " * 600, max_tokens=4))
    # Completion budget is cut to the context: finish "length" at max_model_len.
    engine.max_model_len = 20
    deltas = await run(engine, GenerationRequest(prompt="Hi", max_tokens=100, temperature=0))
    total = deltas[-1].prompt_tokens + sum(len(d.token_ids) for d in deltas)
    if deltas[-1].finish_reason == "length":
        assert total == 20
    else:
        assert deltas[-1].finish_reason == "stop" and total < 20


@pytest.mark.anyio
async def test_an_error_in_the_decode_loop_kills_the_engine(tiny_model: Path) -> None:
    engine = await loaded(tiny_model)
    model = engine._model
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("device-side assert triggered (simulated)")
        return model(*args, **kwargs)

    engine._model = failing
    with pytest.raises(EngineDead, match="device-side assert"):
        await run(engine, GenerationRequest(prompt="Hello", max_tokens=10))
    with pytest.raises(EngineDead):
        await engine.health()
    with pytest.raises(EngineDead):
        await run(engine, GenerationRequest(prompt="Hello", max_tokens=10))


@pytest.mark.anyio
async def test_loading_a_missing_model_fails(tmp_path: Path) -> None:
    engine = create_engine("transformers", model=str(tmp_path / "nothing"))
    with pytest.raises(OSError):
        await engine.load()


def attrs_evolve(request: GenerationRequest, **changes: Any) -> GenerationRequest:
    import attrs

    return attrs.evolve(request, **changes)

"""The vllm engine in this process, on vLLM's real CPU build, against transformers.

One engine is built for the whole module (30-60 s); the last test closes it and checks that no
vLLM process is left.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here (nox -s tests_vllm runs these)", allow_module_level=True
    )

# vLLM and torch warn about their own internals while they import (deprecations inside torch,
# vLLM's optional kernels): not ours to fix, and an error under this suite's "warnings are
# errors". Import them now with warnings ignored; what they warn about at run time still counts.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for _module in ("vllm", "vllm.engine.arg_utils", "vllm.v1.engine.async_llm"):
        importlib.import_module(_module)

from rbee_worker.engines import (
    ChatTurn,
    Delta,
    EngineDead,
    GenerationRequest,
    InvalidRequest,
    create_engine,
)
from rbee_worker.engines.transformers import TransformersEngine
from rbee_worker.engines.vllm import VllmEngine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.anyio,
    # vLLM's shutdown leaves a ZMQ context for the garbage collector (Python hides
    # ResourceWarnings by default; this suite makes every warning an error).
    pytest.mark.filterwarnings("ignore:Unclosed context:ResourceWarning"),
]

GREEDY = [
    GenerationRequest(prompt="The bees leave the hive at dawn", max_tokens=32, temperature=0),
    GenerationRequest(prompt="Hello, how are you today?", max_tokens=32, temperature=0),
    GenerationRequest(prompt="Once upon a time there was", max_tokens=48, temperature=0),
    GenerationRequest(
        messages=[
            ChatTurn("system", "You are a helpful assistant."),
            ChatTurn("user", "Write one sentence about bees."),
        ],
        max_tokens=32,
        temperature=0,
    ),
]

PROMPTS = [
    "The bees leave the hive at dawn",
    "Hello, how are you today?",
    "Tell me a short story about a small robot",
    "What is the capital of France?",
    "A language model reads a sequence of tokens",
    "In spring the meadow is full of clover",
    "Computers follow instructions written by people",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
async def engine(tiny_model: Path) -> AsyncIterator[VllmEngine]:
    built = create_engine("vllm", model=str(tiny_model), dtype="auto")
    assert isinstance(built, VllmEngine)
    started = time.perf_counter()
    await built.load()
    print(f"vllm engine built in {time.perf_counter() - started:.1f} s")
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture(scope="module")
async def transformers_engine(tiny_model: Path) -> TransformersEngine:
    built = create_engine("transformers", model=str(tiny_model), device="cpu")
    assert isinstance(built, TransformersEngine)
    await built.load()
    return built


async def run(engine: Any, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def generate_reference(reference: tuple[Any, Any], request: GenerationRequest) -> list[int]:
    """transformers' own ``generate``, greedy, on the prompt as both engines tokenize it."""
    import torch

    model, tokenizer = reference
    if request.messages is None:
        prompt = list(tokenizer(request.prompt).input_ids)
    else:
        conversation = [{"role": m.role, "content": m.content} for m in request.messages]
        text = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        prompt = list(tokenizer(text, add_special_tokens=False).input_ids)
    inputs = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=request.max_tokens,
        )
    return list(out[0, len(prompt) :].tolist())


@pytest.mark.timeout(420)
@pytest.mark.parametrize("request_", GREEDY, ids=["bees", "question", "story", "chat"])
async def test_greedy_tokens_equal_transformers(
    engine: VllmEngine,
    transformers_engine: TransformersEngine,
    reference: tuple[Any, Any],
    request_: GenerationRequest,
) -> None:
    ours = await run(engine, request_)
    theirs = await run(transformers_engine, request_)
    assert ids_of(ours) == ids_of(theirs) == generate_reference(reference, request_)
    assert ours[-1].finish_reason == theirs[-1].finish_reason == "length"
    assert ours[-1].prompt_tokens == theirs[-1].prompt_tokens
    # Both detokenize incrementally, and to the same text; except that where the last tokens
    # end inside a UTF-8 character, transformers' engine flushes them as U+FFFD and vLLM drops
    # them (a random-weight model produces such byte soup often).
    ours_text, theirs_text = "".join(d.text for d in ours), "".join(d.text for d in theirs)
    assert ours_text.rstrip("\ufffd") == theirs_text.rstrip("\ufffd")
    assert all(d.finish_reason is None for d in ours[:-1])


async def test_the_engine_reports_what_it_was_built_with(engine: VllmEngine) -> None:
    assert engine.name == "vllm" and engine.model_name == "tiny"
    assert engine.max_concurrency == 8 and engine.max_model_len == 512
    # The worker's defaults for vLLM's CPU build (see _vllm_config).
    assert engine.kwargs["dtype"] == "float32" and engine.kwargs["max_num_seqs"] == 8
    assert engine.kwargs["enforce_eager"] is True
    await engine.health()
    assert engine.stats() == {"engine_requests": 0}


async def test_eight_streams_at_once_and_one_aborted(engine: VllmEngine) -> None:
    """Continuous batching: 8 generations overlap; aborting one leaves the others running."""
    victim = "req-3"
    results: dict[str, list[Delta]] = {}
    spans: dict[str, tuple[float, float]] = {}
    in_engine: list[int] = []

    async def one(i: int) -> None:
        request = GenerationRequest(
            prompt=PROMPTS[i], max_tokens=160, temperature=0, request_id=f"req-{i}"
        )
        got: list[Delta] = []
        first = 0.0
        async with engine.stream(request) as deltas:
            async for delta in deltas:
                if not got:
                    first = time.perf_counter()
                got.append(delta)
                if request.request_id == victim and len(ids_of(got)) >= 5 and len(got) < 99:
                    in_engine.append(engine.stats()["engine_requests"])
                    await engine.abort(victim)
                    got.append(Delta("", (), None))  # a marker: abort was asked once
        results[request.request_id] = got
        spans[request.request_id] = (first, time.perf_counter())

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
    aborted = [d for d in results[victim] if d.token_ids or d.finish_reason]
    assert aborted[-1].finish_reason == "abort"
    assert len(ids_of(aborted)) < 160
    for request_id, deltas in results.items():
        if request_id == victim:
            continue
        assert deltas[-1].finish_reason in ("length", "stop"), request_id
        if deltas[-1].finish_reason == "length":
            assert len(ids_of(deltas)) == 160, request_id
    # They ran at the same time: every stream started before any of them ended.
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())
    assert in_engine and in_engine[0] >= 2  # the engine held several requests at once
    assert engine.stats() == {"engine_requests": 0}


async def test_leaving_the_stream_early_aborts_in_the_engine(engine: VllmEngine) -> None:
    request = GenerationRequest(prompt="Hello", max_tokens=400, temperature=0, request_id="early")
    async with engine.stream(request) as deltas:
        async for _ in deltas:
            assert engine.stats() == {"engine_requests": 1}
            break
    assert engine.stats() == {"engine_requests": 0}
    # A cancelled consumer too.
    with anyio.move_on_after(0.05):
        await run(engine, GenerationRequest(prompt="Hi", max_tokens=400, temperature=0))
    assert engine.stats() == {"engine_requests": 0}
    await engine.abort("no-such-request")  # a no-op


async def test_sampling_settings_reach_vllm(engine: VllmEngine) -> None:
    sampled = GenerationRequest(prompt="Hello", max_tokens=24, temperature=0.9, top_p=0.9, seed=7)
    first, again = await run(engine, sampled), await run(engine, sampled)
    assert ids_of(first) == ids_of(again)  # a seed makes sampling repeatable
    other = await run(engine, GenerationRequest(prompt="Hello", max_tokens=24, seed=8))
    assert ids_of(other) != ids_of(first)
    greedy = await run(engine, GenerationRequest(prompt="Hello", max_tokens=24, temperature=0))
    top1 = await run(engine, GenerationRequest(prompt="Hello", max_tokens=24, top_k=1, seed=1))
    assert ids_of(top1) == ids_of(greedy)  # top_k 1 is greedy whatever the temperature
    one = await run(engine, GenerationRequest(prompt="Hello", max_tokens=1))
    assert len(ids_of(one)) == 1 and one[-1].finish_reason == "length"


async def test_penalties_reach_vllm_and_agree_with_transformers(
    engine: VllmEngine, transformers_engine: TransformersEngine
) -> None:
    """vLLM takes presence and frequency penalties, and applies them as the transformers engine
    does (OpenAI's definition): the same greedy tokens on both."""
    prompt = "The bees leave the hive at dawn"
    plain = ids_of(
        await run(engine, GenerationRequest(prompt=prompt, max_tokens=24, temperature=0))
    )
    for frequency, presence in ((2.0, 0.0), (0.3, 0.6)):
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=24,
            temperature=0,
            frequency_penalty=frequency,
            presence_penalty=presence,
        )
        ours = ids_of(await run(engine, request))
        assert ours == ids_of(await run(transformers_engine, request)), (frequency, presence)
        assert ours != plain
    with pytest.raises(InvalidRequest):  # vLLM's own bound (the worker's API checks it first)
        await run(engine, GenerationRequest(prompt="Hi", max_tokens=4, presence_penalty=3.0))


async def test_stop_strings_cut_the_text(engine: VllmEngine) -> None:
    request = GenerationRequest(
        prompt="The bees leave the hive at dawn", max_tokens=32, temperature=0
    )
    full = "".join(d.text for d in await run(engine, request))
    stop = full[8:11]
    assert stop and stop in full
    cut = await run(
        engine,
        GenerationRequest(prompt=request.prompt, max_tokens=32, temperature=0, stop=[stop]),
    )
    text = "".join(d.text for d in cut)
    assert cut[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]


async def test_requests_the_model_cannot_serve(engine: VllmEngine) -> None:
    with pytest.raises(InvalidRequest, match="max_model_len"):
        await run(engine, GenerationRequest(prompt="bees " * 600, max_tokens=4))
    # vLLM's own checks of the sampling settings (the worker's API validates these first).
    with pytest.raises(InvalidRequest, match="top_p"):
        await run(engine, GenerationRequest(prompt="Hi", max_tokens=4, top_p=0.0))
    # The engine is fine afterwards.
    assert ids_of(await run(engine, GenerationRequest(prompt="Hi", max_tokens=3)))


async def test_an_unknown_engine_arg_fails_the_load_naming_it(tiny_model: Path) -> None:
    bad = create_engine("vllm", model=str(tiny_model), engine_args={"max_model_length": "64"})
    with pytest.raises(ValueError, match="max_model_length") as refused:
        await bad.load()  # vLLM is imported already: this builds nothing
    assert "did you mean max_model_len" in str(refused.value)
    bad_value = create_engine("vllm", model=str(tiny_model), engine_args={"enforce_eager": "x"})
    with pytest.raises(ValueError, match="enforce_eager must be true or false"):
        await bad_value.load()
    await bad.close()


async def test_closing_leaves_no_engine_process(engine: VllmEngine, vx: Any) -> None:
    """Last in the module: close the shared engine (its fixture's close is then a no-op)."""
    import psutil

    mine = vx.vllm_processes(psutil.Process())
    assert [p.name() for p in mine] == ["VLLM::EngineCore"]
    await engine.close()
    assert vx.alive(mine) == []
    assert vx.vllm_processes(psutil.Process()) == []
    with pytest.raises((InvalidRequest, EngineDead)):
        await run(engine, GenerationRequest(prompt="Hi", max_tokens=3))

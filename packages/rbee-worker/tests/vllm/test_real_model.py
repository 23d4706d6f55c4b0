"""The vllm engine on a real model (SmolLM2-135M-Instruct, converted from its GGUF file), against
the transformers engine and transformers' own ``generate``.

Greedy decoding is the same computation on both engines (float32 weights, float32 arithmetic on
vLLM's CPU build), so the token ids must be equal, and the answers right. Both engines build the
prompt with the shared code (``engines._prompt``), from the tokenizer each loaded itself; the
prompt ids are checked equal, and equal to what vLLM's own OpenAI server renders from the same
messages (so a benchmark against ``vllm serve`` sends the model the same tokens).

One vLLM engine is built for the module (30-60 s); the last test closes it and checks that no
vLLM process is left.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here (nox -s tests_vllm runs these)", allow_module_level=True
    )

# As in test_vllm_engine: vLLM and torch warn about their own internals while they import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for _module in ("vllm", "vllm.engine.arg_utils", "vllm.v1.engine.async_llm"):
        importlib.import_module(_module)

from rbee_worker.engines import ChatTurn, Delta, GenerationRequest, create_engine
from rbee_worker.engines._prompt import prompt_ids
from rbee_worker.engines.transformers import TransformersEngine
from rbee_worker.engines.vllm import VllmEngine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.anyio,
    # Whichever test runs first builds the engine (import + build, on two busy cores).
    pytest.mark.timeout(420),
    # vLLM's shutdown leaves a ZMQ context for the garbage collector.
    pytest.mark.filterwarnings("ignore:Unclosed context:ResourceWarning"),
]

#: (question, a word its answer must contain): questions SmolLM2-135M answers right greedily
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
]

#: conversations whose prompts both engines must build alike: the template's default system
#: message, one of our own, and several turns
CONVERSATIONS = {
    "user": [ChatTurn("user", "What is the capital of France?")],
    "system": [
        ChatTurn("system", "You are a terse geography teacher."),
        ChatTurn("user", "Name the capital of Japan."),
    ],
    "turns": [
        ChatTurn("user", "Hi!"),
        ChatTurn("assistant", "Hello! How can I help you today?"),
        ChatTurn("user", "What do bees make? Answer in one word."),
    ],
}

#: the vLLM engine's context here: short, so its KV cache is small (prompts are ~40 tokens)
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
async def vllm_engine(smollm2_model: Path) -> AsyncIterator[VllmEngine]:
    built = create_engine(
        "vllm",
        model=str(smollm2_model),
        dtype="float32",
        engine_args={"max_model_len": str(MAX_MODEL_LEN)},
    )
    assert isinstance(built, VllmEngine)
    started = time.perf_counter()
    await built.load()
    print(f"vllm engine built on SmolLM2 in {time.perf_counter() - started:.1f} s")
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture(scope="module")
async def transformers_engine(smollm2_model: Path) -> TransformersEngine:
    built = create_engine("transformers", model=str(smollm2_model), device="cpu")
    assert isinstance(built, TransformersEngine)
    started = time.perf_counter()
    await built.load()
    print(f"transformers engine loaded SmolLM2 in {time.perf_counter() - started:.1f} s")
    return built


@pytest.fixture(scope="module")
def smol_reference(smollm2_model: Path) -> tuple[Any, Any]:
    """SmolLM2 and its tokenizer as transformers itself loads them: the yardstick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(smollm2_model, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(smollm2_model, local_files_only=True)


def chat(turns: Sequence[ChatTurn] | str, max_tokens: int = 48, **kwargs: Any) -> GenerationRequest:
    messages = [ChatTurn("user", turns)] if isinstance(turns, str) else list(turns)
    return GenerationRequest(messages=messages, max_tokens=max_tokens, **kwargs)


async def run(engine: Any, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def conversation(request: GenerationRequest) -> list[dict[str, str]]:
    assert request.messages is not None
    return [{"role": m.role, "content": m.content} for m in request.messages]


def template_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt as transformers' ``apply_chat_template`` tokenizes it in one call."""
    encoded = tokenizer.apply_chat_template(
        conversation(request), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(i) for i in encoded]


def generate(reference: tuple[Any, Any], prompt: list[int], max_new_tokens: int) -> list[int]:
    import torch

    model, _ = reference
    inputs = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=max_new_tokens,
        )
    return [int(i) for i in out[0, len(prompt) :]]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
async def test_both_engines_build_the_same_prompt(
    vllm_engine: VllmEngine,
    transformers_engine: TransformersEngine,
    smol_reference: tuple[Any, Any],
    name: str,
) -> None:
    """The prompt ids each engine builds, with the tokenizer it loaded itself (vLLM's tokenizer
    object is vLLM's own wrapper), are the same ids; so are those of transformers'
    ``apply_chat_template`` and of vLLM's OpenAI server's chat rendering. The engines do not
    publish their prompt ids, so this reads their tokenizers (a private attribute), and checks
    the public ``prompt_tokens`` count of a real generation too."""
    # What vLLM's OpenAI server does with a chat request's messages (vllm.renderers.hf).
    safe_apply_chat_template = importlib.import_module("vllm.renderers.hf").safe_apply_chat_template
    _, tokenizer = smol_reference
    request = chat(CONVERSATIONS[name], max_tokens=1, temperature=0)
    expected = template_ids(tokenizer, request)
    ours_vllm = prompt_ids(vllm_engine._tokenizer, request, MAX_MODEL_LEN)
    ours_transformers = prompt_ids(transformers_engine._tokenizer, request, MAX_MODEL_LEN)
    served = safe_apply_chat_template(
        vllm_engine._llm.model_config,
        vllm_engine._tokenizer,
        conversation(request),
        tokenize=True,
        add_generation_prompt=True,
    )
    assert ours_vllm == ours_transformers == expected == list(served)
    assert tokenizer.decode(expected).endswith("<|im_start|>assistant\n")

    on_vllm = await run(vllm_engine, request)
    on_transformers = await run(transformers_engine, request)
    assert on_vllm[-1].prompt_tokens == on_transformers[-1].prompt_tokens == len(expected)


@pytest.mark.parametrize(("question", "word"), QUESTIONS, ids=[w for _, w in QUESTIONS])
async def test_greedy_answers_are_right_and_equal_on_both_engines(
    vllm_engine: VllmEngine,
    transformers_engine: TransformersEngine,
    smol_reference: tuple[Any, Any],
    question: str,
    word: str,
) -> None:
    _, tokenizer = smol_reference
    request = chat(question, temperature=0)
    on_vllm = await run(vllm_engine, request)
    on_transformers = await run(transformers_engine, request)
    expected = generate(smol_reference, template_ids(tokenizer, request), request.max_tokens)

    assert ids_of(on_vllm) == ids_of(on_transformers) == expected
    assert expected[-1] == tokenizer.eos_token_id  # the model ended its answer itself
    assert on_vllm[-1].finish_reason == on_transformers[-1].finish_reason == "stop"
    text = "".join(d.text for d in on_vllm)
    assert word in text, text
    assert text == "".join(d.text for d in on_transformers)
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


async def test_sixty_four_greedy_tokens_equal_on_both_engines(
    vllm_engine: VllmEngine,
    transformers_engine: TransformersEngine,
    smol_reference: tuple[Any, Any],
) -> None:
    """A long continuation (no EOS within 64 tokens), every token of it compared. Also prints
    each engine's decoding speed on this model, one request at a time (never a verdict)."""
    _, tokenizer = smol_reference
    request = chat("Write a short story about a bee.", max_tokens=64, temperature=0)
    speeds = []
    results = []
    for engine in (vllm_engine, transformers_engine):
        started = time.perf_counter()
        deltas = await run(engine, request)
        seconds = time.perf_counter() - started
        results.append(ids_of(deltas))
        assert deltas[-1].finish_reason == "length"
        speeds.append(f"{engine.name}: 64 tokens in {seconds:.2f} s ({64 / seconds:.1f}/s)")
    expected = generate(smol_reference, template_ids(tokenizer, request), 64)
    assert len(expected) == 64
    assert results[0] == results[1] == expected
    print("; ".join(speeds))


async def test_seeded_sampling_is_reproducible(vllm_engine: VllmEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return chat("Write a short poem about bees.", 24, temperature=0.8, seed=seed)

    first = ids_of(await run(vllm_engine, sampled(7)))
    again = ids_of(await run(vllm_engine, sampled(7)))
    other = ids_of(await run(vllm_engine, sampled(8)))
    assert len(first) > 8
    assert first == again
    assert first != other


async def test_closing_leaves_no_engine_process(vllm_engine: VllmEngine, vx: Any) -> None:
    """Last in the module: close the shared engine (its fixture's close is then a no-op)."""
    mine = vx.vllm_processes(os.getpid())
    assert [p.name() for p in mine] == ["VLLM::EngineCore"]
    await vllm_engine.close()
    assert vx.alive(mine) == []
    assert vx.vllm_processes(os.getpid()) == []

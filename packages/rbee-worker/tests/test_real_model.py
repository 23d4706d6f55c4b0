"""The transformers engine on a real model: SmolLM2-135M-Instruct, converted from its GGUF file.

The tiny random model proves the plumbing; these tests know the right answer. Greedy chat answers
to factual questions name the expected word, and they are token for token what transformers' own
``generate(do_sample=False)`` makes from the prompt its chat template builds. The questions are
ones this 135M model answers correctly when decoding greedily (it gets others wrong: the capital of
Italy, the largest planet).

The model is loaded twice for the module: by the engine, and by transformers itself as the
yardstick (a few seconds each, once converted; ``smollm2_model`` converts it once per cache).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rbee_worker.engines import ChatTurn, Delta, GenerationRequest, create_engine
from rbee_worker.engines.transformers import TransformersEngine

pytestmark = [
    pytest.mark.anyio,
    # Each test is a few seconds of decoding on an idle 2-core machine, but OpenMP's two threads
    # slow down many times over when the cores are shared: room for a busy CI machine.
    pytest.mark.timeout(240),
]

#: (question, a word its answer must contain); the model ends each answer by itself (EOS)
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
]

#: SmolLM2's chat template (ChatML, with its own default system message), written out: the
#: template must have survived the conversion from GGUF unchanged
CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
async def smol_engine(smollm2_model: Path) -> AsyncIterator[TransformersEngine]:
    engine = create_engine("transformers", model=str(smollm2_model), device="cpu")
    assert isinstance(engine, TransformersEngine)
    started = time.perf_counter()
    await engine.load()
    print(f"transformers engine loaded SmolLM2 in {time.perf_counter() - started:.1f} s")
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="module")
def smol_reference(smollm2_model: Path) -> tuple[Any, Any]:
    """SmolLM2 and its tokenizer as transformers itself loads them: the yardstick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(smollm2_model, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(smollm2_model, local_files_only=True)


def chat(question: str, max_tokens: int = 48, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(messages=[ChatTurn("user", question)], max_tokens=max_tokens, **kwargs)


async def run(engine: TransformersEngine, request: GenerationRequest) -> list[Delta]:
    async with engine.stream(request) as deltas:
        return [delta async for delta in deltas]


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def template_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt as transformers' ``apply_chat_template`` tokenizes it (in one call, not the
    engines' text-then-tokenize path)."""
    assert request.messages is not None
    conversation = [{"role": m.role, "content": m.content} for m in request.messages]
    encoded = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
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


def test_the_chat_template_survived_the_conversion(smol_reference: tuple[Any, Any]) -> None:
    _, tokenizer = smol_reference
    question = QUESTIONS[0][0]
    ids = template_ids(tokenizer, chat(question))
    assert tokenizer.decode(ids) == CHATML.format(question=question)
    # The ChatML markers are single special tokens, not text spelled out in pieces.
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id


@pytest.mark.parametrize(("question", "word"), QUESTIONS, ids=[w for _, w in QUESTIONS])
async def test_greedy_answers_are_right_and_equal_transformers_generate(
    smol_engine: TransformersEngine,
    smol_reference: tuple[Any, Any],
    question: str,
    word: str,
) -> None:
    _, tokenizer = smol_reference
    request = chat(question, temperature=0)
    deltas = await run(smol_engine, request)
    text = "".join(d.text for d in deltas)
    assert word in text, text
    assert deltas[-1].finish_reason == "stop"  # the model ended its answer (EOS)

    prompt = template_ids(tokenizer, request)
    assert deltas[-1].prompt_tokens == len(prompt)
    expected = generate(smol_reference, prompt, request.max_tokens)
    assert expected[-1] == tokenizer.eos_token_id
    assert ids_of(deltas) == expected
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


async def test_sixty_four_greedy_tokens_equal_transformers_generate(
    smol_engine: TransformersEngine, smol_reference: tuple[Any, Any]
) -> None:
    """A long continuation (no EOS within 64 tokens): every token of it equals ``generate``'s.
    Also prints the engine's decoding speed on this model (never a verdict: see conftest)."""
    _, tokenizer = smol_reference
    request = chat("Write a short story about a bee.", max_tokens=64, temperature=0)
    started = time.perf_counter()
    deltas = await run(smol_engine, request)
    seconds = time.perf_counter() - started
    ids = ids_of(deltas)
    assert len(ids) == 64 and deltas[-1].finish_reason == "length"
    assert ids == generate(smol_reference, template_ids(tokenizer, request), 64)
    print(f"transformers engine: 64 tokens in {seconds:.2f} s, {64 / seconds:.1f} tokens/s")


async def test_seeded_sampling_is_reproducible(smol_engine: TransformersEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return chat("Write a short poem about bees.", 32, temperature=0.8, seed=seed)

    first = ids_of(await run(smol_engine, sampled(7)))
    again = ids_of(await run(smol_engine, sampled(7)))
    other = ids_of(await run(smol_engine, sampled(8)))
    greedy = ids_of(
        await run(smol_engine, chat("Write a short poem about bees.", 32, temperature=0))
    )
    assert len(first) > 8
    assert first == again
    assert first != other
    assert first != greedy  # it did sample

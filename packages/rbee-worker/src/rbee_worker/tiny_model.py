"""Build a tiny random-weight Llama model and its tokenizer, locally, in a few seconds.

Tests and benchmarks need a real model directory (``config.json``, ``model.safetensors``, a
tokenizer with a chat template) that transformers and vLLM load like any other, but nothing may be
downloaded on these machines. So we train a byte-level BPE tokenizer on a small built-in corpus and
initialise a 2-layer Llama with random weights from a fixed seed. Attention head size is 64
(hidden 256 / 4 heads) because vLLM's CPU backend supports no other: the same directory serves
both engines, and their greedy tokens can be compared.

    python -m rbee_worker.tiny_model DIR      (also: rbee-worker build-tiny-model DIR)

The output is deterministic for a given seed: same tokenizer, same weights, same files.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "MODEL_CARD", "build_tiny_model", "main"]

#: The file next to the weights that says what this directory is (the hive reads it too).
MODEL_CARD = "rbee-model.json"

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>"]
VOCAB_SIZE = 1024

#: ``<|role|>\ncontent</s>`` per message; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A few paragraphs of plain English: enough for BPE to learn common words and sub-words, so that
# prompts tokenize into a realistic number of tokens. The chat markers are in it so they merge.
_CORPUS = """\
The bees leave the hive at dawn and return before the evening light fades over the hills.
A queen rules the colony, the workers gather nectar, and the keeper watches from a distance.
Every worker knows its task: some build the comb, some guard the entrance, some feed the young.
When the weather turns cold, the colony gathers in a tight cluster to keep the queen warm.

A language model reads a sequence of tokens and predicts the next one, one step at a time.
The text is split into tokens by a tokenizer, and each token is mapped to a number.
Sampling with a temperature makes the output more varied; a temperature of zero picks the most
likely token every time, which is called greedy decoding. Top-k and top-p sampling keep only the
most likely tokens before drawing one at random. A fixed seed makes the random draw repeatable.

The server accepts a request, places it in a queue, and streams the answer back as it is made.
If the queue is full, the request is refused at once, so that no client waits forever.
A client may cancel a request at any time; the server then stops the work between two tokens.
Hello, how are you today? I am fine, thank you. What is the capital of France? It is Paris.
Tell me a short story about a small robot who wanted to learn how to paint the sea.
Once upon a time there was a little robot. It lived in a workshop by the sea, and every morning
it looked at the waves and wondered how to capture their colour on a canvas.
<|system|>
You are a helpful assistant.
<|user|>
Write one sentence about bees.
<|assistant|>
Bees make honey and help flowers grow.

In spring the meadow is full of clover, and the orchard trees are white with blossom. Farmers
carry their hives from field to field, because the flowers need visitors as much as the bees need
food. A single bee visits hundreds of flowers in a morning and carries pollen on its legs.
Honey is stored in wax cells; the workers fan their wings to dry it until it is thick and sweet.

Computers follow instructions written by people. A program is a list of steps, and a process is a
program that is running. Processes talk to each other over the network by sending messages to a
port on a machine. A worker process loads a model into memory, which may take a few seconds or a
few minutes, and then answers requests until it is stopped. Logs record what happened and when.
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in text, and so do dates like 12 May.

Questions and answers: Why is the sky blue? Because air scatters blue light more than red light.
How many legs does a spider have? Eight. Which planet is closest to the sun? Mercury is.
Please summarise the following paragraph in one line. Translate this sentence into French.
Thank you for your help! You are welcome. Good morning, good afternoon, good night.
"""


def _corpus() -> list[str]:
    lines = _CORPUS.splitlines()
    # Every printable ASCII character on its own, so none of them is left to a rare byte merge.
    return [*lines, string.printable, " ".join(string.ascii_letters), " ".join(string.digits)]


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols: any UTF-8 text tokenizes, nothing falls back to <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # A plain prompt starts with <s>, as Llama's tokenizer does; the chat template writes its own.
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Llama model + tokenizer into ``directory``; return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_tokenizer(),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        num_hidden_layers=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # transformers 5 calls ``torch_dtype`` ``dtype``; config.json says float32 either way.
        dtype="float32",
    )
    # fork_rng: seed the initialisation without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card = {"name": out.name or "tiny", "source": "built-tiny", "seed": seed}
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rbee-worker build-tiny-model",
        description="Build a tiny random-weight Llama model and tokenizer (nothing downloaded).",
    )
    parser.add_argument("directory", type=Path, help="where to write the model")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    path = build_tiny_model(args.directory, seed=args.seed)
    elapsed = time.perf_counter() - started
    print(f"built tiny model in {path} ({elapsed:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

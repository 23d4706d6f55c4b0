"""Load time, time to first token and tokens/s of the vllm and transformers engines, on the tiny
model, one stream and 8 streams at once. Run it where vLLM is installed (the CPU build: see
README.md), on a quiet machine:

    python packages/rbee-worker/vllm-cpu/bench_engines.py [--tokens 256] [--runs 3]

Engines are driven directly (``Engine.stream``), not through HTTP: these are the engines' own
numbers. Each engine runs in a fresh process, so its load time includes importing its libraries
(vLLM: 10-20 s of it), as a worker's does. Greedy decoding; the tiny random-weight model rarely
emits its end token, and a stream that does is counted with the tokens it made. The transformers
engine runs its default of one generation at a time, so its "8 streams" queue behind one
another; vLLM batches them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from rbee_worker.engines import GenerationRequest, create_engine

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


async def one(engine: Any, prompt: str, tokens: int) -> tuple[int, float, float]:
    """(tokens made, seconds to the first token, seconds in all)."""
    request = GenerationRequest(prompt=prompt, max_tokens=tokens, temperature=0)
    started = time.perf_counter()
    first = 0.0
    made = 0
    async with engine.stream(request) as deltas:
        async for delta in deltas:
            if delta.token_ids and not made:
                first = time.perf_counter() - started
            made += len(delta.token_ids)
    return made, first, time.perf_counter() - started


async def bench(name: str, model: Path, tokens: int, runs: int) -> dict[str, float]:
    engine = create_engine(name, model=str(model), device="cpu" if name != "vllm" else None)
    started = time.perf_counter()
    await engine.load()
    load = time.perf_counter() - started
    try:
        await one(engine, "warm up", 16)
        single, ttfts = [], []
        for i in range(runs):
            made, first, took = await one(engine, PROMPTS[i % len(PROMPTS)], tokens)
            single.append(made / took)
            ttfts.append(first)
        batch = []
        for _ in range(runs):
            results: list[tuple[int, float, float]] = []

            async def go(prompt: str, out: list[tuple[int, float, float]] = results) -> None:
                out.append(await one(engine, prompt, tokens))

            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for prompt in PROMPTS:
                    tg.start_soon(go, prompt)
            batch.append(sum(r[0] for r in results) / (time.perf_counter() - began))
    finally:
        await engine.close()
    return {
        "load_s": load,
        "ttft_ms": statistics.median(ttfts) * 1000,
        "single_tok_s": statistics.median(single),
        "eight_tok_s": statistics.median(batch),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--engines", default="vllm,transformers")
    parser.add_argument("--model", type=Path, default=None, help="default: build the tiny model")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-engine child
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.one is not None:
        row = anyio.run(bench, args.one, args.model, args.tokens, args.runs)
        print(json.dumps(row), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            built = [sys.executable, "-m", "rbee_worker.tiny_model", str(Path(tmp) / "tiny")]
            subprocess.run(built, check=True)
            model = Path(tmp) / "tiny"
        rows = {}
        for name in args.engines.split(","):
            child = [sys.executable, __file__, "--one", name, "--model", str(model)]
            child += ["--tokens", str(args.tokens), "--runs", str(args.runs)]
            out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows[name] = json.loads(out.strip().splitlines()[-1])
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    print(f"\ntiny model, {args.tokens} tokens per stream, greedy, median of {args.runs}")
    print(
        f"{'engine':<14}{'load s':>9}{'TTFT ms':>10}{'1 stream tok/s':>17}{'8 streams tok/s':>18}"
    )
    for name, row in rows.items():
        print(
            f"{name:<14}{row['load_s']:>9.1f}{row['ttft_ms']:>10.1f}"
            f"{row['single_tok_s']:>17.0f}{row['eight_tok_s']:>18.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

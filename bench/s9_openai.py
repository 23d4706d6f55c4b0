"""9. The OpenAI API against vLLM's: the same OpenAI request, ``POST /v1/completions`` with
``stream: true``, sent to rbee's queen (client -> queen -> worker on the vllm engine) and to
vLLM's own OpenAI server, on the same model.

Everything but the endpoint is section 7's (``bench/s7_vllm.py``): the same environment with
vLLM's CPU build, the same two models (the tiny random-weight one, 128 tokens a request, and
SmolLM2-135M-Instruct, 64), the same engine settings on both servers (float32,
``enforce_eager``, a 1 GiB KV cache, 8 sequences at most, one OpenMP thread each), the same 8
plain prompts, temperature 0, 1 request at a time and 8 at once. What differs from section 7 is
rbee's side: it speaks OpenAI's wire format too (the queen turns the request into one completion
job and its events into OpenAI's chunks), so both sides are read by one client: the body as it
arrives, decoded as server-sent events (``data: {...}`` lines, ending with ``data: [DONE]``),
with ``stream_options.include_usage`` for the token count. The queen is asked with the keeper's
token as the API key. Tokens/s = completion tokens (as the usage chunk reports them) / wall time
of the round; time to first token = request sent -> first chunk carrying a choice. What the
OpenAI layer itself costs is measured in the same run against rbee's own jobs API on the same
queen and worker (section 7's requests: ``POST /v1/jobs`` ``infer`` answered with the job's
stream); the
three take turns, round by round, in an order that rotates. Without a vLLM environment the
section is skipped, as section 7 is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from jobproto import SSEDecoder

from ._client import http_client
from ._ctx import Ctx
from ._procs import Proc, free_port
from ._rbee import keeper_headers, register_hive, start_queen, start_worker, wait_ready
from ._report import Row, Section
from ._stats import ratio_stat, stat
from .s7_vllm import (
    ENGINE_ENV,
    PROMPTS,
    START_TIMEOUT,
    Model,
    _build_model,
    _rbee_one,
    _vllm_argv,
    _wait_http,
    find_vllm_python,
    smollm2_dir,
)

__all__ = ["CompletionError", "completion", "run"]

#: rbee's OpenAI API, vLLM's server, and rbee's jobs API (what the OpenAI layer is measured
#: against); each round of the measurement runs all three, in an order that rotates
SIDES = ("openai", "vllm", "jobs")


class CompletionError(RuntimeError):
    """A completion did not answer 200 or did not end as OpenAI's stream does."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


async def completion(
    http: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    headers: dict[str, str] | None = None,
) -> tuple[int, float]:
    """(completion tokens, seconds to the first chunk with a choice) of one streamed
    ``POST {url}/v1/completions``, read as OpenAI's stream: ``data:`` events, each a JSON chunk,
    the last ``[DONE]``; the usage chunk (``stream_options.include_usage``) has the count."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    tokens: int | None = None
    done = False
    decoder = SSEDecoder()
    async with http.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise CompletionError(
                f"POST {url}/v1/completions: {response.status_code} {response.text[:300]}",
                response.status_code,
            )
        async for chunk in response.aiter_raw():
            at = time.perf_counter()
            for sse in decoder.feed(chunk):
                if not sse.data:
                    continue
                if sse.data == "[DONE]":
                    done = True
                    continue
                data: dict[str, Any] = json.loads(sse.data)
                if "error" in data:
                    raise CompletionError(f"{url}: error in the stream: {data['error']}")
                if data.get("choices") and not first:
                    first = at - started
                usage = data.get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    if not done or tokens is None:
        raise CompletionError(f"{url}: the stream ended without a usage chunk and [DONE]")
    return tokens, first


async def _one(
    http: httpx.AsyncClient, side: str, server: Proc, model: Model, prompt: str
) -> tuple[int, float]:
    """(tokens, seconds to the first token) of one request to ``side``."""
    if side == "jobs":
        return await _rbee_one(http, server, model, prompt)
    return await completion(http, server.url, model.name, prompt, model.tokens)


async def _round(
    http: httpx.AsyncClient, side: str, server: Proc, model: Model, concurrency: int, start: int
) -> tuple[float, list[float]]:
    """(tokens/s, TTFTs in ms) of ``concurrency`` requests at once."""
    out: list[tuple[int, float]] = []

    async def go(prompt: str) -> None:
        out.append(await _one(http, side, server, model, prompt))

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(go, PROMPTS[(start + i) % len(PROMPTS)])
    elapsed = time.perf_counter() - began
    return sum(t for t, _ in out) / elapsed, [f * 1e3 for _, f in out]


async def _pair(ctx: Ctx, python: str, tmp: Path, model: Model) -> list[Row]:
    """Start vLLM's server and an rbee queen + worker on ``model``, measure, stop them."""
    ctx.log(f"openai: starting vLLM's server and an rbee worker on {model.label} ({python})")
    port = free_port()
    vllm_server = ctx.procs.start(
        f"openai-vllm-server-{model.name}",
        _vllm_argv(python, model, port),
        prefix=None,
        port=port,
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", **ENGINE_ENV},
    )
    worker = start_worker(
        ctx,
        f"openai-worker-{model.name}",
        model_name=model.name,
        python=python,
        engine="vllm",
        model=str(model.path),
        max_concurrency=8,
        timeout=START_TIMEOUT,
        env={"HF_HUB_OFFLINE": "1", **ENGINE_ENV},
    )
    queen: Proc | None = None
    try:
        async with http_client(timeout=300.0) as http:
            log = ctx.procs.log_dir / f"{vllm_server.name}.log"
            await _wait_http(http, f"{vllm_server.url}/health", vllm_server, log)
            await wait_ready(http, worker, within=START_TIMEOUT)
            state = tmp / f"queen-{model.name}"
            queen = start_queen(ctx, state)
            # The keeper's token is the queen's API key (vLLM's server ignores it).
            http.headers.update(keeper_headers(state))
            await register_hive(http, queen, state, {model.name: worker}, engine="vllm")
            ctx.log(f"openai: both servers ready on {model.label}")
            servers = {"openai": queen, "vllm": vllm_server, "jobs": queen}
            return await _measure(ctx, http, servers, model)
    finally:
        # The next pair gets the cores and the memory to itself.
        for proc in (queen, worker, vllm_server):
            if proc is not None:
                ctx.procs.stop(proc)


async def _measure(
    ctx: Ctx, http: httpx.AsyncClient, servers: dict[str, Proc], model: Model
) -> list[Row]:
    for side in SIDES:  # warm up
        for conc in (1, 8):
            await _round(http, side, servers[side], model, conc, 0)
    rows: list[Row] = []
    for conc, rounds in ((1, model.rounds_1), (8, model.rounds_8)):
        rate: dict[str, list[float]] = {side: [] for side in SIDES}
        ttft: dict[str, list[float]] = {side: [] for side in SIDES}
        for rep in range(rounds):
            turn = rep % len(SIDES)
            for side in SIDES[turn:] + SIDES[:turn]:
                r, t = await _round(http, side, servers[side], model, conc, rep)
                rate[side].append(r)
                ttft[side].append(stat(t).median)
        label = f"{model.label}, {conc} concurrent request{'s' if conc > 1 else ''}"
        added = [a - b for a, b in zip(ttft["openai"], ttft["vllm"], strict=True)]
        layer = [a - b for a, b in zip(ttft["openai"], ttft["jobs"], strict=True)]
        jobs_api = "rbee's jobs API (`POST /v1/jobs` answered with the stream)"
        rows += [
            Row(
                f"tokens/s, {label}",
                "tokens/s",
                stat(rate["openai"]),
                stat(rate["vllm"]),
                ratio_stat(rate["openai"], rate["vllm"]),
            ),
            Row(
                f"time to first token, {label}",
                "ms",
                stat(ttft["openai"]),
                stat(ttft["vllm"]),
                ratio_stat(ttft["openai"], ttft["vllm"]),
            ),
            Row(
                f"time to first token added by rbee, {label}",
                "ms",
                stat(added),
                base_name="0 by definition",
            ),
            Row(
                f"tokens/s against rbee's jobs API, {label}",
                "tokens/s",
                stat(rate["openai"]),
                stat(rate["jobs"]),
                ratio_stat(rate["openai"], rate["jobs"]),
                base_name=jobs_api,
            ),
            Row(
                f"time to first token added by the OpenAI layer, {label}",
                "ms",
                stat(layer),
                base_name="0 by definition",
            ),
        ]
        ctx.log(
            f"openai {label}: OpenAI API {stat(rate['openai']).median:.1f} tok/s, vLLM"
            f" {stat(rate['vllm']).median:.1f} tok/s, jobs API {stat(rate['jobs']).median:.1f}"
            f" tok/s; TTFT added {stat(added).median:.2f} ms (by the OpenAI layer"
            f" {stat(layer).median:.2f} ms)"
        )
    return rows


async def run(ctx: Ctx, args: argparse.Namespace) -> Section:
    sec = Section(
        key="openai",
        title="9. The OpenAI API against vLLM's (CPU build)",
        ours_name="rbee's `POST /v1/completions` (client -> queen -> worker)",
        base_name="vLLM's own OpenAI server, `POST /v1/completions`",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    python = find_vllm_python(getattr(args, "vllm_python", None))
    if python is None:
        sec.skipped = (
            "vLLM is not installed: no environment with vllm and rbee_worker was found"
            " (.nox/bench-vllm, .nox/tests_vllm, .venv-vllm, /tmp/vllm-venv; or pass"
            " --vllm-python)."
        )
        return sec
    sec.extra["python"] = python
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-openai-", dir=ctx.procs.log_dir))
    tiny = tmp / "tiny"
    await anyio.to_thread.run_sync(_build_model, python, tiny)
    repeats = ctx.repeats
    models = [Model("tiny model", "tiny", tiny, 128, max(repeats, 8), repeats)]
    real, why = await anyio.to_thread.run_sync(smollm2_dir, getattr(args, "smollm2", None), python)
    if real is None:
        sec.notes.append(f"SmolLM2-135M-Instruct was not measured: {why}")
        ctx.log(f"openai: SmolLM2-135M-Instruct is not measured: {why}")
    else:
        models.append(Model("SmolLM2-135M-Instruct", "smollm2", real, 64, repeats, repeats))
    measured: dict[str, Any] = {}
    for model in models:
        began = time.perf_counter()
        try:
            sec.rows += await _pair(ctx, python, tmp, model)
        except CompletionError as exc:
            # Said in the report, and the other sections' figures are kept.
            sec.skipped = f"failed on the {model.label}: {exc}"
            ctx.log(f"openai: {sec.skipped}")
            return sec
        measured[model.name] = {
            "path": str(model.path),
            "tokens": model.tokens,
            "seconds": round(time.perf_counter() - began, 1),
        }
        ctx.log(f"openai: {model.label} took {measured[model.name]['seconds']:.0f} s")
    sec.extra["models"] = measured
    return sec

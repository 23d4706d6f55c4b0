"""``rbee-worker --engine vllm`` as a process of its own, started by hand (no hive).

One worker for the module; the last test kills it outright (SIGKILL to the worker alone, not its
process group, as an OOM killer would) and checks that vLLM's engine core does not outlive it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here (nox -s tests_vllm runs these)", allow_module_level=True
    )

from jobproto import Cancelled, Data, JobEvent, Narration
from jobproto.client import JobClient
from rbee_contracts.worker_cli import parse_listening_line

pytestmark = [pytest.mark.vllm]


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


#: prompts that start with this generate max_tokens tokens, EOS or not (``_WORKER``)
HOLD = "[hold] "
#: ``rbee-worker`` with one test-only change: vLLM ignores EOS for the prompts that start with
#: ``HOLD``, so that a test can keep sequences running in vLLM's scheduler for as long as it
#: needs (a greedy generation of the random tiny model may end at EOS after a few tokens)
_WORKER = f"""
from rbee_worker.engines import vllm

def sampling_kwargs(request, budget):
    kwargs = _sampling_kwargs(request, budget)
    if (request.prompt or "").startswith({HOLD!r}):
        kwargs["ignore_eos"] = True
    return kwargs

_sampling_kwargs, vllm.sampling_kwargs = vllm.sampling_kwargs, sampling_kwargs
from rbee_worker.app import main
raise SystemExit(main())
"""


@pytest.fixture(scope="module")
def worker(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, vx: Any) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    argv = [sys.executable, "-c", _WORKER, "--model", str(tiny_model)]
    argv += ["--engine", "vllm", "--port", "0", "--worker-id", "w-vllm"]
    with log.open("wb") as err:
        # Its own group, so that the cleanup below can reach everything it started; the test
        # itself signals the worker's pid alone.
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, env=vx.env(), start_new_session=True
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    listening = parse_listening_line(line.rstrip("\n"))
    assert listening is not None, line
    port = listening["port"]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the worker exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{url}/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    vx.wait_until(ready, 360, "the vllm worker to be ready", interval=0.5)
    print(f"worker ready in {time.perf_counter() - started:.1f} s")
    try:
        yield WorkerProcess(proc, url, log)
    finally:
        with_children = vx.vllm_processes(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        vx.kill_all(vx.alive(with_children))
        proc.stdout.close()


@pytest.mark.timeout(420)
def test_ready_reports_the_vllm_engine(worker: WorkerProcess) -> None:
    ready = httpx.get(f"{worker.url}/ready").json()
    assert ready["ready"] is True and ready["engine"] == "vllm" and ready["model"] == "tiny"
    info = httpx.get(f"{worker.url}/v1/worker").json()
    assert info["max_concurrency"] == 8 and info["engine_requests"] == 0
    assert httpx.get(f"{worker.url}/health").json() == {"status": "ok"}
    # The engine core is the worker's child, and the orphan guard runs in it.
    names = [p.name() for p in psutil.Process(worker.proc.pid).children(recursive=True)]
    assert "VLLM::EngineCore" in names, names
    assert "rbee orphan guard: this process ends when worker pid" in worker.log_text()


@pytest.mark.anyio
async def test_infer_streams_and_totals(worker: WorkerProcess) -> None:
    async with JobClient(worker.url) as client:
        job = await client.create("infer", prompt="Once upon a time", max_tokens=40, temperature=0)
        tokens: list[int] = []
        text = ""
        async with aclosing(client.events(job.job_id)) as events:
            async for item in events:
                assert isinstance(item, JobEvent)
                if isinstance(item.event, Data):
                    tokens += item.event.payload["token_ids"]
                    text += item.event.payload["text"]
        status = await client.status(job.job_id)
    result = status.result
    assert result["engine"] == "vllm" and result["model"] == "tiny"
    assert result["completion_tokens"] == len(tokens) == 40
    assert result["finish_reason"] == "length" and result["text"] == text
    assert result["prompt_tokens"] > 0 and result["ttft_ms"] > 0 and result["tokens_per_s"] > 0


@pytest.mark.anyio
async def test_cancelling_the_job_aborts_it_in_the_engine(worker: WorkerProcess) -> None:
    async with JobClient(worker.url) as client:
        job = await client.create("infer", prompt="Tell me a story", max_tokens=480, temperature=0)
        seen, terminal = 0, None
        async with aclosing(client.events(job.job_id)) as events:
            async for item in events:
                assert isinstance(item, JobEvent)
                if isinstance(item.event, Data) and terminal is None and seen >= 0:
                    seen += len(item.event.payload["token_ids"])
                    if seen >= 5:
                        status = await client.cancel(job.job_id)
                        assert status.state == "cancelled"
                        seen = -1
                if item.terminal:
                    terminal = item.event
    assert isinstance(terminal, Cancelled)
    # The job id is vLLM's request id: that request was aborted, and vLLM holds none any more.
    with anyio.fail_after(10):
        while f"request {job.job_id} aborted in the engine" not in worker.log_text():
            await anyio.sleep(0.05)
    async with httpx.AsyncClient(base_url=worker.url) as http:
        info = (await http.get("/v1/worker")).json()
    assert info["engine_requests"] == 0


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_queued_requests_wait_in_vllms_own_scheduler(worker: WorkerProcess) -> None:
    """Beyond max_concurrency (vLLM's max_num_seqs) the worker hands the queued requests to vLLM
    at once: vLLM holds them (``engine_requests``) and starts each in the step a sequence ends;
    the worker still counts and narrates them as queued."""
    running = 8  # the worker's default max_concurrency, checked by the first test
    narrations: list[str] = []
    async with JobClient(worker.url) as client, httpx.AsyncClient(base_url=worker.url) as http:
        # HOLD: no EOS ends them early, so the first `running` run until cancelled below (or for
        # all of their 480 tokens) and the last one waits in vLLM's queue meanwhile.
        jobs = [
            await client.create("infer", prompt=f"{HOLD}Story {i}", max_tokens=480, temperature=0)
            for i in range(running + 1)
        ]

        async def follow(job_id: str) -> None:
            async with aclosing(client.events(job_id)) as events:
                async for item in events:
                    if isinstance(item, JobEvent) and isinstance(item.event, Narration):
                        narrations.append(item.event.message)

        async with anyio.create_task_group() as tg:
            for job in jobs[:running]:
                tg.start_soon(follow, job.job_id)
            with anyio.fail_after(60):
                while (await http.get("/v1/worker")).json()["in_flight"] < running:
                    await anyio.sleep(0.02)
            tg.start_soon(follow, jobs[-1].job_id)
            # The queued request is vLLM's: without the hand-over it would hold only `running`.
            # (Polled: the worker counts it queued a moment before it has reached vLLM.)
            with anyio.fail_after(60):
                while True:
                    info = (await http.get("/v1/worker")).json()
                    if info["engine_requests"] > running:
                        break
                    await anyio.sleep(0.02)
            assert info["engine_requests"] == running + 1
            assert (info["in_flight"], info["queued"]) == (running, 1)
            for job in jobs:
                await client.cancel(job.job_id)
        with anyio.fail_after(10):
            while (info := (await http.get("/v1/worker")).json())["engine_requests"]:
                await anyio.sleep(0.05)
    assert (info["in_flight"], info["queued"]) == (0, 0)
    assert any("queued with 0 request(s) ahead" in n for n in narrations)


def test_a_worker_killed_outright_leaves_no_engine_process(worker: WorkerProcess, vx: Any) -> None:
    """Last: SIGKILL to the worker's pid alone. Its engine core notices (the orphan guard) and
    exits within a second or two; no process group signal is involved."""
    engine = vx.vllm_processes(worker.proc.pid)
    assert engine, "the worker has an engine core"
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    vx.wait_until(lambda: not vx.alive(engine), 15, "the engine core to exit after its worker")


def test_a_worker_killed_while_its_engine_is_built_leaves_nothing(
    tiny_model: Path, tmp_path: Path, vx: Any
) -> None:
    """SIGKILL while vLLM's engine core is still starting (before vLLM loads its plugins):
    the guard, started when the child imports the worker's module, ends it all the same."""
    argv = [sys.executable, "-m", "rbee_worker.app", "--model", str(tiny_model)]
    argv += ["--engine", "vllm", "--port", "0", "--worker-id", "w-killed-early"]
    with (tmp_path / "worker.log").open("wb") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, env=vx.env(), start_new_session=True
        )
    try:
        worker = psutil.Process(proc.pid)
        children = vx.wait_until(
            lambda: [c for c in worker.children() if "spawn_main" in " ".join(c.cmdline())],
            120,
            "vLLM to start its engine core",
            interval=0.05,
        )
        everything = worker.children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        vx.wait_until(lambda: not vx.alive(everything), 10, "the engine core to end")
        assert children[0] in everything
        assert "rbee orphan guard" in (tmp_path / "worker.log").read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

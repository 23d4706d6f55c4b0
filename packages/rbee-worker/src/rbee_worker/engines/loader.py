"""Choosing and building an engine by name.

``create_engine`` imports the chosen engine's module only when it is called: importing this module
(or ``rbee_worker.engines``) imports neither torch nor vLLM, so the worker can start listening (and
a synthetic worker never pays for torch) before it knows which engine it runs.

    engine = create_engine("transformers", model="/models/tiny")
    await engine.load()
    async with engine.stream(GenerationRequest(prompt="Hello", max_tokens=16)) as deltas:
        async for delta in deltas:
            print(delta.text, end="")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from rbee_contracts.engines import ENGINES

from .base import Engine, EngineNotAvailable

__all__ = ["choose_engine", "create_engine", "resolve_engine_name"]

logger = logging.getLogger("rbee_worker.engines")


def choose_engine(name: str) -> tuple[str, str]:
    """The engine ``name`` stands for, and why: ``auto`` is vLLM where vLLM is installed and can
    run on this machine (its CPU build, or its GPU build with a GPU visible), else transformers.
    The reason goes into the worker's log, and so into the hive's narration of the spawn."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name != "auto":
        return name, "asked for by name"
    # Package metadata and /dev only: deciding must not cost vLLM's 10-20 s import.
    from ._vllm_config import availability

    usable, why = availability()
    if usable:
        return "vllm", f"auto: {why}"
    return "transformers", f"auto: not vllm ({why})"


def resolve_engine_name(name: str) -> str:
    """``auto``: vLLM where it is installed and can run here; else transformers."""
    return choose_engine(name)[0]


def create_engine(
    name: str,
    *,
    model: str | None,
    model_name: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    max_concurrency: int | None = None,
    engine_args: Mapping[str, str] | None = None,
) -> Engine:
    """Build (not load) the engine called ``name``; imports its module only now.

    Raises ``ValueError`` for bad arguments (unknown engine, unknown or malformed engine
    arguments, no model where one is needed) and ``EngineNotAvailable`` for an engine that this
    build cannot run.
    """
    resolved, why = choose_engine(name)
    logger.info("engine %s: %s", resolved, why)
    args = dict(engine_args or {})
    if resolved == "vllm":
        return _create_vllm(model, model_name, device, dtype, max_concurrency, args)
    if resolved == "synthetic":
        from .synthetic import SyntheticEngine

        return SyntheticEngine.from_args(
            model_name=model_name, max_concurrency=max_concurrency, engine_args=args
        )
    if model is None:
        raise ValueError(f"the {resolved} engine needs --model PATH")
    from .transformers import TransformersEngine

    return TransformersEngine.from_args(
        model,
        model_name=model_name,
        device=device,
        dtype=dtype,
        max_concurrency=max_concurrency,
        engine_args=args,
    )


def _create_vllm(
    model: str | None,
    model_name: str | None,
    device: str | None,
    dtype: str,
    max_concurrency: int | None,
    args: Mapping[str, str],
) -> Engine:
    from ._vllm_config import availability, installed_build

    build = installed_build()
    usable, why = availability(build)
    if not usable or build is None:
        raise EngineNotAvailable(f"the vllm engine cannot run here: {why}")
    if device is not None and device != build.device:
        raise EngineNotAvailable(
            f"--device {device}, but the installed vLLM ({build}) runs on {build.device}"
        )
    if model is None:
        raise ValueError("the vllm engine needs --model PATH")
    from .vllm import VllmEngine

    # The engine args are checked against vLLM's own AsyncEngineArgs when the engine loads:
    # that needs vLLM imported (10-20 s), which must not delay the worker's listening.
    return VllmEngine(
        model,
        build=build,
        model_name=model_name,
        dtype=dtype,
        max_concurrency=max_concurrency,
        engine_args=args,
    )

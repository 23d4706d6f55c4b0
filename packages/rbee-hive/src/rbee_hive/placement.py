"""Where a worker runs, and whether it fits there, decided before it is spawned. Pure functions.

Theory of operation
-------------------
``worker_spawn`` asks ``plan()`` with what the hive sees (``capabilities``: GPUs from
``nvidia-smi``, free RAM) and what the workers still starting have claimed. The answer is the
worker's ``--device`` flag and environment, or a refusal (``PlacementError``, a
``WorkerError``): a spawn that cannot fit fails at once, with the numbers, instead of a worker
that dies of out-of-memory half a minute later.

Devices (``device`` of ``worker_spawn``):

- ``cpu``: the CPU. GPUs are hidden from the worker (``CUDA_VISIBLE_DEVICES=""``).
- ``cuda:N`` or ``cuda:N,M,...``: those GPUs (``nvidia-smi`` indices). ``cuda``: the ``k`` GPUs
  with the most free memory, ``k`` = tensor_parallel_size x pipeline_parallel_size from the engine
  args (default 1). The worker gets ``CUDA_VISIBLE_DEVICES`` = those indices (with
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so CUDA numbers GPUs as nvidia-smi does) and ``--device
  cuda``; inside the worker they are ``cuda:0..k-1``.
- none: ``cuda`` where the hive sees a GPU, else the CPU, and the worker's engine decides
  (``auto``: vLLM's CPU build runs on the CPU). A hive with GPUs and vLLM's CPU build must say
  ``cpu``.
- The synthetic engine uses no device: nothing is placed or checked; it gets the device's kind
  (``cpu`` or ``cuda``), the only values of the worker's ``--device`` (``worker_cli.DEVICES``).

The device rule (``cuda:0,0`` names a GPU twice) and the reading of the engine arguments that are
numbers are the contract's (``rbee_contracts.hive_ops.parse_device``,
``rbee_contracts.engines.engine_arg_number``): ``worker_spawn``'s parameters refuse what they
refuse before a job exists (a 422, on the queen or on the hive), so a spawn job never reaches
placement with such a value. Their ``FieldError``, turned into a ``PlacementError`` here
(``parse_device``, ``_number``), matters for ``plan()``'s direct callers, which skip that check,
and for ``VLLM_CPU_KVCACHE_SPACE``, read from the hive's environment, which no request carries.

Memory estimate (documented, deliberately simple): a model's weights take about their size on
disk in memory; ``MEMORY_FACTOR`` (1.2) adds room for activations, the CUDA context and the
framework. Per GPU, the weights are split over the ``k`` GPUs, and:

- the vllm engine: vLLM refuses to start unless ``gpu_memory_utilization`` x total memory
  (default 0.9) is free on each GPU, so that is the need, unless ``kv_cache_memory_bytes`` is
  given (then weights + that KV cache);
- other engines: the weights estimate.

On the CPU: the weights estimate, plus for the vllm engine its KV cache (``kv_cache_memory_bytes``,
or ``VLLM_CPU_KVCACHE_SPACE`` GiB, or the worker's default of 1 GiB), against free RAM.

Workers still starting have allocated nothing yet: their estimates are subtracted from what
``nvidia-smi`` and the kernel say is free (``Claims``), so that two spawns racing for one GPU do
not both pass. Where the free memory is unknown (``[N/A]`` on some MIG setups) nothing is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from jobproto import FieldError
from rbee_contracts import hive_ops
from rbee_contracts.engines import engine_arg_number

from .capabilities import GpuInfo

__all__ = [
    "CPU_KV_CACHE_BYTES",
    "MEMORY_FACTOR",
    "VLLM_GPU_UTILIZATION",
    "Claims",
    "Placement",
    "PlacementError",
    "parse_device",
    "plan",
]

MEMORY_FACTOR = 1.2
#: vLLM's default ``gpu_memory_utilization``
VLLM_GPU_UTILIZATION = 0.9
#: the worker's default KV cache on vLLM's CPU build (rbee_worker.engines._vllm_config)
CPU_KV_CACHE_BYTES = 1 << 30
_GIB = 1 << 30


class PlacementError(ValueError):
    """The spawn cannot be placed; ``code`` is the spawn job's failure code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class Claims:
    """Memory promised to workers that are still starting: bytes per GPU index, and RAM."""

    gpu: Mapping[int, int] = attrs.field(factory=dict)
    ram: int = 0


@attrs.frozen
class Placement:
    #: the worker's ``--device`` flag (None: leave it to the worker)
    device: str | None
    #: the GPUs it gets (nvidia-smi indices); empty on the CPU
    gpus: tuple[int, ...] = ()
    #: extra environment for the worker process
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: estimated bytes it needs on each of its GPUs, or of RAM on the CPU (0: not estimated)
    need_bytes: int = 0
    #: one line for the spawn job's narration
    note: str = ""


def parse_device(device: str | None) -> tuple[str | None, tuple[int, ...] | None]:
    """``(kind, indices)``: kind None/"cpu"/"cuda"; indices None unless ``cuda:N[,M...]``."""
    try:
        return hive_ops.parse_device(device)
    except FieldError as exc:
        raise PlacementError("invalid_device", exc.message) from None


def plan(
    *,
    model: str,
    engine: str,
    device: str | None,
    engine_args: Mapping[str, str],
    model_size: int,
    gpus: Sequence[GpuInfo],
    ram_free: int | None,
    claims: Claims | None = None,
    env: Mapping[str, str] | None = None,
) -> Placement:
    """Where a worker for ``model`` (``model_size`` bytes on disk) runs; ``PlacementError`` when
    it cannot. ``env`` is the hive's environment (for ``VLLM_CPU_KVCACHE_SPACE``)."""
    claims = claims or Claims()
    kind, indices = parse_device(device)
    if engine == "synthetic":
        return Placement(device=kind, note="the synthetic engine uses no device")
    if kind is None:
        kind = "cuda" if gpus else None
    if kind == "cuda":
        return _on_gpus(model, engine, indices, engine_args, model_size, gpus, claims)
    return _on_cpu(model, engine, kind, engine_args, model_size, gpus, ram_free, claims, env or {})


def _world_size(engine_args: Mapping[str, str]) -> int:
    size = 1
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        # A value that is no number: the worker refuses it itself, with vLLM's words.
        size *= max(1, int(_number(engine_args, key) or 1))
    return size


def _number(engine_args: Mapping[str, str], key: str, what: str = "engine_args") -> float | None:
    try:
        return engine_arg_number(engine_args, key, what)
    except FieldError as exc:  # inf or nan: no placement can be computed from it
        raise PlacementError("invalid_engine_args", exc.message) from None


def _gib(n: float) -> str:
    return f"{n / _GIB:.2f} GiB"


def _on_gpus(
    model: str,
    engine: str,
    indices: tuple[int, ...] | None,
    engine_args: Mapping[str, str],
    model_size: int,
    gpus: Sequence[GpuInfo],
    claims: Claims,
) -> Placement:
    if not gpus:
        raise PlacementError(
            "no_gpu", "a GPU was asked for, but this hive sees none (nvidia-smi lists no GPU)"
        )
    by_index = {gpu.index: gpu for gpu in gpus}
    world = _world_size(engine_args)

    def free(gpu: GpuInfo) -> int | None:
        if gpu.memory_free_bytes is None:
            return None
        return gpu.memory_free_bytes - claims.gpu.get(gpu.index, 0)

    if indices is not None:
        missing = [i for i in indices if i not in by_index]
        if missing:
            seen = ", ".join(str(i) for i in sorted(by_index))
            raise PlacementError(
                "no_such_gpu", f"no GPU {', '.join(map(str, missing))} here (GPUs: {seen})"
            )
        if len(indices) < world:
            raise PlacementError(
                "not_enough_gpus",
                f"tensor_parallel_size x pipeline_parallel_size is {world}, but the device"
                f" names {len(indices)} GPU(s)",
            )
        chosen = [by_index[i] for i in indices]
    else:
        if len(gpus) < world:
            raise PlacementError(
                "not_enough_gpus", f"{world} GPUs are needed and this hive has {len(gpus)}"
            )
        # The roomiest first (unknown free memory last).
        ranked = sorted(gpus, key=lambda g: (free(g) is None, -(free(g) or 0), g.index))
        chosen = sorted(ranked[:world], key=lambda g: g.index)
    weights = int(model_size * MEMORY_FACTOR / len(chosen))
    how = f"{_gib(model_size)} on disk x {MEMORY_FACTOR:g}" + (
        f" / {len(chosen)} GPUs" if len(chosen) > 1 else ""
    )
    need = weights
    if engine == "vllm":
        kv = _number(engine_args, "kv_cache_memory_bytes")
        if kv is not None:
            need, how = weights + int(kv), f"{how} + a KV cache of {_gib(kv)}"
        else:
            util = _number(engine_args, "gpu_memory_utilization") or VLLM_GPU_UTILIZATION
            for gpu in chosen:
                if gpu.memory_total_bytes is not None:
                    need = max(need, int(util * gpu.memory_total_bytes))
            if need > weights:
                how = (
                    f"vLLM starts only with gpu_memory_utilization ({util:g}) of the GPU's"
                    " memory free"
                )
    for gpu in chosen:
        available = free(gpu)
        if available is not None and available < need:
            claimed = claims.gpu.get(gpu.index, 0)
            also = f", {_gib(claimed)} of it promised to workers still starting" if claimed else ""
            raise PlacementError(
                "insufficient_gpu_memory",
                f"{model} does not fit on GPU {gpu.index} ({gpu.name}): it needs about"
                f" {_gib(need)} ({how}), and {_gib(gpu.memory_free_bytes or 0)} is free{also}",
            )
    visible = ",".join(str(gpu.index) for gpu in chosen)
    return Placement(
        device="cuda",
        gpus=tuple(gpu.index for gpu in chosen),
        env={"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        need_bytes=need,
        note=f"on GPU {visible} (needs about {_gib(need)} per GPU: {how})",
    )


def _on_cpu(
    model: str,
    engine: str,
    kind: str | None,
    engine_args: Mapping[str, str],
    model_size: int,
    gpus: Sequence[GpuInfo],
    ram_free: int | None,
    claims: Claims,
    env: Mapping[str, str],
) -> Placement:
    need = int(model_size * MEMORY_FACTOR)
    how = f"{_gib(model_size)} on disk x {MEMORY_FACTOR:g}"
    if engine == "vllm":
        kv = _number(engine_args, "kv_cache_memory_bytes")
        if kv is None:
            space = _number(env, "VLLM_CPU_KVCACHE_SPACE", "the hive's environment")
            kv = space * _GIB if space else CPU_KV_CACHE_BYTES
        need += int(kv)
        how += f" + a KV cache of {_gib(kv)}"
    if ram_free is not None and need > ram_free - claims.ram:
        also = (
            f", {_gib(claims.ram)} of it promised to workers still starting" if claims.ram else ""
        )
        raise PlacementError(
            "insufficient_memory",
            f"{model} does not fit in this machine's memory: it needs about {_gib(need)} ({how}),"
            f" and {_gib(ram_free)} is free{also}",
        )
    # Asked for the CPU on a machine with GPUs: keep the worker off them.
    placement_env = {"CUDA_VISIBLE_DEVICES": ""} if kind == "cpu" and gpus else {}
    return Placement(
        device=kind,
        env=placement_env,
        need_bytes=need,
        note=f"on the CPU (needs about {_gib(need)} of RAM: {how})",
    )

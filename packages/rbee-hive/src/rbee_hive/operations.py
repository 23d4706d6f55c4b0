"""What a hive does, as jobproto operations: one typed handler each (docs/tiers.md, hive).

Parameters are the shared contracts (``rbee_contracts.hive_ops``; the queen's own types extend
them) and are validated before a job exists (a bad name or path is a 422); handlers narrate and
call into ``supervisor``, ``models`` and ``capabilities``; a refusal is a ``JobFailed`` with a code.
Results are the contracts' types too (``WorkerRecord``, ``WorkerList``, ``ModelInfo``,
``ModelList``): jobproto's service unstructures a handler's result with ``jobproto.converter``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import anyio

from jobproto import Operations, narrate
from rbee_contracts.hive_ops import (
    CapabilitiesParams,
    ModelDeleteParams,
    ModelDownloadParams,
    ModelImportParams,
    ModelInfo,
    ModelList,
    ModelListParams,
    ModelRegisterParams,
    WorkerList,
    WorkerListParams,
    WorkerRecord,
    WorkerSpawnParams,
    WorkerStopParams,
)

from . import capabilities
from .errors import ModelError, WorkerError
from .hive import HiveService
from .placement import Claims, Placement, PlacementError, plan
from .supervisor import Supervisor, WorkerSpec, WorkerState

__all__ = [
    "CapabilitiesParams",
    "ModelDeleteParams",
    "ModelDownloadParams",
    "ModelImportParams",
    "ModelListParams",
    "ModelRegisterParams",
    "WorkerListParams",
    "WorkerSpawnParams",
    "WorkerStopParams",
    "hive_operations",
]


async def _place(
    params: WorkerSpawnParams, model: str, size: int, supervisor: Supervisor
) -> Placement:
    """Where the worker runs (``placement``), or the spawn fails with why it cannot."""
    gpus = await capabilities.query_gpus()
    _, ram_free = capabilities.host_memory()
    gpu_claims: dict[int, int] = {}
    ram_claim = 0
    for worker in supervisor.list_workers():
        # Ready workers' memory shows in what is free; starting ones have not allocated yet.
        if not worker.state.pending:
            continue
        for index in worker.spec.gpus:
            gpu_claims[index] = gpu_claims.get(index, 0) + worker.spec.need_bytes
        if not worker.spec.gpus:
            ram_claim += worker.spec.need_bytes
    try:
        return plan(
            model=model,
            engine=params.engine,
            device=params.device,
            engine_args=params.engine_args,
            model_size=size,
            gpus=gpus,
            ram_free=ram_free,
            claims=Claims(gpu_claims, ram_claim),
            env=os.environ,
        )
    except PlacementError as exc:
        raise WorkerError(exc.code, exc.message) from None


def _new_worker_id(model: str) -> str:
    return f"{model[:100]}-{secrets.token_hex(3)}"


# -- the table -------------------------------------------------------------------------------------


def hive_operations(hive: HiveService) -> Operations:
    ops = Operations()
    supervisor, catalog = hive.supervisor, hive.catalog

    @ops.operation("worker_spawn")
    async def worker_spawn(params: WorkerSpawnParams) -> WorkerRecord:
        """Start a worker for a model of this hive and wait until it is ready."""
        model = await catalog.get(params.model)
        if not catalog.within_roots(Path(model.path)):
            # registered before the roots were what they are now (or a link in the models
            # directory changed since the catalog looked): no worker reads it
            raise ModelError(
                "path_not_allowed", f"{model.name} is registered outside this hive's model roots"
            )
        placement = await _place(params, model.name, model.size_bytes, supervisor)
        narrate("placement", f"{model.name}: {placement.note}", gpus=list(placement.gpus))
        spec = WorkerSpec(
            worker_id=params.worker_id or _new_worker_id(model.name),
            model=model.name,
            model_path=Path(model.path),
            engine=params.engine,
            device=placement.device,
            max_concurrency=params.max_concurrency,
            engine_args=dict(params.engine_args),
            env=dict(placement.env),
            gpus=placement.gpus,
            need_bytes=placement.need_bytes,
        )
        worker = supervisor.spawn(spec)
        narrate(
            "worker_spawn",
            f"spawning {spec.worker_id} ({model.name}, {spec.engine})",
            worker_id=spec.worker_id,
            log=str(worker.log_path),
        )
        try:
            with worker.observed():
                await supervisor.wait_started(worker)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # the spawn was called off: so is the worker
                await supervisor.stop(spec.worker_id)
            raise
        if worker.state == WorkerState.STOPPED:
            raise WorkerError("worker_stopped", f"{spec.worker_id} was stopped while starting")
        if worker.state != WorkerState.READY:
            raise WorkerError(
                "worker_failed", f"{spec.worker_id} {worker.error}; its log: {worker.log_path}"
            )
        narrate(
            "worker_spawn", f"{spec.worker_id} is ready at {worker.url}", worker_id=spec.worker_id
        )
        return worker.record()

    @ops.operation("worker_list")
    async def worker_list(params: WorkerListParams) -> WorkerList:
        """The workers of this hive and their states."""
        return WorkerList([worker.record() for worker in supervisor.list_workers()])

    @ops.operation("worker_stop")
    async def worker_stop(params: WorkerStopParams) -> WorkerRecord:
        """Stop a worker: SIGTERM to its process group, SIGKILL after the grace period."""
        supervisor.get(params.worker_id)
        narrate("worker_stop", f"stopping {params.worker_id}", worker_id=params.worker_id)
        worker = await supervisor.stop(params.worker_id)
        narrate("worker_stop", f"{params.worker_id} is {worker.state}", worker_id=params.worker_id)
        return worker.record()

    @ops.operation("model_download")
    async def model_download(params: ModelDownloadParams) -> ModelInfo:
        """Download a model from Hugging Face into the models directory (resumable); with
        ``file``, one GGUF file of the repository, then imported as ``model_import`` does."""
        what = params.repo_id + (f":{params.file}" if params.file else "")
        narrate("model_download", f"downloading {what}@{params.revision}")
        info = await catalog.download(
            params.repo_id, params.revision, params.name, file=params.file, dtype=params.dtype
        )
        await hive.announce()
        narrate("model_download", f"{info.name} is ready: {info.size_bytes} bytes at {info.path}")
        return info

    @ops.operation("model_register")
    async def model_register(params: ModelRegisterParams) -> ModelInfo:
        """Register a local directory as a model, without copying it."""
        info = await catalog.register(params.name, params.path)
        await hive.announce()
        narrate("model_register", f"registered {info.name} at {info.path}")
        return info

    @ops.operation("model_import")
    async def model_import(params: ModelImportParams) -> ModelInfo:
        """Convert a GGUF file under a model root once into the models directory (both engines
        load the result); the same file imported again returns at once."""
        narrate("model_import", f"importing {params.path} as {params.name} ({params.dtype})")
        info = await catalog.import_gguf(params.name, params.path, params.dtype)
        await hive.announce()
        narrate("model_import", f"{info.name} is ready: {info.size_bytes} bytes at {info.path}")
        return info

    @ops.operation("model_list")
    async def model_list(params: ModelListParams) -> ModelList:
        """The models on this hive."""
        return ModelList(await catalog.list_models())

    @ops.operation("model_delete")
    async def model_delete(params: ModelDeleteParams) -> ModelInfo:
        """Delete a downloaded model's files, or forget a registered one."""
        users = [
            w.worker_id
            for w in supervisor.list_workers()
            if w.alive and w.spec.model == params.name
        ]
        if users:
            raise ModelError("model_in_use", f"{params.name} is used by {', '.join(users)}")
        info = await catalog.delete(params.name)
        await hive.announce()
        verb = "unregistered" if info.source == "registered" else "deleted"
        narrate("model_delete", f"{verb} {info.name} ({info.path})")
        return info

    @ops.operation("capabilities")
    async def capabilities_(params: CapabilitiesParams) -> dict[str, Any]:
        """CPU cores, RAM and GPUs of this machine."""
        return await capabilities.collect()

    return ops

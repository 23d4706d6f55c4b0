"""What the queen does: one typed handler per operation (``docs/tiers.md`` §queen).

| operation      | does                                                                         |
|----------------|------------------------------------------------------------------------------|
| status         | hives, workers, models and the jobs in flight, as the queen sees them         |
| hive_list      | the registered hives, up or down                                             |
| hive_status    | one hive, and its process when this queen's machine runs it                  |
| hive_start     | run a hive process on this machine; done once it has registered             |
| hive_stop      | stop a hive this machine runs (SIGTERM, then SIGKILL, to its process group)  |
| hive_install   | put rbee-hive into a virtualenv on another machine, over SSH                 |
| hive_uninstall | stop that hive and remove what hive_install put there                        |
| worker_*       | relayed to the hive named (or the only one): one job id for the user         |
| model_*        | relayed likewise                                                             |
| infer          | choose (or start) a worker, then relay its ``infer`` job: no hive in between |
|                | (adopted from a stopped replica: go on relaying the same worker job)         |
| completion     | ``infer`` for ``n`` choices at once: the job behind the OpenAI-compatible API |

``hive_start``, ``hive_stop`` and ``hive_status`` with ``host`` do the same on another machine over
SSH (``remote_hives``).

The parameter types are the shared contracts (``rbee_contracts.queen_ops``): each relayed
operation's type extends the hive's or worker's own, so a value they would refuse is a 422 here.
The queen's own results are ``rbee_contracts.queen_results``; relayed results pass as the hive or
worker sent them (the queen reads what it needs of them with ``read_result``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from jobproto import JobFailed, Operations
from jobproto.relay import relay_point
from jobproto.telemetry import set_span_attributes
from rbee_contracts import spans
from rbee_contracts.completion import CompletionParams, CompletionResult
from rbee_contracts.hive_ops import ModelList
from rbee_contracts.queen_ops import (
    HiveInstallParams,
    HiveParams,
    HiveStartParams,
    HiveUninstallParams,
    NoParams,
    QueenInferParams,
    QueenModelDeleteParams,
    QueenModelDownloadParams,
    QueenModelImportParams,
    QueenModelListParams,
    QueenModelRegisterParams,
    QueenWorkerListParams,
    QueenWorkerSpawnParams,
    QueenWorkerStopParams,
    forward_fields,
)
from rbee_contracts.queen_results import (
    HiveInstallResult,
    HiveListResult,
    HiveStartResult,
    HiveStatusResult,
    HiveStopResult,
    HiveUninstallResult,
    StatusResult,
    UnregisteredHive,
)

from .openai_jobs import run_completion
from .queen import Queen
from .remote_hives import RemoteHives
from .scheduler import read_hive_result

__all__ = ["queen_operations"]


def queen_operations(queen: Queen) -> Operations:
    ops = Operations()
    remote_hives = RemoteHives(
        queen.settings,
        queen.registry,
        queen_url=lambda: queen.url,
    )

    @ops.operation("status")
    async def status(params: NoParams) -> StatusResult:
        """Hives, workers, models and jobs in flight."""
        return await queen.status()

    @ops.operation("hive_list")
    async def hive_list(params: NoParams) -> HiveListResult:
        """The registered hives and their state (up/down), and the hosts configured for SSH."""
        return attrs.evolve(queen.hive_list(), hosts=remote_hives.host_views())

    @ops.operation("hive_status")
    async def hive_status(params: HiveParams) -> HiveStatusResult | UnregisteredHive:
        """One hive: its registration, workers, and its process (here, or on ``host``)."""
        if params.host is None:
            return queen.hive_status(params.hive)
        process = await remote_hives.process(params.host, params.hive)
        found = queen.hive_status(params.hive) if params.hive in queen.registry else None
        if isinstance(found, HiveStatusResult):
            return attrs.evolve(found, process=process)
        if process is None:
            raise JobFailed(
                "unknown_hive", f"hive {params.hive!r} neither runs on {params.host} nor is known"
            )
        return UnregisteredHive(params.hive, process)

    @ops.operation("hive_start")
    async def hive_start(params: HiveStartParams) -> HiveStartResult:
        """Start a hive on this machine (or ``host``); succeeds once it has registered."""
        if params.host is not None:
            return await remote_hives.start(
                params.host,
                params.hive,
                port=queen.settings.hive_port if params.port is None else params.port,
                queen_url=params.queen_url,
                bind=params.bind,
                heartbeat=params.heartbeat,
                models_dir=params.models_dir,
            )
        return await queen.local_hives.start(
            params.hive,
            port=queen.settings.hive_port if params.port is None else params.port,
            queen_url=queen.local_hives.queen_url(params.queen_url, queen.url),
            heartbeat=params.heartbeat,
            models_dir=queen.local_hives.models_dir(params.models_dir),
        )

    @ops.operation("hive_stop")
    async def hive_stop(params: HiveParams) -> HiveStopResult:
        """Stop a hive this machine (or ``host``) runs (SIGTERM, then SIGKILL, to its group)."""
        if params.host is not None:
            return await remote_hives.stop(params.host, params.hive)
        return await queen.local_hives.stop(params.hive)

    @ops.operation("hive_install")
    async def hive_install(params: HiveInstallParams) -> HiveInstallResult:
        """Install rbee-hive (and rbee-worker with an engine extra) on ``host`` over SSH."""
        return await remote_hives.install(params.host, extra=params.extra, offline=params.offline)

    @ops.operation("hive_uninstall")
    async def hive_uninstall(params: HiveUninstallParams) -> HiveUninstallResult:
        """Stop the hive on ``host`` and remove its virtualenv and tokens (``purge``: its state)."""
        return await remote_hives.uninstall(
            params.host, params.hive or params.host, purge=params.purge
        )

    @ops.operation("worker_spawn")
    async def worker_spawn(params: QueenWorkerSpawnParams) -> Any:
        """Start a worker on a hive (relayed); its record once it is ready."""
        hive = queen.resolve_hive(params.hive)
        record = await queen.forward(hive, "worker_spawn", params)
        queen.note_worker(hive.hive_id, record)
        return record

    @ops.operation("worker_list")
    async def worker_list(params: QueenWorkerListParams) -> Any:
        """The workers of a hive, as the hive reports them (relayed); of every hive, each row
        naming its hive, when none is named and several are registered."""
        if queen.lists_every_hive(params.hive):
            return await queen.worker_list_all(params)
        return await queen.forward(queen.resolve_hive(params.hive), "worker_list", params)

    @ops.operation("worker_stop")
    async def worker_stop(params: QueenWorkerStopParams) -> Any:
        """Stop a worker (relayed to the hive that runs it)."""
        hive = queen.resolve_hive(params.hive or queen.hive_of_worker(params.worker_id))
        result = await queen.forward(hive, "worker_stop", params)
        queen.registry.forget_worker(hive.hive_id, params.worker_id)
        return result

    @ops.operation("model_download")
    async def model_download(params: QueenModelDownloadParams) -> Any:
        """Download a model from Hugging Face onto a hive (relayed, with progress); with
        ``file``, one GGUF file of the repo, then imported as ``model_import`` does."""
        return await queen.forward(queen.resolve_hive(params.hive), "model_download", params)

    @ops.operation("model_register")
    async def model_register(params: QueenModelRegisterParams) -> Any:
        """Register a local model directory on a hive (relayed)."""
        return await queen.forward(queen.resolve_hive(params.hive), "model_register", params)

    @ops.operation("model_import")
    async def model_import(params: QueenModelImportParams) -> Any:
        """Convert a GGUF file on a hive once into its models directory (relayed, with
        progress); the same file again is instant."""
        return await queen.forward(queen.resolve_hive(params.hive), "model_import", params)

    @ops.operation("model_list")
    async def model_list(params: QueenModelListParams) -> Any:
        """The models on a hive (relayed); their sizes inform scheduling. Of every hive, each row
        naming its hive, when none is named and several are registered."""
        if queen.lists_every_hive(params.hive):
            return await queen.model_list_all(params)
        hive = queen.resolve_hive(params.hive)
        listing = await queen.forward(hive, "model_list", params)
        models = read_hive_result(listing, ModelList, hive.hive_id, "model_list")
        queen.registry.learn_models(hive.hive_id, models)
        return listing

    @ops.operation("model_delete")
    async def model_delete(params: QueenModelDeleteParams) -> Any:
        """Delete a model from a hive (relayed)."""
        return await queen.forward(queen.resolve_hive(params.hive), "model_delete", params)

    async def resume_infer(params: QueenInferParams, checkpoint: Mapping[str, Any]) -> Any:
        """``infer`` adopted from a replica that stopped: the worker job its checkpoint names
        goes on being relayed from the last event stored. Without one, that replica had not
        started a worker job yet (nothing was generated): routed afresh."""
        point = relay_point(checkpoint)
        if point is None:
            return await infer(params)
        set_span_attributes(spans.infer_request(params, params.model))
        result = await queen.scheduler.resume_infer(point)
        if isinstance(result, dict):
            set_span_attributes(spans.infer_result(result))
        return result

    @ops.operation("infer", resume=resume_infer)
    async def infer(params: QueenInferParams) -> Any:
        """Generate text on the least busy worker with the model (started if none)."""
        set_span_attributes(spans.infer_request(params, params.model))
        result = await queen.scheduler.infer(params.model, params.hive, forward_fields(params))
        if isinstance(result, dict):
            set_span_attributes(spans.infer_result(result))
        return result

    @ops.operation("completion")
    async def completion(params: CompletionParams) -> CompletionResult:
        """Generate ``n`` choices as ``infer`` does (``openai_jobs``); cancelled when nobody
        reads it for ``abandon_grace`` seconds."""
        set_span_attributes(spans.infer_request(params, params.model))
        result = await run_completion(
            queen.scheduler, queen.jobs, params, queen.settings.abandon_grace
        )
        totals = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        set_span_attributes(spans.infer_result({**totals, "model": result.model}))
        return result

    return ops

"""A fake queen for the keeper's tests: a jobproto app with the queen's operations (docs/tiers.md)
made tiny. Run as a script: ``python fake_queen.py [--host H] [--port P] [anything else]``; it
prints ``FAKE_QUEEN_LISTENING <port>`` once it listens, and ignores other arguments, so that it
also stands in for the hive in the tests of ``rbee queen start``.

Parameters mirror the queen's contract exactly (jobproto refuses unknown fields), so a keeper that
sends a field the queen does not take fails here too. ``infer`` behaves by model name:

- ``tiny``: scheduling narration, a download progress (bytes) and a worker start (relayed from the
  hive and the worker: events carry an ``origin``), five tokens, a result; ``params`` in the result
  echoes what the keeper sent;
- ``slow``: a token every 0.1 s for up to 60 s (the job to interrupt);
- ``stubborn``: like slow, but a cancel takes 3 s to take effect;
- ``broken``: fails ``no_capacity``;
- ``self-cancel``: ends ``cancelled``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import attrs

from jobproto import (
    JobFailed,
    Narration,
    Operations,
    Origin,
    current_job,
    emit_data,
    narrate,
    progress,
)
from jobproto.asgi import JobHandle, ServiceSettings, create_app
from jobproto.server import serve


@attrs.frozen
class Message:
    role: str
    content: str


@attrs.frozen
class InferParams:
    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    max_tokens: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = attrs.field(factory=list)
    hive: str | None = None


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class HiveParams:
    hive: str | None = None


@attrs.frozen
class WorkerSpawnParams:
    model: str
    engine: str = "auto"
    worker_id: str | None = None
    device: str | None = None
    max_concurrency: int | None = None
    engine_args: dict[str, str] = attrs.field(factory=dict)
    hive: str | None = None


@attrs.frozen
class WorkerStopParams:
    worker_id: str
    hive: str | None = None


@attrs.frozen
class ModelDownloadParams:
    repo_id: str
    revision: str = "main"
    name: str | None = None
    hive: str | None = None


@attrs.frozen
class ModelRegisterParams:
    name: str
    path: str
    hive: str | None = None


@attrs.frozen
class ModelDeleteParams:
    name: str
    hive: str | None = None


def _relayed(service: str, event: Narration) -> None:
    """Emit ``event`` as if relayed from ``service`` (what jobproto.relay does)."""
    job = current_job()  # any JobSink takes an origin
    assert job is not None
    job.emit(event, Origin(service, "job_downstream", 1))


def operations() -> Operations:
    ops = Operations()

    @ops.operation("infer")
    async def infer(params: InferParams) -> dict[str, Any]:
        narrate("schedule", f"no ready worker for {params.model}; spawning one")
        if params.model == "broken":
            raise JobFailed("no_capacity", "no hive can serve model 'broken': not on any hive")
        if params.model == "self-cancel":
            job = current_job()
            assert isinstance(job, JobHandle) and job.scope is not None
            job.cancel_reason = "cancelled by the fake"
            job.scope.cancel()
            await anyio.sleep(1)
        if params.model in ("slow", "stubborn"):
            narrate("generate", "generating slowly")
            try:
                for i in range(600):
                    emit_data({"text": f"t{i} ", "token_ids": [i]})
                    await anyio.sleep(0.1)
            finally:
                if params.model == "stubborn":
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(3)
            return {"text": "", "finish_reason": "length"}
        _relayed("hive", Narration("model_download", f"downloading {params.model}"))
        for done in (0, 512, 1024):
            progress("model_download", done, 1024, unit="bytes")
        _relayed("worker", Narration("worker_start", "loading weights", "warning"))
        progress("worker_start", 1.5, None, unit="s")
        words = ["Hello", ",", " world", "!", "\n"]
        for i, word in enumerate(words):
            emit_data({"text": word, "token_ids": [i]})
        return {
            "text": "".join(words),
            "finish_reason": "stop",
            "prompt_tokens": 3,
            "completion_tokens": len(words),
            "ttft_ms": 12.5,
            "tokens_per_s": 250.0,
            "model": params.model,
            "engine": "synthetic",
            "params": attrs.asdict(params),
        }

    @ops.operation("status")
    async def status(params: NoParams) -> dict[str, Any]:
        return {
            "hives": [{"hive_id": "localhost", "state": "up", "free_memory_bytes": 2 << 30}],
            "workers": [{"worker_id": "w1", "model": "tiny", "state": "ready", "in_flight": 0}],
            "models": ["tiny"],
            "jobs_in_flight": 0,
        }

    @ops.operation("hive_list")
    async def hive_list(params: NoParams) -> dict[str, Any]:
        return {"hives": [{"hive_id": "localhost", "state": "up"}]}

    @ops.operation("hive_status")
    async def hive_status(params: HiveParams) -> dict[str, Any]:
        return {"hive_id": params.hive, "state": "up"}

    @ops.operation("worker_list")
    async def worker_list(params: HiveParams) -> dict[str, Any]:
        return {"workers": [{"worker_id": "w1", "model": "tiny", "state": "ready"}]}

    @ops.operation("worker_spawn")
    async def worker_spawn(params: WorkerSpawnParams) -> dict[str, Any]:
        progress("worker_start", 0.5, None, unit="s")
        return {"worker_id": "w2", "model": params.model, "engine": params.engine}

    @ops.operation("worker_stop")
    async def worker_stop(params: WorkerStopParams) -> dict[str, Any]:
        return {"worker_id": params.worker_id, "state": "stopped"}

    @ops.operation("model_download")
    async def model_download(params: ModelDownloadParams) -> dict[str, Any]:
        for done in range(0, 4096 + 1, 1024):
            progress("model_download", done, 4096, unit="bytes")
        name = params.name or params.repo_id.split("/")[-1]
        return {"name": name, "size_bytes": 4096, "revision": params.revision}

    @ops.operation("model_register")
    async def model_register(params: ModelRegisterParams) -> dict[str, Any]:
        return {"name": params.name, "path": params.path}

    @ops.operation("model_list")
    async def model_list(params: HiveParams) -> dict[str, Any]:
        return {"models": [{"name": "tiny", "size_bytes": 1 << 20, "source": "local"}]}

    @ops.operation("model_delete")
    async def model_delete(params: ModelDeleteParams) -> dict[str, Any]:
        return {"name": params.name, "deleted": True}

    return ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args, _ = parser.parse_known_args()
    app = create_app(operations(), ServiceSettings(service_name="queen", cancel_wait=1.0))

    def ready(port: int) -> None:
        print(f"FAKE_QUEEN_LISTENING {port}", flush=True)

    serve(app, args.host, args.port, on_ready=ready)
    sys.exit(0)


if __name__ == "__main__":
    main()

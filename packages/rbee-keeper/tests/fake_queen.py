"""A fake queen for the keeper's tests: a jobproto app with the queen's operations (docs/tiers.md)
made tiny. Run as a script: ``python fake_queen.py [--host H] [--port P] [anything else]``; it
prints ``FAKE_QUEEN_LISTENING <port>`` once it listens, and ignores other arguments, so that it
also stands in for the hive in the tests of ``rbee queen start``: given ``--state-dir`` and
``--hive-command``, its ``hive_start``/``hive_stop`` run that hive like the queen does (pid files
under ``{state-dir}/hives``, through ``rbee_process``).

Parameters are the queen's own types (``rbee_contracts.queen_ops``; jobproto refuses unknown
fields and every value the queen refuses), so a keeper that sends what the queen would not take
fails here too. ``infer`` behaves by model name:

- ``tiny``: scheduling narration, a download progress (bytes) and a worker start (relayed from the
  hive and the worker: events carry an ``origin``), five tokens, a result; ``params`` in the result
  echoes what the keeper sent;
- ``slow``: a token every 0.1 s for up to 60 s (the job to interrupt);
- ``stubborn``: like slow, but a cancel takes 3 s to take effect;
- ``broken``: fails ``no_capacity``;
- ``base``: a chat fails ``invalid_request`` as a worker refuses it for a model without a chat
  template (``NO_TEMPLATE``); a plain prompt is served as for ``tiny``;
- ``self-cancel``: ends ``cancelled``.

Like the real queen, it answers ``/v1/jobs*`` only to the keeper's token: it loads (or creates)
its secret (``--secret-file``, else ``{state-dir}/secret``), writes the keeper token derived from
it to ``{state-dir}/keeper.token`` (0600) before it listens, and refuses any other caller with
401. ``--tls-cert``/``--tls-key`` serve HTTPS.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import attrs

import rbee_process
from jobproto import (
    JobFailed,
    Narration,
    Operations,
    Origin,
    converter,
    current_job,
    emit_data,
    narrate,
    progress,
)
from jobproto.asgi import JobHandle, Principal, Security, ServiceSettings, TokenAuth, create_app
from jobproto.server import serve
from rbee_contracts import local_layout
from rbee_contracts.auth import (
    JOBS_SCOPE,
    KEEPER_TOKEN_FILE,
    SECRET_FILE,
    keeper_token,
    load_or_create_secret,
    write_private_file,
)
from rbee_contracts.hive_ops import ModelInfo, ModelList, WorkerList
from rbee_contracts.ids import repo_name
from rbee_contracts.lifecycle import HiveState, WorkerState
from rbee_contracts.queen_ops import (
    HiveParams,
    HiveStartParams,
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
)
from rbee_contracts.queen_results import (
    HiveDetail,
    HiveListResult,
    HiveStartResult,
    HiveStatusResult,
    HiveStopResult,
    HiveView,
    QueenWorkerRecord,
    StatusResult,
    StopOutcome,
)
from rbee_contracts.records import WorkerRecord

#: the one hive and worker the fake queen knows, as the queen's own result types
HIVE = HiveView(
    hive_id="localhost",
    url="http://127.0.0.1:8600",
    state=HiveState.UP,
    last_seen="2024-01-01T00:00:00Z",
    seconds_since_seen=1.0,
    heartbeat_interval=5.0,
    capabilities={},
    models=["tiny"],
    free_memory_bytes=2 << 30,
)
WORKER = QueenWorkerRecord(
    worker_id="w1",
    model="tiny",
    state=WorkerState.READY,
    hive_id="localhost",
    hive_state=HiveState.UP,
    in_flight=0,
    healthy=True,
)


#: the refusal of a chat by a worker whose model has no chat template, as the queen relays it
#: (``rbee_worker.engines._prompt``; ``test_cli`` checks the worker still says so)
NO_TEMPLATE = "worker:w1: this model's tokenizer has no chat template: send a prompt"


def _relayed(service: str, event: Narration) -> None:
    """Emit ``event`` as if relayed from ``service`` (what jobproto.relay does)."""
    job = current_job()  # any JobSink takes an origin
    assert job is not None
    job.emit(event, Origin(service, "job_downstream", 1))


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def hive_operations(
    ops: Operations, state_dir: Path | None, hive_command: list[str], hive_port: int
) -> None:
    """``hive_start``/``hive_stop`` as the queen runs them (its pid files, through rbee_process),
    with ``hive_command`` (this script again) as the hive: done once the hive listens."""

    def paths(hive_id: str) -> tuple[Path, Path]:
        if state_dir is None:
            raise JobFailed("no_state_dir", "the fake queen was started without --state-dir")
        return (
            local_layout.hive_pid_file(state_dir, hive_id),
            local_layout.hive_log(state_dir, hive_id),
        )

    @ops.operation("hive_start")
    async def hive_start(params: HiveStartParams) -> HiveStartResult:
        pid_file, log = paths(params.hive)
        record = rbee_process.read_pid_file(pid_file)
        if record is not None and rbee_process.alive(record):
            return HiveStartResult(
                params.hive, record.pid, record.log_path, list(record.argv), already_running=True
            )
        port = hive_port if params.port is None else params.port
        command = [*hive_command, "--port", str(port), "--hive-id", params.hive]
        record = rbee_process.spawn_detached(command, log_path=log, pid_file=pid_file)
        with anyio.fail_after(20):
            while not _answers(port):
                if rbee_process.reap(record.pid) is not None:
                    raise JobFailed("hive_exited", "the fake hive exited")
                await anyio.sleep(0.05)
        narrate("hive_started", f"hive {params.hive} registered (pid {record.pid})")
        return HiveStartResult(params.hive, record.pid, str(log), command, already_running=False)

    @ops.operation("hive_stop")
    async def hive_stop(params: HiveParams) -> HiveStopResult:
        pid_file, _ = paths(params.hive)
        record = rbee_process.read_pid_file(pid_file)
        if record is None:
            raise JobFailed("unknown_hive", f"no hive {params.hive!r} is known on this machine")
        how = await rbee_process.aterminate(record, 5.0)
        pid_file.unlink(missing_ok=True)
        return HiveStopResult(
            params.hive, record.pid, record.log_path, list(record.argv), StopOutcome(how.value)
        )


def operations(
    state_dir: Path | None = None, hive_command: list[str] | None = None, hive_port: int = 9000
) -> Operations:
    ops = Operations()
    hive_operations(ops, state_dir, hive_command or [], hive_port)

    @ops.operation("infer")
    async def infer(params: QueenInferParams) -> dict[str, Any]:
        narrate("schedule", f"no ready worker for {params.model}; spawning one")
        if params.model == "broken":
            raise JobFailed("no_capacity", "no hive can serve model 'broken': not on any hive")
        if params.model == "base" and params.messages is not None:
            raise JobFailed("invalid_request", NO_TEMPLATE)
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
            "params": converter.unstructure(params),
        }

    @ops.operation("status")
    async def status(params: NoParams) -> StatusResult:
        # the queen's own result type, so the fake's answer has the real one's shape
        return StatusResult(
            hives=[HIVE],
            workers=[WORKER],
            models={"tiny": ["localhost"]},
            in_flight=0,
            jobs=[],
        )

    @ops.operation("hive_list")
    async def hive_list(params: NoParams) -> HiveListResult:
        return HiveListResult([HiveDetail(**attrs.asdict(HIVE, recurse=False), workers=[WORKER])])

    @ops.operation("hive_status")
    async def hive_status(params: HiveParams) -> HiveStatusResult:
        hive = attrs.asdict(HIVE, recurse=False) | {"hive_id": params.hive}
        return HiveStatusResult(**hive, workers=[WORKER], process=None)

    @ops.operation("worker_list")
    async def worker_list(params: QueenWorkerListParams) -> WorkerList:
        return WorkerList([WorkerRecord("w1", "tiny", WorkerState.READY)])

    @ops.operation("worker_spawn")
    async def worker_spawn(params: QueenWorkerSpawnParams) -> WorkerRecord:
        progress("worker_start", 0.5, None, unit="s")
        return WorkerRecord(
            "w2", params.model, WorkerState.READY, params.engine, url="http://127.0.0.1:8602"
        )

    @ops.operation("worker_stop")
    async def worker_stop(params: QueenWorkerStopParams) -> dict[str, Any]:
        return {"worker_id": params.worker_id, "state": "stopped"}

    @ops.operation("model_download")
    async def model_download(params: QueenModelDownloadParams) -> ModelInfo:
        for done in range(0, 4096 + 1, 1024):
            progress("model_download", done, 4096, unit="bytes")
        if params.file is not None:
            narrate("import", f"importing {params.file} of {params.repo_id} as {params.dtype}")
            name = params.name or Path(params.file).name.removesuffix(".gguf")
            return ModelInfo(
                name,
                4096,
                "gguf",
                f"/models/{name}",
                revision=params.revision,
                repo_id=params.repo_id,
                source_file=params.file,
                sha256="ef" * 32,
            )
        name = params.name or repo_name(params.repo_id)
        return ModelInfo(
            name,
            4096,
            "huggingface",
            f"/models/{name}",
            revision=params.revision,
            repo_id=params.repo_id,
        )

    @ops.operation("model_register")
    async def model_register(params: QueenModelRegisterParams) -> ModelInfo:
        return ModelInfo(params.name, 0, "registered", params.path)

    @ops.operation("model_import")
    async def model_import(params: QueenModelImportParams) -> ModelInfo:
        narrate("import", f"converting {params.path} ({params.dtype})")
        for done in range(0, 4 + 1):
            progress("model_import", done, 4, unit="tensors")
        return ModelInfo(
            params.name,
            4096,
            "gguf",
            f"/models/{params.name}",
            source_file=params.path,
            sha256="ab" * 32,
        )

    @ops.operation("model_list")
    async def model_list(params: QueenModelListParams) -> ModelList:
        return ModelList(
            [
                ModelInfo("tiny", 1 << 20, "local", "/models/tiny"),
                ModelInfo(
                    "smol",
                    2 << 20,
                    "gguf",
                    "/models/smol",
                    source_file="/srv/gguf/smol.Q4_1.gguf",
                    sha256="cd" * 32,
                ),
                ModelInfo(
                    "hub",
                    3 << 20,
                    "huggingface",
                    "/models/hub",
                    revision="main",
                    repo_id="org/hub",
                ),
            ]
        )

    @ops.operation("model_delete")
    async def model_delete(params: QueenModelDeleteParams) -> ModelInfo:
        return ModelInfo(params.name, 1 << 20, "local", f"/models/{params.name}")

    return ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--hive-command", default="")
    parser.add_argument("--hive-port", type=int, default=9000)
    parser.add_argument("--secret-file", type=Path, default=None)
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    # a queen slow to write its keeper.token: it answers (401) before the file is there
    parser.add_argument("--write-token-after", type=float, default=0.0)
    args, _ = parser.parse_known_args()
    security = None
    secret_file = args.secret_file
    if secret_file is None and args.state_dir is not None:
        secret_file = args.state_dir / SECRET_FILE
    if secret_file is not None:
        token = keeper_token(load_or_create_secret(secret_file))
        if args.state_dir is not None:
            write = functools.partial(
                write_private_file, args.state_dir / KEEPER_TOKEN_FILE, token + "\n"
            )
            if args.write_token_after > 0:
                threading.Timer(args.write_token_after, write).start()
            else:
                write()
        keeper = Principal("keeper", frozenset({JOBS_SCOPE}))
        security = Security(auth=TokenAuth({token: keeper}))
    ops = operations(args.state_dir, shlex.split(args.hive_command), args.hive_port)
    app = create_app(ops, ServiceSettings(service_name="queen", cancel_wait=1.0), security=security)

    def ready(port: int) -> None:
        print(f"FAKE_QUEEN_LISTENING {port}", flush=True)

    serve(
        app,
        args.host,
        args.port,
        on_ready=ready,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    sys.exit(0)


if __name__ == "__main__":
    main()

"""FAKE hives and FAKE workers for the queen's tests, built with jobproto itself.

They speak the shared contracts (``rbee_contracts``: the same parameter, result and record
types as the real hive and worker) and do just enough for routing: a fake
worker streams canned text, a fake hive "spawns" fake workers in-process and reports canned models.
Nothing here loads a model or starts a real hive; the real tiers have their own tests.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobproto import (
    JobEvent,
    JobFailed,
    Operations,
    converter,
    current_correlation_id,
    current_job,
    emit_data,
    narrate,
    progress,
)
from jobproto.asgi import Principal, Security, ServiceSettings, TokenAuth, create_app
from jobproto.client import JobClient
from jobproto.testing import serving
from rbee_contracts.auth import hive_token, join_token, keeper_token, worker_token
from rbee_contracts.hive_ops import (
    ModelDeleteParams,
    ModelDownloadParams,
    ModelImportParams,
    ModelInfo,
    ModelList,
    ModelListParams,
    ModelRegisterParams,
    WorkerList,
    WorkerListParams,
    WorkerSpawnParams,
    WorkerStopParams,
)
from rbee_contracts.infer import InferParams, InferResult
from rbee_contracts.lifecycle import WorkerState
from rbee_contracts.records import Heartbeat, WorkerRecord
from rbee_queen.app import create_app as create_queen_app
from rbee_queen.settings import QueenSettings

# -- a fake worker ---------------------------------------------------------------------------------


def _accepting(token: str | None) -> Security | None:
    """A fake's security: the queen's token for its hive, as the real hive and worker check it."""
    if token is None:
        return None
    return Security(TokenAuth({token: Principal("queen", frozenset({"jobs"}))}))


class FakeWorker:
    """A FAKE worker: ``infer`` emits ``{"text": ...}`` data events, then a result."""

    def __init__(
        self, worker_id: str, model: str = "tiny", words: int = 3, *, accepts: str | None = None
    ) -> None:
        self.worker_id = worker_id
        self.model = model
        self.words = words
        self.url = ""
        self.healthy = True
        #: while set, infer jobs wait after their first token (to hold requests in flight)
        self.gate: anyio.Event | None = None
        #: set when an infer job has emitted its first token
        self.started = anyio.Event()
        #: fail every infer with this code (e.g. "engine_dead")
        self.fail_with: str | None = None
        self.jobs: list[tuple[str, str | None]] = []  # (job id, correlation id)
        self.params: list[InferParams] = []
        self.stopped = anyio.Event()
        self.closed = anyio.Event()
        self.app = create_app(
            self._operations(),
            ServiceSettings(service_name=f"fake-worker-{worker_id}"),
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/ready", self._ready, methods=["GET"]),
            ],
            security=_accepting(accepts),
        )

    def _operations(self) -> Operations:
        ops = Operations()

        @ops.operation("infer")
        async def infer(params: InferParams) -> dict[str, Any]:
            job = current_job()
            assert job is not None
            self.jobs.append((job.job_id, current_correlation_id()))
            self.params.append(params)
            if self.fail_with is not None:
                raise JobFailed(self.fail_with, "the engine died: CUDA error (fake)")
            words = [f"w{i} " for i in range(min(self.words, params.max_tokens))]
            for i, word in enumerate(words):
                emit_data({"text": word, "token_ids": [i]})
                if i == 0:
                    self.started.set()
                    if self.gate is not None:
                        await self.gate.wait()
            result = InferResult(
                text="".join(words),
                finish_reason="length",
                prompt_tokens=1,
                completion_tokens=len(words),
                ttft_ms=1.0,
                tokens_per_s=1000.0,
                model=self.model,
                engine=f"fake:{self.worker_id}",
            )
            return dict(converter.unstructure(result))

        return ops

    async def shut_down(self) -> None:
        """Stop serving (as if the process died) and wait until the port is closed."""
        self.stopped.set()
        with anyio.fail_after(10):
            await self.closed.wait()

    async def _health(self, request: Request) -> Response:
        if self.healthy:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "reason": "engine dead (fake)"}, 503)

    async def _ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True, "model": self.model, "engine": "fake"})

    def record(self, state: WorkerState = WorkerState.READY) -> WorkerRecord:
        return WorkerRecord(
            worker_id=self.worker_id,
            model=self.model,
            engine="fake",
            url=self.url or None,
            pid=4242,
            state=state,
            started_at="2026-01-01T00:00:00.000Z",
        )


# -- a fake hive -----------------------------------------------------------------------------------


class FakeHive:
    """A FAKE hive: spawns fake workers in-process, reports canned models, heartbeats on demand."""

    _ids = itertools.count(1)

    def __init__(
        self,
        hive_id: str,
        *,
        models: tuple[str, ...] = ("tiny",),
        heartbeat: float = 5.0,
        spawn_delay: float = 0.3,
        free_memory: int | None = 8 << 30,
        model_size: int = 5_000_000,
        secret: bytes | None = None,
    ) -> None:
        """With the queen's ``secret``, it presents its join token, it accepts only its hive
        token and each of its workers only its own worker token, as a real hive does."""
        self.hive_id = hive_id
        #: presented on heartbeats (its join token)
        self.token = None if secret is None else join_token(secret, hive_id)
        #: accepted from the queen by the hive (its workers: ``worker_token`` of it)
        self.accepts = None if secret is None else hive_token(secret, hive_id)
        self.models = list(models)
        self.heartbeat = heartbeat
        self.spawn_delay = spawn_delay
        self.free_memory = free_memory
        self.model_size = model_size
        self.workers: dict[str, FakeWorker] = {}
        #: workers being spawned, reported ``starting`` in heartbeats (as the real hive does)
        self.starting: dict[str, WorkerRecord] = {}
        self.calls: Counter[str] = Counter()
        self.spawned: list[WorkerSpawnParams] = []
        self.downloads: list[ModelDownloadParams] = []
        self.imports: list[ModelImportParams] = []
        self.url = ""
        self._tg: anyio.abc.TaskGroup | None = None
        self.app = create_app(
            self._operations(),
            ServiceSettings(service_name=f"fake-hive-{hive_id}"),
            security=_accepting(self.accepts),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeHive]:
        async with serving(self.app) as url, anyio.create_task_group() as tg:
            self.url = url
            self._tg = tg
            try:
                yield self
            finally:
                # each fake worker's server shuts down by itself (a cancelled uvicorn may not)
                for worker in self.workers.values():
                    worker.stopped.set()

    async def add_worker(self, worker_id: str, model: str = "tiny") -> FakeWorker:
        """Start a fake worker this hive reports as ready (as if spawned earlier)."""
        # as the real hive gives each worker its own token, derived from the hive's
        accepts = None if self.accepts is None else worker_token(self.accepts, worker_id)
        worker = FakeWorker(worker_id, model, accepts=accepts)
        assert self._tg is not None
        await self._tg.start(self._serve, worker)
        self.workers[worker_id] = worker
        return worker

    async def _serve(self, worker: FakeWorker, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        try:
            async with serving(worker.app) as url:
                worker.url = url
                task_status.started(url)
                await worker.stopped.wait()
        finally:
            worker.closed.set()

    def registration(self) -> dict[str, Any]:
        beat = Heartbeat(
            hive_id=self.hive_id,
            url=self.url,
            capabilities={"cpu_cores": 4, "ram_total_bytes": 16 << 30, "gpus": []},
            workers=[*self.starting.values(), *(w.record() for w in self.workers.values())],
            models=list(self.models),
            free_memory_bytes=self.free_memory,
            heartbeat_interval=self.heartbeat,
        )
        return dict(converter.unstructure(beat))

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    async def register(self, queen_url: str) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            response = await http.put(
                f"{queen_url}/v1/hives/{self.hive_id}",
                json=self.registration(),
                headers=self.headers,
            )
        response.raise_for_status()
        return response

    async def beat(self, queen_url: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Heartbeat every ``heartbeat`` seconds until cancelled (the queen may be away)."""
        async with httpx.AsyncClient() as http:
            await self.register(queen_url)  # registered by the time the caller goes on
            task_status.started()
            while True:
                await anyio.sleep(self.heartbeat)
                with contextlib.suppress(httpx.HTTPError):
                    await http.put(
                        f"{queen_url}/v1/hives/{self.hive_id}",
                        json=self.registration(),
                        headers=self.headers,
                    )

    def _operations(self) -> Operations:
        ops = Operations()

        @ops.operation("worker_spawn")
        async def worker_spawn(params: WorkerSpawnParams) -> WorkerRecord:
            self.calls["worker_spawn"] += 1
            self.spawned.append(params)
            worker_id = params.worker_id or f"{self.hive_id}-w{next(self._ids)}"
            narrate("spawn", f"starting worker {worker_id} for {params.model}")
            progress("worker_start", 0, 1, unit="steps")
            starting = WorkerRecord(worker_id, params.model, WorkerState.STARTING, pid=4242)
            self.starting[worker_id] = starting
            await anyio.sleep(self.spawn_delay)
            worker = await self.add_worker(worker_id, params.model)
            del self.starting[worker_id]
            progress("worker_start", 1, 1, unit="steps")
            return worker.record()

        @ops.operation("worker_list")
        async def worker_list(params: WorkerListParams) -> WorkerList:
            self.calls["worker_list"] += 1
            records = [w.record() for w in self.workers.values()]
            return WorkerList(records)  # the contract's result, as the real hive returns it

        @ops.operation("worker_stop")
        async def worker_stop(params: WorkerStopParams) -> WorkerRecord:
            self.calls["worker_stop"] += 1
            worker = self.workers.pop(params.worker_id, None)
            if worker is None:
                raise JobFailed("worker_not_found", f"no worker {params.worker_id}")
            narrate("stop", f"stopping worker {params.worker_id}")
            worker.stopped.set()
            return worker.record(WorkerState.STOPPED)

        @ops.operation("model_download")
        async def model_download(params: ModelDownloadParams) -> ModelInfo:
            self.calls["model_download"] += 1
            self.downloads.append(params)
            name = params.name or params.repo_id.replace("/", "--")
            for done in (0, 50, 100):
                progress("download", done, 100, unit="bytes", message=f"{params.repo_id}")
            self.models.append(name)
            info = ModelInfo(
                name, 100, "huggingface", f"/models/{name}", params.revision, params.repo_id
            )
            return info

        @ops.operation("model_register")
        async def model_register(params: ModelRegisterParams) -> ModelInfo:
            self.calls["model_register"] += 1
            self.models.append(params.name)
            return ModelInfo(params.name, 100, "registered", params.path)

        @ops.operation("model_import")
        async def model_import(params: ModelImportParams) -> ModelInfo:
            self.calls["model_import"] += 1
            self.imports.append(params)
            narrate("import", f"converting {params.path}")
            for done in (0, 2, 4):
                progress("convert", done, 4, unit="tensors")
            self.models.append(params.name)
            source_file = params.path.rsplit("/", 1)[-1]
            return ModelInfo(
                params.name,
                100,
                "gguf",
                f"/models/{params.name}",
                source_file=source_file,
                sha256="0" * 64,
            )

        @ops.operation("model_list")
        async def model_list(params: ModelListParams) -> ModelList:
            self.calls["model_list"] += 1
            narrate("models", f"{len(self.models)} models")
            infos = [
                ModelInfo(name, self.model_size, "local", f"/models/{name}") for name in self.models
            ]
            return ModelList(infos)

        @ops.operation("model_delete")
        async def model_delete(params: ModelDeleteParams) -> ModelInfo:
            self.calls["model_delete"] += 1
            if params.name not in self.models:
                raise JobFailed("model_not_found", f"no model {params.name!r}")
            self.models.remove(params.name)
            return ModelInfo(params.name, self.model_size, "local", f"/models/{params.name}")

        return ops


# -- the queen with fakes around it ----------------------------------------------------------------


@attrs.define
class Cluster:
    queen_url: str
    app: Any
    client: JobClient
    hives: dict[str, FakeHive]

    @property
    def queen(self) -> Any:
        return self.app.state.queen


async def collect(client: JobClient, job_id: str) -> list[JobEvent]:
    out: list[JobEvent] = []
    async with aclosing(client.events(job_id)) as events:
        async for ev in events:
            assert isinstance(ev, JobEvent)
            out.append(ev)
    return out


ClusterFactory = Callable[..., Any]


@pytest.fixture
def cluster(tmp_path: Path) -> ClusterFactory:
    """``async with cluster(hives=[FakeHive(...)], **settings) as c``: a served queen + fakes;
    with ``secret=...`` in the settings, ``c.client`` presents the keeper's token."""

    @asynccontextmanager
    async def make(
        hives: tuple[FakeHive, ...] | list[FakeHive] = (), **settings: Any
    ) -> AsyncIterator[Cluster]:
        settings.setdefault("state_dir", tmp_path / "queen")
        app = create_queen_app(QueenSettings(**settings))
        async with AsyncExitStack() as stack:
            queen_url = await stack.enter_async_context(serving(app))
            for hive in hives:
                await stack.enter_async_context(hive.running())
            secret = settings.get("secret")
            token = None if secret is None else keeper_token(secret)
            client = await stack.enter_async_context(JobClient(queen_url, token=token))
            yield Cluster(queen_url, app, client, {h.hive_id: h for h in hives})

    return make


@attrs.frozen
class Fakes:
    Hive: type[FakeHive] = FakeHive
    Worker: type[FakeWorker] = FakeWorker
    collect: Callable[[JobClient, str], Awaitable[list[JobEvent]]] = collect


@pytest.fixture
def fakes() -> Fakes:
    """The fakes, for tests (conftest is not importable under ``--import-mode=importlib``)."""
    return Fakes()

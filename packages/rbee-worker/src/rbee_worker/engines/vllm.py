"""The vllm engine: vLLM's ``AsyncLLM`` inside the worker's own event loop.

Theory of operation
-------------------
No second server: the worker holds an ``AsyncLLM`` (vLLM's async engine) and calls it directly.
vLLM runs the model in its engine-core child process (``VLLM::EngineCore``; on GPUs with tensor
parallelism it has ``VLLM::Worker`` children of its own) and talks to it over ZMQ; the
``AsyncLLM`` object in the worker tokenizes, detokenizes and hands each request its outputs.

``load()`` builds the engine in a thread: importing vLLM takes 10-20 s and
``AsyncLLM.from_engine_args`` blocks for the whole build (tens of seconds), and the event loop
must keep answering ``/health``, ``/ready`` and cancels meanwhile. Built outside the loop,
vLLM starts its output handler task lazily, on the first request, inside the loop.

``stream()`` tokenizes with the shared prompt code (``_prompt``: chat template and all) and sends
vLLM token ids, so both engines see the same prompt. Outputs are DELTA outputs: each carries only
the new text and token ids (a delta may hold a token with no text yet, an incomplete UTF-8
character, or several tokens). The job id is vLLM's request id: ``abort(job_id)`` aborts that
request in the engine, and its stream ends with finish reason "abort". Leaving the ``stream()``
block early closes vLLM's generator, which aborts the request in the engine before it returns.
Continuous batching: up to ``max_concurrency`` generations run at once (vLLM's ``max_num_seqs``).
The requests the worker queues (its ``max_queue``) are handed to vLLM at once too
(``queues_requests``): they wait in vLLM's scheduler, in arrival order, which starts the next one
in the very step a sequence finishes, as vLLM's own server does.

A dead engine: vLLM notices when its engine-core process dies and fails every open request with
``EngineDeadError``; ``health()`` (which the worker polls) sees it too. Both become
``EngineDead`` with the cause: which process died and how (signal or exit status), read from
vLLM's process handles. The worker then fails its jobs ``engine_dead`` and exits non-zero, so
its supervisor (the hive) starts a fresh one.

Shutdown: ``close()`` shuts the engine down (in a thread: it waits for the engine core to exit,
a few seconds) and leaves no child process. Closing while the engine is still being built kills
the engine-core processes started so far (a half-built engine has nothing to save). A worker
killed outright (SIGKILL) runs no code at all: the hive signals the worker's whole process
group, and for a worker started by hand the orphan guard (``_vllm_guard``) makes the engine core
exit when its parent is gone.

Engine settings: ``_vllm_config`` (defaults for the CPU build, validated ``--engine-arg``s).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import os
import secrets
import signal
import typing
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from ._prompt import prompt_ids
from ._vllm_config import (
    DEFAULT_MAX_CONCURRENCY,
    VllmBuild,
    convert_engine_args,
    engine_kwargs,
    sampling_kwargs,
)
from .base import Delta, EngineDead, EngineError, FinishReason, GenerationRequest, InvalidRequest

__all__ = ["VllmEngine"]

logger = logging.getLogger("rbee_worker.engines.vllm")

#: set for the engine core: the pid of the worker that owns it (see ``_vllm_guard``)
WORKER_PID_ENV = "RBEE_WORKER_PID"
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    # vLLM's repetition detector ended it: the model stopped, as far as a client is concerned.
    "repetition": "stop",
}


class VllmEngine:
    name = "vllm"
    #: vLLM's scheduler queues what is over ``max_num_seqs``: the worker's admission hands it
    #: the queued requests instead of holding them (``rbee_worker.worker.Admission``)
    queues_requests = True

    def __init__(
        self,
        model_path: str,
        *,
        build: VllmBuild,
        model_name: str | None = None,
        dtype: str = "auto",
        max_concurrency: int | None = None,
        engine_args: Mapping[str, str] | None = None,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name or model_path.rstrip("/").rsplit("/", 1)[-1]
        self.build = build
        self.dtype = dtype
        self.max_concurrency = max_concurrency or DEFAULT_MAX_CONCURRENCY
        self.max_model_len = 0  # known once built
        self.engine_args = dict(engine_args or {})
        #: the keyword arguments the engine was built with (after load)
        self.kwargs: dict[str, Any] = {}
        self._llm: Any = None
        self._tokenizer: Any = None
        self._dead: str | None = None
        self._closed = False
        #: while a build runs: the child processes this process had before it (not the build's)
        self._building: set[int] | None = None
        self._running: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def load(self) -> None:
        # abandon_on_cancel: a worker stopped while the engine builds must not wait for the build
        # (tens of seconds); close() then kills what the build started.
        holder: list[Any] = []
        self._building = {p.pid for p in _children()}
        # If this raises (or is cancelled), _building stays set: close() kills what it started.
        await anyio.to_thread.run_sync(self._build, holder, abandon_on_cancel=True)
        self._building = None
        if self._closed:  # closed while building, and the build finished anyway
            await _shutdown(holder)
            raise EngineError("the worker stopped while the engine was being built")
        self._llm = holder.pop()

    def _build(self, holder: list[Any]) -> None:
        """Build the engine into ``holder``. Never a local variable of its own: vLLM keeps
        tracebacks of some imports it makes lazily (optional kernels), and with them the frames
        that made those imports, this one included; an engine held by it would never be freed
        (and would shut down a second time, noisily, at interpreter exit)."""
        AsyncEngineArgs = _vllm("vllm").AsyncEngineArgs
        AsyncLLM = _vllm("vllm.v1.engine.async_llm").AsyncLLM

        user = convert_engine_args(self.engine_args, _field_types(AsyncEngineArgs))
        kwargs, env = engine_kwargs(
            model=self.model_path,
            model_name=self.model_name,
            dtype=self.dtype,
            max_concurrency=self.max_concurrency,
            build_device=self.build.device,
            user=user,
        )
        for key, value in env.items():
            os.environ.setdefault(key, value)
        # The engine core is our child; the guard plugin there watches this pid.
        os.environ[WORKER_PID_ENV] = str(os.getpid())
        logger.info("building vLLM's engine (%s): %s", self.build, _describe(kwargs))
        self.kwargs = kwargs
        holder.append(AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs)))
        try:
            self._tokenizer = holder[0].get_tokenizer()
            self.max_model_len = int(holder[0].model_config.max_model_len)
        except BaseException:
            _shutdown_now(holder)
            raise
        logger.info(
            "vLLM engine ready: max_model_len %d, max_num_seqs %d, engine processes %s",
            self.max_model_len,
            kwargs["max_num_seqs"],
            [p.pid for p in _engine_processes(holder[0])],
        )

    async def close(self) -> None:
        self._closed = True
        if self._llm is None:
            if self._building is not None:
                # Still building (the thread was abandoned): kill what the build started,
                # named VLLM::... or not yet (a spawned child renames itself once it runs).
                _kill(p for p in _children() if p.pid not in self._building)
            return
        holder, self._llm = [self._llm], None
        await _shutdown(holder)
        logger.info("vLLM engine shut down")

    async def health(self) -> None:
        if self._dead is not None:
            raise EngineDead(self._dead)
        llm = self._llm
        if llm is None:
            return
        try:
            await llm.check_health()
        except Exception as exc:
            raise self._died(exc) from None

    def _died(self, exc: BaseException) -> EngineDead:
        if self._dead is None:
            self._dead = _death_cause(self._llm, exc)
            logger.error("the vLLM engine died: %s", self._dead)
        return EngineDead(self._dead)

    async def abort(self, request_id: str) -> None:
        llm = self._llm
        if llm is not None and request_id in self._running:
            await llm.abort(request_id)

    def stats(self) -> dict[str, Any]:
        """Requests vLLM itself holds (for ``/v1/worker``): 0 once every stream has ended."""
        llm = self._llm
        if llm is None:
            return {}
        return {"engine_requests": int(llm.get_num_unfinished_requests())}

    # -- generation --------------------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        await self.health()
        llm = self._llm
        if llm is None:
            raise InvalidRequest("the model is not loaded")
        sampling = _vllm("vllm.sampling_params")

        ids = prompt_ids(self._tokenizer, request, self.max_model_len)
        budget = min(request.max_tokens, self.max_model_len - len(ids))
        try:
            params = sampling.SamplingParams(
                **sampling_kwargs(request, budget), output_kind=sampling.RequestOutputKind.DELTA
            )
        except Exception as exc:  # vLLM's own checks of the sampling settings
            if _is_client_error(exc):
                raise InvalidRequest(str(exc)) from None
            raise
        request_id = request.request_id or f"rbee-{secrets.token_hex(8)}"
        if request_id in self._running:
            raise InvalidRequest(f"request {request_id} is already generating")
        outputs = llm.generate({"prompt_token_ids": ids}, params, request_id=request_id)
        self._running.add(request_id)
        deltas = _Deltas(self, outputs, len(ids))
        try:
            yield deltas
        finally:
            self._running.discard(request_id)
            # Closing vLLM's generator before it finished aborts the request in the engine; it
            # returns once the abort is sent. Shielded: this runs on cancellation too.
            with anyio.CancelScope(shield=True):
                await outputs.aclose()
            if not deltas.finished:
                logger.info(
                    "request %s aborted in the engine after %d token(s)", request_id, deltas.tokens
                )


class _Deltas:
    """vLLM's ``RequestOutput`` stream as ``Delta``s. A class, not an async generator: there is
    nothing of its own to close when the consumer leaves early (``stream()`` closes vLLM's)."""

    def __init__(self, engine: VllmEngine, outputs: Any, prompt_tokens: int) -> None:
        self._engine = engine
        self._outputs = outputs
        self._prompt_tokens = prompt_tokens
        self.finished = False
        self.tokens = 0

    def __aiter__(self) -> _Deltas:
        return self

    async def __anext__(self) -> Delta:
        if self.finished:
            raise StopAsyncIteration
        try:
            out = await self._outputs.__anext__()
        except StopAsyncIteration:
            # vLLM ends a stream only after its finished output: treat a bare end as an abort.
            self.finished = True
            return Delta("", (), "abort", self._prompt_tokens)
        except (EngineDead, InvalidRequest):
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        completion = out.outputs[0]
        token_ids = tuple(int(t) for t in completion.token_ids)
        self.tokens += len(token_ids)
        reason: FinishReason | None = None
        if out.finished:
            self.finished = True
            raw = str(completion.finish_reason)
            if raw not in _FINISH_REASONS:
                raise EngineError(f"vLLM ended the request with finish reason {raw!r}")
            reason = _FINISH_REASONS[raw]
        return Delta(completion.text or "", token_ids, reason, self._prompt_tokens)

    def _translate(self, exc: Exception) -> Exception:
        llm = self._engine._llm
        if llm is None or getattr(llm, "errored", False) or type(exc).__name__ == "EngineDeadError":
            return self._engine._died(exc)
        if _is_client_error(exc):
            return InvalidRequest(str(exc))
        return exc


# -- helpers ---------------------------------------------------------------------------------------


def _vllm(module: str) -> Any:
    """A vLLM module, imported now (never at import time of this one: it costs 10-20 s; and
    typed ``Any``, so this package type-checks where vLLM is not installed)."""
    return importlib.import_module(module)


def _is_client_error(exc: BaseException) -> bool:
    """vLLM's "the request is wrong" errors (``VLLMClientError``; ``ValueError`` in releases
    before that class existed), told by name: vLLM's classes are not imported here."""
    return isinstance(exc, ValueError) or any(
        cls.__name__ == "VLLMClientError" for cls in type(exc).__mro__
    )


def _field_types(cls: Any) -> dict[str, Any]:
    """The fields of a dataclass (AsyncEngineArgs) with their resolved types where possible."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: use the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _describe(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()) if k != "model")


async def _shutdown(holder: list[Any]) -> None:
    """Shut down the engine in ``holder`` (emptied: no reference to it remains here) and wait
    for its engine-core processes to exit (vLLM waits for them: a few seconds)."""
    # vLLM's output handler task would see the engine core go away first and log the "engine
    # dead" traceback of a crash: stop it before, in the loop it runs in.
    handler = getattr(holder[0], "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        await asyncio.wait([handler])
    del handler
    await anyio.to_thread.run_sync(_shutdown_now, holder)
    # AsyncLLM.__del__ shuts down again, and at interpreter exit that raises a TypeError (its
    # module globals are gone): collect it now, while they exist.
    gc.collect()


def _shutdown_now(holder: list[Any]) -> None:
    # The pool thread keeps its last call's arguments until its next one: a list it empties.
    processes = _engine_processes(holder[0])
    holder.pop().shutdown()
    for process in processes:  # reap them: not even a zombie stays behind
        with contextlib.suppress(Exception):
            process.join(5)
            if process.exitcode is None:
                process.kill()
                process.join(5)


def _engine_processes(llm: Any) -> list[Any]:
    """vLLM's handles (``multiprocessing`` processes) of the engine-core processes."""
    manager = getattr(
        getattr(getattr(llm, "engine_core", None), "resources", None), "engine_manager", None
    )
    return list(getattr(manager, "processes", None) or [])


def _death_cause(llm: Any, exc: BaseException) -> str:
    """Why the engine is dead, as precisely as vLLM's process handles tell."""
    for process in _engine_processes(llm):
        try:
            code = process.exitcode
        except Exception:  # the handle may be half torn down
            continue
        if code is None:
            continue
        name = getattr(process, "name", "engine core")
        how = (
            f"killed by signal {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        )
        return f"vLLM's engine core process ({name}, pid {process.pid}) {how}"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"the vLLM engine failed ({detail}); the worker's log has vLLM's own traceback"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _children() -> list[Any]:
    """This process's descendants (``psutil.Process``es)."""
    import psutil  # type: ignore[import-untyped]  # a dependency of vLLM's

    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _kill(processes: Iterable[Any]) -> None:
    """SIGKILL ``processes`` and reap them: for an engine still being built."""
    import psutil

    doomed = list(processes)
    for process in doomed:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(doomed, timeout=5)
    if doomed:
        logger.info("killed %d process(es) of an engine still being built", len(doomed))

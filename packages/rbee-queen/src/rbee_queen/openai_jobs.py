"""The ``completion`` operation: the job behind one OpenAI-compatible request.

Its ``n`` choices run through the scheduler as ``infer`` does (one relayed worker job per choice,
routed to the least busy worker, a worker started when the model has none), at once. Each choice
relays under a sink of its own (``_ChoiceSink``) that puts the choice's ``index`` into its data
events, so the readers can tell the choices apart, and merges only deltas of one choice.

A completion is abandoned when nobody reads it any more: while the job runs, a watchdog looks at
``JobHandle.streams`` (every stream open on the job, jobproto's and the OpenAI routes' own) and
cancels the job once it has had no reader for ``QueenSettings.abandon_grace`` seconds, which
cancels its worker jobs (the engine stops between two tokens). A client that lost its connection
has that long to resume.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from jobproto import Data, Event, JobFailed, Merge, Origin, RequestError, bind_job, current_job
from jobproto.asgi import JobHandle, JobService
from rbee_contracts.completion import (
    CompletionChoice,
    CompletionParams,
    CompletionResult,
    choice_fields,
    merge_choice_deltas,
)
from rbee_contracts.infer import InferResult
from rbee_contracts.reading import read_result

from .scheduler import Scheduler

__all__ = ["ABANDONED", "run_completion"]

#: the cancel reason of a completion nobody read for the grace period
ABANDONED = "abandoned: no client read this completion"
#: how often the watchdog looks at the readers, at most (seconds)
WATCH_INTERVAL = 0.25


class _ChoiceSink:
    """The job's sink, as seen by choice ``index``: its data events carry the index."""

    __slots__ = ("_first", "_index", "_job")

    def __init__(self, job: Any, index: int, first: list[float]) -> None:
        self._job = job
        self._index = index
        self._first = first

    @property
    def job_id(self) -> str:
        return str(self._job.job_id)

    @property
    def correlation_id(self) -> str:
        return str(self._job.correlation_id)

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        if isinstance(event, Data) and isinstance(event.payload, dict):
            if not self._first:
                self._first.append(time.perf_counter())
            event = Data({"index": self._index, **event.payload})
            self._job.emit(event, origin, merge=None if merge is None else merge_choice_deltas)
        else:
            self._job.emit(event, origin, merge=merge)


async def run_completion(
    scheduler: Scheduler, jobs: JobService | None, params: CompletionParams, grace: float
) -> CompletionResult:
    """Generate the ``n`` choices of ``params``; cancelled once abandoned for ``grace`` s."""
    job = current_job()
    started = time.perf_counter()
    first: list[float] = []
    results: dict[int, InferResult] = {}
    failure: list[JobFailed] = []

    async def choice(index: int) -> None:
        sink = job if job is None else _ChoiceSink(job, index, first)
        try:
            with bind_job(sink):
                raw = await scheduler.infer(params.model, params.hive, choice_fields(params, index))
            results[index] = _infer_result(raw)
        except JobFailed as exc:
            if not failure:
                failure.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        if jobs is not None and isinstance(job, JobHandle):
            tg.start_soon(_watch_readers, jobs, job, grace)
        async with anyio.create_task_group() as choices:
            for index in range(params.n):
                choices.start_soon(choice, index)
        tg.cancel_scope.cancel()  # the watchdog: every choice has ended
    if failure:
        raise failure[0]
    ordered = [results[i] for i in range(params.n)]
    return CompletionResult(
        choices=[
            CompletionChoice(i, r.text, r.finish_reason, r.completion_tokens)
            for i, r in enumerate(ordered)
        ],
        prompt_tokens=ordered[0].prompt_tokens,
        completion_tokens=sum(r.completion_tokens for r in ordered),
        ttft_ms=round(((first[0] if first else time.perf_counter()) - started) * 1000, 3),
        model=params.model,
    )


def _infer_result(raw: Any) -> InferResult:
    try:
        return read_result(raw, InferResult)
    except RequestError as exc:
        raise JobFailed("bad_gateway", f"a worker answered infer with {exc.message}") from None


async def _watch_readers(jobs: JobService, handle: JobHandle, grace: float) -> None:
    """Cancel ``handle``'s job once nobody has read it for ``grace`` seconds."""
    unread_since: float | None = None
    interval = min(WATCH_INTERVAL, grace / 4)
    while True:
        now = anyio.current_time()
        if handle.streams > 0:
            unread_since = None
        elif unread_since is None:
            unread_since = now
        elif now - unread_since >= grace:
            await jobs.cancel(handle, f"{ABANDONED} for {grace:g} s")
            return
        await anyio.sleep(interval)

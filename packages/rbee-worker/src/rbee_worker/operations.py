"""The worker's jobproto operations. There is one: ``infer``.

``infer`` (docs/tiers.md, worker; parameters: ``rbee_contracts.infer.InferParams``): check the
model is ready, take a slot in the bounded queue (or fail ``busy`` at once), stream the engine's
deltas as ``data`` events ``{"text", "token_ids"}``, and succeed with the totals. Failure codes:

    model_not_ready   still loading, or the load failed
    busy              every slot taken and the queue full
    engine_dead       the engine died before or during this generation (message says why)
    invalid_request   the model cannot serve this request (prompt too long, no chat template)
    aborted           the engine aborted the generation (Engine.abort)

Cancelling the job cancels the handler; leaving the engine's ``stream()`` block stops the
generation between two tokens.
"""

from __future__ import annotations

import time

import attrs

from jobproto import (
    JobFailed,
    Operations,
    concat_data,
    current_job,
    emit_data,
    narrate,
)
from jobproto.telemetry import set_span_attributes
from rbee_contracts import spans
from rbee_contracts.infer import InferParams, InferResult
from rbee_contracts.lifecycle import ModelLoadState

from .engines import ChatTurn, EngineDead, GenerationRequest, InvalidRequest
from .worker import Busy, WorkerRuntime

__all__ = ["worker_operations"]


def _request(params: InferParams, request_id: str) -> GenerationRequest:
    messages = None
    if params.messages is not None:
        messages = tuple(ChatTurn(m.role, m.content) for m in params.messages)
    return GenerationRequest(
        prompt=params.prompt,
        messages=messages,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        seed=params.seed,
        stop=tuple(params.stop),
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        request_id=request_id,
    )


def worker_operations(runtime: WorkerRuntime) -> Operations:
    ops = Operations()

    @ops.operation("infer")
    async def infer(params: InferParams) -> InferResult:
        """Generate text, streaming tokens as data events; the result has the totals."""
        started = time.perf_counter()
        await _check_ready(runtime)
        engine = runtime.engine
        if params.max_tokens > engine.max_model_len:
            raise JobFailed(
                "invalid_request",
                f"max_tokens {params.max_tokens} is over this model's max_model_len"
                f" {engine.max_model_len}",
            )
        job = current_job()
        request = _request(params, job.job_id if job is not None else "")

        queued_in_engine = False

        def queued(ahead: int) -> None:
            nonlocal queued_in_engine
            # An engine that queues requests itself is handed this one at once: it waits there.
            queued_in_engine = runtime.admission.engine_queues
            narrate("queue", f"every slot is busy; queued with {ahead} request(s) ahead")

        set_span_attributes(spans.infer_request(params, engine.model_name))
        try:
            async with runtime.admission.slot(on_wait=queued):
                result = await _generate(runtime, request, started, queued_in_engine)
        except Busy as exc:
            runtime.metrics.refused("busy")
            raise JobFailed("busy", str(exc)) from None
        set_span_attributes(spans.infer_result(attrs.asdict(result)))
        return result

    return ops


async def _check_ready(runtime: WorkerRuntime) -> None:
    reason = await runtime.dead_reason()
    if reason is not None:
        raise JobFailed("engine_dead", reason)
    if runtime.state is ModelLoadState.LOADING:
        raise JobFailed("model_not_ready", "the model is still loading; retry when /ready is 200")
    if runtime.state is ModelLoadState.FAILED:
        raise JobFailed("model_not_ready", f"the model failed to load: {runtime.error}")


async def _generate(
    runtime: WorkerRuntime, request: GenerationRequest, started: float, queued_in_engine: bool
) -> InferResult:
    """Run ``request`` on the engine and total it up. ``queued_in_engine``: the request was
    handed to an engine that queues requests itself while every slot was busy, so it waits in
    the engine's queue first, for a time the worker does not see."""
    engine = runtime.engine
    began = time.perf_counter()
    meter = runtime.metrics.generation(started)
    first_token: float | None = None
    first_tokens = 0  # how many tokens the first delta with tokens brought
    text: list[str] = []
    completion = prompt_tokens = 0
    finish = None
    try:
        async with engine.stream(request) as deltas:
            async for delta in deltas:
                if delta.token_ids:
                    meter.tokens(len(delta.token_ids), delta.prompt_tokens)
                    if first_token is None:
                        first_token = time.perf_counter()
                        first_tokens = len(delta.token_ids)
                if delta.text or delta.token_ids:
                    # One data event per delta while subscribers keep up; deltas they have not
                    # read yet coalesce (concat_data), so a reader that lags costs fewer events.
                    payload = {"text": delta.text, "token_ids": list(delta.token_ids)}
                    emit_data(payload, merge=concat_data)
                text.append(delta.text)
                completion += len(delta.token_ids)
                prompt_tokens = delta.prompt_tokens
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                    break
    except EngineDead as exc:
        runtime.mark_dead(str(exc))
        raise JobFailed("engine_dead", str(exc)) from None
    except InvalidRequest as exc:
        raise JobFailed("invalid_request", str(exc)) from None
    meter.finished(finish or "abort")
    if finish is None or finish == "abort":
        raise JobFailed("aborted", "the engine aborted this generation")
    ended = time.perf_counter()
    if queued_in_engine:
        # The time spent in the engine's queue is not known here, only that it ended before
        # the first token: the rate is taken over the tokens after the first delta, from it.
        since, counted = first_token or ended, completion - first_tokens
    else:
        since, counted = began, completion
    return InferResult(
        text="".join(text),
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        # From the job's start (queueing included: what the client waited) to the first token.
        ttft_ms=round(((first_token or ended) - started) * 1000, 3),
        # Over the generation itself (prefill included, queueing not; for a request queued in
        # the engine, from its first delta: its prefill cannot be told from its wait there).
        tokens_per_s=round(counted / (ended - since), 3) if ended > since else 0.0,
        model=engine.model_name,
        engine=engine.name,
    )

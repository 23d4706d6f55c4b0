"""One reader of a completion job: its answer as OpenAI's whole object, or as OpenAI's stream.

The answer is read from the job's log with a cursor, as ``GET /v1/jobs/{id}/stream`` reads it
(``jobproto.asgi``'s stream): every frame after the cursor in one write, then a wait for the job's
next event (``JobHandle.wait_change``). Each frame becomes OpenAI chunks (``openai_wire``) that
carry the frame's seq as their SSE ``id``, so a stream resumes after any chunk. The stream's
headers wait for the job's first data or terminal event (a resumed stream past its first chunk
sends them at once): a completion that fails before its first token is an HTTP error.

The reader counts itself in ``JobHandle.streams`` while it is connected: the job is abandoned
(``openai_jobs``) once nobody has read it for a while. A client that disconnects is noticed at
once by a watcher of its ``receive``, as jobproto's stream notices it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from jobproto import CORRELATION_HEADER, JobState, accept_correlation_id
from jobproto.asgi import JobHandle, JobService

from .openai_wire import (
    OpenAIError,
    StreamShape,
    chunk_frame,
    completion_object,
    done_frame,
    error_for_failure,
    error_frame,
    finish_frames,
)

__all__ = ["JOB_ID_HEADER", "WHOLE_WAIT", "answer", "correlation", "error_response", "headers"]

logger = logging.getLogger("rbee_queen.openai")

#: the header naming the completion's job (for ``GET /v1/jobs/{id}/stream``, status, cancel)
JOB_ID_HEADER = "X-Rbee-Job-Id"
#: longest wait for a whole completion (seconds; the ``openai`` client's own default timeout)
WHOLE_WAIT = 600.0

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE = b": keepalive\n\n"


def correlation(scope: Scope) -> str:
    """The request's correlation id (jobproto's correlation middleware set it)."""
    state = scope.setdefault("state", {})
    if "correlation_id" not in state:
        state["correlation_id"] = accept_correlation_id(None)
    return str(state["correlation_id"])


def headers(scope: Scope, job_id: str | None = None) -> dict[str, str]:
    out = {CORRELATION_HEADER: correlation(scope), "Cache-Control": "no-store"}
    if job_id is not None:
        out[JOB_ID_HEADER] = job_id
    return out


def error_response(scope: Scope, error: OpenAIError, job_id: str | None = None) -> Response:
    return JSONResponse(error.body(), error.status, headers=headers(scope, job_id))


class _Reader:
    """One reader's connection: gone once its client disconnected."""

    __slots__ = ("gone", "waiter")

    def __init__(self) -> None:
        self.gone = False
        self.waiter: asyncio.Future[bool] | None = None

    def disconnected(self) -> None:
        self.gone = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)

    async def watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a broken receive is a disconnect; nobody awaits this task
            logger.debug("receive failed; treating it as a disconnect", exc_info=True)
        self.disconnected()

    async def wait(self, handle: JobHandle, within: float) -> bool:
        """Wait for the job's next event; False after ``within`` seconds or on disconnect."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            return await handle.wait_change(within, self.waiter)
        finally:
            self.waiter = None


async def answer(
    service: JobService,
    handle: JobHandle,
    shape: StreamShape,
    stream: bool,
    after: int,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Answer one request for the completion ``handle`` runs (starting the job if it waits for
    its first reader): streamed from seq ``after``, or whole once it has ended."""
    service.subscribe(handle)
    handle.streams += 1
    reader = _Reader()
    watcher = asyncio.get_running_loop().create_task(reader.watch(receive))
    try:
        if stream:
            await _stream(service, handle, shape, after, reader, scope, send)
        else:
            await _whole(service, handle, shape, reader, scope, send)
    except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the client is gone or frozen: it may resume; the job waits abandon_grace
    finally:
        handle.streams -= 1
        watcher.cancel()


async def _whole(
    service: JobService,
    handle: JobHandle,
    shape: StreamShape,
    reader: _Reader,
    scope: Scope,
    send: Send,
) -> None:
    job = handle.job
    with anyio.move_on_after(WHOLE_WAIT):
        while not (job.finished or reader.gone or service.closing):
            await reader.wait(handle, service.settings.keepalive_interval)
    if reader.gone:
        return
    if job.state is JobState.SUCCEEDED:
        body = completion_object(shape.kind, job.id, shape.created, shape.model, job.result)
        response: Response = JSONResponse(body, headers=headers(scope, job.id))
    else:
        response = error_response(scope, _failure(handle), job.id)
    with anyio.fail_after(service.settings.send_timeout):
        await response(scope, _no_receive, send)


async def _stream(
    service: JobService,
    handle: JobHandle,
    shape: StreamShape,
    after: int,
    reader: _Reader,
    scope: Scope,
    send: Send,
) -> None:
    job = handle.job
    log = job.log
    settings = service.settings
    started = _choices_before(handle, after)
    cursor = after
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            *_SSE_HEADERS,
            (CORRELATION_HEADER.lower().encode(), correlation(scope).encode()),
            (JOB_ID_HEADER.lower().encode(), job.id.encode()),
        ],
    }
    # a resumed stream whose first chunks were sent has its status already: at once
    headers_sent = bool(started)
    if headers_sent:
        with anyio.fail_after(settings.send_timeout):
            await send(start)
    while not reader.gone:
        out: list[bytes] = []
        end = False
        gap, frames = log.read(cursor, settings.max_batch_events)
        if gap is not None:  # past the retained log: the text would have a hole
            message = f"this completion lost {gap.lost} events: read it again whole"
            out.append(error_frame(OpenAIError(500, message, type="server_error")))
            end = True
        elif not frames and job.finished:
            # resumed after the terminal event (the finish chunk was read, ``[DONE]`` was not):
            # nothing more will come
            if job.state is not JobState.SUCCEEDED:
                error = _failure(handle)
                if not headers_sent:
                    with anyio.fail_after(settings.send_timeout):
                        await error_response(scope, error, job.id)(scope, _no_receive, send)
                    return
                out.append(error_frame(error))
            else:
                out.append(done_frame())
            end = True
        for frame in frames if not end else ():
            cursor += 1
            type_, payload = _event(frame)
            if type_ == "data":
                index = int(payload["index"])
                first = index not in started
                out.append(chunk_frame(shape, cursor, index, payload["text"], first))
                started.add(index)
            elif type_ == "succeeded":
                out += [finish_frames(shape, cursor, payload["result"], started), done_frame()]
                end = True
            elif type_ in ("failed", "cancelled", "expired"):
                error = _failure(handle)
                if not headers_sent and not out:  # before any token: an HTTP error
                    with anyio.fail_after(settings.send_timeout):
                        await error_response(scope, error, job.id)(scope, _no_receive, send)
                    return
                out.append(error_frame(error))
                end = True
        if not out and not end:
            if service.closing and not headers_sent:
                error = OpenAIError(503, "the queen is stopping", type="server_error")
                with anyio.fail_after(settings.send_timeout):
                    await error_response(scope, error, job.id)(scope, _no_receive, send)
                return
            if service.closing:
                end = True  # the queen is stopping: the client resumes when it is back
            else:
                # no await since the log was read: an event emitted from here on wakes this
                woken = await reader.wait(handle, settings.keepalive_interval)
                if woken or not headers_sent or reader.gone:
                    continue
                out.append(_KEEPALIVE)
        with anyio.fail_after(settings.send_timeout):
            if not headers_sent:
                await send(start)
                headers_sent = True
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": not end})
        if end:
            return


async def _no_receive() -> dict[str, Any]:
    # for a response sent after the request was read: the watcher owns the real receive
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


def _event(frame: bytes) -> tuple[str, Any]:
    """The type and payload of one log frame (jobproto's ``id:``, ``event:``, ``data:`` lines;
    the first line that starts with ``data:`` holds the whole envelope)."""
    data = frame.index(b"\ndata: ")
    envelope = json.loads(frame[data + 7 :])
    return str(envelope["type"]), envelope["payload"]


def _choices_before(handle: JobHandle, after: int) -> set[int]:
    """The choices that had data events up to seq ``after`` (their first chunk was sent)."""
    seen: set[int] = set()
    if after == 0:
        return seen
    _, frames = handle.job.log.read(0, after)
    for frame in frames:
        # a trimmed log starts later than seq 1: its first ``after`` frames run past ``after``
        if int(frame[4 : frame.index(b"\n")]) > after:
            break
        type_, payload = _event(frame)
        if type_ == "data":
            seen.add(int(payload["index"]))
    return seen


def _failure(handle: JobHandle) -> OpenAIError:
    job = handle.job
    if job.error is not None:
        return error_for_failure(job.error.code, job.error.message)
    if job.state in (JobState.CANCELLED, JobState.EXPIRED):
        reason = job.cancel_reason or job.state.value
        return OpenAIError(
            500,
            f"the completion was {job.state.value}: {reason}",
            type="server_error",
            code=job.state.value,
        )
    return OpenAIError(
        504, "the completion did not end in time", type="server_error", code="timeout"
    )

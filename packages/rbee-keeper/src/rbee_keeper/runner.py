"""Run one job on the queen for the command line: create it, stream it, map the outcome to an exit
code, and cancel it on Ctrl+C.

Exit codes (``rbee --help`` lists them too):

====  ===========================================================================================
0     the job succeeded
1     the job failed (its code and message are printed), or the queen answered 5xx
2     usage error (click), or a bad setting
3     the queen is unreachable (not running, wrong URL, connection lost), or could not be started
4     the job was cancelled or expired
5     the queen refused the request with a 4xx (validation error: message and field printed)
130   interrupted by Ctrl+C (the job is cancelled on the queen first)
====  ===========================================================================================

Ctrl+C: the first one stops following the job and cancels it on the queen (``DELETE``, waiting
at most ``cancel_timeout`` seconds), then exits 130; a second one exits at once. SIGINT is taken
over with ``anyio.open_signal_receiver`` while a command runs, so the job id is known when it comes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc

from jobproto import (
    Cancelled,
    ConnectFailed,
    Expired,
    Failed,
    JobEvent,
    JobProtoError,
    JobState,
    RemoteProtocolError,
    Succeeded,
    TransportFailed,
)
from jobproto.client import HTTPStatusError, JobClient, JobStatus, StreamInterrupted

from .config import Settings
from .render import Renderer
from .services import ServiceError, is_local, start_local

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "call",
    "follow",
    "run_job",
    "run_sync",
    "stream_job",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CANCELLED = 4
EXIT_REFUSED = 5
EXIT_INTERRUPTED = 130


class _Interrupts:
    """Ctrl+C state of one command: ``work`` is cancelled by the first, everything by the second."""

    def __init__(self) -> None:
        self.count = 0
        self.work = anyio.CancelScope()


@asynccontextmanager
async def _watch_interrupts() -> AsyncIterator[_Interrupts]:
    state = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state  # signal handlers can only be set in the main thread: Ctrl+C stays default
        return
    import signal

    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for _ in signals:
                    state.count += 1
                    if state.count == 1:
                        state.work.cancel()
                    else:
                        tg.cancel_scope.cancel()

            tg.start_soon(watch)
            try:
                yield state
            finally:
                tg.cancel_scope.cancel()


def report(renderer: Renderer, exc: BaseException, settings: Settings, job_id: str | None) -> int:
    """Tell the person what went wrong and what to do; return the exit code."""
    url = settings.queen_url
    if isinstance(exc, ConnectFailed):
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or 80}"
        if is_local(url):
            message = f"queen not running on {where}; start it with `rbee queen start`"
        else:
            message = f"cannot connect to the queen on {where} ({exc})"
        renderer.error(message, exit_code=EXIT_UNREACHABLE, code="queen_unreachable")
        return EXIT_UNREACHABLE
    if isinstance(exc, StreamInterrupted):
        message = (
            f"lost the connection to the queen at {url}; job {exc.job_id} may still be running:"
            f" follow it with `rbee jobs stream {exc.job_id}`"
        )
        renderer.error(message, exit_code=EXIT_UNREACHABLE, code="stream_interrupted")
        return EXIT_UNREACHABLE
    if isinstance(exc, TransportFailed):
        message = f"the queen at {url} did not answer: {exc}"
        renderer.error(message, exit_code=EXIT_UNREACHABLE, code="queen_unreachable")
        return EXIT_UNREACHABLE
    if isinstance(exc, HTTPStatusError):
        if exc.status < 500:
            renderer.error(
                f"refused ({exc.status} {exc.code}): {exc.message}",
                exit_code=EXIT_REFUSED,
                code=exc.code,
                field=exc.field,
            )
            return EXIT_REFUSED
        renderer.error(
            f"queen error ({exc.status} {exc.code}): {exc.message}",
            exit_code=EXIT_FAILED,
            code=exc.code,
        )
        return EXIT_FAILED
    if isinstance(exc, RemoteProtocolError):
        renderer.error(
            f"the server at {url} does not speak jobproto/1 as expected: {exc}",
            exit_code=EXIT_UNREACHABLE,
            code="protocol_error",
        )
        return EXIT_UNREACHABLE
    if isinstance(exc, ServiceError):
        renderer.error(str(exc), exit_code=EXIT_UNREACHABLE, code="service_error")
        return EXIT_UNREACHABLE
    suffix = f" (job {job_id})" if job_id else ""
    renderer.error(f"{exc}{suffix}", exit_code=EXIT_FAILED, code="error")
    return EXIT_FAILED


_EXPECTED = (JobProtoError, ServiceError)


async def follow(
    client: JobClient,
    job_id: str,
    operation: str,
    renderer: Renderer,
    *,
    after: int = 0,
    started: float | None = None,
) -> int:
    """Render the events of ``job_id`` through its terminal event; return the exit code."""
    started = time.monotonic() if started is None else started
    async with aclosing(client.events(job_id, after=after)) as events:
        async for item in events:
            renderer.event(item)
            if not (isinstance(item, JobEvent) and item.terminal):
                continue
            event = item.event
            if isinstance(event, Succeeded):
                renderer.succeeded(operation, event.result, job_id, time.monotonic() - started)
                return EXIT_OK
            if isinstance(event, Failed):
                renderer.ended(JobState.FAILED, job_id, event.code, event.message)
                return EXIT_FAILED
            if isinstance(event, (Cancelled, Expired)):
                renderer.ended(JobState(event.TYPE), job_id, event.TYPE, event.reason)
                return EXIT_CANCELLED
    raise RemoteProtocolError(f"the stream of job {job_id} ended without an outcome")


async def _cancel(client: JobClient, job_id: str, renderer: Renderer, limit: float) -> None:
    renderer.note(f"cancelling job {job_id} (Ctrl+C again to quit at once)")
    status: JobStatus | None = None
    with anyio.move_on_after(limit):
        try:
            status = await client.cancel(job_id)
        except _EXPECTED as exc:
            renderer.note(f"could not cancel job {job_id}: {exc}")
            return
    if status is None:
        renderer.note(f"the queen did not confirm within {limit:g} s; job {job_id} may linger")
    elif status.terminal and status.state != JobState.CANCELLED:
        renderer.note(f"job {job_id} had already ended: {status.state}")


async def stream_job(
    settings: Settings,
    renderer: Renderer,
    start: Callable[[JobClient], Awaitable[tuple[str, str, int]]],
    *,
    cancel_on_interrupt: bool = True,
) -> int:
    """Follow the job ``start`` gives as ``(job_id, operation, after)``, with Ctrl+C handling."""
    started = time.monotonic()
    outcome: int | None = None
    job_id: str | None = None
    async with JobClient(settings.queen_url) as client, _watch_interrupts() as interrupts:
        try:
            with interrupts.work:
                job_id, operation, after = await start(client)
                outcome = await follow(
                    client, job_id, operation, renderer, after=after, started=started
                )
        except _EXPECTED as exc:
            outcome = report(renderer, exc, settings, job_id)
        if outcome is None and job_id is not None and cancel_on_interrupt:
            renderer.close()
            await _cancel(client, job_id, renderer, settings.cancel_timeout)
    renderer.close()
    if outcome is not None:
        return outcome
    if job_id is not None and not cancel_on_interrupt:
        message = f"detached; job {job_id} goes on (`rbee jobs cancel {job_id}` stops it)"
    else:
        message = "cancelled"
    renderer.error(message, exit_code=EXIT_INTERRUPTED, code="interrupted")
    return EXIT_INTERRUPTED


async def run_job(
    settings: Settings,
    renderer: Renderer,
    operation: str,
    fields: Mapping[str, Any],
    *,
    autostart: bool = False,
) -> int:
    """Create ``operation`` on the queen and follow it; start the local services if allowed."""

    async def start(client: JobClient) -> tuple[str, str, int]:
        try:
            created = await client.create(operation, fields)
        except ConnectFailed:  # nothing was sent: safe to start the queen and send it again
            if not (autostart and is_local(settings.queen_url)):
                raise
            await start_local(settings, renderer.note)
            created = await client.create(operation, fields)
        return created.job_id, operation, 0

    return await stream_job(settings, renderer, start)


async def call(
    settings: Settings, renderer: Renderer, request: Callable[[JobClient], Awaitable[Any]]
) -> int:
    """One plain request to the queen (no job to follow), with the same error reporting."""
    try:
        async with JobClient(settings.queen_url) as client:
            value = await request(client)
    except _EXPECTED as exc:
        return report(renderer, exc, settings, None)
    if value is not None:
        renderer.output(value)
    return EXIT_OK


def run_sync(func: Callable[[], Awaitable[int]]) -> int:
    """``anyio.run`` for a command; a Ctrl+C outside the job handling still exits 130."""
    try:
        return anyio.run(func)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

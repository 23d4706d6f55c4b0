"""Run one job on the queen for the command line: create it and stream it (one request:
``JobClient.submit``), map the outcome to an exit code, and cancel it on Ctrl+C.

Exit codes (``rbee --help`` lists them too):

====  ===========================================================================================
0     the job succeeded
1     the job failed (its code and message are printed), or the queen answered 5xx
2     usage error (click), or a bad setting
3     the queen is unreachable (not running, wrong URL, connection lost), or could not be started
4     the job was cancelled or expired
5     the queen refused the request with a 4xx (validation error: message and field printed),
      or refused the keeper itself (401/403: its token; 421: the host name in queen_url)
130   interrupted by Ctrl+C (the job is cancelled on the queen first)
====  ===========================================================================================

Ctrl+C: the first one stops following the job and cancels it on the queen (``DELETE``, waiting
at most ``cancel_timeout`` seconds), then exits 130; a second one exits at once. SIGINT is taken
over with ``anyio.open_signal_receiver`` while a command runs, so the job id is known when it comes.

Every request carries the keeper's token (``access.queen_client``); a refusal of it is told as
what to set, never with the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from opentelemetry import trace

from jobproto import (
    Cancelled,
    ConnectFailed,
    Expired,
    Failed,
    Gap,
    JobEvent,
    JobProtoError,
    JobState,
    RemoteProtocolError,
    Succeeded,
    TransportFailed,
)
from jobproto.client import HTTPStatusError, JobClient, JobStatus, StreamInterrupted
from jobproto.telemetry import set_span_attributes
from rbee_contracts.auth import redact

from .access import (
    REFUSALS,
    AccessError,
    QueenRefused,
    certificate_error,
    queen_client,
    refusal_message,
)
from .config import Settings
from .render import Renderer
from .services import ServiceError, is_local, queen_answers, start_local, start_local_hive

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

#: the keeper's spans; they go nowhere unless ``cli.main`` configured tracing
_tracer = trace.get_tracer("rbee_keeper")


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
    """Tell the person what went wrong and what to do; return the exit code. No message carries
    the token (a server could echo what it was sent)."""
    message, exit_code, code, field = _diagnose(exc, settings, job_id)
    renderer.error(redact(message, settings.token), exit_code=exit_code, code=code, field=field)
    return exit_code


def _diagnose(
    exc: BaseException, settings: Settings, job_id: str | None
) -> tuple[str, int, str | None, str | None]:
    """``(message, exit code, code, field)`` for ``exc``."""
    url = settings.queen_url
    if isinstance(exc, QueenRefused):
        return str(exc), EXIT_REFUSED, exc.code, None
    if isinstance(exc, HTTPStatusError) and exc.status in REFUSALS:
        message = refusal_message(settings, exc.status, exc.code, exc.message)
        return message, EXIT_REFUSED, exc.code, None
    if isinstance(exc, AccessError):
        return str(exc), EXIT_USAGE, "bad_setting", None
    untrusted = certificate_error(exc)
    if untrusted is not None:
        how = (
            f"tls_ca ({settings.tls_ca}) does not vouch for it: compare"
            f" `rbee cert fingerprint {settings.tls_ca}` with the queen's certificate's"
            if settings.tls_ca is not None
            else "set tls_ca (RBEE_TLS_CA) to its certificate or CA, after comparing"
            " `rbee cert fingerprint FILE` with the queen's certificate's"
        )
        message = (
            f"the queen at {url} presented a certificate that cannot be trusted ({untrusted});"
            f" {how}"
        )
        return message, EXIT_UNREACHABLE, "untrusted_certificate", None
    if isinstance(exc, ConnectFailed):
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if is_local(url):
            message = f"queen not running on {where}; start it with `rbee queen start`"
        else:
            message = f"cannot connect to the queen on {where} ({exc})"
        return message, EXIT_UNREACHABLE, "queen_unreachable", None
    if isinstance(exc, StreamInterrupted):
        message = (
            f"lost the connection to the queen at {url}; job {exc.job_id} may still be running:"
            f" follow it with `rbee jobs stream {exc.job_id}`"
        )
        return message, EXIT_UNREACHABLE, "stream_interrupted", None
    if isinstance(exc, TransportFailed):
        # An https server hangs up on plain http without a word: say what that may mean.
        hint = " (does it serve https? then queen_url starts with https://)"
        return (
            f"the queen at {url} did not answer: {exc}"
            + (hint if urlsplit(url).scheme == "http" else ""),
            EXIT_UNREACHABLE,
            "queen_unreachable",
            None,
        )
    if isinstance(exc, HTTPStatusError):
        if exc.status < 500:
            message = f"refused ({exc.status} {exc.code}): {exc.message}"
            return message, EXIT_REFUSED, exc.code, exc.field
        return f"queen error ({exc.status} {exc.code}): {exc.message}", EXIT_FAILED, exc.code, None
    if isinstance(exc, RemoteProtocolError):
        message = f"the server at {url} does not speak jobproto/1 as expected: {exc}"
        return message, EXIT_UNREACHABLE, "protocol_error", None
    if isinstance(exc, ServiceError):
        return str(exc), EXIT_UNREACHABLE, "service_error", None
    suffix = f" (job {job_id})" if job_id else ""
    return f"{exc}{suffix}", EXIT_FAILED, "error", None


_EXPECTED = (JobProtoError, ServiceError, AccessError, QueenRefused)


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
    async with aclosing(client.events(job_id, after=after)) as events:
        return await _render(events, job_id, operation, renderer, started)


async def _render(
    events: AsyncIterable[JobEvent | Gap],
    job_id: str,
    operation: str,
    renderer: Renderer,
    started: float | None,
) -> int:
    """Render ``events`` (of ``job_id``) through the terminal event; return the exit code."""
    started = time.monotonic() if started is None else started
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


#: opens the events of the job to follow, in the exit stack given (which closes their
#: connection): ``(job_id, operation, events)``
_Open = Callable[
    [JobClient, AsyncExitStack], Awaitable[tuple[str, str, AsyncIterable[JobEvent | Gap]]]
]


async def stream_job(
    settings: Settings,
    renderer: Renderer,
    start: Callable[[JobClient], Awaitable[tuple[str, str, int]]],
    *,
    prepare: Callable[[], Awaitable[None]] | None = None,
    cancel_on_interrupt: bool = True,
) -> int:
    """Follow the job ``start`` gives as ``(job_id, operation, after)``, with Ctrl+C handling.

    ``prepare`` runs first (starting the local queen): the client is made after it, so that it
    presents the token the queen it started wrote."""

    async def open_events(
        client: JobClient, stack: AsyncExitStack
    ) -> tuple[str, str, AsyncIterable[JobEvent | Gap]]:
        job_id, operation, after = await start(client)
        events = await stack.enter_async_context(aclosing(client.events(job_id, after=after)))
        return job_id, operation, events

    return await _stream(
        settings, renderer, open_events, prepare=prepare, cancel_on_interrupt=cancel_on_interrupt
    )


async def _stream(
    settings: Settings,
    renderer: Renderer,
    open_events: _Open,
    *,
    prepare: Callable[[], Awaitable[None]] | None,
    cancel_on_interrupt: bool = True,
) -> int:
    """``stream_job`` for the events ``open_events`` opens."""
    started = time.monotonic()
    outcome: int | None = None
    job_id: str | None = None
    client: JobClient | None = None
    async with AsyncExitStack() as stack:
        interrupts = await stack.enter_async_context(_watch_interrupts())
        try:
            with interrupts.work:
                if prepare is not None:
                    await prepare()
                client = await stack.enter_async_context(queen_client(settings))
                # the stream's connection is closed before a cancel is sent
                async with AsyncExitStack() as stream:
                    job_id, operation, events = await open_events(client, stream)
                    outcome = await _render(events, job_id, operation, renderer, started)
        except _EXPECTED as exc:
            outcome = report(renderer, exc, settings, job_id)
        if outcome is None and client is not None and job_id is not None and cancel_on_interrupt:
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

    async def prepare() -> None:
        # Asked before the job is created (not on its ConnectFailed): a queen that this starts
        # writes a new token, and the client that creates and follows the job must present it.
        answer = await queen_answers(settings)
        if answer is False:
            await start_local(settings, renderer.note)
        elif answer is True and fields.get("hive") in (None, settings.hive_id):
            await start_local_hive(settings, renderer.note)  # a local hive that died

    async def open_events(
        client: JobClient, stack: AsyncExitStack
    ) -> tuple[str, str, AsyncIterable[JobEvent | Gap]]:
        # one request: the queen answers the create with the job's stream
        stream = await stack.enter_async_context(client.submit(operation, fields))
        created = stream.created
        set_span_attributes(
            {"jobproto.job_id": created.job_id, "jobproto.correlation_id": created.correlation_id}
        )
        return created.job_id, operation, stream

    use_prepare = autostart and is_local(settings.queen_url)
    # The root of the command's trace (when tracing is on, docs/tracing.md): the queen's job,
    # and every job it runs for this one, continue it through traceparent.
    attributes = {"jobproto.operation": operation}
    if isinstance(fields.get("model"), str):
        attributes["gen_ai.request.model"] = fields["model"]
    with _tracer.start_as_current_span(
        f"rbee {operation}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        code = await _stream(
            settings, renderer, open_events, prepare=prepare if use_prepare else None
        )
        span.set_attribute("rbee.exit_code", code)
        if code != EXIT_OK:
            span.set_status(trace.StatusCode.ERROR, f"exit code {code}")
        return code


async def call(
    settings: Settings, renderer: Renderer, request: Callable[[JobClient], Awaitable[Any]]
) -> int:
    """One plain request to the queen (no job to follow), with the same error reporting."""
    try:
        async with queen_client(settings) as client:
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

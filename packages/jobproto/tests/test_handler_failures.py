"""What a handler's failure costs and who is told: its job fails, the service keeps serving, the
client's message and the server's log name the handler, and secrets stay masked in both.

In-process tests on real uvicorn (``jobproto.testing.serving``), and one real server process whose
log output is read whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from jobproto import Cancelled, Failed, JobEvent, Operations, Succeeded
from jobproto.asgi import ServiceSettings, create_app
from jobproto.client import JobClient
from jobproto.testing import serving

pytestmark = pytest.mark.anyio

SECRET = "abc123secret"


@attrs.frozen
class Empty:
    pass


class Weird(BaseException):
    """Neither an Exception nor a cancellation, nor SystemExit or KeyboardInterrupt."""


def failing_ops() -> Operations:
    ops = Operations()

    @ops.operation("exit")
    async def exit_now(params: Empty) -> None:
        raise SystemExit(3)

    @ops.operation("interrupt")
    async def interrupt(params: Empty) -> None:
        raise KeyboardInterrupt

    @ops.operation("leak")
    async def leak(params: Empty) -> None:
        raise ValueError(f"could not log in with token={SECRET}")

    @ops.operation("set_result")
    async def set_result(params: Empty) -> Any:
        return {1, 2}

    @ops.operation("object_result")
    async def object_result(params: Empty) -> Any:
        return {"when": object()}

    @ops.operation("raise_cancelled")
    async def raise_cancelled(params: Empty) -> None:
        raise anyio.get_cancelled_exc_class()()

    @ops.operation("await_cancelled")
    async def await_cancelled(params: Empty) -> None:
        # a future cancelled elsewhere: awaiting it raises CancelledError in a task nobody cancels
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut

    @ops.operation("base_exception")
    async def base_exception(params: Empty) -> None:
        raise BaseException("weird")

    @ops.operation("child_base_exception")
    async def child_base_exception(params: Empty) -> None:
        async def child(exc: BaseException) -> None:
            raise exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(child, Weird("in a child task"))
            tg.start_soon(child, ValueError("and another"))
            await anyio.sleep(30)

    @ops.operation("ok")
    async def ok(params: Empty) -> str:
        return "fine"

    return ops


HANDLERS = f"{__name__}.failing_ops.<locals>"


async def outcome(client: JobClient, operation: str) -> JobEvent:
    job = await client.create(operation)
    async with aclosing(client.events(job.job_id)) as events:
        async for ev in events:
            assert isinstance(ev, JobEvent)
            last = ev
    return last


@pytest.mark.parametrize(
    ("operation", "handler", "raised"),
    [
        ("exit", "exit_now", "SystemExit: 3"),
        ("interrupt", "interrupt", "KeyboardInterrupt: "),
        # nobody cancelled these jobs: a cancellation the handler raised itself ends its job as
        # a crash (it used to end the job "service shutting down" and every later create was
        # refused with 500: the JobService is not running)
        ("raise_cancelled", "raise_cancelled", "CancelledError: "),
        ("await_cancelled", "await_cancelled", "CancelledError: "),
        ("base_exception", "base_exception", "BaseException: weird"),
    ],
)
async def test_what_a_handler_raises_fails_its_job_not_the_service(
    caplog: pytest.LogCaptureFixture, operation: str, handler: str, raised: str
) -> None:
    caplog.set_level(logging.ERROR, logger="jobproto.service")
    async with serving(create_app(failing_ops())) as url, JobClient(url) as client:
        first = await outcome(client, operation)
        # the service still serves: another job of the same and of another operation
        second = await outcome(client, operation)
        third = await outcome(client, "ok")
    expected = Failed("internal_error", f"handler {HANDLERS}.{handler} raised {raised}")
    assert first.event == expected
    assert second.event == expected
    assert third.event == Succeeded("fine")
    logged = [r for r in caplog.records if r.name == "jobproto.service"]
    assert len(logged) == 2
    assert all(f"{HANDLERS}.{handler}" in r.getMessage() for r in logged)
    assert "This task group is not active" not in caplog.text


async def test_the_failure_message_and_the_log_name_the_handler_and_mask_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="jobproto.service")
    async with serving(create_app(failing_ops())) as url, JobClient(url) as client:
        last = await outcome(client, "leak")
    assert last.event == Failed(
        "internal_error",
        f"handler {HANDLERS}.leak raised ValueError: could not log in with token=***",
    )
    (record,) = [r for r in caplog.records if r.name == "jobproto.service"]
    assert record.levelno == logging.ERROR
    assert f"handler {HANDLERS}.leak raised ValueError" in record.getMessage()
    # the traceback is logged, redacted (the record's own exc_text, and as formatted)
    assert record.exc_text is not None and "token=***" in record.exc_text
    assert "Traceback" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("operation", ["set_result", "object_result"])
async def test_a_result_that_is_not_json_fails_the_job_and_is_logged(
    caplog: pytest.LogCaptureFixture, operation: str
) -> None:
    caplog.set_level(logging.ERROR, logger="jobproto.service")
    async with serving(create_app(failing_ops())) as url, JobClient(url) as client:
        last = await outcome(client, operation)
        after = await outcome(client, "ok")
    assert isinstance(last.event, Failed)
    assert last.event.code == "internal_error"
    assert last.event.message.startswith("result is not JSON: ")
    assert after.event == Succeeded("fine")
    (record,) = [r for r in caplog.records if r.name == "jobproto.service"]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert f"handler {HANDLERS}.{operation} returned a result that is not JSON" in message


async def test_a_group_of_base_exceptions_from_the_handlers_task_group_fails_its_job_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="jobproto.service")
    async with serving(create_app(failing_ops())) as url, JobClient(url) as client:
        first = await outcome(client, "child_base_exception")
        after = await outcome(client, "ok")
    assert isinstance(first.event, Failed)
    assert first.event.code == "internal_error"
    handler = f"handler {HANDLERS}.child_base_exception raised BaseExceptionGroup: "
    assert first.event.message.startswith(handler)
    assert after.event == Succeeded("fine")
    (record,) = [r for r in caplog.records if r.name == "jobproto.service"]
    assert record.exc_text is not None and "Weird: in a child task" in record.exc_text


async def test_delete_and_shutdown_still_cancel_a_running_job() -> None:
    ops = Operations()
    started = anyio.Event()

    @ops.operation("wait")
    async def wait(params: Empty) -> None:
        started.set()
        await anyio.sleep(30)

    app = create_app(ops, ServiceSettings(start_mode="immediate"))
    async with serving(app) as url, JobClient(url) as client:
        job = await client.create("wait")
        await started.wait()
        await client.cancel(job.job_id)
        async with aclosing(client.events(job.job_id)) as events:
            async for ev in events:
                last = ev
        assert isinstance(last, JobEvent) and last.event == Cancelled("cancelled by request")
        started = anyio.Event()
        running = await client.create("wait")
        await started.wait()
    # serving() has exited: the lifespan ended and the running job with it
    assert app.state.jobs.registry.get(running.job_id).cancel_reason == "service shutting down"


# -- a real server process: its whole log output ------------------------------------------------

SERVICE = textwrap.dedent(
    f"""
    import logging
    import sys

    import attrs

    from jobproto import Operations
    from jobproto.asgi import create_app
    from jobproto.server import serve


    @attrs.frozen
    class Empty:
        pass


    ops = Operations()


    @ops.operation("leak")
    async def leak(params: Empty) -> None:
        raise ValueError("could not log in with token={SECRET}")


    logging.basicConfig(
        level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    port_file = open(sys.argv[1], "w")
    serve(
        create_app(ops),
        log_level="debug",
        on_ready=lambda port: print(port, file=port_file, flush=True),
    )
    """
)


async def test_a_secret_raised_by_a_handler_is_not_in_a_real_servers_log(tmp_path: Path) -> None:
    script = tmp_path / "leaky_service.py"
    script.write_text(SERVICE)
    port_file = tmp_path / "port"
    log = tmp_path / "service.log"
    with log.open("wb") as err:
        async with await anyio.open_process(
            [sys.executable, str(script), str(port_file)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as proc:
            try:
                with anyio.fail_after(30):
                    while not port_file.exists() or not port_file.read_text().endswith("\n"):
                        assert proc.returncode is None, log.read_text()
                        await anyio.sleep(0.05)
                port = int(port_file.read_text())
                async with JobClient(f"http://127.0.0.1:{port}") as client:
                    last = await outcome(client, "leak")
            finally:
                proc.send_signal(signal.SIGTERM)
                with anyio.move_on_after(15) as waited:
                    await proc.wait()
                if waited.cancelled_caught:
                    proc.kill()
                    await proc.wait()
    text = log.read_text()
    assert isinstance(last.event, Failed) and last.event.message.endswith("token=***")
    assert "Traceback" in text  # the handler's error and its traceback were logged ...
    assert "token=***" in text
    assert "__main__.leak raised ValueError" in text
    assert SECRET not in text  # ... with the secret masked, in the message and the traceback

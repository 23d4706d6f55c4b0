"""The test operations the conformance suite drives. A service under test mounts these.

They are small and bounded on purpose: each finishes by itself within a minute at most, so no
conformance run can leave a job running forever. Their limits are attrs validators only: jobproto
publishes them in each operation's schema (``/openapi.json``) from the validators themselves.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .._errors import JobFailed
from .._narration import emit_data, narrate, progress
from .._operations import Operations

__all__ = ["BurstParams", "EchoParams", "FailParams", "WaitParams", "conformance_operations"]


def _between(low: float, high: float) -> Any:
    return attrs.validators.and_(attrs.validators.ge(low), attrs.validators.le(high))


@attrs.frozen
class EchoParams:
    messages: list[str] = attrs.field(factory=list, validator=attrs.validators.max_len(1000))
    delay: float = attrs.field(default=0.0, validator=_between(0.0, 1.0))
    result: Any = None


@attrs.frozen
class FailParams:
    code: str = "test_failure"
    message: str = "failed on purpose"
    after: int = attrs.field(default=0, validator=_between(0, 1000))


@attrs.frozen
class WaitParams:
    seconds: float = attrs.field(default=30.0, validator=_between(0.0, 60.0))
    tick: float = attrs.field(default=0.5, validator=_between(0.01, 10.0))


@attrs.frozen
class BurstParams:
    count: int = attrs.field(default=100, validator=_between(0, 200_000))
    size: int = attrs.field(default=16, validator=_between(0, 65536))


def conformance_operations() -> Operations:
    ops = Operations()

    @ops.operation("echo")
    async def echo(params: EchoParams) -> Any:
        """Narrate each message and emit it as data, then succeed with ``result``."""
        total = len(params.messages)
        for i, message in enumerate(params.messages):
            narrate("echo", message, index=i)
            emit_data({"index": i, "message": message})
            progress("echo", i + 1, total, unit="messages")
            if params.delay:
                await anyio.sleep(params.delay)
        return params.result

    @ops.operation("fail")
    async def fail(params: FailParams) -> None:
        """Narrate ``after`` lines, then fail with the given code and message."""
        for i in range(params.after):
            narrate("fail", f"step {i}")
        raise JobFailed(params.code, params.message)

    @ops.operation("crash")
    async def crash(params: FailParams) -> None:
        """Raise an unexpected exception (the job must end failed/internal_error)."""
        raise RuntimeError(params.message)

    @ops.operation("wait")
    async def wait(params: WaitParams) -> dict[str, float]:
        """Narrate a tick every ``tick`` seconds for ``seconds``; the job to cancel."""
        waited = 0.0
        while waited < params.seconds:
            narrate("wait", f"waited {waited:.2f} s")
            step = min(params.tick, params.seconds - waited)
            await anyio.sleep(step)
            waited += step
        return {"waited": waited}

    @ops.operation("burst")
    async def burst(params: BurstParams) -> dict[str, int]:
        """Emit ``count`` data events as fast as possible (fills logs, tests lag and gaps)."""
        pad = "x" * params.size
        for i in range(params.count):
            emit_data({"i": i, "pad": pad})
            if i % 256 == 255:
                await anyio.lowlevel.checkpoint()
        return {"count": params.count}

    return ops

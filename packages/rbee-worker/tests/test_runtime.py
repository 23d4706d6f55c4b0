"""``WorkerRuntime``: the model's load state moves only through the one table."""

from __future__ import annotations

import anyio
import pytest

from jobproto import LocalProtocolError
from rbee_contracts.lifecycle import ModelLoadState
from rbee_worker.engines.synthetic import SyntheticEngine
from rbee_worker.settings import WorkerSettings
from rbee_worker.worker import WorkerRuntime


class FailingLoad(SyntheticEngine):
    async def load(self) -> None:
        raise OSError("no such model directory")


def runtime_of(engine: SyntheticEngine) -> WorkerRuntime:
    return WorkerRuntime(WorkerSettings(engine="synthetic"), engine, exit_delay=0)


async def wait_until_loaded(runtime: WorkerRuntime) -> None:
    with anyio.fail_after(10):
        while runtime.state is ModelLoadState.LOADING:
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_loading_then_ready_then_failed_with_the_first_reason() -> None:
    runtime = runtime_of(SyntheticEngine())
    assert runtime.state is ModelLoadState.LOADING and runtime.error is None
    async with runtime.running(load_now=False):
        await anyio.sleep(0.05)
        assert runtime.state is ModelLoadState.LOADING  # nothing loads before begin_loading
        runtime.begin_loading()
        await wait_until_loaded(runtime)
        assert runtime.state is ModelLoadState.READY and runtime.error is None
        assert runtime.info()["state"] == "ready"
        runtime.mark_dead("the engine core exited")
        runtime.mark_dead("a job in flight saw it too")
        assert runtime.state is ModelLoadState.FAILED
        assert runtime.error == "the engine core exited"
        assert runtime.info()["state"] == "failed"


@pytest.mark.anyio
async def test_a_failed_load_is_final() -> None:
    runtime = runtime_of(FailingLoad())
    async with runtime.running():
        await wait_until_loaded(runtime)
        assert runtime.state is ModelLoadState.FAILED
        assert runtime.error == "OSError: no such model directory"
        assert await runtime.dead_reason() is None  # not loaded is not dead
        # A failed load is never retried in the same process: no move leaves ``failed``.
        for state in ModelLoadState:
            with pytest.raises(LocalProtocolError):
                runtime._move(state)
        assert runtime.state is ModelLoadState.FAILED


def test_the_state_is_not_assigned_from_outside() -> None:
    runtime = runtime_of(SyntheticEngine())
    with pytest.raises(AttributeError):
        runtime.state = ModelLoadState.READY  # type: ignore[misc]
    assert runtime.state is ModelLoadState.LOADING

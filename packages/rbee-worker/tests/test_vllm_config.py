"""The vllm engine's settings and guards, without vLLM: what ``auto`` picks, how engine args are
checked and converted, the defaults for vLLM's CPU build, the sampling mapping, the orphan guard,
and the worker's exit when its engine dies. (The engine itself: tests/vllm, on real vLLM.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
import pytest

from rbee_contracts.lifecycle import ModelLoadState
from rbee_worker.engines import EngineDead, GenerationRequest
from rbee_worker.engines._vllm_config import (
    DEFAULT_CPU_KV_CACHE_BYTES,
    VllmBuild,
    availability,
    checkpoint_dtype,
    convert_engine_args,
    engine_kwargs,
    gpu_visible,
    parse_value,
    sampling_kwargs,
)
from rbee_worker.engines.synthetic import SyntheticEngine
from rbee_worker.settings import WorkerSettings
from rbee_worker.worker import WorkerRuntime

# Shapes of vLLM's AsyncEngineArgs annotations (as dataclasses.fields reports them).
FIELDS: dict[str, Any] = {
    "dtype": Literal["auto", "half", "float16", "bfloat16", "float", "float32"],
    "max_model_len": int,
    "gpu_memory_utilization": float,
    "enforce_eager": bool,
    "quantization": str | None,
    "tensor_parallel_size": int,
    "pipeline_parallel_size": int,
    "kv_cache_memory_bytes": int | None,
    "enable_prefix_caching": bool | None,
    "hf_overrides": dict[str, Any] | None,
    "distributed_executor_backend": str | Literal["ray", "mp", "uni"] | type[Any] | None,
    "model": str,
    "max_num_seqs": int | None,
}


def test_engine_args_convert_by_field_type() -> None:
    raw = {
        "dtype": "bfloat16",
        "max-model-len": "256",
        "gpu_memory_utilization": "0.5",
        "enforce_eager": "false",
        "quantization": "none",
        "kv_cache_memory_bytes": "1073741824",
        "enable_prefix_caching": "yes",
        "hf_overrides": '{"rope_theta": 20000}',
        "distributed_executor_backend": "mp",
    }
    assert convert_engine_args(raw, FIELDS) == {
        "dtype": "bfloat16",
        "max_model_len": 256,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
        "quantization": None,
        "kv_cache_memory_bytes": 1 << 30,
        "enable_prefix_caching": True,
        "hf_overrides": {"rope_theta": 20000},
        "distributed_executor_backend": "mp",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_model_length": "8"}, "unknown engine arg(s) for the vllm engine: max_model_length"),
        ({"max_model_length": "8"}, "did you mean max_model_len"),
        ({"dtype": "float64"}, "engine arg dtype must be one of auto, half, float16"),
        ({"max_model_len": "big"}, "engine arg max_model_len must be an integer"),
        ({"enforce_eager": "maybe"}, "engine arg enforce_eager must be true or false"),
        ({"gpu_memory_utilization": "nan"}, "gpu_memory_utilization must be finite"),
        ({"hf_overrides": "{not json"}, "engine arg hf_overrides takes a JSON value"),
        ({"model": "/elsewhere"}, "engine arg model is set by the worker (use --model)"),
        ({"max_num_seqs": "4"}, "use --max-concurrency"),
    ],
)
def test_bad_engine_args_are_refused_by_name(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        convert_engine_args(raw, FIELDS)
    assert message in str(refused.value)


def test_unresolved_annotations_fall_back_to_json_or_text() -> None:
    assert parse_value("x", "3", "int") == 3
    assert parse_value("x", "hello", "SomeConfig") == "hello"
    assert parse_value("x", '{"a": 1}', Any) == {"a": 1}


def test_worker_defaults_for_the_cpu_build(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32"}))
    kwargs, env = engine_kwargs(
        model=str(tmp_path),
        model_name="tiny",
        dtype="auto",
        max_concurrency=8,
        build_device="cpu",
        user={},
        env={},
    )
    assert kwargs == {
        "model": str(tmp_path),
        "served_model_name": "tiny",
        "max_num_seqs": 8,
        "disable_log_stats": True,
        "dtype": "float32",  # the checkpoint's, not vLLM's half-precision "auto"
        "enforce_eager": True,
        "kv_cache_memory_bytes": DEFAULT_CPU_KV_CACHE_BYTES,
        "distributed_executor_backend": "uni",
    }
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # The environment's KV cache size wins over the default; engine args win over everything.
    kwargs, env = engine_kwargs(
        model=str(tmp_path),
        model_name="tiny",
        dtype="bfloat16",
        max_concurrency=2,
        build_device="cpu",
        user={"tensor_parallel_size": 2, "enforce_eager": False},
        env={"VLLM_CPU_KVCACHE_SPACE": "4"},
    )
    assert kwargs["dtype"] == "bfloat16" and kwargs["enforce_eager"] is False
    assert "kv_cache_memory_bytes" not in kwargs and "distributed_executor_backend" not in kwargs
    assert env == {}


def test_worker_defaults_for_gpus_leave_vllm_alone(tmp_path: Path) -> None:
    kwargs, env = engine_kwargs(
        model=str(tmp_path),
        model_name="m",
        dtype="auto",
        max_concurrency=8,
        build_device="cuda",
        user={"gpu_memory_utilization": 0.5},
        env={},
    )
    assert kwargs == {
        "model": str(tmp_path),
        "served_model_name": "m",
        "max_num_seqs": 8,
        "disable_log_stats": True,
        "gpu_memory_utilization": 0.5,
    }
    assert env == {}
    with pytest.raises(ValueError, match="disagree"):
        engine_kwargs(
            model="m",
            model_name="m",
            dtype="float16",
            max_concurrency=1,
            build_device="cuda",
            user={"dtype": "bfloat16"},
            env={},
        )


def test_checkpoint_dtype(tmp_path: Path) -> None:
    assert checkpoint_dtype(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "int8"}))
    assert checkpoint_dtype(str(tmp_path)) is None


def test_sampling_mapping() -> None:
    greedy = GenerationRequest(prompt="x", max_tokens=9, temperature=0, stop=("\n",))
    assert sampling_kwargs(greedy, 9) == {
        "max_tokens": 9,
        "temperature": 0,
        "top_p": 1.0,
        "top_k": -1,  # 0 = off here; -1 = off in every vLLM release
        "seed": None,
        "stop": ["\n"],
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "skip_special_tokens": True,
    }
    sampled = GenerationRequest(
        prompt="x",
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=3,
        presence_penalty=-0.5,
        frequency_penalty=1.5,
    )
    got = sampling_kwargs(sampled, 100)
    assert (got["top_k"], got["top_p"], got["seed"], got["stop"]) == (40, 0.9, 3, None)
    assert (got["presence_penalty"], got["frequency_penalty"]) == (-0.5, 1.5)


def test_availability_explains_itself() -> None:
    assert availability(None)[0] in (True, False)  # whatever is installed here: no crash
    ok, why = availability(VllmBuild("vllm-cpu", "0.32.0", "cpu"))
    assert ok and "CPU build" in why
    ok, why = availability(VllmBuild("vllm", "0.33.0", "cuda"), has_gpu=False)
    assert not ok and "needs an NVIDIA GPU" in why
    assert availability(VllmBuild("vllm", "0.33.0", "cuda"), has_gpu=True)[0]


def test_gpu_visibility(tmp_path: Path) -> None:
    assert not gpu_visible({}, dev=tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_visible({}, dev=tmp_path)
    assert gpu_visible({"CUDA_VISIBLE_DEVICES": "1"}, dev=tmp_path)
    assert not gpu_visible({"CUDA_VISIBLE_DEVICES": ""}, dev=tmp_path)
    assert not gpu_visible({"CUDA_VISIBLE_DEVICES": "-1"}, dev=tmp_path)


# -- the orphan guard: a child whose parent is SIGKILLed ends itself ---------------------------

_PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time

    def engine_core(conn, late):
        # Plays vLLM's engine core: started by multiprocessing (spawn), the plugin hook runs in it.
        from rbee_worker.engines._vllm_guard import register
        if late:  # the worker dies while the engine core is still starting
            conn.send("started")
            while os.getppid() == int(os.environ["RBEE_WORKER_PID"]):
                time.sleep(0.02)
        register()
        conn.send("guarded")
        time.sleep(60)

    if __name__ == "__main__":
        os.environ["RBEE_WORKER_PID"] = str(os.getpid())
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=engine_core, args=(theirs, sys.argv[1] == "late"))
        child.start()
        assert mine.recv() in ("guarded", "started")
        print(child.pid, flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("when", ["running", "late"])
def test_the_orphan_guard_ends_the_engine_core_when_its_worker_is_killed(
    tmp_path: Path, when: str
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), when],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert parent.stdout is not None
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.send_signal(signal.SIGKILL)  # the parent alone, not its group
        parent.wait(5)
        deadline = time.monotonic() + 5
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the guarded child outlived its parent"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # its own group: nothing of the test remains
        parent.wait(5)
        parent.stdout.close()
        assert parent.stderr is not None
        parent.stderr.close()


def test_the_guard_does_nothing_outside_an_engine_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from rbee_worker.engines._vllm_guard import GUARD_THREAD, register

    monkeypatch.setenv("RBEE_WORKER_PID", str(os.getpid()))  # not our parent's pid
    register()
    monkeypatch.delenv("RBEE_WORKER_PID")
    register()
    assert all(t.name != GUARD_THREAD for t in threading.enumerate())


# -- the worker ends itself when its engine dies -------------------------------------------------


class DyingEngine(SyntheticEngine):
    """Healthy until ``die`` is set: then its health check says what killed it."""

    def __init__(self) -> None:
        super().__init__(model_name="dying")
        self.cause: str | None = None

    async def health(self) -> None:
        if self.cause is not None:
            raise EngineDead(self.cause)


@pytest.mark.anyio
async def test_a_dead_engine_is_noticed_without_a_request_and_ends_the_worker() -> None:
    engine = DyingEngine()
    worker = WorkerRuntime(
        WorkerSettings(engine="synthetic"), engine, health_interval=0.02, exit_delay=0.05
    )
    exits: list[str] = []
    worker.on_engine_dead = exits.append
    async with worker.running():
        with anyio.fail_after(5):
            while worker.state is not ModelLoadState.READY:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert exits == [] and await worker.dead_reason() is None
        engine.cause = "the engine core process (pid 1234) was killed by signal SIGKILL"
        with anyio.fail_after(5):
            while not exits:
                await anyio.sleep(0.01)
    assert exits == [engine.cause]
    assert worker.state is ModelLoadState.FAILED and worker.error == engine.cause

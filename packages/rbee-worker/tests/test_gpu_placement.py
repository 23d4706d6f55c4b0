"""GPU placement by the hive, without a GPU: ``rbee_hive.placement`` on made-up capabilities, and a
real hive app whose ``nvidia-smi`` is a FAKE script on PATH, spawning a FAKE worker command that
records the environment it got. (Here rather than in rbee-hive's tests: it is the vLLM worker's
placement, and lives with the vLLM work.)"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from jobproto.client import JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_hive.app import create_app
from rbee_hive.capabilities import GpuInfo
from rbee_hive.placement import MEMORY_FACTOR, Claims, PlacementError, parse_device, plan
from rbee_hive.settings import HiveSettings

GIB = 1 << 30
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB)
BUSY = GpuInfo(1, "NVIDIA A100-SXM4-40GB", 40 * GIB, 4 * GIB)
UNKNOWN = GpuInfo(2, "NVIDIA A100 MIG 3g.20gb", None, None)


def test_devices_parse() -> None:
    assert parse_device(None) == (None, None)
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda") == ("cuda", None)
    assert parse_device("cuda:1,3") == ("cuda", (1, 3))
    for bad in ("gpu", "cuda:", "cuda:1,1", "cuda:1,01", "cuda:a"):
        with pytest.raises(PlacementError):
            parse_device(bad)


def test_a_gpu_spawn_gets_its_devices() -> None:
    placed = plan(
        model="m",
        engine="vllm",
        device="cuda:0",
        engine_args={},
        model_size=2 * GIB,
        gpus=[H100, BUSY],
        ram_free=None,
    )
    assert placed.device == "cuda" and placed.gpus == (0,)
    assert placed.env == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    # vLLM needs gpu_memory_utilization of the GPU free, more than the weights here.
    assert placed.need_bytes == int(0.9 * 80 * GIB)
    # No device named: the roomiest GPUs, as many as tensor x pipeline parallel size.
    placed = plan(
        model="m",
        engine="vllm",
        device=None,
        engine_args={"tensor_parallel_size": "2", "gpu_memory_utilization": "0.05"},
        model_size=2 * GIB,
        gpus=[BUSY, H100],
        ram_free=None,
    )
    assert placed.gpus == (0, 1) and placed.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert placed.need_bytes == int(0.05 * 80 * GIB)  # the larger GPU's share


def test_a_spawn_that_does_not_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlacementError) as refused:
        plan(
            model="big",
            engine="transformers",
            device="cuda:1",
            engine_args={},
            model_size=10 * GIB,
            gpus=[H100, BUSY],
            ram_free=None,
        )
    assert refused.value.code == "insufficient_gpu_memory"
    assert "big does not fit on GPU 1 (NVIDIA A100-SXM4-40GB)" in refused.value.message
    assert f"needs about {10 * MEMORY_FACTOR:.2f} GiB" in refused.value.message
    assert "4.00 GiB is free" in refused.value.message
    # A starting worker's claim counts against the free memory.
    with pytest.raises(PlacementError, match="promised to workers still starting"):
        plan(
            model="m",
            engine="transformers",
            device="cuda:0",
            engine_args={},
            model_size=10 * GIB,
            gpus=[H100],
            ram_free=None,
            claims=Claims({0: 70 * GIB}),
        )
    # vLLM with the default utilization does not start on a GPU that is half taken.
    with pytest.raises(PlacementError, match=r"gpu_memory_utilization \(0.9\)"):
        plan(
            model="m",
            engine="vllm",
            device="cuda",
            engine_args={},
            model_size=GIB,
            gpus=[BUSY],
            ram_free=None,
        )


@pytest.mark.parametrize(
    ("device", "args", "gpus", "code"),
    [
        ("cuda", {}, [], "no_gpu"),
        ("cuda:5", {}, [H100], "no_such_gpu"),
        ("cuda:0", {"tensor_parallel_size": "2"}, [H100, BUSY], "not_enough_gpus"),
        ("cuda", {"pipeline_parallel_size": "4"}, [H100, BUSY], "not_enough_gpus"),
    ],
)
def test_impossible_placements(
    device: str, args: dict[str, str], gpus: list[GpuInfo], code: str
) -> None:
    with pytest.raises(PlacementError) as refused:
        plan(
            model="m",
            engine="vllm",
            device=device,
            engine_args=args,
            model_size=GIB,
            gpus=gpus,
            ram_free=None,
        )
    assert refused.value.code == code


def test_unknown_free_memory_refuses_nothing() -> None:
    placed = plan(
        model="m",
        engine="vllm",
        device="cuda:2",
        engine_args={},
        model_size=500 * GIB,
        gpus=[UNKNOWN],
        ram_free=None,
    )
    assert placed.gpus == (2,)


def test_the_cpu_counts_ram_and_vllm_kv_cache() -> None:
    placed = plan(
        model="m",
        engine="vllm",
        device=None,
        engine_args={},
        model_size=GIB,
        gpus=[],
        ram_free=8 * GIB,
    )
    assert placed.device is None and placed.gpus == () and placed.env == {}
    assert placed.need_bytes == int(GIB * MEMORY_FACTOR) + GIB  # + the default 1 GiB KV cache
    with pytest.raises(PlacementError) as refused:
        plan(
            model="m",
            engine="vllm",
            device="cpu",
            engine_args={"kv_cache_memory_bytes": str(64 * GIB)},
            model_size=GIB,
            gpus=[H100],
            ram_free=8 * GIB,
        )
    assert refused.value.code == "insufficient_memory"
    assert "a KV cache of 64.00 GiB" in refused.value.message
    # The CPU asked for on a GPU machine: the worker does not see the GPUs.
    placed = plan(
        model="m",
        engine="transformers",
        device="cpu",
        engine_args={},
        model_size=GIB,
        gpus=[H100],
        ram_free=8 * GIB,
    )
    assert placed.device == "cpu" and placed.env == {"CUDA_VISIBLE_DEVICES": ""}
    # The synthetic engine runs nowhere in particular.
    assert (
        plan(
            model="m",
            engine="synthetic",
            device=None,
            engine_args={},
            model_size=500 * GIB,
            gpus=[],
            ram_free=1,
        ).env
        == {}
    )


# -- a real hive app, a FAKE nvidia-smi, a FAKE worker that records what it was given ------------

FAKE_SMI = """\
0, NVIDIA H100 80GB HBM3, 81559, 80937
1, NVIDIA A100-SXM4-40GB, 40960, 3000
"""

RECORDER = """\
import json, os, sys
with open(os.environ["RECORD_TO"], "w") as out:
    json.dump({"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, out)
sys.exit(7)
"""


def take_record(path: Path) -> dict[str, object] | None:
    """What the FAKE worker recorded (and forget it), or None when no worker started."""
    if not path.exists():
        return None
    record: dict[str, object] = json.loads(path.read_text())
    path.unlink()
    return record


@pytest.fixture
def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{FAKE_SMI}EOF\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("RECORD_TO", str(record))
    return record


@pytest.mark.anyio
async def test_the_hive_places_and_refuses_spawns(tmp_path: Path, fake_gpus: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * (4 << 20))  # 4 MiB of "weights"
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    settings = HiveSettings(
        port=0,
        models_dir=tmp_path / "models",
        state_dir=tmp_path / "state",
        worker_command=(sys.executable, str(recorder)),
        model_roots=(tmp_path,),  # where the test makes its model
    )
    async with serving(create_app(settings)) as url, JobClient(url) as client:
        await client.run("model_register", name="m", path=str(model))
        caps = await client.run("capabilities")
        assert [g["index"] for g in caps["gpus"]] == [0, 1]
        # Fits on GPU 0: the worker starts with that GPU only (and fails: it is a recorder).
        with pytest.raises(RemoteJobFailed) as spawn:
            await client.run("worker_spawn", model="m", engine="vllm", device="cuda:0")
        assert spawn.value.code == "worker_failed"
        record = take_record(fake_gpus)
        assert record is not None and record["cuda"] == "0"
        argv = record["argv"]
        assert isinstance(argv, list) and argv[argv.index("--device") + 1] == "cuda"
        # GPU 1 has 2.9 GiB free of 40: vLLM wants 90 % of it free. Refused; nothing started.
        with pytest.raises(RemoteJobFailed) as refused:
            await client.run("worker_spawn", model="m", engine="vllm", device="cuda:1")
        assert refused.value.code == "insufficient_gpu_memory"
        assert "m does not fit on GPU 1 (NVIDIA A100-SXM4-40GB)" in refused.value.message
        assert take_record(fake_gpus) is None
        # Too large a KV cache for this machine's RAM, on the CPU.
        with pytest.raises(RemoteJobFailed) as refused:
            await client.run(
                "worker_spawn",
                model="m",
                engine="vllm",
                device="cpu",
                engine_args={"kv_cache_memory_bytes": str(1 << 50)},
            )
        assert refused.value.code == "insufficient_memory"
        assert take_record(fake_gpus) is None


def test_the_synthetic_engine_gets_the_device_kind_the_worker_takes() -> None:
    for device, kind in (("cuda:1", "cuda"), ("cuda", "cuda"), ("cpu", "cpu"), (None, None)):
        placed = plan(
            model="m",
            engine="synthetic",
            device=device,
            engine_args={},
            model_size=GIB,
            gpus=[H100],
            ram_free=None,
        )
        assert (placed.device, placed.gpus) == (kind, ())


def test_an_engine_arg_number_that_is_not_finite_is_refused() -> None:
    for args in ({"tensor_parallel_size": "inf"}, {"kv-cache-memory-bytes": "nan"}):
        with pytest.raises(PlacementError) as info:
            plan(
                model="m",
                engine="vllm",
                device="cuda",
                engine_args=args,
                model_size=GIB,
                gpus=[H100],
                ram_free=None,
            )
        assert info.value.code == "invalid_engine_args", args

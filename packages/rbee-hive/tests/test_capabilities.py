"""capabilities: parsing nvidia-smi's CSV, and collecting what this machine offers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rbee_hive.capabilities import GpuInfo, collect, parse_nvidia_smi, query_gpus

MIB = 1024 * 1024

# `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`
SAMPLE = """\
0, NVIDIA H100 80GB HBM3, 81559, 80937
1, NVIDIA GeForce RTX 4090, 24564, 1203
2, NVIDIA A100-SXM4-40GB, [N/A], [N/A]
"""


def test_parse_sample_output() -> None:
    assert parse_nvidia_smi(SAMPLE) == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559 * MIB, 80937 * MIB),
        GpuInfo(1, "NVIDIA GeForce RTX 4090", 24564 * MIB, 1203 * MIB),
        GpuInfo(2, "NVIDIA A100-SXM4-40GB", None, None),
    ]


def test_parse_tolerates_odd_lines() -> None:
    text = "\n\nNo devices were found\n3, Some, Vendor GPU, 1024, 512\n"
    assert parse_nvidia_smi(text) == [GpuInfo(3, "Some, Vendor GPU", 1024 * MIB, 512 * MIB)]
    assert parse_nvidia_smi("") == []


@pytest.mark.anyio
async def test_collect_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    caps = await collect()
    assert caps["gpus"] == []
    assert caps["cpu_cores"] >= 1
    assert 0 < caps["ram_free_bytes"] <= caps["ram_total_bytes"]


@pytest.mark.anyio
async def test_gpus_from_a_fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SAMPLE}EOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    gpus = await query_gpus()
    assert [g.name for g in gpus] == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA GeForce RTX 4090",
        "NVIDIA A100-SXM4-40GB",
    ]
    caps = await collect()
    assert caps["gpus"][0] == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 81559 * MIB,
        "memory_free_bytes": 80937 * MIB,
    }


@pytest.mark.anyio
async def test_failing_nvidia_smi_means_no_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await query_gpus() == []

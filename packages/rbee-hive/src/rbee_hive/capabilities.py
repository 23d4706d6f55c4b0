"""What this machine offers: CPU cores, RAM, and NVIDIA GPUs with their memory.

GPUs come from ``nvidia-smi`` (the driver's own tool, present wherever CUDA works) rather than
from torch or NVML bindings: the hive never imports torch, and a machine without the binary
simply has no GPUs. ``parse_nvidia_smi`` is a pure function over the tool's CSV output.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import anyio
import attrs
import psutil  # type: ignore[import-untyped]

__all__ = [
    "NVIDIA_SMI_QUERY",
    "GpuInfo",
    "collect",
    "host_memory",
    "parse_nvidia_smi",
    "query_gpus",
]

logger = logging.getLogger("rbee_hive.capabilities")

NVIDIA_SMI_QUERY = (
    "--query-gpu=index,name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
)
_MIB = 1024 * 1024
_TIMEOUT = 10.0


@attrs.frozen
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int | None
    memory_free_bytes: int | None


def _mib(text: str) -> int | None:
    # "[N/A]" (or "[Not Supported]") where the driver cannot tell, e.g. on some MIG setups.
    try:
        return int(float(text)) * _MIB
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,
    nounits`` output (MiB values). Lines that do not have this shape are skipped."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # The name may itself contain commas: index first, the two numbers last.
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            logger.debug("skipping nvidia-smi line %r", line)
            continue
        name = ", ".join(parts[1:-2])
        gpus.append(GpuInfo(int(parts[0]), name, _mib(parts[-2]), _mib(parts[-1])))
    return gpus


async def query_gpus() -> list[GpuInfo]:
    """The GPUs nvidia-smi reports; [] when it is missing, fails or hangs."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        with anyio.fail_after(_TIMEOUT):
            done = await anyio.run_process([binary, *NVIDIA_SMI_QUERY], check=False)
    except (OSError, TimeoutError) as exc:
        logger.warning("nvidia-smi could not be run: %s", exc)
        return []
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        logger.warning("nvidia-smi exited with %d: %s", done.returncode, err)
        return []
    return parse_nvidia_smi(done.stdout.decode(errors="replace"))


def host_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes. "Available" counts reclaimable cache, as the kernel does."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


async def collect() -> dict[str, Any]:
    """The ``capabilities`` operation's result (and the heartbeat's ``capabilities``)."""
    total, free = host_memory()
    gpus = await query_gpus()
    return {
        "cpu_cores": psutil.cpu_count(logical=True) or 1,
        "ram_total_bytes": total,
        "ram_free_bytes": free,
        "gpus": [attrs.asdict(gpu) for gpu in gpus],
    }

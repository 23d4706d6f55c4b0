"""What the benchmark ran on: cores, memory, CPU model, Python, OS, load, date."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

__all__ = ["load_average", "machine"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os() -> str:
    try:
        fields = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
        name = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        name = ""
    return f"{name or platform.system()} (kernel {platform.release()})"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """The facts that go at the top of the report."""
    import importlib.util

    import anyio
    import httpx
    import sse_starlette
    import starlette
    import uvicorn

    # What uvicorn's "auto" picks (jobproto.server.config), for every server in the benchmark.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "os": _os(),
        "load_average_start": [round(x, 2) for x in load_average()],
        "versions": {
            "uvicorn": uvicorn.__version__,
            "starlette": starlette.__version__,
            "sse-starlette": getattr(sse_starlette, "__version__", "?"),
            "httpx": httpx.__version__,
            "anyio": getattr(anyio, "__version__", _dist_version("anyio")),
            **{name: _dist_version(name) for name in ("uvloop", "httptools")},
        },
        "event_loop": loop,
        "http_parser": parser,
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"

"""What every section gets: the process owner, the size of the run, and a progress printer."""

from __future__ import annotations

import sys
import time
from typing import Any

import attrs
import httpx

from ._procs import Proc, Procs, python
from .servers import LISTENING

__all__ = ["Ctx"]


@attrs.define
class Ctx:
    procs: Procs
    quick: bool
    repeats: int
    started: float = attrs.field(factory=time.perf_counter)

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[bench {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def server(self, name: str, kind: str, *args: str) -> Proc:
        """Start one of ``bench.servers``' kinds in its own process."""
        return self.procs.start(name, python("-m", "bench.servers", kind, *args), prefix=LISTENING)


async def create_job(http: httpx.AsyncClient, base: str, body: dict[str, Any]) -> str:
    """``POST /v1/jobs``; the new job's id."""
    response = await http.post(f"{base}/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST {base}/v1/jobs {body}: {response.status_code} {response.text}")
    return str(response.json()["job_id"])

"""Where a server's CPU goes while a figure is taken: a py-spy profile summarised for the report.

py-spy is not a dependency (it is not in the lock): when it is installed next to this Python (or
on PATH), ``profiled(proc)`` samples the process for the duration of a block and ``summary``
tells, for a few groups of frames, what share of the samples had one of them on the stack.
Without py-spy the block runs unprofiled and the summary says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from ._procs import Proc

__all__ = ["GROUPS", "profiled", "py_spy", "summary"]

#: (label, substrings of a frame "function (file:line)"): a sample counts for a group when any frame
#: on its stack matches; groups overlap (a relayed event is read, then re-emitted, then sent).
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    (
        "create the downstream job and open its stream (JobClient.submit: one POST)",
        ("JobClient._post_stream", "JobClient.create"),
    ),
    ("the downstream transport (aiohttp: its pool, parser, reads)", ("aiohttp/",)),
    ("read the downstream stream (httpx, aiohttp, httpx-sse)", ("EventSource.aiter_sse",)),
    ("decode the downstream envelope (json.loads + checks)", ("decode_envelope",)),
    ("re-emit on the queen's job (envelope + JSON + log)", ("JobHandle.emit",)),
    ("JSON encoding and decoding, all of it", ("json/encoder.py", "json/decoder.py")),
    ("send to the client (the stream loop, ASGI, socket)", ("stream_job",)),
    ("socket writes", ("_SelectorSocketTransport.write",)),
    ("event loop, selector and wake-ups (self time)", ("<self:asyncio>",)),
]


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def profiled(proc: Proc, out: Path, rate: int = 200) -> AsyncIterator[Path | None]:
    """Sample ``proc`` while the block runs; yields the raw output file (None: no py-spy)."""
    exe = py_spy()
    if exe is None:
        yield None
        return
    spy = _start(exe, proc.pid, rate, out)
    try:
        await anyio.sleep(0.3)  # attached before the work starts
        yield out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(spy.pid, signal.SIGINT)  # py-spy writes its file on Ctrl+C
        try:
            await anyio.to_thread.run_sync(spy.wait, 20)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def _start(exe: str, pid: int, rate: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def summary(raw: Path | None) -> dict[str, float] | None:
    """Share of samples (0..1) per group of ``GROUPS``, plus "samples"; None without a profile."""
    if raw is None or not raw.exists():
        return None
    hits: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        for label, needles in GROUPS:
            if needles == ("<self:asyncio>",):
                if "asyncio/" in leaf or "selectors.py" in leaf:
                    hits[label] += n
            elif any(needle in frame for frame in frames for needle in needles):
                hits[label] += n
    if not total:
        return None
    out = {label: hits[label] / total for label, _ in GROUPS}
    out["samples"] = float(total)
    return out

"""One worker process as the hive supervises it: ``WorkerProcess``, its state and its output.

The state moves only through ``rbee_contracts.lifecycle``'s worker table (``set_state``); the
supervising task (``rbee_hive.supervisor``) is the only caller. Output lines, the hive's own notes
and state changes go to the worker's log file and, while a job observes the worker (the spawn
job), are narrated on that job inside its ``contextvars`` context.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import importlib.util
import logging
import os
import re
import site
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import anyio

import rbee_process
from jobproto import narrate
from rbee_contracts.lifecycle import WorkerState, worker_transition
from rbee_contracts.records import WorkerRecord

from .worker_spec import WorkerSpec

__all__ = ["TracebackFolder", "WorkerProcess"]

logger = logging.getLogger("rbee_hive.supervisor")


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WorkerProcess:
    """The live state of one worker process. Only its supervising task changes it."""

    def __init__(self, spec: WorkerSpec, log_path: Path, on_change: Callable[[], None]) -> None:
        self.spec = spec
        self.engine = spec.engine
        self.state: WorkerState = WorkerState.STARTING
        self.url: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.failures = 0  # consecutive crashes, for the backoff and the limit
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.ever_ready = False
        self.last_exit: int | None = None
        self.error: str | None = None  # why it last failed
        self.run_error: str | None = None  # why the current run is being ended by the hive
        self.log_path = log_path
        self.stop_requested = anyio.Event()
        self.finished = anyio.Event()  # the supervising task has ended
        self.observers: list[contextvars.Context] = []
        #: the latest state changes, (time.monotonic(), state): for tests and post-mortems
        self.history: collections.deque[tuple[float, WorkerState]] = collections.deque(maxlen=64)
        self.history.append((time.monotonic(), self.state))
        self._changed = anyio.Event()
        self._on_change = on_change
        self._log: IO[str] | None = None

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    @property
    def alive(self) -> bool:
        return not self.finished.is_set()

    def record(self) -> WorkerRecord:
        """The worker as the hive reports it (heartbeats, ``worker_list``, ``worker_spawn``)."""
        return WorkerRecord(
            worker_id=self.worker_id,
            model=self.spec.model,
            engine=self.engine,
            url=self.url,
            pid=self.pid,
            state=self.state,
            restarts=self.restarts,
            started_at=_rfc3339(self.started_at),
            last_exit=self.last_exit,
            error=self.error,
            device=self.spec.device,
            gpus=list(self.spec.gpus),
            log_path=str(self.log_path),
        )

    # -- state -------------------------------------------------------------------------------------

    def set_state(self, state: WorkerState, error: str | None = None) -> None:
        """Move to ``state`` through the lifecycle's one table (``rbee_contracts.lifecycle``);
        a move it does not allow raises ``LocalProtocolError``. Staying put only notes the error."""
        if error is not None:
            self.error = error
        if state == self.state:
            return
        self.state = worker_transition(self.state, state)
        self.history.append((time.monotonic(), state))
        self.note(f"state {state}" + (f": {self.error}" if error is not None else ""))
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self._on_change()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # -- output ------------------------------------------------------------------------------------

    def open_log(self) -> None:
        # 0600 in a 0700 directory: what a worker prints (a traceback, its inputs) is the user's.
        rbee_process.prepare_log(self.log_path)
        self._log = self.log_path.open("a", encoding="utf-8", buffering=1)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")

    def note(self, message: str, *, detail: str | None = None) -> None:
        """A line of the hive's own about this worker: its log, the hive's log, the spawn job.
        ``detail`` goes to the worker's log only (a command line: paths of this machine)."""
        logged = message if detail is None else f"{message}: {detail}"
        self.write_log(f"--- rbee-hive {_rfc3339(time.time())}: {logged}")
        if self.observers:  # narration logs it too (with the job's ids)
            self.tell(narrate, "worker", f"{self.worker_id}: {message}", worker_id=self.worker_id)
        else:
            logger.info("worker %s: %s", self.worker_id, message)

    def tell(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call ``narrate``/``progress`` inside each attached job's context."""
        for ctx in list(self.observers):
            ctx.run(fn, *args, **kwargs)

    @contextlib.contextmanager
    def observed(self) -> Iterator[None]:
        """Attach the current job: output, progress and state changes are narrated on it."""
        ctx = contextvars.copy_context()
        self.observers.append(ctx)
        try:
            yield
        finally:
            self.observers.remove(ctx)


#: longest exception line a traceback's summary repeats
SUMMARY_LIMIT = 300
_CHAIN_MARKERS = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


#: an absolute path in an exception's message: from a ``/`` at its start or after a space, a
#: quote, a bracket, ``=`` or ``,``, up to the next such character or ``:``
_PATH = re.compile(r"""(?<![^\s'"(\[=,])/[^\s'"()\[\]=,:]+""")
#: what a hidden path becomes
HIDDEN = "…"
#: the packages whose installed location is rbee's own
_RBEE_PACKAGES = ("rbee_hive", "rbee_worker", "rbee_contracts", "rbee_process", "jobproto")


@functools.cache
def internal_dirs() -> tuple[str, ...]:
    """Where this Python and rbee are installed: the prefixes, the standard library and the
    site-packages directories, and the directory holding each rbee package (its source tree in
    a development checkout). Paths under them say how this machine is laid out, not what the
    user asked for."""
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()]
    with contextlib.suppress(AttributeError):  # site may be trimmed (python -S, embedders)
        dirs += [*site.getsitepackages(), site.getusersitepackages()]
    for name in _RBEE_PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)  # located, not imported
            for location in (spec.submodule_search_locations or []) if spec else []:
                dirs.append(os.path.dirname(location))
    found = {os.path.normpath(d) for d in dirs if d and os.path.isabs(d)}
    found |= {os.path.realpath(d) for d in found}
    return tuple(sorted(d for d in found if d != os.sep))


def hide_internal_paths(text: str) -> str:
    """``text`` with each absolute path inside rbee's or Python's own install replaced by
    ``HIDDEN``; other paths (a model directory the user gave) stay."""
    dirs = internal_dirs()

    def hide(match: re.Match[str]) -> str:
        path = os.path.normpath(match.group())
        inside = any(path == d or path.startswith(d + os.sep) for d in dirs)
        return HIDDEN if inside else match.group()

    return _PATH.sub(hide, text)


class TracebackFolder:
    """Folds the Python tracebacks in one output stream of a worker into one line each.

    Output lines are narrated to whoever watches the worker (the spawn job, and through the queen
    the user); a traceback is for the log. ``feed(line)`` returns the lines to narrate in place
    of ``line``: the line itself, nothing while a traceback goes by, and at its end (the
    ``Type: message`` line, the first one not indented) one summary: the exception's type and
    message, with the paths of rbee's and Python's own install hidden (``hide_internal_paths``).
    A chain of exceptions ("During handling of the above exception...") yields one summary per
    exception.
    """

    def __init__(self) -> None:
        self._state = "text"  # "text" | "traceback" | "group" | "after"

    def feed(self, line: str) -> list[str]:
        stripped = line.lstrip()
        indented = line != stripped
        if self._state in ("traceback", "group"):
            if indented or not line:
                return []
            was = self._state
            self._state = "after"
            if was == "group":  # a group's traceback is indented to its end: this line is not its
                self._state = "text"
                return [self._summary("an exception group"), line]
            return [self._summary(line)]
        if line.startswith("Traceback (most recent call last):"):
            self._state = "traceback"
            return []
        if stripped.startswith("+ Exception Group Traceback (most recent call last):"):
            self._state = "group"
            return []
        if self._state == "after":
            if not line or line in _CHAIN_MARKERS:
                return []
            self._state = "text"
        return [line]

    @staticmethod
    def _summary(exception: str) -> str:
        exception = hide_internal_paths(exception)
        if len(exception) > SUMMARY_LIMIT:
            exception = exception[:SUMMARY_LIMIT] + "..."
        return f"[traceback in the worker's log] {exception}"

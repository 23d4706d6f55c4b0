"""Worker processes: spawn, watch, restart, stop.

Theory of operation
-------------------
Each worker is one child process started from an argument list (never a shell) in its own session,
hence its own process group: signals go to the group, so whatever the worker starts (vLLM's engine
core, tokenizer pools) goes with it. The worker binds port 0 itself and announces the port in one
stdout line, ``RBEE_WORKER_LISTENING {"port": ..., "worker_id": ...}``.

Every worker has one supervising task in the supervisor's task group (which lives as long as the
app). One run of the process is::

    start ──▶ pump stdout/stderr (log file + narration on the spawn job) ──▶ LISTENING line
          ──▶ poll GET /ready (progress "worker_start") ──▶ ready
          ──▶ wait for the process to exit (the hive waits on the child: no polling)

The moment the process exits the worker is marked ``restarting`` or ``failed`` (``stopped`` when
asked for), whatever is left of its group is killed, and the output pipes get a moment to drain.
A worker that was ready and then died is restarted after backoff_initial * 2**(n-1) seconds
(at most backoff_max), up to restart_limit consecutive times; a worker that never got ready on
its first start is left ``failed`` at once: the spawn job reports why, and its caller decides.

``stop()`` sends SIGTERM to the group and SIGKILL after stop_grace seconds. Leaving ``running()``
stops every worker. A pid file per worker (``{state_dir}/run``) lets the next hive kill the
workers of a hive that was itself killed.

Output lines reach a spawn job through the job's context: the spawn handler attaches a copy of its
``contextvars`` context to the worker, and the pumps ``narrate`` inside it.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import httpx
import psutil  # type: ignore[import-untyped]

from jobproto import narrate, progress

from .errors import WorkerError
from .settings import HiveSettings

__all__ = ["LISTENING_PREFIX", "Supervisor", "Worker", "WorkerSpec", "WorkerState"]

logger = logging.getLogger("rbee_hive.supervisor")

LISTENING_PREFIX = "RBEE_WORKER_LISTENING "
MAX_LINE = 64 * 1024  # longer output lines are cut (the log keeps the pieces)
DRAIN_SECONDS = 2.0  # how long the pipes may stay open after the worker exited


class WorkerState:
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    RESTARTING = "restarting"


@attrs.frozen
class WorkerSpec:
    worker_id: str
    model: str
    model_path: Path
    engine: str = "auto"
    device: str | None = None
    max_concurrency: int | None = None
    engine_args: Mapping[str, str] = attrs.field(factory=dict)
    #: extra environment (placement: CUDA_VISIBLE_DEVICES)
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: the GPUs placement gave it (nvidia-smi indices)
    gpus: tuple[int, ...] = ()
    #: memory placement estimated it needs, per GPU or of RAM (claimed while it starts)
    need_bytes: int = 0

    def argv(self, settings: HiveSettings) -> list[str]:
        """The worker's command line (docs/tiers.md, worker)."""
        argv = [
            *settings.worker_command,
            "--model",
            str(self.model_path),
            "--engine",
            self.engine,
            "--host",
            settings.worker_host,
            "--port",
            "0",
            "--worker-id",
            self.worker_id,
            "--model-name",
            self.model,
        ]
        if self.device is not None:
            argv += ["--device", self.device]
        if self.max_concurrency is not None:
            argv += ["--max-concurrency", str(self.max_concurrency)]
        for key, value in sorted(self.engine_args.items()):
            argv += ["--engine-arg", f"{key}={value}"]
        return argv


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Worker:
    """The live state of one worker. Only its supervising task changes it."""

    def __init__(self, spec: WorkerSpec, log_path: Path, on_change: Callable[[], None]) -> None:
        self.spec = spec
        self.engine = spec.engine
        self.state = WorkerState.STARTING
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
        self.history: collections.deque[tuple[float, str]] = collections.deque(maxlen=64)
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

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "model": self.spec.model,
            "engine": self.engine,
            "url": self.url,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": _rfc3339(self.started_at),
            "last_exit": self.last_exit,
            "error": self.error,
            "device": self.spec.device,
            "gpus": list(self.spec.gpus),
            "log_path": str(self.log_path),
        }

    # -- state -------------------------------------------------------------------------------------

    def set_state(self, state: str, error: str | None = None) -> None:
        if error is not None:
            self.error = error
        if state == self.state:
            return
        self.state = state
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8", buffering=1)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")

    def note(self, message: str) -> None:
        """A line of the hive's own about this worker: its log, the hive's log, the spawn job."""
        self.write_log(f"--- rbee-hive {_rfc3339(time.time())}: {message}")
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


class Supervisor:
    """The workers of one hive. Use ``async with supervisor.running():``."""

    def __init__(self, settings: HiveSettings, on_change: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.workers: dict[str, Worker] = {}
        self._on_change = on_change or (lambda: None)
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(
            reap_leftovers, self.settings.run_dir, self.settings.stop_grace
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.aclose()
                self._tg = None
                tg.cancel_scope.cancel()

    def list_workers(self) -> list[Worker]:
        return list(self.workers.values())

    def get(self, worker_id: str) -> Worker:
        try:
            return self.workers[worker_id]
        except KeyError:
            raise WorkerError("worker_not_found", f"no worker {worker_id!r} on this hive") from None

    def spawn(self, spec: WorkerSpec) -> Worker:
        """Start a worker and its supervising task; returns at once (state ``starting``)."""
        if self._tg is None:
            raise RuntimeError("the supervisor is not running")
        old = self.workers.get(spec.worker_id)
        if old is not None and old.alive:
            raise WorkerError("worker_exists", f"a worker {spec.worker_id!r} is already running")
        worker = Worker(spec, self.settings.logs_dir / f"{spec.worker_id}.log", self._on_change)
        self.workers[spec.worker_id] = worker
        self._tg.start_soon(self._supervise, worker, name=f"worker {spec.worker_id}")
        self._on_change()
        return worker

    async def wait_started(self, worker: Worker) -> None:
        """Wait until the first start of ``worker`` has an outcome (ready, failed or stopped)."""
        while worker.state in (WorkerState.STARTING, WorkerState.RESTARTING):
            await worker.wait_changed()

    async def stop(self, worker_id: str) -> Worker:
        """SIGTERM to the worker's group, SIGKILL after stop_grace; returns once it is gone.

        The worker leaves the table: the returned record is its last (state ``stopped``, or
        ``failed`` for one that had already failed)."""
        worker = self.get(worker_id)
        worker.stop_requested.set()
        await worker.finished.wait()
        if self.workers.get(worker_id) is worker:
            del self.workers[worker_id]
            self._on_change()
        return worker

    async def aclose(self) -> None:
        """Stop every worker (concurrently)."""
        async with anyio.create_task_group() as tg:
            for worker in self.list_workers():
                tg.start_soon(self.stop, worker.worker_id)

    # -- one worker --------------------------------------------------------------------------------

    async def _supervise(self, worker: Worker) -> None:
        settings = self.settings
        worker.open_log()
        try:
            while True:
                await self._run_once(worker)
                if worker.stop_requested.is_set():
                    worker.set_state(WorkerState.STOPPED)
                    return
                if worker.state == WorkerState.FAILED:
                    return
                delay = min(
                    settings.backoff_initial * 2 ** (worker.failures - 1), settings.backoff_max
                )
                worker.note(f"restart {worker.failures} of {settings.restart_limit} in {delay:g} s")
                with anyio.move_on_after(delay):
                    await worker.stop_requested.wait()
                if worker.stop_requested.is_set():
                    worker.set_state(WorkerState.STOPPED)
                    return
                worker.restarts += 1
        finally:
            worker.pid = None
            worker.close_log()
            worker.finished.set()
            worker.notify()

    def _exit_state(self, worker: Worker, returncode: int | None) -> tuple[str, str]:
        """What a worker that exited unasked becomes, and why (decided at the moment it exits)."""
        settings = self.settings
        cause = worker.run_error
        if cause is None:
            if returncode is None:
                cause = "could not be started"
            elif returncode < 0:
                cause = f"killed by signal {_signal_name(-returncode)}"
            else:
                cause = f"exited with status {returncode}"
            if not worker.ever_ready:
                cause += " before it was ready"
        if not worker.ever_ready:
            return WorkerState.FAILED, cause
        if (
            worker.ready_at is not None
            and time.time() - worker.ready_at >= settings.restart_reset_after
        ):
            worker.failures = 0
        if worker.failures >= settings.restart_limit:
            return WorkerState.FAILED, f"{cause}; gave up after {settings.restart_limit} restarts"
        worker.failures += 1
        return WorkerState.RESTARTING, cause

    async def _run_once(self, worker: Worker) -> None:
        argv = worker.spec.argv(self.settings)
        worker.url = None
        worker.ready_at = None
        worker.run_error = None
        worker.started_at = time.time()
        worker.set_state(WorkerState.STARTING)
        worker.note(f"starting: {shlex.join(argv)}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(worker.spec.env)
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: signals reach all it starts
            )
        except OSError as exc:
            worker.last_exit = None
            worker.run_error = f"could not start {argv[0]!r}: {exc}"
            worker.set_state(*self._exit_state(worker, None))
            return
        pid = worker.pid = process.pid
        pidfile = write_pidfile(self.settings.run_dir, worker.worker_id, pid, argv)
        listening = anyio.Event()
        try:
            assert process.stdout is not None and process.stderr is not None
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump, worker, process.stdout, "stdout", listening)
                pumps.start_soon(self._pump, worker, process.stderr, "stderr", listening)
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(self._watch_ready, worker, listening, pid)
                    watchers.start_soon(self._watch_stop, worker, pid)
                    returncode = await process.wait()
                    watchers.cancel_scope.cancel()
                    worker.last_exit = returncode
                    if not worker.stop_requested.is_set():
                        worker.set_state(*self._exit_state(worker, returncode))
                    worker.note(f"pid {pid} exited with {returncode}")
                # Whatever the worker started and left behind goes now.
                killpg(pid, signal.SIGKILL)
                pumps.cancel_scope.deadline = anyio.current_time() + DRAIN_SECONDS
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled: never leave a process behind
                    killpg(pid, signal.SIGKILL)
                    await process.wait()
                await process.aclose()
            worker.pid = None
            pidfile.unlink(missing_ok=True)

    async def _pump(
        self,
        worker: Worker,
        stream: anyio.abc.ByteReceiveStream,
        name: str,
        listening: anyio.Event,
    ) -> None:
        buffer = b""
        try:
            async for chunk in stream:
                buffer += chunk
                while b"\n" in buffer or len(buffer) > MAX_LINE:
                    if b"\n" in buffer[: MAX_LINE + 1]:
                        line, buffer = buffer.split(b"\n", 1)
                    else:
                        line, buffer = buffer[:MAX_LINE], buffer[MAX_LINE:]
                    self._line(worker, name, line, listening)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if buffer:
            self._line(worker, name, buffer, listening)

    def _line(self, worker: Worker, stream: str, raw: bytes, listening: anyio.Event) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        worker.write_log(text)
        worker.tell(narrate, "worker_output", text, worker_id=worker.worker_id, stream=stream)
        if stream == "stdout" and text.startswith(LISTENING_PREFIX) and not listening.is_set():
            try:
                info = json.loads(text[len(LISTENING_PREFIX) :])
                port = int(info["port"])
            except (ValueError, KeyError, TypeError):
                worker.note(f"ignoring a malformed listening line: {text!r}")
                return
            if info.get("worker_id") not in (None, worker.worker_id):
                worker.note(f"the worker calls itself {info.get('worker_id')!r}")
            worker.url = f"http://{self._advertised_host()}:{port}"
            self._on_change()
            worker.note(f"listening on port {port}")
            listening.set()

    def _advertised_host(self) -> str:
        """The host in a worker's URL. The queen talks to workers directly, so a worker bound
        to every interface is named as the queen knows this machine (``public_url``)."""
        settings = self.settings
        if settings.worker_host in ("0.0.0.0", "::", ""):
            public = urlsplit(settings.public_url).hostname if settings.public_url else None
            return public or socket.gethostname()
        return _connect_host(settings.worker_host)

    async def _watch_ready(self, worker: Worker, listening: anyio.Event, pid: int) -> None:
        """Poll ``GET /ready`` until ready, failed or ready_timeout; narrate progress."""
        settings = self.settings
        start = time.monotonic()
        next_tick = 0.0
        probe = f"http://{_connect_host(settings.worker_host)}:{{port}}/ready"
        with anyio.move_on_after(settings.ready_timeout) as scope:
            async with httpx.AsyncClient(timeout=min(5.0, settings.ready_timeout)) as client:
                while True:
                    elapsed = time.monotonic() - start
                    if elapsed >= next_tick:  # about once a second
                        worker.tell(
                            progress,
                            "worker_start",
                            round(elapsed, 1),
                            settings.ready_timeout,
                            unit="s",
                        )
                        next_tick = int(elapsed) + 1.0
                    if listening.is_set() and worker.url is not None:
                        port = urlsplit(worker.url).port
                        verdict = await self._probe(client, probe.format(port=port))
                        if isinstance(verdict, dict):
                            if isinstance(verdict.get("engine"), str):
                                worker.engine = verdict["engine"]  # what "auto" turned out to be
                            worker.ready_at = time.time()
                            worker.ever_ready = True
                            worker.error = None
                            worker.set_state(WorkerState.READY)
                            worker.note(f"ready after {time.monotonic() - start:.1f} s")
                            return
                        if isinstance(verdict, str):
                            worker.run_error = f"failed to load: {verdict}"
                            break
                    await anyio.sleep(settings.ready_poll_interval)
        if scope.cancelled_caught:
            worker.run_error = f"not ready within {settings.ready_timeout:g} s"
        worker.note(f"{worker.run_error}: stopping it")
        await self._terminate(pid)

    async def _probe(self, client: httpx.AsyncClient, url: str) -> dict[str, Any] | str | None:
        """The body of a ready answer; the error when the worker says loading failed; else None."""
        try:
            response = await client.get(url)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None  # not answering yet, or not with JSON: keep polling
        if not isinstance(body, dict):
            return None
        if response.status_code == 200 and body.get("ready") is True:
            return body
        if body.get("state") == "failed":
            return str(body.get("error") or "the model failed to load")
        return None

    async def _watch_stop(self, worker: Worker, pid: int) -> None:
        await worker.stop_requested.wait()
        worker.note("stopping (SIGTERM)")
        await self._terminate(pid)

    async def _terminate(self, pid: int) -> None:
        """SIGTERM to the group, SIGKILL after stop_grace. The caller's scope ends at exit."""
        killpg(pid, signal.SIGTERM)
        await anyio.sleep(self.settings.stop_grace)
        logger.warning(
            "process group %d ignored SIGTERM for %g s: SIGKILL", pid, self.settings.stop_grace
        )
        killpg(pid, signal.SIGKILL)
        await anyio.sleep_forever()


def _connect_host(host: str) -> str:
    """``host`` as the host part of a URL to connect to (a wildcard address means loopback)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not allowed to signal process group %d", pgid)
        return False
    return True


# -- pid files: no orphans even when the hive itself was killed -----------------------------------


def write_pidfile(run_dir: Path, worker_id: str, pid: int, argv: list[str]) -> Path:
    path = run_dir / f"{worker_id}.json"
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = time.time()
    path.write_text(json.dumps({"pid": pid, "pgid": pid, "create_time": created, "argv": argv}))
    return path


def reap_leftovers(run_dir: Path, grace: float) -> None:
    """Stop the process groups of workers a previous hive left running (it was killed)."""
    for path in run_dir.glob("*.json"):
        try:
            info = json.loads(path.read_text())
            pgid, created = int(info["pgid"]), float(info["create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        members = []
        for proc in psutil.process_iter():
            try:
                # A member of that group started no earlier than the worker: not a reused id.
                if os.getpgid(proc.pid) == pgid and proc.create_time() >= created - 1.0:
                    members.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        if members:
            logger.warning(
                "stopping %d leftover process(es) of worker group %d", len(members), pgid
            )
            for proc in members:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, alive = psutil.wait_procs(members, timeout=grace)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        path.unlink(missing_ok=True)

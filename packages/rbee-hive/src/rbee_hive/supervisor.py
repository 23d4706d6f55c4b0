"""Worker processes: spawn, watch, restart, stop.

Theory of operation
-------------------
Each worker is one child process started from an argument list (``WorkerSpec.argv``, never a
shell) in its own session, hence its own process group (``rbee_process.session_options``):
signals go to the group, so whatever the worker starts (vLLM's engine core, tokenizer pools) goes
with it. The worker binds port 0 itself and announces the port in one stdout line
(``rbee_contracts.worker_cli``: ``RBEE_WORKER_LISTENING {"port": ..., "worker_id": ...}``).

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
Each state change goes through ``rbee_contracts.lifecycle``'s worker table
(``WorkerProcess.set_state``, ``rbee_hive.worker_process``).

``stop()`` sends SIGTERM to the group and SIGKILL after stop_grace seconds
(``rbee_process.signal_group``; the worker's exit, which the hive awaits, ends the wait).
Leaving ``running()`` stops every worker. A pid file per worker run (``rbee_hive.reaping``, in
``{state_dir}/run``) lets the next hive, or whoever killed this one, stop the workers of a hive
that was itself killed.

The hive reads its workers' pipes and waits for their exit itself (anyio), so ``rbee_process``
never reaps a worker (its reaping is opt-in; anyio gets the exit status): identity, pid files,
termination and leftovers (``kill_leftovers``: only members of the worker's own group, checked
by start time) are ``rbee_process``'s. A pid file that cannot be written ends that run at once.

Output lines reach a spawn job through the job's context: the spawn handler attaches a copy of its
``contextvars`` context to the worker, and the pumps ``narrate`` inside it. A Python traceback in
that output is not narrated line by line: it goes to the worker's log (0600), and the spawn job is
told its last line (``TracebackFolder``), so no client sees the frames and source paths.

The worker gets the token it accepts in its environment (``RBEE_WORKER_TOKEN``, never in its
argument list): its own, derived from the hive's (``rbee_hive.trust.worker_token``), which the
hive presents when it polls ``/ready``.
"""

from __future__ import annotations

import collections
import logging
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx

import rbee_process
from jobproto import narrate, progress
from rbee_contracts import auth
from rbee_contracts.lifecycle import ModelLoadState, WorkerState
from rbee_contracts.worker_cli import LISTENING_PREFIX, parse_listening_line

from .errors import WorkerError
from .reaping import pid_file_path, reap_leftovers
from .settings import HiveSettings, is_wildcard
from .trust import worker_context, worker_env, worker_token
from .worker_process import TracebackFolder, WorkerProcess
from .worker_spec import WorkerSpec

__all__ = ["Supervisor", "WorkerProcess", "WorkerSpec", "WorkerState"]

logger = logging.getLogger("rbee_hive.supervisor")

MAX_LINE = 64 * 1024  # longer output lines are cut (the log keeps the pieces)
DRAIN_SECONDS = 2.0  # how long the pipes may stay open after the worker exited
#: a worker's exit status when its engine died (``rbee_worker.app.EXIT_ENGINE_DEAD``)
EXIT_ENGINE_DEAD = 3


class Supervisor:
    """The workers of one hive. Use ``async with supervisor.running():``."""

    def __init__(self, settings: HiveSettings, on_change: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.workers: dict[str, WorkerProcess] = {}
        self._on_change = on_change or (lambda: None)
        self._tg: anyio.abc.TaskGroup | None = None
        #: restarts of ready workers that died, by cause (``restart_cause``; the hive's metrics)
        self.restart_causes: collections.Counter[str] = collections.Counter()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        # The hive's state is its user's only (logs may hold what a worker printed).
        self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings.logs_dir.mkdir(exist_ok=True, mode=0o700)
        self.settings.run_dir.mkdir(exist_ok=True, mode=0o700)
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

    def list_workers(self) -> list[WorkerProcess]:
        return list(self.workers.values())

    def get(self, worker_id: str) -> WorkerProcess:
        try:
            return self.workers[worker_id]
        except KeyError:
            raise WorkerError("worker_not_found", f"no worker {worker_id!r} on this hive") from None

    def spawn(self, spec: WorkerSpec) -> WorkerProcess:
        """Start a worker and its supervising task; returns at once (state ``starting``)."""
        if self._tg is None:
            raise RuntimeError("the supervisor is not running")
        old = self.workers.get(spec.worker_id)
        if old is not None and old.alive:
            raise WorkerError("worker_exists", f"a worker {spec.worker_id!r} is already running")
        worker = WorkerProcess(
            spec, self.settings.logs_dir / f"{spec.worker_id}.log", self._on_change
        )
        self.workers[spec.worker_id] = worker
        self._tg.start_soon(self._supervise, worker, name=f"worker {spec.worker_id}")
        self._on_change()
        return worker

    async def wait_started(self, worker: WorkerProcess) -> None:
        """Wait until the first start of ``worker`` has an outcome (ready, failed or stopped)."""
        while worker.state.pending:
            await worker.wait_changed()

    async def stop(self, worker_id: str) -> WorkerProcess:
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

    async def _supervise(self, worker: WorkerProcess) -> None:
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

    def _exit_state(self, worker: WorkerProcess, returncode: int | None) -> tuple[WorkerState, str]:
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
        self.restart_causes[restart_cause(worker.run_error, returncode)] += 1
        return WorkerState.RESTARTING, cause

    async def _run_once(self, worker: WorkerProcess) -> None:
        argv = worker.spec.argv(self.settings)
        worker.url = None
        worker.ready_at = None
        worker.run_error = None
        worker.started_at = time.time()
        worker.set_state(WorkerState.STARTING)
        worker.note(f"starting ({worker.spec.engine} engine)", detail=shlex.join(argv))
        try:
            # Its own session and process group (signals reach all it starts), stdin from
            # /dev/null, our environment plus placement's: rbee_process's rules; the pipes are ours.
            # Its environment carries the token it accepts; the hive's own credentials stay here.
            options = rbee_process.session_options(worker.spec.env)
            worker_env(self.settings, options["env"], worker.worker_id)
            process = await anyio.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
            )
        except OSError as exc:
            worker.last_exit = None
            worker.run_error = f"could not start {argv[0]!r}: {exc}"
            worker.set_state(*self._exit_state(worker, None))
            return
        pid = worker.pid = process.pid
        record = rbee_process.ProcessRecord.of(pid, argv, worker.log_path)
        pidfile = pid_file_path(self.settings.run_dir, worker.worker_id)
        listening = anyio.Event()
        try:
            try:
                rbee_process.write_pid_file(pidfile, record)
            except OSError as exc:
                # Unrecorded, a hive killed later would leave it running: it ends now. Not
                # waited for yet, so the group is still its own.
                worker.run_error = f"its pid file {pidfile} could not be written: {exc}"
                worker.note(worker.run_error)
                rbee_process.signal_group(pid, signal.SIGKILL)
            assert process.stdout is not None and process.stderr is not None
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump, worker, process.stdout, "stdout", listening)
                pumps.start_soon(self._pump, worker, process.stderr, "stderr", listening)
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(self._watch_ready, worker, listening, record)
                    watchers.start_soon(self._watch_stop, worker, record)
                    returncode = await process.wait()
                    worker.pid = None  # before anyone hears of the exit: the pid is not its
                    watchers.cancel_scope.cancel()
                    worker.last_exit = returncode
                    if not worker.stop_requested.is_set():
                        worker.set_state(*self._exit_state(worker, returncode))
                    worker.note(f"pid {pid} exited with {returncode}")
                # Whatever the worker started and left behind goes now (its group's members
                # only: the leader has been waited for, its pid may be another's already).
                await anyio.to_thread.run_sync(rbee_process.kill_leftovers, record)
                pumps.cancel_scope.deadline = anyio.current_time() + DRAIN_SECONDS
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled: never leave a process behind
                    rbee_process.signal_group(pid, signal.SIGKILL)
                    await process.wait()
                await process.aclose()
            worker.pid = None
            pidfile.unlink(missing_ok=True)

    async def _pump(
        self,
        worker: WorkerProcess,
        stream: anyio.abc.ByteReceiveStream,
        name: str,
        listening: anyio.Event,
    ) -> None:
        buffer = b""
        folder = TracebackFolder()  # one per stream: a traceback is written to one of them
        try:
            async for chunk in stream:
                buffer += chunk
                while b"\n" in buffer or len(buffer) > MAX_LINE:
                    if b"\n" in buffer[: MAX_LINE + 1]:
                        line, buffer = buffer.split(b"\n", 1)
                    else:
                        line, buffer = buffer[:MAX_LINE], buffer[MAX_LINE:]
                    self._line(worker, name, line, listening, folder)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if buffer:
            self._line(worker, name, buffer, listening, folder)

    def _line(
        self,
        worker: WorkerProcess,
        stream: str,
        raw: bytes,
        listening: anyio.Event,
        folder: TracebackFolder,
    ) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        worker.write_log(text)
        for told in folder.feed(text):  # a traceback stays in the log: one line of it is told
            worker.tell(narrate, "worker_output", told, worker_id=worker.worker_id, stream=stream)
        if stream == "stdout" and text.startswith(LISTENING_PREFIX) and not listening.is_set():
            info = parse_listening_line(text)
            if info is None:
                worker.note(f"ignoring a malformed listening line: {text!r}")
                return
            port = int(info["port"])
            if info.get("worker_id") not in (None, worker.worker_id):
                worker.note(f"the worker calls itself {info.get('worker_id')!r}")
            worker.url = f"{self.settings.scheme}://{self._advertised_host()}:{port}"
            self._on_change()
            worker.note(f"listening on port {port}")
            listening.set()

    def _advertised_host(self) -> str:
        """The host in a worker's URL. The queen talks to workers directly, so a worker bound
        to every interface is named as the queen knows this machine (``public_url``)."""
        settings = self.settings
        if is_wildcard(settings.worker_host):
            public = urlsplit(settings.public_url).hostname if settings.public_url else None
            return public or socket.gethostname()
        return _connect_host(settings.worker_host)

    async def _watch_ready(
        self, worker: WorkerProcess, listening: anyio.Event, record: rbee_process.ProcessRecord
    ) -> None:
        """Poll ``GET /ready`` until ready, failed or ready_timeout; narrate progress."""
        settings = self.settings
        start = time.monotonic()
        next_tick = 0.0
        probe = f"{settings.scheme}://{_connect_host(settings.worker_host)}:{{port}}/ready"
        with anyio.move_on_after(settings.ready_timeout) as scope:
            async with httpx.AsyncClient(
                timeout=min(5.0, settings.ready_timeout),
                headers=auth.bearer(worker_token(settings, worker.worker_id)),
                verify=worker_context(settings),
            ) as client:
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
        await self._terminate(record)

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
        if body.get("state") == ModelLoadState.FAILED:
            return str(body.get("error") or "the model failed to load")
        return None

    async def _watch_stop(self, worker: WorkerProcess, record: rbee_process.ProcessRecord) -> None:
        await worker.stop_requested.wait()
        worker.note("stopping (SIGTERM)")
        await self._terminate(record)

    async def _terminate(self, record: rbee_process.ProcessRecord) -> None:
        """SIGTERM to the group, SIGKILL after stop_grace. The caller's scope ends at the
        worker's exit (``_run_once`` waits for it, then kills what its group left), so nothing
        here polls: each signal goes only while the record still names a live worker (checked
        and sent without an await between, so never to a pid anyio has reaped meanwhile)."""
        grace = self.settings.stop_grace
        if rbee_process.alive(record):
            rbee_process.signal_group(record.pid, signal.SIGTERM)
        await anyio.sleep(grace)
        if rbee_process.alive(record):
            logger.warning("process group %d ignored SIGTERM for %g s: SIGKILL", record.pid, grace)
            rbee_process.signal_group(record.pid, signal.SIGKILL)
        await anyio.sleep_forever()


def restart_cause(run_error: str | None, returncode: int | None) -> str:
    """A worker's exit as one word, for counting: ``engine_dead`` (it exited because its engine
    died), ``signal`` (killed), ``exit`` (another status), ``not_ready`` (it did not get ready
    again), ``error`` (the hive could not run it)."""
    if run_error is not None:
        return "not_ready" if run_error.startswith(("failed to load", "not ready")) else "error"
    if returncode is None:
        return "error"
    if returncode < 0:
        return "signal"
    return "engine_dead" if returncode == EXIT_ENGINE_DEAD else "exit"


def _connect_host(host: str) -> str:
    """``host`` as the host part of a URL to connect to (a wildcard address means loopback)."""
    if is_wildcard(host):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)

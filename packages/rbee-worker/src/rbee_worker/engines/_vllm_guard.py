"""A vLLM plugin that ends vLLM's engine-core process when the worker that owns it is gone.

vLLM's engine core (``VLLM::EngineCore``) is a child process of the worker. A worker that exits
normally shuts it down; a worker killed outright (SIGKILL, the OOM killer) runs no code, and the
engine core lives on as an orphan holding the model's memory. The hive covers its workers: each
runs in its own process group, which the hive signals whole when the worker exits. A worker
started any other way (by hand, by another supervisor) has only this guard.

The worker sets ``RBEE_WORKER_PID`` to its own pid before it builds the engine, and ``register``
runs in the engine core twice over, whichever comes first:

- as soon as the engine core starts: multiprocessing (spawn) imports the worker's main module
  again in the child, and ``rbee_worker.app`` calls ``register`` at import;
- when vLLM loads the entry points of the ``vllm.general_plugins`` group, which it does in every
  process it starts (rbee-worker's ``pyproject.toml`` registers ``register``): this covers an
  engine built by another program, or a child started by fork. vLLM loads plugins only after the
  engine core's handshake with the worker, which never comes if the worker died first.

In the process the worker started (the engine core; vLLM's own ``VLLM::Worker`` children follow
their engine core through a pipe of vLLM's), ``register`` starts a daemon thread that checks once
a second that the parent is still there, and kills its own process when it is not (re-parented
to init or a subreaper). A child that finds the worker already gone ends at once.

Why not ``prctl(PR_SET_PDEATHSIG)``: it is Linux-only, it can only be set by the child itself
(vLLM starts the engine core, not us), and it fires when the parent *thread* that started the
child exits, not the process: the worker builds the engine in a pool thread, which may retire
long before the worker ends. Polling ``getppid()`` works wherever POSIX does, at the cost of up
to a second's delay. If ``VLLM_PLUGINS`` is set to a list without ``rbee_worker_orphan_guard``,
vLLM does not load the guard.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

__all__ = ["GUARD_THREAD", "register", "watch_parent"]

GUARD_THREAD = "rbee-orphan-guard"
_ENV = "RBEE_WORKER_PID"


def register() -> None:
    """vLLM's plugin hook: start the guard in the worker's engine core (no-op elsewhere)."""
    try:
        owner = int(os.environ.get(_ENV, ""))
    except ValueError:
        return
    parent = multiprocessing.parent_process()
    # While a spawned child imports the worker's main module (rbee_worker.app calls register()
    # then, long before vLLM loads plugins), multiprocessing has not said who its parent is yet;
    # that it runs the main module as "__mp_main__" says this is such a child.
    if parent is None and "__mp_main__" not in sys.modules:
        return  # not a process multiprocessing started: the worker itself, or unrelated
    direct = parent.pid == owner if parent is not None else os.getppid() == owner
    if not direct:
        # A child of the engine core (it follows the engine core through vLLM's own pipe), or
        # the engine core of a worker that died before this line ran: then end now.
        if not _exists(owner):
            _end(owner)
        return
    if any(thread.name == GUARD_THREAD for thread in threading.enumerate()):
        return  # vLLM may load plugins more than once per process
    threading.Thread(target=watch_parent, args=(owner,), name=GUARD_THREAD, daemon=True).start()
    # stderr, not logging: vLLM configures only its own loggers in its processes. The worker's
    # log (and the hive's narration of a spawn) shows this line.
    print(f"rbee orphan guard: this process ends when worker pid {owner} does", file=sys.stderr)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    return True


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """Block until this process's parent is no longer ``parent``, then SIGKILL this process."""
    while os.getppid() == parent:
        time.sleep(interval)
    _end(parent)


def _end(owner: int) -> None:
    # SIGKILL, not an exception or sys.exit: the engine core's threads are blocked in ZMQ and
    # torch calls, and nothing in it is worth saving once its worker is gone.
    print(
        f"rbee orphan guard: worker pid {owner} is gone; ending pid {os.getpid()}", file=sys.stderr
    )
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

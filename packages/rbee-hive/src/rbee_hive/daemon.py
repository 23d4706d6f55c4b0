"""A hive run detached on its own machine: ``python -m rbee_hive.daemon start|stop|status``.

A queen on another machine manages a hive here over SSH with this module (``rbee_queen.
remote_hives``): one short command per step, whose answer is one JSON line on stdout. The hive
itself runs as ``python -m rbee_hive.app`` with this interpreter, started through ``rbee_process``
like every background process of rbee: its own session (so it outlives the SSH session that
started it), output into ``{state_dir}/logs/hive.log``, and a pid file ``{state_dir}/hive.pid``
that records its start time; the check, the start and the pid file happen under the pid file's
lock, so two starts at once start one hive. ``stop`` is ``rbee_process.stop_hive``: SIGTERM to its
group, SIGKILL after the grace, then the workers its run dir still names.

Tokens are never on this command line nor the hive's: the hive reads them from the files that
``RBEE_JOIN_TOKEN_FILE`` and ``RBEE_HIVE_TOKEN_FILE`` name, which it inherits from this process.
The log is made 0600 by ``rbee_process.prepare_log`` (it can hold what the hive's libraries
print).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import rbee_process
from jobproto import converter
from rbee_contracts import local_layout
from rbee_contracts.hive_cli import DaemonAnswer, hive_argv
from rbee_contracts.queen_results import StopOutcome

from .settings import default_models_dir, default_state_dir

__all__ = ["hive_log", "hive_pid_file", "main"]


def hive_pid_file(state_dir: Path) -> Path:
    return state_dir / "hive.pid"


def hive_log(state_dir: Path) -> Path:
    return state_dir / "logs" / "hive.log"


def _record_fields(record: rbee_process.ProcessRecord | None) -> dict[str, Any]:
    if record is None:
        return {"pid": None, "command": []}
    return {"pid": record.pid, "command": list(record.argv)}


def start(args: argparse.Namespace) -> DaemonAnswer:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [
        sys.executable,
        "-m",
        "rbee_hive.app",
        *hive_argv(
            host=args.host,
            port=args.port,
            hive_id=args.hive_id,
            queen_url=args.queen_url,
            state_dir=str(state_dir),
            models_dir=args.models_dir or str(default_models_dir()),
            heartbeat=args.heartbeat,
        ),
        *args.hive_args,
    ]
    log = hive_log(state_dir)  # made 0600 by rbee_process (prepare_log) before the hive writes
    try:
        record, fresh = rbee_process.start_once(
            hive_pid_file(state_dir), command, log_path=log, label=f"hive {args.hive_id}"
        )
    except rbee_process.SpawnError as exc:
        return DaemonAnswer(ok=False, error=str(exc), log=str(log))
    return DaemonAnswer(ok=True, already_running=not fresh, log=str(log), **_record_fields(record))


def stop(args: argparse.Namespace) -> DaemonAnswer:
    state_dir = Path(args.state_dir)

    async def stopping() -> DaemonAnswer:
        how, record, workers = await rbee_process.stop_hive(
            hive_pid_file(state_dir),
            state_dir / "run",
            args.grace,
            worker_grace=local_layout.WORKER_LEFTOVER_GRACE,
        )
        leftovers = [
            path.stem
            for path, outcome, _ in workers
            if outcome is not rbee_process.StopOutcome.NOT_RUNNING
        ]
        return DaemonAnswer(
            ok=True,
            stopped=StopOutcome(how.value),
            leftover_workers=leftovers,
            log=str(hive_log(state_dir)),
            **_record_fields(record),
        )

    return anyio.run(stopping)


def status(args: argparse.Namespace) -> DaemonAnswer:
    state_dir = Path(args.state_dir)
    record = rbee_process.read_pid_file(hive_pid_file(state_dir))
    running = record is not None and rbee_process.alive(record)
    return DaemonAnswer(
        ok=True,
        running=running,
        log=str(hive_log(state_dir)),
        **_record_fields(record if running else None),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rbee_hive.daemon",
        description="Start, stop or look at a hive running detached on this machine.",
    )
    p.add_argument("--state-dir", default=str(default_state_dir()))
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("start", help="start the hive (no-op when it runs)")
    s.add_argument("--hive-id", required=True)
    s.add_argument("--queen-url", required=True)
    s.add_argument("--host", default="127.0.0.1", help="address the hive binds")
    s.add_argument("--port", type=int, default=9000)
    s.add_argument("--models-dir", default=None)
    s.add_argument("--heartbeat", type=float, default=None)
    s.add_argument(
        "hive_args", nargs=argparse.REMAINDER, help="after --: more flags for rbee_hive.app"
    )
    t = sub.add_parser("stop", help="stop the hive (SIGTERM, then SIGKILL) and its leftovers")
    t.add_argument("--grace", type=float, default=local_layout.HIVE_STOP_GRACE)
    sub.add_parser("status", help="whether the hive runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.action == "start" and args.hive_args[:1] == ["--"]:
        args.hive_args = args.hive_args[1:]
    result = {"start": start, "stop": stop, "status": status}[args.action](args)
    print(json.dumps(converter.unstructure(result)), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

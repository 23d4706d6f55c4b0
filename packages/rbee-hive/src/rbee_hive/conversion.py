"""One GGUF import's work outside the catalog: which architectures the hive takes, the source
file's digest, and the converter process.

The converter is a command (``HiveSettings.convert_command``; by default ``python -m
rbee_worker.gguf_import`` with the hive's interpreter) that the hive runs as
``COMMAND SRC.gguf DEST_DIR --dtype DTYPE``, in its own session and so its own process group
(``rbee_process.session_options``, as workers are): cancelling the import kills the whole group,
whatever the converter started. Its environment is the hive's without the hive's credentials
(``trust.WORKER_ENV_DROPPED``, as a worker's) and without the user's Hugging Face token
(``CONVERTER_ENV_DROPPED``), with ``HF_HUB_OFFLINE=1``: it reads one local file. It speaks
JSON lines on stdout, one object each::

    {"event": "step", "step": "read", "message": "..."}        -> narrated on the import's jobs
    {"event": "progress", "step": "write", "done": N, "total": M}  -> progress (rate-limited)
    {"event": "done", "architecture": "llama", "parameters": N, "bytes": N, "seconds": S, ...}
    {"event": "error", "code": "unsupported_architecture", "message": "..."}  (then exit 3)

Exit 0 with a ``done`` event is success; exit 3 with an ``error`` event a refusal with that code;
anything else a crash (``conversion_failed``, with the end of its stderr, tracebacks folded to
their last line as a worker's are). Everything it writes besides its JSON goes to its log,
``{logs_dir}/imports/{name}.log`` (0600, ``rbee_process.prepare_log``).
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import json
import logging
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import attrs

import rbee_process
from jobproto import narrate, progress
from rbee_contracts.hive_ops import ModelInfo

from .downloads import human
from .errors import ModelError
from .gguf_header import GGUFHeader
from .trust import WORKER_ENV_DROPPED
from .worker_process import TracebackFolder, hide_internal_paths

__all__ = [
    "CONVERTER_ENV_DROPPED",
    "EXIT_REFUSED",
    "SUPPORTED_ARCHITECTURES",
    "Conversion",
    "check_architecture",
    "hash_file",
    "run_converter",
]

logger = logging.getLogger("rbee_hive.conversion")

#: GGUF architectures (``general.architecture``) the hive imports: decoder-only models that
#: transformers reads from GGUF (``transformers.integrations.ggml``) and vLLM runs, converted
#: to the Hugging Face layout both engines load. Kept conservative: ``llama`` is the one tested
#: end to end (SmolLM2); the others share its conversion path in transformers. Anything else
#: (mixture-of-experts, Mamba, T5, ...) is refused before any work.
SUPPORTED_ARCHITECTURES: Final = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"}
)
#: never in the converter's environment: what never is in a worker's (the hive's credentials)
#: and the user's Hugging Face token, which a converter of a local file has no use for
CONVERTER_ENV_DROPPED: Final[tuple[str, ...]] = (
    *WORKER_ENV_DROPPED,
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
#: the converter's exit status for a refusal it reported with an ``error`` event
EXIT_REFUSED: Final = 3
#: the longest converter stdout line read (longer ones are cut, and are no JSON event then)
MAX_LINE: Final = 64 * 1024
#: lines of the converter's stderr kept for the failure's message
TAIL_LINES: Final = 6
HASH_BLOCK: Final = 1 << 20
#: how long the converter's pipes may stay open after it exited
DRAIN_SECONDS: Final = 2.0


def check_architecture(header: GGUFHeader, where: str | Path) -> None:
    """Refuse a GGUF file (``where``: its path, or repository and name) whose architecture the
    hive does not import."""
    if header.architecture not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise ModelError(
            "unsupported_architecture",
            f"{where} holds a {header.architecture!r} model; this hive imports GGUF files of"
            f" these architectures: {supported}",
        )


class HashCancelled(Exception):
    """The digest of a file was no longer wanted."""


def hash_file(path: Path, counter: list[int], cancelled: threading.Event) -> str:
    """The SHA-256 of ``path`` (blocking: run it in a thread); ``counter[0]`` counts the bytes
    read so far, for the loop to report; ``cancelled`` stops it at its next block."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            if cancelled.is_set():
                raise HashCancelled(str(path))
            digest.update(block)
            counter[0] += len(block)
    return digest.hexdigest()


@attrs.define(eq=False)
class Conversion:
    """One import in progress, shared by every job that asked for it (single flight)."""

    name: str
    #: what is imported: a second request with the same key joins, another is refused
    key: tuple[str, ...]
    observers: list[contextvars.Context] = attrs.field(factory=list)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    result: ModelInfo | None = None
    error: ModelError | None = None

    def tell(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Narrate on every job waiting for this import (each in its own context)."""
        for ctx in list(self.observers):
            ctx.run(fn, *args, **kwargs)
        if not self.observers:
            fn(*args, **kwargs)  # logging only


@attrs.define
class _Run:
    """What one converter run said."""

    #: seconds between progress events passed on (the converter may send many more)
    interval: float
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tail: collections.deque[str] = attrs.field(factory=lambda: collections.deque(maxlen=TAIL_LINES))
    last_progress: float = 0.0


async def run_converter(
    command: Sequence[str],
    src: Path,
    dest: Path,
    dtype: str,
    *,
    log_path: Path,
    conversion: Conversion,
    progress_interval: float,
) -> dict[str, Any]:
    """Convert ``src`` into ``dest`` (an empty directory) with the converter; its ``done``
    event. Narrates on ``conversion``'s jobs; a ``ModelError`` when it refuses or fails.
    Cancelled, it kills the converter's process group before it returns."""
    argv = [*command, str(src), str(dest), "--dtype", dtype]
    rbee_process.prepare_log(log_path)
    options = rbee_process.session_options()
    for name in CONVERTER_ENV_DROPPED:
        options["env"].pop(name, None)
    options["env"]["HF_HUB_OFFLINE"] = "1"
    run = _Run(progress_interval)
    with log_path.open("a", encoding="utf-8", errors="replace") as log:
        log.write(f"--- rbee: {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        try:
            process = await anyio.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
            )
        except OSError as exc:
            raise ModelError(
                "conversion_failed", f"could not start the converter {argv[0]!r}: {exc}"
            ) from None
        record = rbee_process.ProcessRecord.of(process.pid, argv, log_path)
        try:
            assert process.stdout is not None and process.stderr is not None
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(_pump, process.stdout, _stdout(run, log, conversion))
                pumps.start_soon(_pump, process.stderr, _stderr(run, log))
                returncode = await process.wait()
                # What the converter started and left behind goes too (its own group's
                # members), and its pipes get a moment to drain, not more.
                await anyio.to_thread.run_sync(rbee_process.kill_leftovers, record)
                pumps.cancel_scope.deadline = anyio.current_time() + DRAIN_SECONDS
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled: never leave a converter behind
                    rbee_process.signal_group(process.pid, signal.SIGKILL)
                    await process.wait()
                    await anyio.to_thread.run_sync(rbee_process.kill_leftovers, record)
                    log.write("--- rbee: the import was cancelled; the converter was killed\n")
                await process.aclose()
        log.write(f"--- rbee: the converter exited with status {returncode}\n")
    if returncode == 0 and run.done is not None:
        return run.done
    if returncode == EXIT_REFUSED and run.error is not None:
        code = str(run.error.get("code") or "conversion_failed")
        message = str(run.error.get("message") or "the converter refused the file")
        raise ModelError(code, message)
    said = "; ".join(run.tail) or "nothing on stderr"
    how = "without saying it was done" if returncode == 0 else f"with status {returncode}"
    raise ModelError(
        "conversion_failed",
        f"converting {src} failed: the converter exited {how}: {said} (its log: {log_path})",
    )


async def _pump(stream: anyio.abc.ByteReceiveStream, on_line: Callable[[bytes], None]) -> None:
    buffer = b""
    try:
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer or len(buffer) > MAX_LINE:
                if b"\n" in buffer[: MAX_LINE + 1]:
                    line, buffer = buffer.split(b"\n", 1)
                else:
                    line, buffer = buffer[:MAX_LINE], buffer[MAX_LINE:]
                on_line(line)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    if buffer:
        on_line(buffer)


def _stderr(run: _Run, log: Any) -> Callable[[bytes], None]:
    folder = TracebackFolder()

    def on_line(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        log.write(line + "\n")
        log.flush()
        for shown in folder.feed(line):
            if shown.strip():
                run.tail.append(hide_internal_paths(shown.strip())[:500])

    return on_line


def _stdout(run: _Run, log: Any, conversion: Conversion) -> Callable[[bytes], None]:
    def on_line(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        try:
            event = json.loads(line) if line.startswith("{") else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if line:
                log.write(f"stdout: {line}\n")
                log.flush()
            return
        _event(run, event, conversion)

    return on_line


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def _event(run: _Run, event: dict[str, Any], conversion: Conversion) -> None:
    kind = event.get("event")
    step = str(event.get("step") or "")
    if kind == "step":
        message = str(event.get("message") or step)[:500]
        conversion.tell(narrate, "model_import", message, model=conversion.name, step=step)
    elif kind == "progress":
        done, total = _number(event.get("done")), _number(event.get("total"))
        if done is None:
            return
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - run.last_progress < run.interval:
            return
        run.last_progress = now
        # The contract counts bytes or tensors without naming which: a share is shown, and
        # bytes as bytes when the converter says so ("unit": "B").
        unit = str(event["unit"])[:16] if isinstance(event.get("unit"), str) else ""
        if unit == "B":
            shown = human(done) + (f" of {human(total)}" if total is not None else "")
        else:
            shown = f"{done:g}" + (f" of {total:g}" if total is not None else "")
        if total:
            shown += f" ({min(100.0, 100 * done / total):.0f}%)"
        conversion.tell(
            progress, "model_import", done, total, unit=unit, message=f"{step}: {shown}"
        )
    elif kind == "done":
        run.done = event
    elif kind == "error":
        run.error = event

"""How a job looks on the terminal: narration, progress bars, tokens, results, errors.

Two renderers take the same calls:

- ``HumanRenderer``: narration on stderr as ``[service] action: message`` (coloured by level when
  stderr is a terminal), progress events as rich progress bars keyed by service and action (bytes
  show size, rate and ETA; anything else shows count and elapsed time), the ``text`` of data
  events on stdout as it arrives (flushed), results as tables on stdout, and the infer summary
  (tokens, tok/s, time to first token, finish reason) on stderr.
- ``JsonRenderer`` (``--json``): one JSON object per line on stdout: every event in its jobproto/1
  envelope (``docs/protocol.md``), then ``{"type": "result", ...}``, or ``{"type": "error", ...}``.

stdout carries only the command's output (tokens, results), so ``rbee infer ... > out.txt`` keeps
just the generated text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from jobproto import Data, Gap, JobEvent, JobState, Narration, Origin, UnknownEvent, encode_envelope
from jobproto import Progress as ProgressEvent

__all__ = [
    "Hinted",
    "HumanRenderer",
    "JsonRenderer",
    "Renderer",
    "format_age",
    "format_bytes",
    "hive_rows",
    "model_rows",
    "service_of",
    "worker_rows",
]

LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}
BYTE_UNITS = {"b", "byte", "bytes"}
TIME_UNITS = {"s", "sec", "secs", "second", "seconds"}


def service_of(ev: JobEvent, default: str = "queen") -> str:
    """The service an event came from: the innermost ``origin`` of a relayed event."""
    origin: Origin | None = ev.origin
    service = default
    while origin is not None:
        service, origin = origin.service, origin.origin
    return service


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """A heartbeat's age for people: ``0.4 s ago``, ``3 min ago``, ``2.0 h ago``."""
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


#: operations whose result lists hives under ``hives`` (``queen_results``)
HIVE_LISTS = frozenset({"status", "hive_list"})


def hive_rows(hives: list[Any]) -> list[Any]:
    """The hives of ``status`` and ``hive_list`` as people read them: where each one is (its
    address) and how long ago it last said so (heartbeat age), before the rest. Capabilities
    stay out of the table (``--json`` has them); a row that is not a hive is left as it is."""
    rows: list[Any] = []
    for hive in hives:
        age = hive.get("seconds_since_seen") if isinstance(hive, Mapping) else None
        if not isinstance(age, (int, float)) or isinstance(age, bool):
            rows.append(hive)
            continue
        row: dict[str, Any] = {
            "hive_id": hive.get("hive_id"),
            "address": hive.get("url"),
            "state": hive.get("state"),
            "heartbeat": format_age(age),
        }
        skip = {"url", "seconds_since_seen", "last_seen", "capabilities", "heartbeat_interval"}
        for key, value in hive.items():
            if key not in skip and key not in row:
                row[key] = len(value) if key == "workers" and isinstance(value, list) else value
        rows.append(row)
    return rows


#: what a worker table shows people; the rest (start time, log path, GPUs, last exit...) is in
#: ``--json`` and ``rbee worker list --json``
WORKER_COLUMNS = (
    "hive_id",
    "worker_id",
    "model",
    "engine",
    "url",
    "pid",
    "state",
    "restarts",
    "device",
    "in_flight",
    "healthy",
    "error",
)


def worker_rows(workers: list[Any]) -> list[Any]:
    """The workers of ``status`` as people read them: the columns of ``WORKER_COLUMNS`` that any
    row has, so the table fits a terminal; a row that is not a worker is left as it is."""
    present = {k for w in workers if isinstance(w, Mapping) for k in w}
    columns = [c for c in WORKER_COLUMNS if c in present]
    return [
        {c: w.get(c) for c in columns} if isinstance(w, Mapping) and "worker_id" in w else w
        for w in workers
    ]


def model_rows(models: list[Any]) -> list[Any]:
    """The models of ``model_list`` as people read them: where each came from in one column
    (``from``: the Hugging Face repo and revision, the GGUF file an imported model was converted
    from), and only the columns some row has a value in. The GGUF file's SHA-256 is in
    ``--json``; a row that is not a model is left as it is."""
    rows: list[Any] = []
    for model in models:
        if not isinstance(model, Mapping) or "name" not in model:
            rows.append(model)
            continue
        repo, revision = model.get("repo_id"), model.get("revision")
        origin = [f"{repo}@{revision}" if repo and revision else repo, model.get("source_file")]
        row = {
            "hive_id": model.get("hive_id"),
            "name": model.get("name"),
            "source": model.get("source"),
            "size_bytes": model.get("size_bytes"),
            "from": " ".join(str(part) for part in origin if part) or None,
            "path": model.get("path"),
        }
        rows.append(row)
    used = {k for row in rows if isinstance(row, Mapping) for k, v in row.items() if v is not None}
    return [
        {k: v for k, v in row.items() if k in used} if isinstance(row, Mapping) else row
        for row in rows
    ]


class _DetailColumn(ProgressColumn):
    """Per task: size, rate and ETA for bytes; count and elapsed time for anything else."""

    def __init__(self) -> None:
        super().__init__()
        self._download = DownloadColumn()  # decimal units, as the rate
        self._speed = TransferSpeedColumn()
        self._eta = TimeRemainingColumn()
        self._elapsed = TimeElapsedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            parts = [self._download.render(task), self._speed.render(task)]
            parts.append(self._eta.render(task) if task.total else self._elapsed.render(task))
            return Text(" ").join(parts)
        if task.fields.get("time"):
            # The service's own clock: how long the step has taken, against its limit if any.
            limit = task.fields.get("limit")
            text = f"{task.completed:.1f} s" + (f" (limit {limit:g} s)" if limit else "")
            return Text(text, style="progress.elapsed")
        unit = task.fields.get("unit", "")
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        count += f" {unit}" if unit else ""
        return Text(" ").join([Text(count, style="progress.download"), self._elapsed.render(task)])


class Renderer:
    """What the job runner calls; the base renders nothing."""

    def event(self, item: JobEvent | Gap) -> None:
        """One event of the job (terminal ones included)."""

    def note(self, message: str) -> None:
        """A line from the keeper itself (starting services, cancelling)."""

    def succeeded(self, operation: str, result: Any, job_id: str, elapsed: float) -> None:
        """The job succeeded with ``result`` after ``elapsed`` seconds."""

    def ended(self, state: JobState, job_id: str, code: str, message: str) -> None:
        """The job ended failed, cancelled or expired."""

    def error(
        self, message: str, *, exit_code: int, code: str | None = None, field: str | None = None
    ) -> None:
        """The command failed before or outside the job (unreachable, refused, interrupted)."""

    def output(self, value: Any) -> None:
        """Show a value that is not a job result (job lists, settings)."""

    def close(self) -> None:
        """Stop live displays."""


class HumanRenderer(Renderer):
    def __init__(self, stdout: TextIO, stderr: TextIO, *, no_color: bool = False) -> None:
        self.stdout = stdout
        # Off a terminal (a log file, a pipe) lines are not cut to 80 columns.
        err_width = None if stderr.isatty() else 200
        self.console = Console(
            file=stderr, soft_wrap=True, highlight=False, no_color=no_color, width=err_width
        )
        # Piped output is not cut to 80 columns: tables stay one row per line.
        width = None if stdout.isatty() else 200
        self.out_console = Console(file=stdout, highlight=False, no_color=no_color, width=width)
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._line_open = False  # stdout has text that does not end in a newline
        self._wrote_text = False

    # -- events ----------------------------------------------------------------------------------

    def event(self, item: JobEvent | Gap) -> None:
        if isinstance(item, Gap):
            self._line(Text(f"rbee: {item.lost} events of this job were lost", style="yellow"))
            return
        ev = item.event
        service = service_of(item)
        if isinstance(ev, Narration):
            line = Text(f"[{service}] ", style="cyan")
            line.append(f"{ev.action}: {ev.message}", style=LEVEL_STYLES.get(ev.level, ""))
            self._line(line)
        elif isinstance(ev, ProgressEvent):
            self._update_progress(service, ev)
        elif isinstance(ev, Data):
            self._data(ev.payload)
        elif isinstance(ev, UnknownEvent):
            self._line(Text(f"[{service}] {ev.type}: {ev.payload}", style="dim"))

    def _line(self, text: Text) -> None:
        if self._line_open and self.stdout.isatty() and self.console.is_terminal:
            # Same screen: end the token line so that narration does not land inside it.
            self._write("\n")
        self.console.print(text)

    def _update_progress(self, service: str, ev: ProgressEvent) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _DetailColumn(),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            self._tasks.clear()
        key = (service, ev.action)
        description = f"[cyan]\\[{escape(service)}][/] {escape(ev.action)}"
        if ev.message:
            description += f": {escape(ev.message)}"
        total = ev.total if ev.total and ev.total > 0 else None
        is_time = ev.unit.lower() in TIME_UNITS
        if is_time:
            # For a step measured in seconds the total is a time limit, not a goal: no bar to fill.
            total, limit = None, total
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(
                description,
                total=total,
                bytes=ev.unit.lower() in BYTE_UNITS,
                time=is_time,
                unit=ev.unit,
            )
        task = self._tasks[key]
        self._progress.update(task, completed=ev.current, total=total, description=description)
        if is_time:
            self._progress.update(task, limit=limit)

    def _stop_progress(self, done: bool = False) -> None:
        """End the live display; ``done``: the job went on, so open-ended steps are complete."""
        if self._progress is None:
            return
        if done:
            for task in self._progress.tasks:
                if task.total is None:
                    self._progress.update(task.id, total=max(task.completed, 1e-9))
        self._progress.stop()
        self._progress = None

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
        if text:
            self._line_open = not text.endswith("\n")

    def _data(self, payload: Any) -> None:
        # Tokens and a live progress display would fight over the terminal: progress ends here.
        self._stop_progress(done=True)
        if isinstance(payload, Mapping) and isinstance(payload.get("text"), str):
            self._write(payload["text"])
            self._wrote_text = True
        else:
            if self._line_open:
                self._write("\n")
            self._write(json.dumps(payload, ensure_ascii=False) + "\n")

    # -- outcomes --------------------------------------------------------------------------------

    def _end_text(self, done: bool = False) -> None:
        self._stop_progress(done)
        if self._line_open:
            self._write("\n")

    def note(self, message: str) -> None:
        self._line(Text(f"rbee: {message}", style="dim"))

    def succeeded(self, operation: str, result: Any, job_id: str, elapsed: float) -> None:
        self._end_text(done=True)
        if operation == "infer" and isinstance(result, Mapping):
            if not self._wrote_text and isinstance(result.get("text"), str):
                self._write(result["text"])  # no data events came: the result has the text
                self._end_text()
            self.console.print(Text(infer_summary(result, elapsed), style="green"))
            return
        if operation == "model_list" and isinstance(result, Mapping):
            models = result.get("models")
            if isinstance(models, list):
                result = {**result, "models": model_rows(models)}
        if operation in HIVE_LISTS and isinstance(result, Mapping):
            hives = result.get("hives")
            if isinstance(hives, list):
                result = {**result, "hives": hive_rows(hives)}
            workers = result.get("workers")
            if isinstance(workers, list):
                result = {**result, "workers": worker_rows(workers)}
        self.output(result)

    def ended(self, state: JobState, job_id: str, code: str, message: str) -> None:
        self._end_text()
        if state is JobState.FAILED:
            self.console.print(Text(f"rbee: job failed: {code}: {message}", style="bold red"))
        else:
            reason = f": {message}" if message else ""
            self.console.print(Text(f"rbee: job {state}{reason}", style="yellow"))
        self.console.print(Text(f"rbee: job {job_id}", style="dim"))

    def error(
        self, message: str, *, exit_code: int, code: str | None = None, field: str | None = None
    ) -> None:
        self._end_text()
        where = f" (field {field})" if field else ""
        self.console.print(Text(f"rbee: {message}{where}", style="bold red"))

    def output(self, value: Any) -> None:
        show_value(self.out_console, value)

    def close(self) -> None:
        self._end_text()


def infer_summary(result: Mapping[str, Any], elapsed: float) -> str:
    """``42 tokens, 31.5 tok/s, first token 120 ms, 1.33 s, finish stop`` from an infer result."""
    parts = []
    tokens = result.get("completion_tokens")
    if isinstance(tokens, int):
        parts.append(f"{tokens} tokens")
    rate = result.get("tokens_per_s")
    if isinstance(rate, (int, float)):
        parts.append(f"{rate:.1f} tok/s")
    ttft = result.get("ttft_ms")
    if isinstance(ttft, (int, float)):
        parts.append(f"first token {ttft:.0f} ms")
    parts.append(f"{elapsed:.2f} s")
    finish = result.get("finish_reason")
    if isinstance(finish, str):
        parts.append(f"finish {finish}")
    model = result.get("model")
    if isinstance(model, str):
        parts.append(f"model {model}")
    return ", ".join(parts)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_bytes(value)
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


#: columns a table starts with, in this order, whatever order a service sent the keys in;
#: the rows' other keys follow in the order they first appear
LEADING_COLUMNS = (
    "job_id",
    "operation",
    "hive_id",
    "address",
    "worker_id",
    "name",
    "model",
    "engine",
    "url",
    "pid",
    "state",
    "heartbeat",
)


def _table(title: str, rows: list[Mapping[str, Any]]) -> Table:
    seen: list[str] = []
    for row in rows:
        seen.extend(k for k in row if k not in seen)
    columns = [c for c in LEADING_COLUMNS if c in seen] + [
        c for c in seen if c not in LEADING_COLUMNS
    ]
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(c, row.get(c)) for c in columns))
    return table


def show_value(console: Console, value: Any, title: str = "") -> None:
    """A result for people: lists of objects as tables, other fields as ``key: value`` lines."""
    if value is None:
        console.print("done")
    elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
        if value:
            console.print(_table(title, value))
        else:
            console.print(f"{title}: none" if title else "none")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, list) and all(isinstance(v, Mapping) for v in item):
                show_value(console, item, str(key))
            elif isinstance(item, Mapping) and not item:
                console.print(f"{escape(str(key))}: none")
            elif isinstance(item, Mapping):
                console.print(f"{escape(str(key))}:")
                for sub, subitem in item.items():
                    console.print(f"  {escape(str(sub))}: {escape(_cell(str(sub), subitem))}")
            else:
                console.print(f"{escape(str(key))}: {escape(_cell(str(key), item))}")
    else:
        console.print(escape(_cell("", value)))


class Hinted(Renderer):
    """``renderer``, and after a failed job a line of advice when ``hint`` has one for its
    ``(code, message)`` (``rbee infer``: ``--raw`` for a model without a chat template)."""

    def __init__(self, renderer: Renderer, hint: Callable[[str, str], str | None]) -> None:
        self.renderer = renderer
        self.hint = hint

    def event(self, item: JobEvent | Gap) -> None:
        self.renderer.event(item)

    def note(self, message: str) -> None:
        self.renderer.note(message)

    def succeeded(self, operation: str, result: Any, job_id: str, elapsed: float) -> None:
        self.renderer.succeeded(operation, result, job_id, elapsed)

    def ended(self, state: JobState, job_id: str, code: str, message: str) -> None:
        self.renderer.ended(state, job_id, code, message)
        advice = self.hint(code, message) if state is JobState.FAILED else None
        if advice is not None:
            self.renderer.note(advice)

    def error(
        self, message: str, *, exit_code: int, code: str | None = None, field: str | None = None
    ) -> None:
        self.renderer.error(message, exit_code=exit_code, code=code, field=field)

    def output(self, value: Any) -> None:
        self.renderer.output(value)

    def close(self) -> None:
        self.renderer.close()


class JsonRenderer(Renderer):
    """JSON Lines on stdout; errors also go to stderr in words, for the person watching."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def _emit(self, obj: Mapping[str, Any]) -> None:
        self.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stdout.flush()

    def event(self, item: JobEvent | Gap) -> None:
        if isinstance(item, Gap):
            self._emit(
                {"type": "gap", "after": item.after, "first_available": item.first_available}
            )
        else:
            self._emit(encode_envelope(item))

    def note(self, message: str) -> None:
        self.stderr.write(f"rbee: {message}\n")
        self.stderr.flush()

    def succeeded(self, operation: str, result: Any, job_id: str, elapsed: float) -> None:
        self._emit(
            {
                "type": "result",
                "job_id": job_id,
                "operation": operation,
                "state": JobState.SUCCEEDED,
                "result": result,
                "elapsed_s": round(elapsed, 3),
            }
        )

    def ended(self, state: JobState, job_id: str, code: str, message: str) -> None:
        error = {"code": code, "message": message}
        self._emit({"type": "result", "job_id": job_id, "state": state, "error": error})

    def error(
        self, message: str, *, exit_code: int, code: str | None = None, field: str | None = None
    ) -> None:
        self._emit(
            {
                "type": "error",
                "code": code,
                "message": message,
                "field": field,
                "exit_code": exit_code,
            }
        )
        self.note(message)

    def output(self, value: Any) -> None:
        self._emit(value if isinstance(value, Mapping) else {"value": value})

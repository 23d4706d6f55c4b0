"""The results: sections of rows (a figure beside its baseline), targets, and how they are written.

``docs/benchmarks.md`` is written from the same objects as ``docs/benchmarks.json``: one table per
section (the figure, its baseline, their ratio, each as the median of repeated runs with the spread
of those runs), then the targets, each met or not with its numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs

from ._stats import Stat

__all__ = [
    "DASH",
    "MICRO",
    "TIMES",
    "Row",
    "Section",
    "Target",
    "read_json",
    "write_json",
    "write_markdown",
]

TIMES = "\u00d7"  # the multiplication sign of ratios
DASH = "\u2013"  # an en dash: ranges, missing values
MICRO = "\u00b5"  # micro, as in microseconds


@attrs.define
class Row:
    measure: str
    unit: str
    ours: Stat | None = None
    base: Stat | None = None
    ratio: Stat | None = None
    #: the name of the baseline, when it differs from the section's
    base_name: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "unit": self.unit,
            "ours": None if self.ours is None else self.ours.to_json(),
            "baseline": None if self.base is None else self.base.to_json(),
            "baseline_name": self.base_name,
            "ratio": None if self.ratio is None else self.ratio.to_json(),
            "note": self.note,
        }


@attrs.define
class Section:
    key: str
    title: str
    ours_name: str
    base_name: str
    method: str
    rows: list[Row] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    load_average: tuple[float, float, float] | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "ours_name": self.ours_name,
            "baseline_name": self.base_name,
            "method": self.method,
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
            "load_average": self.load_average,
            "extra": self.extra,
        }


@attrs.define
class Target:
    key: str
    text: str
    value: float | None
    threshold: float
    #: "ge": value must be >= threshold; "le": <=
    sense: str
    unit: str = ""
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.threshold if self.sense == "ge" else self.value <= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.text,
            "value": self.value,
            "threshold": self.threshold,
            "sense": self.sense,
            "unit": self.unit,
            "met": self.met,
            "detail": self.detail,
        }


# -- formatting ------------------------------------------------------------------------------------


def fmt(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    a = abs(x)
    if unit == TIMES:
        text = f"{x:.2f}"
    elif a >= 1000:
        text = f"{x:,.0f}"
    elif a >= 100:
        text = f"{x:.0f}"
    elif a >= 10:
        text = f"{x:.1f}"
    elif a >= 1:
        text = f"{x:.2f}"
    else:
        text = f"{x:.3f}"
    return text + (unit if unit == TIMES else "")


def fmt_stat(s: Stat | None, unit: str = "") -> str:
    if s is None:
        return DASH
    if s.n <= 1:
        return fmt(s.median, unit)
    return f"{fmt(s.median, unit)} ({fmt(s.low, unit)}{DASH}{fmt(s.high, unit)})"


def _section_md(sec: Section) -> list[str]:
    out = [f"## {sec.title}", ""]
    if sec.skipped is not None:
        out += [f"**Skipped:** {sec.skipped}", ""]
        if not sec.rows:
            return out
    out += [sec.method, ""]
    if sec.load_average is not None:
        la = ", ".join(f"{x:.2f}" for x in sec.load_average)
        out += [f"Load average when the section ended: {la}; it took {sec.seconds:.0f} s.", ""]
    if sec.rows:
        out += [
            f"| measure | unit | {sec.ours_name} | baseline | ratio |",
            "|---|---|---|---|---|",
        ]
        for r in sec.rows:
            base = fmt_stat(r.base)
            if r.base is not None and r.base_name:
                base = f"{base} *{r.base_name}*"
            elif r.base is None and r.base_name:
                base = f"*{r.base_name}*"
            measure = r.measure + (f" — {r.note}" if r.note else "")
            ratio = fmt_stat(r.ratio, TIMES)
            out.append(f"| {measure} | {r.unit} | {fmt_stat(r.ours)} | {base} | {ratio} |")
        out.append("")
        out += [
            f"Baseline: {sec.base_name}. Each cell: median of the repeated runs (min-max of the"
            " runs); ratios are taken run by run, back to back.",
            "",
        ]
    for note in sec.notes:
        out += [note, ""]
    return out


def write_markdown(
    path: Path,
    machine: dict[str, Any],
    sections: list[Section],
    targets: list[Target],
    preamble: str,
    argv: list[str],
    notes: str = "",
) -> None:
    la_start = ", ".join(f"{x:.2f}" for x in machine["load_average_start"])
    la_end = ", ".join(f"{x:.2f}" for x in machine.get("load_average_end", ()))
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        "# Benchmarks",
        "",
        preamble,
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| date | {machine['date']} |",
        f"| CPU | {machine['cpu_model']}, {machine['cores']} cores |",
        f"| RAM | {machine['ram_gib']} GiB |",
        f"| Python | {machine['python']} |",
        f"| OS | {machine['os']} |",
        f"| load average (1, 5, 15 min) | start {la_start}; end {la_end} |",
        f"| server stack | uvicorn ({machine['http_parser']}, {machine['event_loop']}) |",
        f"| versions | {versions} |",
        f"| command | `{' '.join(argv)}` (took {machine.get('seconds', 0):.0f} s) |",
        "",
        "## Targets",
        "",
        "| target | result | met |",
        "|---|---|---|",
    ]
    for t in targets:
        met = {True: "**met**", False: "**missed**", None: "not measured"}[t.met]
        value = (
            DASH
            if t.value is None
            else f"{fmt(t.value, t.unit)}{'' if t.unit == TIMES else t.unit}"
        )
        result = value + (f" ({t.detail})" if t.detail else "")
        lines.append(f"| {t.text} | {result} | {met} |")
    lines.append("")
    for sec in sections:
        lines += _section_md(sec)
    if notes:
        lines += [notes]
    path.write_text("\n".join(lines).rstrip() + "\n")


def write_json(
    path: Path,
    machine: dict[str, Any],
    sections: list[Section],
    targets: list[Target],
    argv: list[str],
) -> None:
    doc = {
        "machine": machine,
        "command": argv,
        "targets": [t.to_json() for t in targets],
        "sections": {s.key: s.to_json() for s in sections},
    }
    path.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_nan_safe) + "\n")


def _nan_safe(value: object) -> object:
    return str(value)


def _stat(raw: dict[str, Any] | None) -> Stat | None:
    if raw is None:
        return None
    return Stat(float(raw["median"]), float(raw["min"]), float(raw["max"]), int(raw["runs"]))


def read_json(path: Path) -> tuple[dict[str, Any], list[Section], list[str]]:
    """The machine, the sections and the command of a report ``write_json`` wrote: what
    ``python -m bench --render`` writes the report again from (its targets and notes as the
    code now says them, its figures as measured)."""
    doc = json.loads(path.read_text())
    sections = []
    for key, raw in doc["sections"].items():
        rows = [
            Row(
                r["measure"],
                r["unit"],
                _stat(r["ours"]),
                _stat(r["baseline"]),
                _stat(r["ratio"]),
                r["baseline_name"],
                r["note"],
            )
            for r in raw["rows"]
        ]
        load = raw["load_average"]
        sections.append(
            Section(
                key=key,
                title=raw["title"],
                ours_name=raw["ours_name"],
                base_name=raw["baseline_name"],
                method=raw["method"],
                rows=rows,
                notes=list(raw["notes"]),
                skipped=raw["skipped"],
                seconds=float(raw["seconds"]),
                load_average=None if load is None else (load[0], load[1], load[2]),
                extra=dict(raw["extra"]),
            )
        )
    return doc["machine"], sections, list(doc["command"])

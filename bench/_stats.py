"""Medians, spreads and percentiles: the only statistics the report uses."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs

__all__ = ["Stat", "percentile", "ratio_stat", "stat"]


@attrs.frozen
class Stat:
    """The median of repeated runs and their spread (min .. max)."""

    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the runs were."""
        return (self.high - self.low) / self.median if self.median else math.nan

    def to_json(self) -> dict[str, float | int]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "runs": self.n,
        }


def stat(values: Sequence[float]) -> Stat:
    if not values:
        return Stat(math.nan, math.nan, math.nan, 0)
    return Stat(statistics.median(values), min(values), max(values), len(values))


def ratio_stat(ours: Sequence[float], base: Sequence[float]) -> Stat:
    """Ratios of runs made back to back (run i of each), summarised like any other figure."""
    return stat([a / b for a, b in zip(ours, base, strict=True) if b])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)

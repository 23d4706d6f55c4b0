"""Where an inference request runs: pure choices over a snapshot of the registry.

``pick_worker`` and ``place`` do no I/O; ``rbee_queen.scheduler.Scheduler`` builds their inputs
from the registry and acts on their answers.

1. ``pick_worker``: among the workers that are ``ready``, on an ``up`` hive, not known to be
   unhealthy, and serve the model, the one with the fewest requests the queen has in flight to it
   (ties: hive id, then worker id, so the choice is reproducible). The original picked the first
   idle worker, which piles every burst onto one worker while the others idle.
2. ``place``: no such worker, so where to start one. A hive that is ``up`` and has the model, and
   whose free memory holds it (when both are known), the one with the most free memory; else an
   ``up`` hive that can download it (the model is a Hugging Face repo id ``owner/name``). Nothing
   fits: ``NoCapacity`` with a sentence that says why, for the user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs

from rbee_contracts.lifecycle import HiveState
from rbee_contracts.queen_ops import is_repo_ref

from .registry import WorkerView

__all__ = ["HiveInfo", "NoCapacity", "SpawnDecision", "pick_worker", "place"]


def pick_worker(
    workers: Iterable[WorkerView],
    model: str,
    *,
    hive: str | None = None,
    local_name: Callable[[str, str], str] = lambda _hive, model: model,
) -> WorkerView | None:
    """The routable worker serving ``model`` (on ``hive`` if named) with the fewest in flight."""
    candidates = [
        w
        for w in workers
        if w.routable
        and (hive is None or w.hive_id == hive)
        and w.record.model in (model, local_name(w.hive_id, model))
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (w.in_flight, w.hive_id, w.worker_id))


@attrs.frozen
class HiveInfo:
    """What ``place`` needs to know of one hive."""

    hive_id: str
    state: HiveState
    seconds_since_seen: float
    models: frozenset[str]
    #: the name the hive knows the requested model by
    local_name: str
    free_memory_bytes: int | None = None
    #: size of the model on this hive, when known
    model_size: int | None = None
    can_download: bool = True


@attrs.frozen
class SpawnDecision:
    """Where to start a worker for a model: the hive, the model's name there, and whether the
    hive must download it first. (The hive's own ``placement`` then picks GPUs on it.)"""

    hive_id: str
    model: str  # the name on that hive
    download: bool


@attrs.frozen
class NoCapacity:
    reason: str


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _fits(h: HiveInfo) -> bool:
    return (
        h.model_size is None or h.free_memory_bytes is None or h.free_memory_bytes >= h.model_size
    )


def _roomiest(hives: Sequence[HiveInfo]) -> HiveInfo:
    # most free memory first (unknown last), then the hive id for a reproducible choice
    return min(hives, key=lambda h: (-(h.free_memory_bytes or -1), h.hive_id))


def place(
    hives: Sequence[HiveInfo], model: str, *, hive: str | None = None
) -> SpawnDecision | NoCapacity:
    """Where to start a worker for ``model``, or why it cannot be started anywhere."""
    if not hives:
        return NoCapacity(
            f"cannot serve model {model!r}: no hive is registered with this queen"
            " (start one with `rbee hive start`)"
        )
    if hive is not None:
        named = [h for h in hives if h.hive_id == hive]
        if not named:
            known = ", ".join(h.hive_id for h in hives)
            return NoCapacity(
                f"cannot serve model {model!r}: hive {hive!r} is not registered"
                f" (registered: {known})"
            )
        hives = named
    up = [h for h in hives if h.state == HiveState.UP]
    if not up:
        silent = "; ".join(
            f"{h.hive_id}: last heard {h.seconds_since_seen:.0f} s ago" for h in hives
        )
        which = (
            f"hive {hive!r} is" if hive is not None else f"all {len(hives)} registered hives are"
        )
        return NoCapacity(f"cannot serve model {model!r}: {which} down ({silent})")
    having = [h for h in up if h.local_name in h.models]
    if having:
        fitting = [h for h in having if _fits(h)]
        if fitting:
            best = _roomiest(fitting)
            return SpawnDecision(best.hive_id, best.local_name, download=False)
        short = "; ".join(
            f"{h.hive_id} has {_gib(h.free_memory_bytes or 0)} free,"
            f" it needs {_gib(h.model_size or 0)}"
            for h in having
        )
        return NoCapacity(f"cannot start a worker for model {model!r}: not enough memory ({short})")
    downloaders = [h for h in up if h.can_download and _fits(h)]
    if is_repo_ref(model) and downloaders:
        best = _roomiest(downloaders)
        return SpawnDecision(best.hive_id, model, download=True)
    listing = "; ".join(f"{h.hive_id}: {', '.join(sorted(h.models)) or 'none'}" for h in up)
    why = (
        "and no hive can download it"
        if is_repo_ref(model)
        else "and it is no Hugging Face repo id (owner/name) to download"
    )
    return NoCapacity(
        f"cannot serve model {model!r}: no hive that is up has it ({listing}) {why};"
        " download or register it on a hive first (`rbee model download|register`)"
    )

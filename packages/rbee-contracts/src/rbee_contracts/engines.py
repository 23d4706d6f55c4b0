"""The engine names a worker can run (``--engine``; ``worker_spawn``'s ``engine``), and the engine
arguments (``--engine-arg KEY=VALUE``; ``worker_spawn``'s ``engine_args``) known without the
engine installed.

``auto`` lets the worker choose (vLLM when it is installed and a GPU is there, else
transformers); ``synthetic`` needs no model weights (tests and benchmarks).

Engine arguments, and who judges them:

* ``synthetic`` and ``transformers`` read the arguments in ``ENGINE_ARGS`` and refuse any other
  (``rbee_worker.engines.base.EngineArgs``): ``check_engine_args`` refuses what they would, so
  the queen refuses it with a 422 instead of a worker that exits at its start.
* ``vllm``'s arguments are the fields of vLLM's ``AsyncEngineArgs``, known only where vLLM is
  installed (the worker, not the queen): the worker stays their judge. ``auto`` may turn out
  to be vLLM, so its arguments are the worker's to judge too.
* Whatever the engine, the hive's placement reads ``PLACEMENT_NUMBERS`` as numbers (how many
  GPUs, how much memory): ``engine_arg_number`` is that reading, and it refuses a number that is
  not finite (``inf``, ``nan``, ``1e999``), for which no placement can be computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import attrs

from jobproto import FieldError

from .values import field_validator

__all__ = [
    "ENGINES",
    "ENGINE_ARGS",
    "PLACEMENT_NUMBERS",
    "ArgRule",
    "check_engine",
    "check_engine_args",
    "engine_arg_number",
    "engine_validator",
]

#: every value of ``engine`` a worker accepts, in the order help texts show them
ENGINES: Final[tuple[str, ...]] = ("auto", "transformers", "vllm", "synthetic")


@attrs.frozen
class ArgRule:
    """One engine argument's value: a finite number at least ``minimum`` (an integer if
    ``integer``), as ``EngineArgs.number``/``EngineArgs.integer`` read it."""

    minimum: float = 0.0
    integer: bool = False


#: the engine arguments each engine reads, where they are known without the engine installed
ENGINE_ARGS: Final[Mapping[str, Mapping[str, ArgRule]]] = {
    "synthetic": {
        "tokens_per_second": ArgRule(),
        "load_seconds": ArgRule(),
        "max_model_len": ArgRule(minimum=1, integer=True),
    },
    "transformers": {
        "max_model_len": ArgRule(integer=True),
        "threads": ArgRule(integer=True),
    },
}

#: the engine arguments the hive's placement reads as numbers (also spelled with ``-``)
PLACEMENT_NUMBERS: Final[tuple[str, ...]] = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
)


def check_engine(value: str, what: str = "engine") -> str:
    """``value`` if it names an engine, else a ``jobproto.FieldError`` naming ``what``."""
    if value not in ENGINES:
        raise FieldError(what, f"'{what}' must be one of {', '.join(ENGINES)}; got {value!r}")
    return value


engine_validator = field_validator(check_engine)


def engine_arg_number(
    engine_args: Mapping[str, str], key: str, what: str = "engine_args"
) -> float | None:
    """The number ``engine_args`` gives ``key`` (or its ``-`` spelling): None where it gives
    none, or text that is no number (the worker refuses that itself, in its engine's words);
    a ``FieldError`` for a number that is not finite."""
    raw = engine_args.get(key) or engine_args.get(key.replace("_", "-"))
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        raise FieldError(what, f"'{what}' must give {key} a finite number, got {raw!r}")
    return value


def check_engine_args(
    engine: str, engine_args: Mapping[str, str], what: str = "engine_args"
) -> Mapping[str, str]:
    """What the worker's engine and the hive's placement would refuse in ``engine_args``."""
    for key in PLACEMENT_NUMBERS:
        engine_arg_number(engine_args, key, what)
    rules = ENGINE_ARGS.get(engine)
    if rules is None:  # vllm, auto: only vLLM knows its arguments (see the module docstring)
        return engine_args
    for key, raw in engine_args.items():
        rule = rules.get(key)
        if rule is None:
            raise FieldError(
                what,
                f"'{what}' has {key!r}, which the {engine} engine does not take (it takes"
                f" {', '.join(sorted(rules))})",
            )
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= rule.minimum) or (
            rule.integer and value != int(value)
        ):
            kind = "an integer" if rule.integer else "a number"
            raise FieldError(
                what, f"'{what}' must give {key} {kind} >= {rule.minimum:g}, got {raw!r}"
            )
    return engine_args

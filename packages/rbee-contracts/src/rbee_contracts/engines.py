"""The engine names a worker can run (``--engine``; ``worker_spawn``'s ``engine``).

``auto`` lets the worker choose (vLLM when it is installed and a GPU is there, else
transformers); ``synthetic`` needs no model weights (tests and benchmarks).
"""

from __future__ import annotations

from typing import Final

from jobproto import FieldError

__all__ = ["ENGINES", "check_engine"]

#: every value of ``engine`` a worker accepts, in the order help texts show them
ENGINES: Final[tuple[str, ...]] = ("auto", "transformers", "vllm", "synthetic")


def check_engine(value: str, what: str = "engine") -> str:
    """``value`` if it names an engine, else a ``jobproto.FieldError`` naming ``what``."""
    if value not in ENGINES:
        raise FieldError(what, f"'{what}' must be one of {', '.join(ENGINES)}; got {value!r}")
    return value

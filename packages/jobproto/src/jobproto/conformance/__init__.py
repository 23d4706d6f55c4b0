"""The jobproto/1 conformance suite and the operations it needs (docs/protocol.md §9).

* ``conformance_operations()``: the test operations a service under test mounts.
* ``run_conformance(ConformanceConfig(base_url=...))``: the Hypothesis state machine that walks a
  live service over HTTP and checks the wire independently of ``jobproto.client``
  (``_machine``, with ``_probe`` for the wire, ``_model`` for what must follow, ``_strategies``).
* ``python -m jobproto.conformance.server``: the reference service, for running the suite or for
  trying a client against (``ThreadedServer`` and ``ServerProcess`` serve it from Python).
* ``python -m jobproto.conformance [--url URL]``: the black-box suite, shipped in the package
  (``jobproto.conformance.suite``), run with pytest and ``jobproto.conformance.pytest_plugin``
  (its options, the reference targets, the check that a URL mounts the conformance operations).

Only the operations are imported eagerly: a service that mounts them needs neither Hypothesis
(the ``conformance`` extra) nor uvicorn (the ``server`` extra). The rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._extras import missing_extra
from ._operations import (
    BurstParams,
    EchoParams,
    FailParams,
    WaitParams,
    conformance_operations,
)

if TYPE_CHECKING:
    from ._machine import ConformanceConfig, ConformanceMachine, run_conformance
    from ._probe import ConformanceFailure
    from ._server import ServerProcess, ThreadedServer

__all__ = [
    "BurstParams",
    "ConformanceConfig",
    "ConformanceFailure",
    "ConformanceMachine",
    "EchoParams",
    "FailParams",
    "ServerProcess",
    "ThreadedServer",
    "WaitParams",
    "conformance_operations",
    "run_conformance",
]

_LAZY = {
    "ConformanceConfig": "._machine",
    "ConformanceMachine": "._machine",
    "run_conformance": "._machine",
    "ConformanceFailure": "._probe",
    "ServerProcess": "._server",
    "ThreadedServer": "._server",
}


#: the extra that installs each optional dependency the lazy names need
_EXTRA_OF = {
    "hypothesis": "conformance",
    "hypothesis_jsonschema": "conformance",
    "jsonschema": "conformance",
    "pytest": "conformance",
    "uvicorn": "server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        loaded = importlib.import_module(module, __name__)
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").partition(".")[0])
        if extra is None:  # not an optional dependency: a real error, left as it is
            raise
        raise missing_extra(exc, extra, f"{__name__}.{name}") from exc
    return getattr(loaded, name)

"""jobproto: one job protocol (``POST /v1/jobs`` + ``GET /v1/jobs/{id}/stream`` over SSE).

``import jobproto`` gives the sans-IO core (see ``jobproto.core``). The adapters are imported
explicitly: ``jobproto.asgi`` (serve operations from a Starlette app), ``jobproto.client`` (submit,
stream with automatic resume, cancel), ``jobproto.relay`` (re-emit another service's job on the
current one) and ``jobproto.conformance`` (the Hypothesis suite for any jobproto server).
The protocol itself is specified in ``docs/protocol.md`` ("jobproto/1").
"""

from __future__ import annotations

from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
PROTOCOL = "jobproto/1"

__all__ = [*_core_all, "PROTOCOL", "__version__"]

"""The jobproto/1 conformance suite and the operations it needs."""

from __future__ import annotations

from ._operations import (
    BurstParams,
    EchoParams,
    FailParams,
    WaitParams,
    conformance_operations,
)

__all__ = ["BurstParams", "EchoParams", "FailParams", "WaitParams", "conformance_operations"]

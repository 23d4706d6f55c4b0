"""Engines: what actually generates tokens. One small interface, several implementations.

- ``base``: the interface (``Engine``), the values crossing it (``GenerationRequest``,
  ``ChatTurn``, ``Delta``) and the engine errors;
- ``loader``: choosing (``auto``) and building an engine by name, importing its module only then;
- ``transformers``, ``vllm``, ``synthetic``: the implementations, each importing ``base`` and
  private helpers (``_text``, ``_prompt``, ``_channel``, ``_vllm_config``), never this package.

This module only re-exports: importing it imports neither torch nor vLLM.
"""

from __future__ import annotations

from .base import (
    ChatTurn,
    Delta,
    Engine,
    EngineArgs,
    EngineDead,
    EngineError,
    EngineNotAvailable,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    merge_deltas,
)
from .loader import choose_engine, create_engine, resolve_engine_name

__all__ = [
    "ChatTurn",
    "Delta",
    "Engine",
    "EngineArgs",
    "EngineDead",
    "EngineError",
    "EngineNotAvailable",
    "FinishReason",
    "GenerationRequest",
    "InvalidRequest",
    "choose_engine",
    "create_engine",
    "merge_deltas",
    "resolve_engine_name",
]

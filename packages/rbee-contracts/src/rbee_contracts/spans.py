"""The attributes an inference puts on its job spans, the same on the queen's and the worker's.

Names and values follow OpenTelemetry's semantic conventions for generative AI (``gen_ai.*``),
so a tracing backend that knows them shows model and token counts without configuration. They
are set through ``jobproto.telemetry.set_span_attributes``, which costs next to nothing when
tracing is off (docs/tracing.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .infer import InferParams

__all__ = [
    "FINISH_REASONS",
    "INPUT_TOKENS",
    "OPERATION",
    "OUTPUT_TOKENS",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "infer_request",
    "infer_result",
]

OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"


def infer_request(params: InferParams, model: str) -> dict[str, Any]:
    """What is known of an inference before it runs: its kind, ``model`` and bounds."""
    return {
        OPERATION: "chat" if params.messages is not None else "text_completion",
        REQUEST_MODEL: model,
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": params.temperature,
    }


def infer_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """Token counts and finish reason of an ``InferResult`` (its fields as a mapping: the
    worker's result as the queen relays it); what is missing or mistyped is left out."""
    out: dict[str, Any] = {}
    for name, key, kind in (
        (INPUT_TOKENS, "prompt_tokens", int),
        (OUTPUT_TOKENS, "completion_tokens", int),
        (RESPONSE_MODEL, "model", str),
    ):
        value = result.get(key)
        if isinstance(value, kind) and not isinstance(value, bool):
            out[name] = value
    reason = result.get("finish_reason")
    if isinstance(reason, str):
        out[FINISH_REASONS] = [reason]
    return out

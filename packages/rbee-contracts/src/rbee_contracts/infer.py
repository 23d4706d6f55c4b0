"""``infer``: its parameters, its data events and its result (queen → worker).

``InferParams`` is the one infer parameter type: the worker structures it from the request, and
the queen's own type (``queen_ops.QueenInferParams``) extends it with the queen's routing
fields, so the queen refuses with a 422, before routing anything, every value a worker would
refuse. Limits a model sets (``max_tokens`` over its ``max_model_len``) are known only to the
loaded engine and remain the worker's to check.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final

import attrs

from jobproto import FieldError

__all__ = [
    "MAX_MESSAGES",
    "MAX_STOPS",
    "MAX_TOKENS_CAP",
    "PENALTY_LIMIT",
    "SEED_LIMIT",
    "ChatMessage",
    "InferDelta",
    "InferParams",
    "InferResult",
]

# Upper bounds that keep one request from asking for absurd work; the real bound of max_tokens
# is the model's max_model_len, which only the loaded engine knows (checked by the worker).
MAX_TOKENS_CAP: Final = 1 << 20
MAX_STOPS: Final = 16
MAX_MESSAGES: Final = 1024
#: seeds are below 2**63: torch generators take seeds below 2**64; every engine can take these
SEED_LIMIT: Final = 1 << 63
#: presence and frequency penalties lie in [-PENALTY_LIMIT, PENALTY_LIMIT] (OpenAI's range)
PENALTY_LIMIT: Final = 2.0


def _finite(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise FieldError(attribute.name, f"'{attribute.name}' must be a finite number")


def _top_p(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise FieldError(attribute.name, f"'{attribute.name}' must be in (0, 1], got {value}")


def _penalty(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and -PENALTY_LIMIT <= value <= PENALTY_LIMIT):
        raise FieldError(
            attribute.name,
            f"'{attribute.name}' must be a number in [-{PENALTY_LIMIT:g}, {PENALTY_LIMIT:g}],"
            f" got {value}",
        )


def _stops(_: object, attribute: attrs.Attribute[Any], value: list[str]) -> None:
    if len(value) > MAX_STOPS:
        raise FieldError(
            attribute.name, f"'{attribute.name}' must have at most {MAX_STOPS} strings"
        )
    if any(not s for s in value):
        raise FieldError(attribute.name, f"'{attribute.name}' must not contain empty strings")


@attrs.frozen
class ChatMessage:
    """One turn of a chat: ``{"role": "user", "content": "..."}``."""

    role: str = attrs.field(validator=attrs.validators.min_len(1))
    content: str


@attrs.frozen
class InferParams:
    """Generate from a ``prompt`` or chat ``messages`` (exactly one)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            [attrs.validators.min_len(1), attrs.validators.max_len(MAX_MESSAGES)]
        ),
        metadata={"schema": {"minItems": 1, "maxItems": MAX_MESSAGES}},
    )
    max_tokens: int = attrs.field(
        default=128,
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_TOKENS_CAP)],
        metadata={"schema": {"minimum": 1, "maximum": MAX_TOKENS_CAP}},
    )
    temperature: float = attrs.field(
        default=1.0,
        validator=[_finite, attrs.validators.ge(0.0)],
        metadata={"schema": {"minimum": 0}},
    )
    top_p: float = attrs.field(
        default=1.0, validator=_top_p, metadata={"schema": {"exclusiveMinimum": 0, "maximum": 1}}
    )
    top_k: int = attrs.field(
        default=0, validator=attrs.validators.ge(0), metadata={"schema": {"minimum": 0}}
    )
    seed: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            [attrs.validators.ge(0), attrs.validators.lt(SEED_LIMIT)]
        ),
        metadata={"schema": {"minimum": 0, "exclusiveMaximum": SEED_LIMIT}},
    )
    stop: list[str] = attrs.field(
        factory=list,
        validator=_stops,
        metadata={"schema": {"maxItems": MAX_STOPS, "items": {"minLength": 1}}},
    )
    #: OpenAI's penalties, over the tokens generated so far in this completion: each token's
    #: logit is lowered by ``frequency_penalty`` times its count plus ``presence_penalty`` if it
    #: occurred at all (negative values encourage repetition). An engine that cannot apply a
    #: non-zero one refuses the request (``invalid_request``).
    presence_penalty: float = attrs.field(
        default=0.0,
        validator=_penalty,
        metadata={"schema": {"minimum": -PENALTY_LIMIT, "maximum": PENALTY_LIMIT}},
    )
    frequency_penalty: float = attrs.field(
        default=0.0,
        validator=_penalty,
        metadata={"schema": {"minimum": -PENALTY_LIMIT, "maximum": PENALTY_LIMIT}},
    )

    #: the rule across fields, published and enforced with the fields' own: exactly one of
    #: ``prompt`` and ``messages`` (``None`` is the same as leaving it out)
    __json_schema__: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
            {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
        ]
    }

    def __attrs_post_init__(self) -> None:
        # A check across fields: FieldError names the field the 422 error points at.
        if self.prompt is not None and self.messages is not None:
            raise FieldError(
                "messages", "'messages' must not be given together with 'prompt': send one of them"
            )
        if self.prompt is None and self.messages is None:
            raise FieldError(
                "prompt", "'prompt' must be given, or 'messages' (exactly one of them)"
            )


@attrs.frozen
class InferDelta:
    """One ``data`` event of an infer job: text and the token ids it came from. Deltas nobody
    has read yet may be merged (``jobproto.concat_data``): a reader concatenates them.

    The worker builds it as a plain dict on the hot path (one per token), not as this class;
    ``rbee-worker/tests/test_infer_contract.py`` structures its payloads as this type."""

    text: str
    token_ids: list[int] = attrs.field(factory=list)


@attrs.frozen
class InferResult:
    """The result of an infer job (the worker's, relayed as is by the queen)."""

    text: str
    #: "stop", "length" (max_tokens reached) or the engine's own reason
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    #: from the job's start (queueing included) to the first token, in milliseconds
    ttft_ms: float
    #: over the generation itself, queueing not included: prefill included where the request
    #: waited in the worker's queue or not at all; from the first token on where it waited in
    #: an engine that queues requests itself (vLLM), which cannot tell its wait from prefill
    tokens_per_s: float
    model: str
    engine: str

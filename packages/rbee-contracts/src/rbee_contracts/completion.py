"""``completion``: the queen's operation behind its OpenAI-compatible API (keeper or any client →
queen).

One request of ``POST /v1/completions`` or ``POST /v1/chat/completions`` is one ``completion``
job: ``infer``'s parameters (``QueenInferParams``: a ``prompt`` or chat ``messages``, the model,
sampling) plus ``n``, the number of choices. Each choice is one ``infer`` job on a worker; choice
``i`` samples with ``seed + i`` when a seed is given, so the choices differ and each can be
reproduced. Its data events are ``CompletionDelta``s, ``{"index", "text", "token_ids"}``: deltas of
the same choice nobody has read yet may merge (``merge_choice_deltas``), never two choices'.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from jobproto import concat_data, converter

from .infer import SEED_LIMIT, InferParams
from .queen_ops import QueenInferParams

__all__ = [
    "MAX_CHOICES",
    "CompletionChoice",
    "CompletionDelta",
    "CompletionParams",
    "CompletionResult",
    "choice_fields",
    "merge_choice_deltas",
]

#: the most choices one request may ask for (each is a generation of its own)
MAX_CHOICES: Final = 8

_INFER_FIELDS: Final = frozenset(a.name for a in attrs.fields(InferParams))


@attrs.frozen
class CompletionParams(QueenInferParams):
    """``completion``: ``infer``'s parameters, and how many choices to generate."""

    n: int = attrs.field(
        default=1,
        kw_only=True,
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_CHOICES)],
        metadata={"schema": {"minimum": 1, "maximum": MAX_CHOICES}},
    )


def choice_fields(params: CompletionParams, index: int) -> dict[str, Any]:
    """The worker's ``infer`` fields of choice ``index``: ``InferParams``'s own fields (no
    ``None``s, as ``forward_fields`` sends them), the seed moved by ``index`` when one is given
    (wrapping below ``SEED_LIMIT``)."""
    raw: dict[str, Any] = converter.unstructure(params)
    fields = {k: v for k, v in raw.items() if k in _INFER_FIELDS and v is not None}
    if params.seed is not None:
        fields["seed"] = (params.seed + index) % SEED_LIMIT
    return fields


@attrs.frozen
class CompletionDelta:
    """One ``data`` event of a completion job: text of choice ``index`` and its token ids."""

    index: int
    text: str
    token_ids: list[int] = attrs.field(factory=list)


def merge_choice_deltas(earlier: Any, later: Any) -> Any:
    """``jobproto.concat_data`` for deltas of one choice: two deltas of the same ``index`` join;
    deltas of two choices (or anything else) stay two events."""
    if not (isinstance(earlier, dict) and isinstance(later, dict)):
        return None
    index = earlier.get("index")
    if type(index) is not int or later.get("index") != index:
        return None
    rest = concat_data(
        {k: v for k, v in earlier.items() if k != "index"},
        {k: v for k, v in later.items() if k != "index"},
    )
    return None if rest is None else {"index": index, **rest}


@attrs.frozen
class CompletionChoice:
    index: int
    text: str
    #: the worker's: "stop", "length", or the engine's own reason
    finish_reason: str
    completion_tokens: int


@attrs.frozen
class CompletionResult:
    """The result of a completion job: its choices by index, and the totals."""

    choices: list[CompletionChoice]
    #: the prompt's tokens (counted once, however many choices)
    prompt_tokens: int
    #: the tokens of every choice together
    completion_tokens: int
    #: from the job's start (routing and any worker start included) to its first token, in ms
    ttft_ms: float
    model: str

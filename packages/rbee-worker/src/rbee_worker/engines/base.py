"""The engine interface: what the worker needs of an engine, and the values that cross it.

Engine modules (``transformers``, ``vllm``, ``synthetic``) import from here and from their
private helpers only, never from the package: ``rbee_worker.engines`` re-exports these names and
the loader (``loader.py``), which imports an engine module only once it is chosen.

``stream()`` is an async context manager around the iterator, not a bare async generator: an
engine that generates in a thread (transformers) or a background task must stop that work and
wait for it when the consumer leaves, and a ``yield`` inside a task group of an async generator
breaks structured concurrency (the generator can be closed from another task, and the group's
cancellation would land in the consumer's code). Leaving the block, by any exit, aborts the
generation between two tokens and returns only when the engine has stopped working on it.

Errors::

    EngineError
     ├── EngineDead (RuntimeError)        the engine cannot serve any more (cause in the message)
     ├── EngineNotAvailable (RuntimeError) the engine cannot run in this build or on this machine
     └── InvalidRequest (ValueError)      this one request cannot be served (prompt too long, ...)
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol, runtime_checkable

import attrs

from rbee_contracts.engines import ENGINE_ARGS, ArgRule

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
    "merge_deltas",
]

#: "stop": end-of-sequence token or a stop string; "length": max_tokens (or the model's context)
#: reached; "abort": ``Engine.abort(request_id)`` ended it.
FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """Base of the errors engines raise."""


class EngineDead(EngineError, RuntimeError):
    """The engine can no longer generate; every request on it fails until the worker restarts."""


class EngineNotAvailable(EngineError, RuntimeError):
    """The engine asked for cannot run here (not installed, not in this build)."""


class InvalidRequest(EngineError, ValueError):
    """The request cannot be served by this engine and model (the engine itself is fine)."""


@attrs.frozen
class ChatTurn:
    """One turn of a chat, as the tokenizer's chat template takes it. (The wire type of a chat
    message, with its limits, is the operation's parameter type; the worker converts it.)"""

    role: str
    content: str


@attrs.frozen
class GenerationRequest:
    """One generation. Exactly one of ``prompt`` and ``messages`` (messages go through the
    tokenizer's chat template). ``temperature`` 0 means greedy; ``top_k`` 0 means no top-k.
    ``presence_penalty`` and ``frequency_penalty`` are OpenAI's (and vLLM's): over the tokens
    generated so far, a token's logit is lowered by ``frequency_penalty`` times its count plus
    ``presence_penalty`` if it occurred; 0 (the default) is off."""

    prompt: str | None = None
    messages: Sequence[ChatTurn] | None = None
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    request_id: str = ""

    def __attrs_post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")

    @property
    def penalized(self) -> bool:
        """Whether a presence or frequency penalty applies (either is non-zero)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0


@attrs.frozen
class Delta:
    """New output of one generation: text released since the last delta, the token ids generated
    since then (text may lag token ids by a few tokens: a character split over two tokens, or text
    held back because it might start a stop string), and on the last delta the finish reason.
    ``prompt_tokens`` is the length of the tokenized prompt (the same on every delta)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0


def merge_deltas(deltas: Sequence[Delta]) -> Delta:
    """Several deltas as one (what a consumer that fell behind receives)."""
    if len(deltas) == 1:
        return deltas[0]
    return Delta(
        text="".join(d.text for d in deltas),
        token_ids=tuple(t for d in deltas for t in d.token_ids),
        finish_reason=deltas[-1].finish_reason,
        prompt_tokens=deltas[-1].prompt_tokens,
    )


@runtime_checkable
class Engine(Protocol):
    """What the worker needs of an engine. One engine serves one model.

    Optional: ``queues_requests = True`` on an engine that queues the generations over
    ``max_concurrency`` itself, in arrival order (vLLM): the worker then hands it the requests it
    would otherwise hold in its own queue (``rbee_worker.worker.Admission``)."""

    #: the engine's name as reported to clients ("transformers", "synthetic", ...)
    name: str
    #: the model's name as reported to clients
    model_name: str
    #: how many generations may run at once; the worker queues the rest
    max_concurrency: int
    #: longest prompt + completion, in tokens
    max_model_len: int

    async def load(self) -> None:
        """Load the model; must not block the event loop (load in a thread)."""

    def stream(
        self, request: GenerationRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        """Start a generation; the iterator yields deltas until the one with a finish reason.

        Raises ``InvalidRequest`` for a request this model cannot serve and ``EngineDead`` when
        the engine has died (before or during the generation)."""

    async def abort(self, request_id: str) -> None:
        """End the generation with this ``request_id`` (finish reason "abort"); no-op if none."""

    async def health(self) -> None:
        """Raise ``EngineDead`` when the engine can no longer serve."""

    async def close(self) -> None:
        """Release the model (idempotent)."""


class EngineArgs:
    """``--engine-arg KEY=VALUE`` pairs, taken one by one; leftovers are an error (a typo in a
    benchmark knob must not silently run the default).

    The bounds of each value (its minimum, whether it is an integer) are the contract's
    ``rbee_contracts.engines.ENGINE_ARGS[engine][key]``, the one table the hive checks a
    ``worker_spawn`` against too: an engine reads only the keys that table lists."""

    def __init__(self, engine: str, args: Mapping[str, str]) -> None:
        self._engine = engine
        self._rules = ENGINE_ARGS.get(engine, {})
        self._args = dict(args)

    def _rule(self, key: str) -> ArgRule:
        rule = self._rules.get(key)
        if rule is None:
            raise LookupError(f"{self._engine} engine arg {key} is not in ENGINE_ARGS")
        return rule

    def number(self, key: str, default: float) -> float:
        rule = self._rule(key)
        raw = self._args.pop(key, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"engine arg {key}={raw!r} is not a number") from None
        if not (math.isfinite(value) and value >= rule.minimum):
            raise ValueError(f"engine arg {key} must be >= {rule.minimum:g}, got {raw}")
        if rule.integer and value != int(value):
            raise ValueError(f"engine arg {key} must be an integer, got {raw}")
        return value

    def integer(self, key: str, default: int) -> int:
        if not self._rule(key).integer:
            raise LookupError(f"{self._engine} engine arg {key} is not an integer")
        return int(self.number(key, default))

    def text(self, key: str, default: str) -> str:
        return self._args.pop(key, default)

    def done(self) -> None:
        if self._args:
            unknown = ", ".join(sorted(self._args))
            raise ValueError(f"unknown engine arg(s) for the {self._engine} engine: {unknown}")

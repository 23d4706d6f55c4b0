"""The synthetic engine: a named benchmark engine that emits fixed text at a set rate.

It measures everything around a model (admission, jobproto, relays, clients) without a model's
cost or noise. It is never chosen by ``auto`` and always reports itself as ``synthetic``, so no
result made with it can pass for a real model's. Engine args::

    tokens_per_second=R   token rate of one stream; 0 (default) = as fast as the loop allows
    load_seconds=S        how long load() takes (to exercise "loading" states), default 0
    max_model_len=N       context length it claims, default 4096

It emits exactly ``max_tokens`` tokens (finish reason "length") unless a stop string cuts the
text first. Sampling parameters are accepted and ignored, except the presence and frequency
penalties: its fixed text repeats itself, so a non-zero penalty is refused (``InvalidRequest``)
rather than silently not applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from ._text import StopStrings
from .base import Delta, EngineArgs, GenerationRequest, InvalidRequest

__all__ = ["SYNTHETIC_TOKENS", "SyntheticEngine"]

#: The fixed text, one word per token, cycled; token i has id i % len(SYNTHETIC_TOKENS) + 4.
SYNTHETIC_TOKENS = (
    "The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
    "\n",
)

# Flat out, hand the event loop back every so many tokens: subscribers get written to and a
# cancelled job notices, without a checkpoint per token.
_CHECKPOINT_EVERY = 32


class SyntheticEngine:
    name = "synthetic"

    def __init__(
        self,
        *,
        model_name: str = "synthetic",
        max_concurrency: int = 64,
        tokens_per_second: float = 0.0,
        load_seconds: float = 0.0,
        max_model_len: int = 4096,
    ) -> None:
        self.model_name = model_name
        self.max_concurrency = max_concurrency
        self.max_model_len = max_model_len
        self.tokens_per_second = tokens_per_second
        self.load_seconds = load_seconds
        self._aborts: dict[str, anyio.Event] = {}

    @classmethod
    def from_args(
        cls,
        *,
        model_name: str | None,
        max_concurrency: int | None,
        engine_args: Mapping[str, str],
    ) -> SyntheticEngine:
        args = EngineArgs(cls.name, engine_args)
        engine = cls(
            model_name=model_name or "synthetic",
            max_concurrency=max_concurrency or 64,
            tokens_per_second=args.number("tokens_per_second", 0.0),
            load_seconds=args.number("load_seconds", 0.0),
            max_model_len=args.integer("max_model_len", 4096),
        )
        args.done()
        return engine

    async def load(self) -> None:
        await anyio.sleep(self.load_seconds)

    @asynccontextmanager
    async def stream(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        if request.penalized:
            raise InvalidRequest("the synthetic engine does not apply penalties")
        prompt_tokens = _rough_token_count(request)
        if prompt_tokens + 1 > self.max_model_len:
            raise InvalidRequest(
                f"the prompt ({prompt_tokens} tokens) leaves no room in max_model_len"
                f" {self.max_model_len}"
            )
        aborted = anyio.Event()
        if request.request_id:
            self._aborts[request.request_id] = aborted
        try:
            yield self._generate(request, prompt_tokens, aborted)
        finally:
            if request.request_id:
                self._aborts.pop(request.request_id, None)

    async def _generate(
        self, request: GenerationRequest, prompt_tokens: int, aborted: anyio.Event
    ) -> AsyncIterator[Delta]:
        count = min(request.max_tokens, self.max_model_len - prompt_tokens)
        stops = StopStrings(request.stop)
        rate = self.tokens_per_second
        started = anyio.current_time()
        sent = 0
        while sent < count:
            if aborted.is_set():
                yield Delta("", (), "abort", prompt_tokens)
                return
            if rate > 0:
                # Emit every token due by now in one delta, then sleep until the next is due:
                # the rate holds even when a sleep overshoots.
                # One reading of the clock: a second one could be past the due time already, and
                # anyio refuses a negative sleep.
                elapsed = anyio.current_time() - started
                due = min(count, int(elapsed * rate) + 1)
                if due <= sent:
                    await anyio.sleep(max(0.0, sent / rate - elapsed))
                    continue
                ids = range(sent, due)
            else:
                ids = range(sent, sent + 1)
                if sent % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
                    await anyio.lowlevel.checkpoint()
            sent = ids.stop
            text = stops.feed("".join(_word(i) for i in ids))
            token_ids = tuple(i % len(SYNTHETIC_TOKENS) + 4 for i in ids)
            if stops.stopped:
                yield Delta(text, token_ids, "stop", prompt_tokens)
                return
            if sent == count:
                yield Delta(text + stops.flush(), token_ids, "length", prompt_tokens)
                return
            yield Delta(text, token_ids, None, prompt_tokens)

    async def abort(self, request_id: str) -> None:
        event = self._aborts.get(request_id)
        if event is not None:
            event.set()

    async def health(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _word(i: int) -> str:
    return SYNTHETIC_TOKENS[i % len(SYNTHETIC_TOKENS)]


def _rough_token_count(request: GenerationRequest) -> int:
    """Without a tokenizer: one token per whitespace-separated word, at least one."""
    if request.prompt is not None:
        return max(1, len(request.prompt.split()))
    return max(1, sum(len(m.content.split()) + 2 for m in request.messages or ()))

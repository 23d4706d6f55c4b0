"""The transformers engine: Hugging Face transformers on torch, one token at a time.

Theory of operation
-------------------
``load()`` reads the model and tokenizer from a local directory (``local_files_only``: nothing is
ever downloaded by a worker) in a worker thread, so the event loop keeps answering ``/health``.

Each generation runs its decode loop in its own worker thread (``anyio.to_thread``), under
``torch.inference_mode``: a prefill forward pass over the prompt, then one forward pass per token
with the KV cache (``past_key_values``) from the previous step. We write the loop ourselves
rather than call ``model.generate`` because a server needs three things generate does not give
cleanly: text released as it is made (without splitting a multi-byte character), stop strings
that never leak into the output, and an abort between any two tokens. Greedy decoding gives the
same token ids as ``generate(do_sample=False)``; the tests hold us to that. Each step follows
vLLM's sampler in its order: the presence and frequency penalties on the raw logits (counted over
this completion's tokens so far; skipped when both are 0), then greedy at temperature 0, else
temperature, top-k and top-p.

Deltas go to the consumer through a ``DeltaChannel`` (the thread never waits for the loop). When
the consumer leaves the ``stream()`` block, for whatever reason, the channel's cancel flag is
set; the thread checks it before every forward pass, so at most one more step runs, and the
block only exits once the thread has returned.

Engine args: ``max_model_len=N`` (default: the config's ``max_position_embeddings``) and
``threads=N`` (torch intra-op threads; default: torch's choice, one per core).

One generation at a time by default: a model object on one device is not something to run
several ``generate`` calls on concurrently, and on a CPU they would only share the same cores.
An exception inside the decode loop (a device error, out of memory) leaves the model in an
unknown state, so it marks the engine dead: every later request fails ``EngineDead`` and
``health()`` says why, until the worker is restarted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._channel import DeltaChannel
from ._prompt import prompt_ids as prompt_ids_of
from ._text import IncrementalDetokenizer, StopStrings
from .base import Delta, EngineArgs, EngineDead, FinishReason, GenerationRequest, InvalidRequest

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersEngine", "penalize", "sample_token"]

logger = logging.getLogger("rbee_worker.engines.transformers")

_DTYPES = ("auto", "float32", "bfloat16", "float16")


class TransformersEngine:
    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        max_concurrency: int = 1,
        max_model_len: int | None = None,
        threads: int | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.model_path = model_path
        self.model_name = model_name or model_path.rstrip("/").rsplit("/", 1)[-1]
        self.device = device
        self.dtype = dtype
        self.max_concurrency = max_concurrency
        self.max_model_len = max_model_len or 0  # known once loaded, unless set
        self.threads = threads
        #: decode steps (forward passes) run so far, over all generations
        self.steps = 0
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: frozenset[int] = frozenset()
        self._dead: str | None = None
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._running: dict[str, DeltaChannel] = {}

    @classmethod
    def from_args(
        cls,
        model: str,
        *,
        model_name: str | None,
        device: str | None,
        dtype: str,
        max_concurrency: int | None,
        engine_args: Mapping[str, str],
    ) -> TransformersEngine:
        args = EngineArgs(cls.name, engine_args)
        max_model_len = args.integer("max_model_len", 0)
        threads = args.integer("threads", 0)
        args.done()
        return cls(
            model,
            model_name=model_name,
            device=device,
            dtype=dtype,
            max_concurrency=max_concurrency or 1,
            max_model_len=max_model_len or None,
            threads=threads or None,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def load(self) -> None:
        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            # Process-wide, which is right here: a worker process runs exactly one engine. On a
            # small or shared CPU, fewer intra-op threads than cores avoids OpenMP threads
            # spinning at barriers while the other cores are taken.
            torch.set_num_threads(self.threads)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype: Any = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_path, local_files_only=True, dtype=dtype
        )
        model.to(device)
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if not self.max_model_len:
            if not limit:
                raise ValueError(
                    "the model config has no max_position_embeddings: set max_model_len"
                )
            self.max_model_len = limit
        self.device = device
        self._eos = frozenset(eos_ids)
        self._tokenizer = tokenizer
        self._model = model
        logger.info("loaded %s on %s (%s)", self.model_path, device, model.dtype)

    async def close(self) -> None:
        self._model = None
        self._tokenizer = None

    async def health(self) -> None:
        if self._dead is not None:
            raise EngineDead(self._dead)

    async def abort(self, request_id: str) -> None:
        channel = self._running.get(request_id)
        if channel is not None:
            channel.cancel()

    # -- generation --------------------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        await self.health()
        if self._model is None:
            raise InvalidRequest("the model is not loaded")
        async with self._limiter:
            await self.health()  # it may have died while this request waited
            channel = DeltaChannel()
            if request.request_id:
                self._running[request.request_id] = channel
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._run, request, channel)
                    try:
                        yield channel
                    finally:
                        channel.cancel()
            except BaseExceptionGroup as group:
                # The thread's task never raises (its errors travel through the channel), so the
                # group holds exactly the consumer's own exception: hand it back unwrapped.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            finally:
                self._running.pop(request.request_id, None)

    async def _run(self, request: GenerationRequest, channel: DeltaChannel) -> None:
        # Not abandoned on cancel: the block must not exit while the thread still uses the model;
        # the cancel flag makes the wait at most one forward pass.
        await anyio.to_thread.run_sync(self._generate, request, channel)

    def _generate(self, request: GenerationRequest, channel: DeltaChannel) -> None:
        """The decode loop (runs in a worker thread). Never raises: errors go to the channel."""
        try:
            prompt_ids = prompt_ids_of(self._tokenizer, request, self.max_model_len)
        except Exception as exc:  # this request's problem (InvalidRequest) or a bug: not fatal
            channel.close(exc)
            return
        try:
            self._decode(request, prompt_ids, channel)
        except Exception as exc:
            logger.exception("the decode loop failed; the engine is dead")
            self._dead = f"the transformers engine died: {type(exc).__name__}: {exc}"
            channel.close(EngineDead(self._dead))
        else:
            channel.close()

    def _decode(
        self, request: GenerationRequest, prompt_ids: list[int], channel: DeltaChannel
    ) -> None:
        import torch

        model = self._model
        device = torch.device(self.device or "cpu")
        n_prompt = len(prompt_ids)
        budget = min(request.max_tokens, self.max_model_len - n_prompt)
        detok = IncrementalDetokenizer(self._decode_ids, prompt_ids)
        stops = StopStrings(request.stop)
        generator = torch.Generator(device=device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.seed)
        inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        cache = None
        # with a penalty: how often each token of the vocabulary occurred in this completion
        counts: torch.Tensor | None = None
        with torch.inference_mode():
            for produced in range(1, budget + 1):
                if channel.cancelled.is_set():
                    channel.put(Delta(stops.flush(), (), "abort", n_prompt))
                    return
                # logits_to_keep=1: only the last position's logits are needed (and it is what
                # generate() asks for, so greedy results match it bit for bit).
                out = model(
                    input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                self.steps += 1
                cache = out.past_key_values
                logits = out.logits[0, -1]
                if request.penalized and counts is None:
                    counts = torch.zeros(logits.shape[-1], dtype=torch.float32, device=device)
                token = sample_token(logits, request, generator, counts)
                if counts is not None:
                    counts[token] += 1
                ended: FinishReason | None = None
                if token in self._eos:
                    piece, ended = detok.flush(), "stop"
                else:
                    piece = detok.add(token)
                    if produced == budget:
                        piece, ended = piece + detok.flush(), "length"
                text = stops.feed(piece)
                if stops.stopped:
                    ended = "stop"
                elif ended is not None:
                    text += stops.flush()
                if ended is not None:
                    channel.put(Delta(text, (token,), ended, n_prompt))
                    return
                channel.put(Delta(text, (token,), None, n_prompt))
                inputs = torch.tensor([[token]], dtype=torch.long, device=device)

    def _decode_ids(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def sample_token(
    logits: torch.Tensor,
    request: GenerationRequest,
    generator: torch.Generator,
    counts: torch.Tensor | None = None,
) -> int:
    """Pick the next token from one position's logits: the penalties first (given ``counts``, how
    often each token occurred in this completion so far), then greedy at temperature 0, else
    temperature, then top-k, then top-p (nucleus), then a draw from ``generator``."""
    import torch

    if counts is not None:
        logits = penalize(logits, counts, request)
    if request.temperature == 0:
        return int(torch.argmax(logits).item())
    scores = logits.float() / request.temperature
    if 0 < request.top_k < scores.shape[-1]:
        kth = torch.topk(scores, request.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if request.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = (cumulative - torch.softmax(ordered, dim=-1)) >= request.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def penalize(
    logits: torch.Tensor, counts: torch.Tensor, request: GenerationRequest
) -> torch.Tensor:
    """OpenAI's presence and frequency penalties, as vLLM applies them (on the raw logits, in
    float32, before temperature; greedy decoding sees them too): each token's logit less
    ``frequency_penalty`` times its count and ``presence_penalty`` if it occurred at all."""
    penalized = logits.float() - request.frequency_penalty * counts
    return penalized - request.presence_penalty * (counts > 0).float()

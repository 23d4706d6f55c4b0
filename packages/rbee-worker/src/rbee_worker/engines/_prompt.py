"""A request's prompt as token ids: the one code path every tokenizer-based engine uses.

Plain prompts are tokenized with the tokenizer's own special tokens (Llama's ``<s>``); chat
messages go through the tokenizer's chat template, which writes the special tokens it wants
itself. Both engines tokenize here and hand vLLM token ids rather than text, so the same request
gives the same prompt ids whatever engine runs it (and greedy outputs can be compared).
"""

from __future__ import annotations

from typing import Any

from .base import GenerationRequest, InvalidRequest

__all__ = ["prompt_ids"]


def prompt_ids(tokenizer: Any, request: GenerationRequest, max_model_len: int) -> list[int]:
    """Token ids of ``request``'s prompt; ``InvalidRequest`` when they leave no room to generate.

    ``tokenizer`` is a Hugging Face tokenizer (or anything with its ``__call__`` and
    ``apply_chat_template``: vLLM's tokenizer wrappers are subclasses of it).
    """
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest("this model's tokenizer has no chat template: send a prompt")
        conversation = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja2 errors: a template may refuse a conversation
            raise InvalidRequest(f"the chat template refused these messages: {exc}") from None
        ids = tokenizer(text, add_special_tokens=False).input_ids
    else:
        ids = tokenizer(request.prompt).input_ids
    if not ids:
        raise InvalidRequest("the prompt is empty after tokenization")
    if len(ids) >= max_model_len:
        raise InvalidRequest(
            f"the prompt is {len(ids)} tokens; this model's max_model_len is"
            f" {max_model_len}, leaving no room for a completion"
        )
    return [int(i) for i in ids]

"""The gen_ai attributes of an inference's spans (rbee_contracts.spans)."""

from __future__ import annotations

from rbee_contracts import spans
from rbee_contracts.infer import ChatMessage, InferParams


def test_a_request_says_chat_or_completion_model_and_bounds() -> None:
    chat = InferParams(messages=[ChatMessage("user", "hi")], max_tokens=5, temperature=0.0)
    assert spans.infer_request(chat, "tiny") == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "tiny",
        "gen_ai.request.max_tokens": 5,
        "gen_ai.request.temperature": 0.0,
    }
    plain = spans.infer_request(InferParams(prompt="hi"), "org/repo")
    assert plain["gen_ai.operation.name"] == "text_completion"
    assert plain["gen_ai.request.model"] == "org/repo"


def test_a_result_gives_token_counts_and_leaves_out_what_is_missing_or_mistyped() -> None:
    result = {
        "text": "x",
        "finish_reason": "length",
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "model": "tiny",
    }
    assert spans.infer_result(result) == {
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 4,
        "gen_ai.response.model": "tiny",
        "gen_ai.response.finish_reasons": ["length"],
    }
    odd = {"prompt_tokens": "12", "completion_tokens": True, "model": None, "finish_reason": 3}
    assert spans.infer_result(odd) == {}

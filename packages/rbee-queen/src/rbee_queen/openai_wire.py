"""The OpenAI wire format of the queen's OpenAI-compatible API, with no I/O: a request body read
into the fields of a ``completion`` job, and a job's events and result written as OpenAI's
objects and stream chunks (the API reference's ``chat.completion``, ``chat.completion.chunk``
and ``text_completion``), and OpenAI's error object ``{"error": {message, type, param, code}}``.

What a request may say: every parameter rbee applies, the ones that change nothing at their
default or empty value (``logprobs: false``, ``logit_bias: {}``, ``echo: false``...), and
``user``, which is ignored. Anything else is a 400 naming the parameter: rbee never silently
ignores a parameter that would change what the model returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from jobproto import RequestError
from rbee_contracts.completion import MAX_CHOICES
from rbee_contracts.infer import MAX_MESSAGES, SEED_LIMIT

__all__ = [
    "CHAT",
    "TEXT",
    "OpenAIError",
    "ParsedRequest",
    "StreamShape",
    "chunk_frame",
    "completion_id",
    "completion_object",
    "done_frame",
    "dumps",
    "error_for_failure",
    "error_frame",
    "error_type",
    "field_to_param",
    "finish_frames",
    "job_id_of",
    "openai_error_body",
    "parse_request",
    "usage",
]

Kind = Literal["chat", "text"]
CHAT: Final = "chat"
TEXT: Final = "text"

#: OpenAI's default ``max_tokens`` of ``/v1/completions``; a chat completion without one
#: gets ``InferParams``'s default
TEXT_DEFAULT_MAX_TOKENS: Final = 16

_PREFIX: Final = {CHAT: "chatcmpl-", TEXT: "cmpl-"}
_CHAT_ROLES: Final = {"system": "system", "developer": "system", "user": "user"}
_PENALTIES: Final = ("presence_penalty", "frequency_penalty")


class OpenAIError(Exception):
    """A request refused, as OpenAI's error object and status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    @classmethod
    def from_request_error(cls, exc: RequestError, param: str | None = None) -> OpenAIError:
        """jobproto's refusal (a 422 of the job's parameters is OpenAI's 400)."""
        status = 400 if exc.status == 422 else exc.status
        return cls(
            status,
            exc.message,
            type=error_type(status),
            param=param or exc.field,
            code=exc.code,
        )


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(status: int, body: bytes) -> bytes:
    """A jobproto error body (``{"error": {"code", "message", "field"}}``) as OpenAI's error
    object; any other body as it is."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body
    error = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(error, dict) or "type" in error:
        return body
    shaped = OpenAIError(
        status,
        str(error.get("message", "")),
        type=error_type(status),
        param=error.get("field"),
        code=error.get("code"),
    )
    return dumps(shaped.body()).encode()


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _unsupported(param: str, why: str = "") -> OpenAIError:
    return _bad(param, f"'{param}' is not supported{why}", "unsupported_parameter")


# -- requests ----------------------------------------------------------------------------------


def _neutral(value: Any) -> bool:
    """A parameter value that asks for nothing (off, empty or null)."""
    return value is None or value is False or value == {} or value == [] or value == ""


# parameters rbee accepts only at their neutral value (what they change, rbee cannot do)
_NEUTRAL_ONLY: Final = {
    CHAT: (
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "audio",
        "prediction",
        "reasoning_effort",
        "web_search_options",
        "store",
        "metadata",
    ),
    TEXT: ("logprobs", "logit_bias", "echo", "suffix"),
}
_COMMON: Final = (
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
)
_OWN: Final = {
    CHAT: ("messages", "max_completion_tokens", "response_format", "service_tier", "modalities"),
    TEXT: ("prompt", "best_of"),
}


@attrs.frozen
class ParsedRequest:
    kind: Kind
    model: str
    #: the ``completion`` job's body (``operation`` included)
    job: dict[str, Any]
    stream: bool
    include_usage: bool


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, f"'{name}' must be a number")
    if not low <= value <= high:
        raise _bad(name, f"'{name}' must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"'{name}' must be an integer")
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be a boolean")
    return value


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(where, f"'{where}' must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _unsupported(f"{where}[{i}]", ": only parts of type 'text'")
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}[{i}].text", f"'{where}[{i}].text' must be a string")
        texts.append(text)
    return "\n".join(texts)  # text parts joined as vLLM joins them


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "'messages' must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise _bad("messages", f"'messages' must have at most {MAX_MESSAGES} items")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, f"'{where}' must be an object")
        for key, item in message.items():
            if key not in ("role", "content", "name") and not _neutral(item):
                raise _unsupported(f"{where}.{key}")
        role = message.get("role")
        if role == "assistant":
            kept = "assistant"
        elif isinstance(role, str) and role in _CHAT_ROLES:
            kept = _CHAT_ROLES[role]
        elif isinstance(role, str):
            raise _unsupported(f"{where}.role", f": role {role!r}")
        else:
            raise _bad(f"{where}.role", f"'{where}.role' must be a string")
        out.append({"role": kept, "content": _content(message.get("content"), f"{where}.content")})
    return out


def _prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, str) for p in value):
        raise _unsupported("prompt", ": send one prompt per request")
    if isinstance(value, list) and value and all(isinstance(p, (int, list)) for p in value):
        raise _unsupported("prompt", ": token ids; send text")
    raise _bad("prompt", "'prompt' must be a string")


def parse_request(kind: Kind, body: Any) -> ParsedRequest:
    """A request body of ``/v1/chat/completions`` (``CHAT``) or ``/v1/completions`` (``TEXT``).

    Only what OpenAI's parameters say is judged here; the values' ranges are also ``completion``'s
    (the job's own validation names the same parameters)."""
    if not isinstance(body, dict):
        raise _bad("body", "the request body must be a JSON object", "invalid_json")
    neutral_only = _NEUTRAL_ONLY[kind]
    known = {*_COMMON, *_OWN[kind], *neutral_only}
    for name in body:
        if name not in known:
            raise _bad(name, f"Unrecognized request argument supplied: {name}", "unknown_parameter")
    for name in neutral_only:
        if not _neutral(body.get(name)):
            raise _unsupported(name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' must be given: the name of a model (GET /v1/models)")
    job: dict[str, Any] = {"operation": "completion", "model": model}
    if kind == CHAT:
        if "messages" not in body:
            raise _bad("messages", "'messages' must be given")
        job["messages"] = _messages(body["messages"])
        response_format = body.get("response_format")
        if not (_neutral(response_format) or response_format == {"type": "text"}):
            raise _unsupported("response_format", ": only {'type': 'text'}")
        modalities = body.get("modalities")
        if not (_neutral(modalities) or modalities == ["text"]):
            raise _unsupported("modalities", ": only ['text']")
        tier = body.get("service_tier")
        if tier not in (None, "auto", "default"):
            raise _unsupported("service_tier", f": {tier!r}")
    else:
        if "prompt" not in body:
            raise _bad("prompt", "'prompt' must be given")
        job["prompt"] = _prompt(body["prompt"])
    max_tokens = _integer(body, "max_tokens")
    if kind == CHAT and body.get("max_completion_tokens") is not None:
        max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is None and kind == TEXT:
        max_tokens = TEXT_DEFAULT_MAX_TOKENS
    if max_tokens is not None:
        job["max_tokens"] = max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        job["temperature"] = temperature
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        job["top_p"] = top_p
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k != -1:  # vLLM's "off"
        job["top_k"] = top_k
    n = _integer(body, "n")
    if n is not None:
        if not 1 <= n <= MAX_CHOICES:
            raise _bad("n", f"'n' must be between 1 and {MAX_CHOICES}, got {n}")
        job["n"] = n
    if kind == TEXT:
        best_of = _integer(body, "best_of")
        if best_of is not None and best_of != (n or 1):
            raise _unsupported("best_of", ": only best_of equal to n")
    stop = body.get("stop")
    if isinstance(stop, str):
        job["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        job["stop"] = stop
    elif stop is not None:
        raise _bad("stop", "'stop' must be a string or a list of strings")
    seed = _integer(body, "seed")
    if seed is not None:
        job["seed"] = seed % SEED_LIMIT  # OpenAI takes any 64-bit seed; ours are below 2**63
    for name in _PENALTIES:
        value = _number(body, name, -2.0, 2.0)
        if value:  # 0 asks for nothing: sent only when it changes something
            job[name] = value
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad(
                "stream_options", "'stream_options' is only allowed when 'stream' is enabled"
            )
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options", "'stream_options' may only hold 'include_usage'")
        include_usage = _flag(options, "include_usage")
    if "user" in body and not (body["user"] is None or isinstance(body["user"], str)):
        raise _bad("user", "'user' must be a string")
    return ParsedRequest(kind, model, job, stream, include_usage)


def field_to_param(field: str | None, kind: Kind, body: Mapping[str, Any]) -> str | None:
    """The request's name of a ``completion`` field a refusal names."""
    if field == "max_tokens" and kind == CHAT and body.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    return field


# -- ids -----------------------------------------------------------------------------------------


def completion_id(kind: Kind, job_id: str) -> str:
    return _PREFIX[kind] + job_id


def job_id_of(kind: Kind, completion: str) -> str | None:
    """The job id in a completion id of ``kind`` (None: not one)."""
    prefix = _PREFIX[kind]
    return completion[len(prefix) :] if completion.startswith(prefix) else None


# -- responses -----------------------------------------------------------------------------------


def _finish_reason(reason: str) -> str:
    # OpenAI's reasons; an engine's own (it stopped for a reason of its own) reads as "stop"
    return reason if reason in ("stop", "length") else "stop"


def usage(result: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = int(result["prompt_tokens"]), int(result["completion_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_object(
    kind: Kind, job_id: str, created: int, model: str, result: Mapping[str, Any]
) -> dict[str, Any]:
    """The whole completion (a non-streamed answer) from the job's result."""
    choices: list[dict[str, Any]] = []
    for c in result["choices"]:
        reason = _finish_reason(c["finish_reason"])
        if kind == CHAT:
            message = {"role": "assistant", "content": c["text"], "refusal": None}
            choices.append(
                {"index": c["index"], "message": message, "logprobs": None, "finish_reason": reason}
            )
        else:
            choices.append(
                {"index": c["index"], "text": c["text"], "logprobs": None, "finish_reason": reason}
            )
    return {
        "id": completion_id(kind, job_id),
        "object": "chat.completion" if kind == CHAT else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(result),
    }


@attrs.frozen
class StreamShape:
    """What every chunk of one streamed completion repeats."""

    kind: Kind
    job_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id(self.kind, self.job_id),
            "object": "chat.completion.chunk" if self.kind == CHAT else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None
        out.update(extra)
        return out


def dumps(value: Any) -> str:
    """Compact JSON on one line (json escapes CR and LF in strings)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: \u-escaped instead
        text = json.dumps(value, separators=(",", ":"))
    return text


def _frame(seq: int, payload: Mapping[str, Any]) -> bytes:
    # one line of JSON (dumps escapes CR and LF), so one ``data:`` line (WHATWG SSE)
    return f"id: {seq}\ndata: {dumps(payload)}\n\n".encode()


def chunk_frame(shape: StreamShape, seq: int, index: int, text: str, first: bool) -> bytes:
    """The chunk of one data event of choice ``index`` (preceded, for the first of a chat
    choice, by the chunk that says its role, as OpenAI sends it)."""
    if shape.kind == CHAT:
        choice = {"index": index, "delta": {"content": text}, "logprobs": None}
        choice["finish_reason"] = None
        out = _frame(seq, shape.chunk([choice]))
        if first:
            role = {"role": "assistant", "content": ""}
            opening = {"index": index, "delta": role, "logprobs": None, "finish_reason": None}
            out = _frame(seq, shape.chunk([opening])) + out
        return out
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
    return _frame(seq, shape.chunk([choice]))


def finish_frames(
    shape: StreamShape, seq: int, result: Mapping[str, Any], started: set[int]
) -> bytes:
    """The last chunks: each choice's finish reason, then the usage (when asked for).
    ``started``: the choices whose role chunk was sent already."""
    out = []
    for c in result["choices"]:
        index, reason = c["index"], _finish_reason(c["finish_reason"])
        if shape.kind == CHAT:
            delta: dict[str, Any] = {} if index in started else {"role": "assistant"}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
        out.append(_frame(seq, shape.chunk([choice])))
    if shape.include_usage:
        out.append(_frame(seq, shape.chunk([], usage=usage(result))))
    return b"".join(out)


def error_frame(error: OpenAIError) -> bytes:
    """A failure after the stream began: the error object as a chunk (the openai client raises
    it as an ``APIError``); no ``[DONE]`` follows."""
    return f"data: {dumps(error.body())}\n\n".encode()


def done_frame() -> bytes:
    return b"data: [DONE]\n\n"


# -- failures ------------------------------------------------------------------------------------

_BAD_REQUEST: Final = frozenset({"invalid_request", "validation_error"})
_UNAVAILABLE: Final = frozenset(
    {
        "no_capacity",
        "no_hive",
        "hive_down",
        "model_not_ready",
        "worker_start_timeout",
        "worker_not_ready",
        "downstream_unavailable",
        "engine_dead",
    }
)


def error_for_failure(code: str, message: str) -> OpenAIError:
    """The HTTP error of a completion job that failed with ``code``."""
    if code in _BAD_REQUEST:
        return OpenAIError(400, message, code=code)
    if code == "busy":
        return OpenAIError(429, message, type="rate_limit_error", code=code)
    if code in _UNAVAILABLE:
        return OpenAIError(503, message, type="service_unavailable_error", code=code)
    return OpenAIError(500, message, type="server_error", code=code)

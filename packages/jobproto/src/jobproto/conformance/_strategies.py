"""Hypothesis strategies: valid create requests for the conformance operations, and bad input.

Valid requests are kept small so a run stays fast: at most 20 echo messages, 5 fail steps, 2 s of
waiting and 300 burst events. Text is any Unicode (surrogates excluded, as JSON in UTF-8 has none)
with newlines, lone CRs, empty strings and SSE-looking lines mixed in, because those are what an
SSE encoder gets wrong. Bad input covers each way a create, list or stream request can be refused.
"""

from __future__ import annotations

import json
import string
from typing import Any

import attrs
from hypothesis import strategies as st

__all__ = [
    "BAD_CREATE",
    "BAD_CURSORS",
    "BAD_LIST",
    "BAD_ROUTES",
    "BadCreate",
    "bad_job_ids",
    "correlation_ids",
    "create_bodies",
    "idempotency_keys",
    "json_values",
]

_PIECES = ["", "\n", "\r", "\r\n", "\n\n", ":", ": x", "data: x", "id: 7", "event: y", "retry: 1"]
_PIECES += ["é", "日本", "😀", "\u2028", "\x00", "\ufeff", " ", "\t", "\\", '"']

texts: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.characters()), max_size=6).map("".join),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)

_CODE_ALPHABET = string.ascii_lowercase + string.digits + "_"


def _body(operation: str, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.fixed_dictionaries(
        {"operation": st.just(operation), **required}, optional=optional
    ).map(dict)


#: a valid create request body for one of the conformance operations
create_bodies: st.SearchStrategy[dict[str, Any]] = st.one_of(
    _body(
        "echo",
        {},
        {
            "messages": st.lists(texts, max_size=20) | st.lists(texts, min_size=5, max_size=20),
            "delay": st.just(0) | st.floats(0.0, 0.02),
            "result": json_values,
        },
    ),
    _body(
        "fail",
        {},
        {
            "after": st.integers(0, 5),
            "code": st.text(_CODE_ALPHABET, min_size=1, max_size=16),
            "message": texts,
        },
    ),
    _body("crash", {}, {"message": texts}),
    _body(
        "wait",
        # mostly short: every read of a running wait job waits for it (the suite's time budget)
        {"seconds": st.one_of(st.floats(0.0, 0.3), st.integers(0, 1), st.floats(0.0, 2.0))},
        {"tick": st.floats(0.05, 1.0)},
    ),
    _body(
        "burst",
        {"count": st.integers(0, 300) | st.integers(150, 300)},
        {"size": st.integers(0, 64)},
    ),
)

_CID_ALPHABET = string.ascii_letters + string.digits + "._:-"

#: None (send none), a well-formed id (echoed back), or a malformed one (replaced by the server)
correlation_ids: st.SearchStrategy[str | None] = st.one_of(
    st.none(),
    st.text(_CID_ALPHABET, min_size=1, max_size=64),
    st.sampled_from(["has space", "x" * 129, "semi;colon", "slash/no", 'quo"te']),
)

idempotency_keys: st.SearchStrategy[str] = st.text(
    string.ascii_letters + string.digits + "-_", min_size=1, max_size=24
)

_URLSAFE = string.ascii_letters + string.digits + "-_"

#: ids no job has: well formed but unknown, or malformed
bad_job_ids: st.SearchStrategy[str] = st.one_of(
    st.text(_URLSAFE, min_size=22, max_size=22).map(lambda s: "job_" + s),
    st.sampled_from(["nope", "job_", "job_" + "A" * 21, "JOB_" + "A" * 22, "job_" + "A" * 300]),
    st.sampled_from(["job_%00", "j%C3%B6b", "0", "-1", "job_AAAAAAAAAAAAAAAAAAAAAA.json"]),
)


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


_JSON = "application/json"


@attrs.frozen
class BadCreate:
    """A create request that must be refused, and how (docs/protocol.md §2.2, §5.2)."""

    body: bytes
    content_type: str | None
    status: int
    code: str
    field: str | None = None


def _invalid(body: Any, field: str | None, code: str = "validation_error") -> BadCreate:
    return BadCreate(_j(body), _JSON, 422, code, field)


#: name -> a create request that must be refused
BAD_CREATE: dict[str, BadCreate] = {
    "not_json": BadCreate(b'{"operation": "echo",', _JSON, 400, "invalid_json"),
    "empty_body": BadCreate(b"", _JSON, 400, "invalid_json"),
    "invalid_utf8": BadCreate(b'{"operation": "\xff"}', _JSON, 400, "invalid_json"),
    "text_plain": BadCreate(
        _j({"operation": "echo"}), "text/plain", 415, "unsupported_media_type", "Content-Type"
    ),
    "form_encoded": BadCreate(
        b"operation=echo",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    "no_content_type": BadCreate(
        _j({"operation": "echo"}), None, 415, "unsupported_media_type", "Content-Type"
    ),
    "json_suffix_not_json": BadCreate(b"{oops", "application/problem+json", 400, "invalid_json"),
    "array_body": _invalid([{"operation": "echo"}], None),
    "string_body": _invalid("echo", None),
    "null_body": _invalid(None, None),
    "unknown_operation": _invalid(
        {"operation": "no_such_operation"}, "operation", "unknown_operation"
    ),
    "missing_operation": _invalid({"messages": ["hi"]}, "operation"),
    "operation_not_string": _invalid({"operation": 7}, "operation"),
    "extra_field": _invalid({"operation": "echo", "bogus": 1}, "bogus"),
    "messages_not_list": _invalid({"operation": "echo", "messages": "hi"}, "messages"),
    "messages_object": _invalid({"operation": "echo", "messages": {"a": "b"}}, "messages"),
    "message_not_string": _invalid({"operation": "echo", "messages": ["a", 2]}, "messages[1]"),
    "delay_as_string": _invalid({"operation": "echo", "delay": "0.1"}, "delay"),
    "delay_too_big": _invalid({"operation": "echo", "delay": 5}, "delay"),
    "count_with_fraction": _invalid({"operation": "burst", "count": 1.5}, "count"),
    "count_as_1_0": _invalid({"operation": "burst", "count": 1.0}, "count"),
    "count_as_bool": _invalid({"operation": "burst", "count": True}, "count"),
    "count_negative": _invalid({"operation": "burst", "count": -1}, "count"),
    "count_as_string": _invalid({"operation": "burst", "count": "5"}, "count"),
    "seconds_null": _invalid({"operation": "wait", "seconds": None}, "seconds"),
    "seconds_too_big": _invalid({"operation": "wait", "seconds": 1e9}, "seconds"),
    "tick_too_small": _invalid({"operation": "wait", "seconds": 1, "tick": 0}, "tick"),
    "after_as_string": _invalid({"operation": "fail", "after": "3"}, "after"),
    "code_as_number": _invalid({"operation": "fail", "code": 3}, "code"),
}

#: a query of GET /v1/jobs that must be refused: (params, code, field) (§2.4)
BAD_LIST: list[tuple[dict[str, str], str, str]] = [
    ({"limit": "0"}, "invalid_query", "limit"),
    ({"limit": "101"}, "invalid_query", "limit"),
    ({"limit": "-1"}, "invalid_query", "limit"),
    ({"limit": "1.5"}, "invalid_query", "limit"),
    ({"limit": "ten"}, "invalid_query", "limit"),
    ({"limit": ""}, "invalid_query", "limit"),
    ({"limit": "9" * 40}, "invalid_query", "limit"),
    ({"state": "bogus"}, "invalid_query", "state"),
    ({"state": ""}, "invalid_query", "state"),
    ({"state": "QUEUED"}, "invalid_query", "state"),
    ({"cursor": "not-a-cursor"}, "invalid_cursor", "cursor"),
    ({"cursor": "-5"}, "invalid_cursor", "cursor"),
    ({"page": "2"}, "invalid_query", "page"),
]

_NO_SUCH_JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"

#: (method, path, status, code) of requests no route serves (§2.8)
BAD_ROUTES: list[tuple[str, str, int, str]] = [
    ("PUT", "/v1/jobs", 405, "method_not_allowed"),
    ("PATCH", f"/v1/jobs/{_NO_SUCH_JOB}", 405, "method_not_allowed"),
    ("POST", f"/v1/jobs/{_NO_SUCH_JOB}/stream", 405, "method_not_allowed"),
    ("GET", "/v1/nothing", 404, "not_found"),
    ("POST", "/v1", 404, "not_found"),
]

#: a stream cursor that must be refused: (value, code); a cursor past last_seq is the machine's
BAD_CURSORS: list[tuple[str, str]] = [
    ("-1", "invalid_query"),
    ("start", "invalid_query"),
    ("1.5", "invalid_query"),
    ("0x10", "invalid_query"),
    ("9" * 19, "invalid_query"),
]

"""``jobproto.conformance._schemas``: the judge, the cases it classifies, and the answer check."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from jobproto import Operations, RequestError
from jobproto._ecma import ecma_regex as jobproto_ecma_regex
from jobproto.asgi import JobService
from jobproto.asgi._openapi import openapi_document
from jobproto.conformance import conformance_operations
from jobproto.conformance._schemas import (
    Case,
    cases,
    check_answer,
    ecma_regex,
    judge,
    operation_schemas,
)

FEW = settings(
    max_examples=60,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
#: a request schema using the keywords jobproto publishes
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["operation", "name"],
    "properties": {
        "operation": {"const": "op"},
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$", "maxLength": 8},
        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "mode": {"enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "limit": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Z]+$"},
            "additionalProperties": {"type": "string"},
        },
        "turns": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role"],
                "properties": {"role": {"enum": ["user", "assistant"]}, "text": {"type": "string"}},
            },
        },
    },
}


# -- judge -----------------------------------------------------------------------------------------


def test_dollar_is_the_end_of_the_string_as_in_ecma_262() -> None:
    schema = {"type": "string", "pattern": "^ab$"}
    assert judge(schema, "ab")
    assert not judge(schema, "ab\n")  # Python's re.search("^ab$", "ab\n") finds it
    assert not judge({"propertyNames": {"pattern": "^a$"}}, {"a\n": 1})


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"^\d+$", "123", True),
        (r"^\d+$", "١٢٣", False),  # Arabic-Indic digits: \d in Python, not in ECMA-262
        (r"^\w$", "é", False),
        (r"^[\w.]+$", "a.b_1", True),
        (r"^[\w.]+$", "é", False),
        (r"^a.b$", "a\rb", False),  # . matches no line terminator in ECMA-262
        (r"^a.b$", "a-b", True),
        (r"^\s$", "\ufeff", True),
        (r"^\s$", "\x1c", False),
        (r"^(?<n>a)b$", "ab", True),
        (r"^(?:a|b)(?=c)", "ac", True),
        (r"[]", "a", False),
        (r"^[^]$", "\n", True),
        (r"^[a-]$", "-", True),
        (r"^[\D]$", "a", True),
        (r"^[\D]$", "1", False),
        (r"^\cJ$", "\n", True),  # a control escape
        (r"^(?<n>a)\k<n>$", "aa", True),  # a named back reference
        (r"\bé", "aé", True),  # \b is ASCII in ECMA-262: no word boundary between a and é in Python
        (r"^[a&&b]+$", "&", True),  # && || -- ~~ in [...] are literal in ECMA-262 (no v flag)
        (r"^[a||b]$", "|", True),
        (r"^[+-\-]$", ",", True),  # a range from + to -
        (r"^[a~~b]$", "~", True),
        (r"b", "abc", True),  # a search, not a match
    ],
)
def test_patterns_mean_what_they_mean_in_ecma_262(pattern: str, text: str, matches: bool) -> None:
    assert judge({"pattern": pattern}, text) is matches


@pytest.mark.parametrize("pattern", [r"\Aa", r"a\Z", r"(?P<n>a)", r"(?i)a", r"[\S]", "a\\"])
def test_syntax_ecma_262_reads_otherwise_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        ecma_regex(pattern)


def test_the_judge_reads_patterns_as_the_service_does() -> None:
    # one ECMA-262 translation: jsonschema judges everything else independently
    assert ecma_regex is jobproto_ecma_regex


def test_judge_follows_draft_2020_12() -> None:
    assert judge({"type": "integer"}, 2)
    # jobproto/1 §2.2: a number written with a fraction or exponent is no integer (JSON Schema
    # alone would take 2.0); json.loads makes exactly those floats
    assert not judge({"type": "integer"}, json.loads("2.0"))
    assert not judge({"type": "integer"}, json.loads("2e0"))
    assert judge({"type": "number"}, 2)
    assert not judge({"type": "integer"}, True)
    assert not judge({"exclusiveMinimum": 0}, 0)
    assert judge({"exclusiveMinimum": 0}, 1e-9)
    assert judge(SCHEMA, {"operation": "op", "name": "a-1"})
    assert not judge(SCHEMA, {"operation": "op", "name": "a-1", "other": 1})
    assert not judge(SCHEMA, {"operation": "op"})


# -- operation_schemas -----------------------------------------------------------------------------


def test_operation_schemas_reads_each_operation_from_openapi() -> None:
    ops = conformance_operations()
    doc = openapi_document(JobService(ops))
    schemas = operation_schemas(doc)
    assert schemas == {op.name: op.json_schema() for op in ops}


def test_operation_schemas_inlines_references() -> None:
    doc = {
        "paths": {
            "/v1/jobs": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [{"$ref": "#/components/schemas/op_a"}],
                                    "discriminator": {
                                        "propertyName": "operation",
                                        "mapping": {"a": "#/components/schemas/op_a"},
                                    },
                                }
                            }
                        }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "op_a": {"properties": {"x": {"$ref": "#/components/schemas/X"}}},
                "X": {"type": "integer"},
                "Loop": {"properties": {"next": {"$ref": "#/components/schemas/Loop"}}},
            }
        },
    }
    assert operation_schemas(doc) == {"a": {"properties": {"x": {"type": "integer"}}}}
    mapping = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]  # type: ignore[index]
    mapping["application/json"]["schema"]["discriminator"]["mapping"]["b"] = (
        "#/components/schemas/Loop"
    )
    with pytest.raises(ValueError, match="recursive"):
        operation_schemas(doc)


# -- cases -----------------------------------------------------------------------------------------


@FEW
@given(cases(SCHEMA))
def test_every_case_is_what_the_judge_says(case: Case) -> None:
    assert case.valid is judge(SCHEMA, case.body)
    if case.valid:
        assert case.field is None
    else:
        assert case.field is not None
        # the one field at fault: putting that field back as a valid body has it makes it valid
        fixed = {k: v for k, v in case.body.items() if k != case.field}
        if case.field in SCHEMA["required"]:
            fixed[case.field] = {"operation": "op", "name": "a"}[case.field]
        assert judge(SCHEMA, fixed), (case, fixed)


def only(field: str) -> dict[str, Any]:
    """``SCHEMA`` with ``operation`` and ``field`` alone (required): mistakes in it come often."""
    props = {"operation": SCHEMA["properties"]["operation"], field: SCHEMA["properties"][field]}
    return {**SCHEMA, "required": ["operation", field], "properties": props}


def _value(c: Case, field: str) -> Any:
    return c.body.get(field) if c.field == field else None


@pytest.mark.parametrize(
    ("what", "field", "condition"),
    [
        ("valid", None, lambda c: c.valid and len(c.body) > 3),
        ("missing", None, lambda c: not c.valid and c.field not in c.body),
        ("extra", None, lambda c: not c.valid and c.field not in SCHEMA["properties"]),
        ("operation", None, lambda c: c.field == "operation"),
        (
            "over the maximum",
            "count",
            lambda c: type(_value(c, "count")) is int and c.body["count"] > 10,
        ),
        ("exclusive bound", "ratio", lambda c: _value(c, "ratio") == 0),
        ("too long", "name", lambda c: len(str(_value(c, "name"))) == 9),
        ("final newline", "name", lambda c: str(_value(c, "name"))[1:].endswith("\n")),
        ("not in the enum", "mode", lambda c: isinstance(_value(c, "mode"), str)),
        ("wrong type", "tags", lambda c: isinstance(_value(c, "tags"), str | int)),
        (
            "too many items",
            "tags",
            lambda c: isinstance(_value(c, "tags"), list) and len(c.body["tags"]) > 3,
        ),
        ("bad property name", "env", lambda c: isinstance(_value(c, "env"), dict)),
        ("bad nested item", "turns", lambda c: isinstance(_value(c, "turns"), list)),
    ],
)
def test_cases_reach_each_kind_of_mistake(what: str, field: str | None, condition: Any) -> None:
    schema = only(field) if field else SCHEMA
    found = find(
        cases(schema),
        condition,
        settings=settings(
            max_examples=1000,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        ),
    )
    assert found.valid is judge(schema, found.body), what


def test_cases_never_name_another_operation() -> None:
    # another operation's name could be a valid request for that operation
    @FEW
    @given(cases(SCHEMA))
    def check(case: Case) -> None:
        assert case.body.get("operation", "op") == "op" or not isinstance(
            case.body["operation"], str
        )

    check()


# -- check_answer ----------------------------------------------------------------------------------


def refusal(field: str | None, code: str = "validation_error") -> dict[str, Any]:
    return RequestError(422, code, "refused", field=field).to_json()


def test_a_valid_case_must_not_be_refused() -> None:
    case = Case({"operation": "op", "name": "a"}, True, None)
    check_answer(case, 201, {"job_id": "j"})
    with pytest.raises(AssertionError, match="accepts"):
        check_answer(case, 422, refusal("name"))


def test_an_invalid_case_must_be_refused_naming_its_field() -> None:
    case = Case({"operation": "op", "turns": []}, False, "turns")
    check_answer(case, 422, refusal("turns"))
    check_answer(case, 422, refusal("turns[0].role"))
    check_answer(case, 422, refusal("turns.x"))
    for field in ("name", "turnsx", None):
        with pytest.raises(AssertionError, match="field"):
            check_answer(case, 422, refusal(field))
    with pytest.raises(AssertionError, match="refuses"):
        check_answer(case, 201, {})
    with pytest.raises(AssertionError, match="validation_error"):
        check_answer(case, 422, refusal("turns", code="unknown_operation"))
    with pytest.raises(AssertionError):
        check_answer(case, 422, "not json")


# -- the property finds a parse that disagrees -----------------------------------------------------


@attrs.frozen
class Lenient:
    name: str  # its schema has no bounds; the published one below has


def test_a_parse_that_enforces_less_than_the_schema_is_caught() -> None:
    ops = Operations()

    @ops.operation("op")
    async def op(params: Lenient) -> None:
        return None

    published = {
        **ops.get("op").json_schema(),
        "properties": {"operation": {"const": "op"}, "name": {"type": "string", "maxLength": 3}},
    }

    def answer(case: Case) -> None:
        try:
            ops.parse(case.body)
        except RequestError as exc:
            check_answer(case, exc.status, exc.to_json())
        else:
            check_answer(case, 201, {})

    # derandomized, with room to reach a name over 3 characters: the search must find the
    # disagreement on every run (at 60 random examples it sometimes did not)
    @settings(FEW, max_examples=300, derandomize=True)
    @given(cases(published))
    def agrees(case: Case) -> None:
        answer(case)

    with pytest.raises(AssertionError, match="refuses"):
        agrees()


# -- rules across fields ---------------------------------------------------------------------------

#: exactly one of prompt and messages (a class's own __json_schema__ publishes such a rule)
ONE_OF: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["operation"],
    "properties": {
        "operation": {"const": "op"},
        "prompt": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "messages": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
    },
    "oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ],
}


def test_valid_bodies_follow_a_rule_across_fields() -> None:
    found = find(
        cases(ONE_OF),
        lambda c: c.valid and "messages" in c.body,
        settings=settings(max_examples=500, database=None, phases=[Phase.generate]),
    )
    assert judge(ONE_OF, found.body)


def test_a_refusal_by_a_rule_across_fields_may_name_any_of_its_fields() -> None:
    case = find(
        cases(ONE_OF),
        lambda c: not c.valid and c.field == "messages" and c.body.get("messages") is None,
        settings=settings(max_examples=1000, database=None, phases=[Phase.generate]),
    )
    assert case.others == ("prompt",)
    check_answer(case, 422, refusal("messages"))
    check_answer(case, 422, refusal("prompt"))
    with pytest.raises(AssertionError, match="rule across fields"):
        check_answer(case, 422, refusal("operation"))

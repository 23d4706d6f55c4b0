"""One source of truth for parameters: the published schema is derived from the validators, and
what a field declares in ``metadata["schema"]`` is enforced (``_schema``, ``_schema_check``,
``_ecma``, ``_wire.structure_params``)."""

from __future__ import annotations

import decimal
import enum
import re
import warnings
from collections import abc
from datetime import datetime
from typing import Any, ClassVar, Literal

import attrs
import pytest

from jobproto import Operations, RequestError, _schema_check, schema_of, structure_params
from jobproto._ecma import ecma_regex, python_pattern_to_ecma
from jobproto._schema import SchemaError
from jobproto._schema_check import first_error
from jobproto.conformance import conformance_operations
from jobproto.core import LocalProtocolError

v = attrs.validators


def _refusal(raw: dict[str, Any], cls: type) -> RequestError:
    with pytest.raises(RequestError) as info:
        structure_params(raw, cls)
    assert info.value.status == 422 and info.value.code == "validation_error"
    return info.value


def _props(cls: type) -> dict[str, Any]:
    props: dict[str, Any] = schema_of(cls)["properties"]
    return props


def _value(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of a field that may be None."""
    return next((s for s in schema.get("anyOf", []) if s != {"type": "null"}), schema)


# -- metadata["schema"] is enforced ----------------------------------------------------------------


@attrs.frozen
class Titled:
    title: str = attrs.field(metadata={"schema": {"minLength": 1, "maxLength": 5}})
    tags: list[str] = attrs.field(factory=list, metadata={"schema": {"items": {"minLength": 2}}})


def test_a_declared_min_length_refuses_the_empty_string_with_a_422() -> None:
    ops = Operations()

    @ops.operation("titled")
    async def titled(params: Titled) -> None:
        pass

    with pytest.raises(RequestError) as info:
        ops.parse({"operation": "titled", "title": ""})
    assert (info.value.status, info.value.code, info.value.field) == (
        422,
        "validation_error",
        "title",
    )
    assert "at least 1 characters" in info.value.message
    assert _refusal({"title": "toolong"}, Titled).field == "title"
    assert ops.parse({"operation": "titled", "title": "ok"})[1] == Titled("ok")


def test_a_declared_item_limit_names_the_item() -> None:
    assert _refusal({"title": "a", "tags": ["ok", "x"]}, Titled).field == "tags[1]"
    assert structure_params({"title": "a", "tags": ["ok"]}, Titled).tags == ["ok"]


@attrs.frozen
class Message:
    role: str
    content: str = attrs.field(metadata={"schema": {"maxLength": 3}})


@attrs.frozen
class Chat:
    messages: list[Message]


def test_a_nested_refusal_has_the_full_path() -> None:
    raw = {"messages": [{"role": "a", "content": "ok"}, {"role": "b", "content": "long"}]}
    error = _refusal(raw, Chat)
    assert error.field == "messages[1].content"
    assert error.message.startswith("'messages[1].content' must be at most 3")


@attrs.frozen
class Anchored:
    code: str = attrs.field(metadata={"schema": {"pattern": "^[a-z]+$"}})


def test_a_pattern_dollar_is_the_end_of_the_text_as_in_ecma_262() -> None:
    # Python's $ also matches before a final newline; ECMA-262's (JSON Schema's) does not
    assert re.search("^[a-z]+$", "abc\n")
    assert _refusal({"code": "abc\n"}, Anchored).field == "code"
    assert structure_params({"code": "abc"}, Anchored).code == "abc"


def test_the_validators_message_comes_first() -> None:
    @attrs.frozen
    class Both:
        n: int = attrs.field(validator=v.ge(1), metadata={"schema": {"maximum": 3}})

    assert "must be >= 1" in _refusal({"n": 0}, Both).message  # attrs' own message
    assert _refusal({"n": 4}, Both).message == "'n' must be <= 3"


# -- the validators are published ------------------------------------------------------------------


@attrs.frozen
class Limited:
    name: str = attrs.field(validator=[v.min_len(1), v.max_len(50)])
    items: list[int] = attrs.field(factory=list, validator=v.max_len(4))
    labels: dict[str, str] = attrs.field(factory=dict, validator=v.min_len(0))
    size: int = attrs.field(default=1, validator=v.and_(v.gt(0), v.lt(10)))
    ratio: float = attrs.field(default=0.5, validator=[v.ge(0), v.le(1)])
    mode: str = attrs.field(default="a", validator=v.in_(("a", "b")))
    port: int | None = attrs.field(default=None, validator=v.optional(v.in_(range(65536))))
    word: str = attrs.field(default="x", validator=v.matches_re(r"[a-z]+"))
    prefix: str = attrs.field(default="ab", validator=v.matches_re(r"ab", func=re.match))
    anywhere: str = attrs.field(default="q", validator=v.matches_re(r"q", func=re.search))
    kind: str = attrs.field(default="", validator=v.instance_of(str))
    stops: list[str] = attrs.field(
        factory=list, validator=v.deep_iterable(v.min_len(1), v.max_len(3))
    )
    env: dict[str, int] = attrs.field(
        factory=dict, validator=v.deep_mapping(v.matches_re("[A-Z]+"), v.ge(0), v.max_len(2))
    )


def test_an_attrs_length_validator_appears_as_min_and_max_length() -> None:
    props = _props(Limited)
    assert props["name"] == {"type": "string", "minLength": 1, "maxLength": 50}
    assert props["items"]["maxItems"] == 4 and "maxLength" not in props["items"]
    assert props["labels"]["minProperties"] == 0


def test_every_validator_kind_is_published() -> None:
    props = _props(Limited)
    assert (props["size"]["exclusiveMinimum"], props["size"]["exclusiveMaximum"]) == (0, 10)
    assert (props["ratio"]["minimum"], props["ratio"]["maximum"]) == (0, 1)
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["port"]["anyOf"] == [
        {"type": "integer", "minimum": 0, "maximum": 65535},
        {"type": "null"},
    ]
    assert props["word"]["pattern"] == "^(?:[a-z]+)$"
    assert props["prefix"]["pattern"] == "^(?:ab)"
    assert props["anywhere"]["pattern"] == "q"
    assert props["kind"] == {"type": "string", "default": ""}
    assert props["stops"]["items"] == {"type": "string", "minLength": 1}
    assert props["stops"]["maxItems"] == 3
    assert props["env"]["propertyNames"] == {"pattern": "^(?:[A-Z]+)$"}
    assert props["env"]["additionalProperties"] == {"type": "integer", "minimum": 0}
    assert props["env"]["maxProperties"] == 2


def test_a_limit_on_an_optional_field_keeps_null_valid() -> None:
    @attrs.frozen
    class Extra:
        extra: str | None = attrs.field(
            default=None,
            validator=v.optional(v.in_(("x", "y"))),
            metadata={"schema": {"enum": ["x", "y"]}},
        )

    schema = schema_of(Extra)
    assert first_error(schema, {"extra": None}) is None
    assert structure_params({"extra": None}, Extra).extra is None
    assert first_error(schema, {"extra": "z"}) is not None


def test_a_validator_may_say_its_own_schema() -> None:
    def even(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value % 2:
            raise ValueError(f"'{attribute.name}' must be even")

    even.__json_schema__ = {"multipleOf": 2}  # type: ignore[attr-defined]

    @attrs.frozen
    class Even:
        n: int = attrs.field(validator=even)

    assert _props(Even)["n"] == {"type": "integer", "multipleOf": 2}


def test_the_conformance_operations_publish_their_bounds() -> None:
    schemas = {op.name: op.json_schema()["properties"] for op in conformance_operations()}
    size = schemas["burst"]["size"]
    assert (size["minimum"], size["maximum"]) == (0, 65536)
    assert schemas["echo"]["messages"]["maxItems"] == 1000
    assert (schemas["wait"]["tick"]["minimum"], schemas["wait"]["tick"]["maximum"]) == (0.01, 10)
    assert schemas["fail"]["after"]["maximum"] == 1000


# -- refused when the schema cannot say what is checked --------------------------------------------


def _schema_error(cls: type) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        schema_of(cls)
    assert isinstance(info.value, LocalProtocolError)
    return info.value


@attrs.frozen
class When:
    at: datetime


def test_a_datetime_field_is_refused_at_schema_time() -> None:
    error = _schema_error(When)
    assert (error.cls, error.field) == (When, "at")
    assert "When.at" in str(error) and "datetime" in str(error) and "use str" in str(error)

    ops = Operations()
    # at registration, or at the latest when the operation's schema is published
    with pytest.raises(LocalProtocolError, match=r"When\.at"):

        @ops.operation("when")
        async def when(params: When) -> None:
            pass

        ops.get("when").json_schema()


class Color(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    "tp",
    [bytes, decimal.Decimal, dict[int, str], tuple[int, str], int | str, object, complex,
     set[int], frozenset[str], set, abc.Set[int], abc.MutableSet[int]],
    ids=repr,
)  # fmt: skip
def test_unsupported_types_are_refused(tp: Any) -> None:
    cls = attrs.make_class("Odd", {"x": attrs.field(type=tp)})
    assert _schema_error(cls).field == "x"


@pytest.mark.parametrize(
    "tp",
    [str, int, float, bool, Any, list[int], tuple[str, ...], dict[str, Any], str | None,
     Literal["a", 1], Color, list[Message] | None, dict, list],
    ids=repr,
)  # fmt: skip
def test_supported_types_are_published(tp: Any) -> None:
    cls = attrs.make_class("Fine", {"x": attrs.field(type=tp)})
    assert "x" in _props(cls)


@pytest.mark.parametrize(
    "keyword",
    [{"type": "string"}, {"default": 1}, {"$ref": "#/x"}, {"oneOf": []}, {"minlength": 1}],
)
def test_an_unknown_metadata_keyword_is_refused(keyword: dict[str, Any]) -> None:
    cls = attrs.make_class("Declared", {"x": attrs.field(type=str, metadata={"schema": keyword})})
    error = _schema_error(cls)
    assert error.field == "x" and repr(next(iter(keyword))) in str(error)


def test_an_unknown_keyword_in_a_sub_schema_is_refused() -> None:
    schema = {"items": {"oneOf": []}}
    cls = attrs.make_class("Sub", {"x": attrs.field(type=list[str], metadata={"schema": schema})})
    assert "oneOf" in str(_schema_error(cls))


def test_an_opaque_validator_needs_a_declared_constraint() -> None:
    def checked(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if not value.startswith("/"):
            raise ValueError(f"'{attribute.name}' must be absolute")

    bare = attrs.make_class("Bare", {"path": attrs.field(type=str, validator=checked)})
    error = _schema_error(bare)
    assert error.field == "path" and "checked" in str(error) and 'metadata={"schema"' in str(error)

    described = attrs.make_class(
        "Described",
        {"path": attrs.field(type=str, validator=checked, metadata={"schema": {"title": "x"}})},
    )
    _schema_error(described)  # an annotation is no constraint

    declared = attrs.make_class(
        "Declared",
        {"path": attrs.field(type=str, validator=checked, metadata={"schema": {"pattern": "^/"}})},
    )
    assert _props(declared)["path"]["pattern"] == "^/"


@pytest.mark.parametrize(
    "validator",
    [
        v.matches_re(r"\Aab"),
        v.matches_re(r"(?P<x>a)"),
        v.matches_re(r"(?i)a"),
        v.matches_re("a", flags=re.IGNORECASE),
        v.matches_re(r"\s"),
        v.in_("abc"),
        v.in_(range(0, 10, 2)),
        v.ge("a"),
    ],
    ids=repr,
)
def test_validators_the_schema_cannot_say_are_refused(validator: Any) -> None:
    cls = attrs.make_class("Odd", {"x": attrs.field(type=str, validator=validator)})
    assert _schema_error(cls).field == "x"


def test_a_declared_pattern_that_is_not_ecma_is_refused() -> None:
    cls = attrs.make_class(
        "Py", {"x": attrs.field(type=str, metadata={"schema": {"pattern": "(?P<a>x)"}})}
    )
    assert "pattern" in str(_schema_error(cls))


# -- ECMA-262 patterns -----------------------------------------------------------------------------


def test_ecma_patterns_read_as_ecma_262_reads_them() -> None:
    assert not ecma_regex("^a$").search("a\n")
    assert not ecma_regex("^.$").search("\r") and ecma_regex("^.$").search("a")
    assert not ecma_regex(r"^\d$").search("\u0661")  # ECMA's \d is ASCII
    assert ecma_regex(r"^\s$").search("\ufeff") and not ecma_regex(r"^\s$").search("\x1c")
    assert ecma_regex(r"^(?<a>x)\k<a>$").search("xx")
    assert ecma_regex(r"^[\s]$").search("\u3000")
    assert ecma_regex(r"^(?!ab)[a-z]+$").search("ba") and not ecma_regex("^(?!ab)").search("ab")


def test_set_operators_inside_a_class_are_literal_and_raise_no_warning() -> None:
    # Python warns (FutureWarning) of nested sets and set operations; under -W error that
    # warning escaped the translation's except re.error. In ECMA-262 they are literals.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pattern, text in [("[a&&b]", "&"), ("[a||b]", "|"), ("[a~~b]", "~"), ("[[]", "[")]:
            assert ecma_regex(f"^{pattern}$").search(text), pattern
    assert ecma_regex("^[^]$").search("\n") and not ecma_regex("[]").search("a")
    with pytest.raises(ValueError, match="--"):  # which dash is the range: escape the other
        ecma_regex("[+--]")


@pytest.mark.parametrize("pattern", [r"\Aa", r"a\Z", "(?P<x>a)", "(?i)a", "a*+", "a{,3}", "[a"])
def test_python_only_syntax_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        ecma_regex(pattern)


def test_a_python_pattern_is_anchored_by_its_match_function() -> None:
    pattern = re.compile("a|b")
    assert python_pattern_to_ecma(pattern, "fullmatch") == "^(?:a|b)$"
    assert python_pattern_to_ecma(pattern, "match") == "^(?:a|b)"
    assert python_pattern_to_ecma(pattern, "search") == "a|b"


# -- the checker -----------------------------------------------------------------------------------


def test_the_checker_keeps_json_types_apart() -> None:
    assert first_error({"type": "integer"}, True) is not None
    assert first_error({"type": "integer"}, 1.0) is not None  # §2.2: 1.0 is no integer
    assert first_error({"type": "number"}, 1) is None
    assert first_error({"enum": [1]}, True) is not None
    assert first_error({"enum": [1]}, 1.0) is None
    # as jsonschema reads it: 0.3 / 0.1 is 2.9999999999999996 in floats, 0.5 / 0.1 is 5.0
    assert first_error({"type": "number", "multipleOf": 0.1}, 0.3) is not None
    assert first_error({"type": "number", "multipleOf": 0.1}, 0.5) is None
    assert first_error({"type": "array", "uniqueItems": True}, [1, True]) is None
    assert first_error({"type": "array", "uniqueItems": True}, [1, 1.0]) == (
        "[1]",
        "'[1]' repeats an earlier item",
    )


# -- a rule across fields: the class's own __json_schema__ -----------------------------------------


@attrs.frozen
class OneOf:
    """Exactly one of ``a`` and ``b``."""

    __json_schema__: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"required": ["a"], "properties": {"a": {"type": "string"}}},
            {"required": ["b"], "properties": {"b": {"type": "string"}}},
        ]
    }
    a: str | None = None
    b: str | None = None


@attrs.frozen
class MoreOf(OneOf):
    c: int = 0


def test_a_class_rule_across_fields_is_published_inherited_and_enforced() -> None:
    assert schema_of(OneOf)["oneOf"] == OneOf.__json_schema__["oneOf"]
    assert schema_of(MoreOf)["oneOf"] == OneOf.__json_schema__["oneOf"]
    assert structure_params({"a": "x"}, MoreOf) == MoreOf(a="x")
    assert structure_params({"a": None, "b": "y"}, OneOf) == OneOf(b="y")
    missing = _refusal({}, OneOf)  # the form that got furthest names what to fix
    assert (missing.field, missing.message) == ("a", "required field 'a' is missing")
    assert "more than one" in _refusal({"a": "x", "b": "y"}, MoreOf).message


@pytest.mark.parametrize(
    "declared",
    [{"anyOf": [{"required": ["nope"]}]}, {"oneOf": {}}, {"if": {}}, {"properties": {"z": {}}}],
    ids=repr,
)
def test_a_class_rule_names_only_its_fields_and_known_keywords(declared: dict[str, Any]) -> None:
    cls = attrs.make_class("Ruled", {"a": attrs.field(type=str, default="")})
    cls.__json_schema__ = declared  # type: ignore[attr-defined]
    error = _schema_error(cls)
    assert error.field is None and "__json_schema__" in str(error)


@attrs.frozen
class Keyed:
    __json_schema__: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"properties": {"kind": {"const": "a"}, "opts": {"propertyNames": {"enum": ["x"]}}}},
            {
                "properties": {
                    "kind": {"const": "b"},
                    "opts": {"properties": {"y": {"maxLength": 1}}},
                }
            },
        ]
    }
    kind: str = "a"
    opts: dict[str, str] = attrs.field(factory=dict)


def test_a_class_rule_names_a_field_with_a_dot_and_a_mapping_member_in_brackets() -> None:
    assert _refusal({"kind": "b", "opts": {"y": "long"}}, Keyed).field == "opts[y]"
    assert _refusal({"kind": "a", "opts": {"z": ""}}, Keyed).field == "opts[z]"
    assert structure_params({"kind": "b", "opts": {"y": "s"}}, Keyed).opts == {"y": "s"}
    assert first_error(schema_of(Keyed), {"kind": "c"}) == (
        "kind",
        "'kind' must be 'a'",
    )


# -- the checker: exact multipleOf, linear uniqueItems, short messages ----------------------------


def test_multiple_of_is_exact_and_never_overflows() -> None:
    tenth = {"type": "number", "multipleOf": 0.1}
    assert first_error(tenth, 0.30000000001) is not None  # as jsonschema refuses it
    assert first_error(tenth, 0.5) is None
    # 0.1 is no exact tenth: 10**400 is no multiple of it, and saying so raises no OverflowError
    assert first_error(tenth, 10**400) == ("", "the value must be a multiple of 0.1")
    assert first_error({"type": "number", "multipleOf": 3}, 10**400 + 1) is not None
    assert first_error({"type": "number", "multipleOf": 3}, 3 * 10**400) is None
    assert first_error({"type": "number", "multipleOf": 0.5}, 1e308) is None
    assert first_error({"type": "integer", "multipleOf": 0.1}, 10**400 + 1) is not None


def test_unique_items_is_linear_and_keeps_json_equality(monkeypatch: pytest.MonkeyPatch) -> None:
    unique = {"type": "array", "uniqueItems": True}
    assert first_error(unique, [1, 1.0]) == ("[1]", "'[1]' repeats an earlier item")
    assert first_error(unique, [1, True, 0, False, "1", None, [1], [True]]) is None
    assert first_error(unique, [{"a": [1]}, {"a": [1.0]}]) is not None
    assert first_error(unique, [{"a": 1}, {"a": True}]) is None

    calls = 0
    equal = _schema_check._equal

    def counted(a: Any, b: Any) -> bool:
        nonlocal calls
        calls += 1
        return equal(a, b)

    monkeypatch.setattr(_schema_check, "_equal", counted)
    # 3 000 distinct objects: a pairwise scan compares them 4.5 million times
    many = [{"n": i} for i in range(3_000)]
    assert first_error(unique, many) is None
    assert calls < 30_000


# -- what registration refuses: classes that refer to themselves, empty or unsayable limits --------


@attrs.frozen
class Node:
    name: str
    children: list[Node] = attrs.field(factory=list)


@attrs.frozen
class Ping:
    pong: Pong | None = None


@attrs.frozen
class Pong:
    ping: Ping | None = None


@pytest.mark.parametrize("cls", [Node, Ping], ids=lambda c: c.__name__)
def test_a_class_that_refers_to_itself_is_refused(cls: type) -> None:
    error = _schema_error(cls)
    assert "refer to themselves" in error.reason


def test_a_field_whose_limits_allow_no_value_is_refused() -> None:
    @attrs.frozen
    class Never:
        mode: Literal["a"] = attrs.field(validator=v.in_(("b",)))

    assert "no value" in _schema_error(Never).reason

    @attrs.frozen
    class NotOne:  # JSON equality: true is not 1, so no value is both
        flag: Literal[True] = attrs.field(validator=v.in_((1,)))

    assert "no value" in _schema_error(NotOne).reason

    @attrs.frozen
    class Some:
        mode: Literal["a", "b"] = attrs.field(validator=v.in_(("b", "c")))

    assert _props(Some)["mode"]["enum"] == ["b"]


def test_a_length_limit_on_an_any_field_says_which_types_have_a_length() -> None:
    @attrs.frozen
    class Loose:
        x: Any = attrs.field(validator=v.min_len(1))
        y: Any = attrs.field(default=None, validator=v.optional(v.max_len(3)))

    props = _props(Loose)
    assert first_error(props["x"], 5) is not None  # the validator refuses len(5) too
    assert _refusal({"x": 5}, Loose).field == "x"
    assert first_error(props["x"], "a") is None and first_error(props["x"], [1]) is None
    assert first_error(props["y"], None) is None and first_error(props["y"], 5) is not None
    assert structure_params({"x": "a", "y": None}, Loose).y is None


def test_a_range_on_a_float_field_takes_whole_numbers_only() -> None:
    @attrs.frozen
    class Ranged:
        f: float = attrs.field(validator=v.in_(range(10)))
        n: int = attrs.field(default=0, validator=v.in_(range(10)))

    props = _props(Ranged)
    assert first_error(props["f"], 2.5) is not None  # 2.5 not in range(10): the validator agrees
    assert first_error(props["f"], 2.0) is None and structure_params({"f": 2.0}, Ranged).f == 2.0
    assert "multipleOf" not in props["n"]

    @attrs.frozen
    class Untyped:
        x: Any = attrs.field(validator=v.in_(range(3)))

    assert "range" in _schema_error(Untyped).reason


def test_a_default_its_own_schema_refuses_is_refused() -> None:
    @attrs.frozen
    class Broken:
        x: int = attrs.field(default=0, validator=v.ge(10))

    error = _schema_error(Broken)
    assert error.field == "x" and "default 0" in error.reason

    @attrs.frozen
    class Fine:
        x: int = attrs.field(default=10, validator=v.ge(10))
        t: tuple[str, ...] = attrs.field(default=("a",), validator=v.max_len(2))
        c: Color = Color.RED
        o: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))

    assert _props(Fine)["x"]["default"] == 10


def test_a_refusal_shows_a_long_value_shortened() -> None:
    @attrs.frozen
    class Word:
        word: str = attrs.field(validator=v.matches_re("[a-z]+"))
        mode: str = attrs.field(default="a", validator=v.in_(("a", "b")))

    huge = "A" * 900_000
    for raw in ({"word": huge}, {"word": "ok", "mode": huge}):
        error = _refusal(raw, Word)
        assert error.field in raw and len(error.message) < 500, len(error.message)
        assert "…" in error.message
    _, message = first_error({"enum": ["a", "b"]}, huge) or ("", "")
    assert len(message) < 300 and "…" in message


def test_the_checker_tests_the_length_before_the_pattern() -> None:
    # (a+)+$ backtracks exponentially on "aaa...ab": were the pattern tried first on these 60
    # characters, this would not end before the test's timeout
    schema = {"type": "string", "maxLength": 10, "pattern": "^(a+)+$"}
    assert first_error(schema, "a" * 59 + "b") == (
        "",
        "the value must be at most 10 characters long",
    )

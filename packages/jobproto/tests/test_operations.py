"""Tests for operations, create-request validation and parameter schemas (jobproto._operations,
jobproto._schema). Handlers are registered, never awaited: no event loop."""

from __future__ import annotations

import datetime
import enum
import json
from typing import Any, Literal

import attrs
import pytest

from jobproto._errors import LocalProtocolError, RequestError
from jobproto._operations import Operation, Operations
from jobproto._schema import SchemaError, schema_of


@attrs.frozen
class EchoParams:
    messages: list[str]
    delay: float = 0.0


@attrs.frozen
class Message:
    role: Literal["user", "assistant"]
    content: str


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class ChatParams:
    model: str = attrs.field(metadata={"description": "model id"})
    messages: list[Message] = attrs.field(metadata={"schema": {"minItems": 1}})
    max_tokens: int = attrs.field(
        default=16, metadata={"schema": {"minimum": 1, "maximum": 4096}, "description": "limit"}
    )
    temperature: float = 1.0
    stream: bool = False
    seed: int | None = None
    stop: list[str] = attrs.field(factory=list)
    tags: dict[str, int] = attrs.field(factory=dict)
    pair: tuple[int, ...] = ()
    mode: Literal["fast", "slow"] = "fast"
    color: Color = Color.RED
    extra: Any = None
    nested: Message | None = None


@attrs.frozen
class Empty:
    pass


class NotAttrs:
    pass


def ops_with_echo() -> Operations:
    ops = Operations()

    @ops.operation("echo", summary="Echo the messages")
    async def echo(params: EchoParams) -> dict[str, int]:
        return {"count": len(params.messages)}

    return ops


# --- registration ---------------------------------------------------------------------------------


def test_decorator_takes_the_param_class_from_the_annotation() -> None:
    ops = Operations()

    @ops.operation()
    async def chat(params: ChatParams) -> None:
        """Chat with a model.

        More text that is not the summary.
        """

    @ops.operation("echo")
    async def anything(p: EchoParams) -> None:
        pass

    assert ops.names == ["chat", "echo"]
    assert "chat" in ops
    assert "nope" not in ops
    assert len(ops) == 2
    op = ops.get("chat")
    assert op.params is ChatParams
    assert op.handler is chat
    assert op.summary == "Chat with a model."
    assert ops.get("echo").params is EchoParams
    assert ops.get("echo").handler is anything
    assert ops.get("echo").summary == ""
    assert [o.name for o in ops] == ["chat", "echo"]


def test_the_decorator_returns_the_handler() -> None:
    ops = Operations()

    async def handler(params: EchoParams) -> None:
        pass

    assert ops.operation("x")(handler) is handler


def test_explicit_summary_wins_over_the_docstring() -> None:
    ops = Operations()

    @ops.operation("x", summary="explicit")
    async def handler(params: EchoParams) -> None:
        """Docstring."""

    assert ops.get("x").summary == "explicit"


def test_duplicate_names_raise() -> None:
    ops = ops_with_echo()
    with pytest.raises(LocalProtocolError, match="echo"):

        @ops.operation("echo")
        async def again(params: EchoParams) -> None:
            pass

    with pytest.raises(LocalProtocolError):
        ops.add(Operation("echo", EchoParams, ops.get("echo").handler))
    assert len(ops) == 1


def test_duplicate_names_in_the_constructor_and_merge_raise() -> None:
    op = ops_with_echo().get("echo")
    with pytest.raises(LocalProtocolError):
        Operations([op, op])
    ops = Operations([op])
    with pytest.raises(LocalProtocolError):
        ops.merge(ops_with_echo())


def test_merge() -> None:
    ops = Operations()

    @ops.operation("other")
    async def other(params: Empty) -> None:
        pass

    ops.merge(ops_with_echo())
    assert ops.names == ["echo", "other"]


def test_params_must_be_an_attrs_class() -> None:
    ops = Operations()
    with pytest.raises(LocalProtocolError, match="attrs"):

        @ops.operation("bad")
        async def bad(params: NotAttrs) -> None:
            pass

    assert len(ops) == 0


def test_a_handler_takes_exactly_one_annotated_parameter() -> None:
    ops = Operations()

    async def none() -> None:
        pass

    async def two(a: EchoParams, b: EchoParams) -> None:
        pass

    async def unannotated(params) -> None:  # type: ignore[no-untyped-def]
        pass

    for handler in (none, two, unannotated):
        with pytest.raises(LocalProtocolError):
            ops.operation("x")(handler)  # type: ignore[arg-type]
    assert len(ops) == 0


# --- parse ----------------------------------------------------------------------------------------


def test_parse_a_valid_request() -> None:
    ops = ops_with_echo()
    op, params = ops.parse({"operation": "echo", "messages": ["a", "b"], "delay": 1})
    assert op is ops.get("echo")
    assert params == EchoParams(["a", "b"], 1.0)


def test_unknown_operation_lists_the_names() -> None:
    ops = ops_with_echo()

    @ops.operation("chat")
    async def chat(params: ChatParams) -> None:
        pass

    for call in (lambda: ops.get("nope"), lambda: ops.parse({"operation": "nope"})):
        with pytest.raises(RequestError) as info:
            call()
        exc = info.value
        assert exc.status == 422
        assert exc.code == "unknown_operation"
        assert exc.field == "operation"
        assert exc.details == {"operations": ["chat", "echo"]}
        assert "'nope'" in exc.message
        assert "chat, echo" in exc.message


@pytest.mark.parametrize("body", [None, [], ["echo"], "echo", 5, True])
def test_parse_refuses_a_non_object(body: Any) -> None:
    with pytest.raises(RequestError) as info:
        ops_with_echo().parse(body)
    assert info.value.status == 422
    assert info.value.code == "validation_error"


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"operation": None}])
def test_parse_refuses_a_missing_operation(body: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as info:
        ops_with_echo().parse(body)
    assert info.value.status == 422
    assert info.value.code == "validation_error"
    assert info.value.field == "operation"
    assert "missing" in info.value.message


@pytest.mark.parametrize("name", [5, True, ["echo"], {"name": "echo"}])
def test_parse_refuses_a_non_string_operation(name: Any) -> None:
    with pytest.raises(RequestError) as info:
        ops_with_echo().parse({"operation": name, "messages": []})
    assert info.value.status == 422
    assert info.value.code == "validation_error"
    assert info.value.field == "operation"


def test_parse_validates_the_params() -> None:
    ops = ops_with_echo()
    with pytest.raises(RequestError) as info:
        ops.parse({"operation": "echo", "messages": ["a"], "delay": "1"})
    assert (info.value.status, info.value.code, info.value.field) == (
        422,
        "validation_error",
        "delay",
    )
    with pytest.raises(RequestError) as info:
        ops.parse({"operation": "echo"})
    assert info.value.field == "messages"
    with pytest.raises(RequestError) as info:
        ops.parse({"operation": "echo", "messages": [], "Operation": "x"})
    assert info.value.field == "Operation"


# --- schemas --------------------------------------------------------------------------------------


def test_json_schema_of_an_operation() -> None:
    ops = ops_with_echo()
    assert ops.get("echo").json_schema() == {
        "type": "object",
        "title": "echo",
        "description": "Echo the messages",
        "properties": {
            "operation": {"const": "echo"},
            "messages": {"type": "array", "items": {"type": "string"}},
            "delay": {"type": "number", "default": 0.0},
        },
        "required": ["operation", "messages"],
        "additionalProperties": False,
    }


def test_json_schema_without_params_or_summary() -> None:
    ops = Operations()

    @ops.operation("ping")
    async def ping(params: Empty) -> None:
        pass

    schema = ops.get("ping").json_schema()
    assert schema["properties"] == {"operation": {"const": "ping"}}
    assert schema["required"] == ["operation"]
    assert schema["additionalProperties"] is False
    assert "description" not in schema


def test_schema_of_every_supported_type() -> None:
    schema = schema_of(ChatParams)
    assert schema["type"] == "object"
    assert schema["title"] == "ChatParams"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["model", "messages"]
    props = schema["properties"]
    assert list(props) == [a.name for a in attrs.fields(ChatParams)]
    assert props["model"] == {"type": "string", "description": "model id"}
    assert props["messages"] == {
        "type": "array",
        "items": {
            "type": "object",
            "title": "Message",
            "properties": {
                "role": {"enum": ["user", "assistant"]},
                "content": {"type": "string"},
            },
            "required": ["role", "content"],
            "additionalProperties": False,
        },
        "minItems": 1,
    }
    assert props["max_tokens"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 4096,
        "description": "limit",
        "default": 16,
    }
    assert props["temperature"] == {"type": "number", "default": 1.0}
    assert props["stream"] == {"type": "boolean", "default": False}
    assert props["seed"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    # Factory defaults are not values a schema can show.
    assert props["stop"] == {"type": "array", "items": {"type": "string"}}
    assert props["tags"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["pair"] == {"type": "array", "items": {"type": "integer"}, "default": ()}
    assert props["mode"] == {"enum": ["fast", "slow"], "default": "fast"}
    assert props["color"]["enum"] == ["red", "blue"]
    assert props["extra"] == {"default": None}
    nested = props["nested"]
    assert nested["default"] is None
    assert nested["anyOf"][1] == {"type": "null"}
    assert nested["anyOf"][0]["title"] == "Message"
    assert nested["anyOf"][0]["additionalProperties"] is False


def test_schema_of_a_class_without_fields() -> None:
    assert schema_of(Empty) == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
        "title": "Empty",
    }


def test_the_operation_schema_does_not_change_the_class_schema() -> None:
    before = schema_of(EchoParams)
    ops_with_echo().get("echo").json_schema()
    assert schema_of(EchoParams) == before
    assert "operation" not in before["properties"]


def test_schemas_are_json() -> None:
    """An enum field's default goes into the schema by value (``"red"``), as ``_type_schema``
    gives the enum itself; the member (``Color.RED``) would make ``/openapi.json`` unencodable.
    """
    schema = schema_of(ChatParams)
    assert schema["properties"]["color"] == {"enum": ["red", "blue"], "default": "red"}
    json.dumps(schema)
    json.dumps(ops_with_echo().get("echo").json_schema())


# --- mistakes refused at registration, naming the handler -----------------------------------------

HERE = __name__  # handlers below are named as module.qualname


@attrs.frozen
class When:
    at: datetime.datetime


def test_a_bare_decorator_is_refused_and_says_to_add_parentheses() -> None:
    ops = Operations()
    with pytest.raises(LocalProtocolError) as info:

        @ops.operation  # type: ignore[arg-type]
        async def echo(params: EchoParams) -> None:
            pass

    message = str(info.value)
    assert "@ops.operation()" in message
    assert f"{HERE}.test_a_bare_decorator_is_refused_and_says_to_add_parentheses.<locals>.echo" in (
        message
    )
    assert len(ops) == 0


def test_a_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="string"):
        Operations().operation(5)  # type: ignore[arg-type]


def test_a_handler_that_is_not_async_is_refused() -> None:
    ops = Operations()

    def blocking(params: EchoParams) -> None:
        pass

    async def agen(params: EchoParams) -> Any:
        yield 1

    for handler in (blocking, agen):
        with pytest.raises(LocalProtocolError) as info:
            ops.operation("x")(handler)  # type: ignore[arg-type]
        message = str(info.value)
        assert "async def" in message
        assert "anyio.to_thread.run_sync" in message
        assert f"handler {handler.__module__}.{handler.__qualname__}" in message
    with pytest.raises(LocalProtocolError, match="async def"):
        ops.add(Operation("x", EchoParams, blocking))  # type: ignore[arg-type]
    assert len(ops) == 0


def test_async_callables_that_are_not_plain_functions_are_handlers() -> None:
    import functools

    class Handler:
        async def __call__(self, params: EchoParams) -> None:
            pass

    async def with_extra(params: EchoParams, extra: int) -> None:
        pass

    ops = Operations(
        [
            Operation("obj", EchoParams, Handler()),
            Operation("partial", EchoParams, functools.partial(with_extra, extra=1)),
        ]
    )
    assert ops.names == ["obj", "partial"]
    assert ops.get("partial").handler_name.endswith("<locals>.with_extra")


@pytest.mark.parametrize(
    "name",
    [
        "has space",
        "a/b",
        "Echo",
        "1x",
        "_x",
        "x-y",
        "a..b",
        "a.",
        ".a",
        "a.1b",
        "é",
        "x" * 65,
        "echo\n",
        "",  # an explicit name must be one: only None means the function's name
    ],
)
def test_invalid_operation_names_are_refused(name: str) -> None:
    ops = Operations()

    async def handler(params: EchoParams) -> None:
        pass

    with pytest.raises(LocalProtocolError) as info:
        ops.operation(name)(handler)
    assert "lower-case" in str(info.value)
    assert f"{HERE}.test_invalid_operation_names_are_refused.<locals>.handler" in str(info.value)
    assert len(ops) == 0


@pytest.mark.parametrize(
    "name", ["infer", "worker_spawn", "models.pull", "a", "v2", "x" * 64, "a.b_c.d9"]
)
def test_valid_operation_names(name: str) -> None:
    ops = Operations()

    async def handler(params: EchoParams) -> None:
        pass

    ops.operation(name)(handler)
    assert ops.names == [name]


def test_registration_errors_name_the_handler() -> None:
    ops = ops_with_echo()

    async def again(params: EchoParams) -> None:
        pass

    async def odd(params: NotAttrs) -> None:
        pass

    async def two(a: EchoParams, b: EchoParams) -> None:
        pass

    cases = [
        (lambda: ops.operation("echo")(again), "again", "defined twice"),
        (lambda: ops.operation("odd")(odd), "odd", "attrs"),
        (lambda: ops.operation("two")(two), "two", "exactly one"),
    ]
    for register, handler, why in cases:
        with pytest.raises(LocalProtocolError) as info:
            register()
        message = str(info.value)
        assert f"{HERE}.test_registration_errors_name_the_handler.<locals>.{handler}" in message
        assert why in message
    # the duplicate also names the handler that has the name
    with pytest.raises(LocalProtocolError, match=r"first by .*ops_with_echo\.<locals>\.echo"):
        ops.operation("echo")(again)


def test_an_unreadable_annotation_is_refused_naming_the_handler() -> None:
    ops = Operations()

    async def handler(params: NoSuchClass) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(LocalProtocolError, match=r"handler .*<locals>\.handler.*NoSuchClass"):
        ops.operation("x")(handler)


def test_a_schema_refusal_at_registration_names_the_operation_and_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registration builds the operation's schema once, so what jobproto._schema refuses (a field
    type it cannot publish) fails at ``@ops.operation(...)``, with the refusal's own class and
    text, the operation and the handler."""
    import jobproto._operations

    class Refused(LocalProtocolError):
        pass

    def refusing(cls: type) -> dict[str, Any]:
        if cls is When:
            raise Refused("When.at: datetime is not supported; send an RFC 3339 string (str)")
        return schema_of(cls)

    monkeypatch.setattr(jobproto._operations, "schema_of", refusing)
    ops = Operations()

    with pytest.raises(Refused) as info:

        @ops.operation("schedule")
        async def schedule(params: When) -> None:
            pass

    message = str(info.value)
    assert message.startswith("operation 'schedule' (handler ")
    assert message.count(".<locals>.schedule") == 1
    assert "When.at: datetime is not supported" in message
    assert len(ops) == 0
    ops_with_echo()  # other classes still register


def test_a_datetime_field_is_refused_at_registration_naming_the_handler_once() -> None:
    """Was: accepted, published as ``{}``, and every create then got a 422 with no field."""
    ops = Operations()
    with pytest.raises(SchemaError) as info:

        @ops.operation("schedule")
        async def schedule(params: When) -> None:
            pass

    message = str(info.value)
    handler = f"{HERE}.test_a_datetime_field_is_refused_at_registration_naming_the_handler_once"
    assert message.startswith(f"operation 'schedule' (handler {handler}.<locals>.schedule): ")
    assert message.count("<locals>.schedule") == 1
    assert "When.at" in message and "datetime" in message
    assert (info.value.cls, info.value.field) == (When, "at")
    assert len(ops) == 0

"""Operations: the typed handlers a service offers, and validation of create requests against them.

An operation is a name, an attrs class of parameters and an async handler taking an instance of it::

    ops = Operations()

    @ops.operation("echo", summary="Emit the given messages, then succeed")
    async def echo(params: EchoParams) -> dict[str, int]:
        narrate("echo", "echoing")
        ...

A create request is validated completely (operation known, fields present, no extra fields, right
types, validators satisfied) before any job exists. The parameter classes also give each
operation's JSON Schema for ``/openapi.json``.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import attrs

from ._errors import LocalProtocolError, RequestError
from ._schema import schema_of
from ._wire import structure_params

__all__ = ["Operation", "Operations"]

P = TypeVar("P")
Handler = Callable[[P], Awaitable[Any]]


@attrs.frozen
class Operation(Generic[P]):
    name: str
    params: type[P]
    handler: Callable[[P], Awaitable[Any]]
    summary: str = ""

    def json_schema(self) -> dict[str, Any]:
        """The schema of a create request for this operation (``operation`` included)."""
        schema = schema_of(self.params)
        props = {"operation": {"const": self.name}, **schema.get("properties", {})}
        out = dict(schema, properties=props, required=["operation", *schema.get("required", [])])
        out["title"] = self.name
        if self.summary:
            out["description"] = self.summary
        return out


class Operations:
    """The set of operations one service accepts."""

    def __init__(self, operations: typing.Iterable[Operation[Any]] = ()) -> None:
        self._ops: dict[str, Operation[Any]] = {}
        for op in operations:
            self.add(op)

    def add(self, op: Operation[Any]) -> None:
        if op.name in self._ops:
            raise LocalProtocolError(f"operation {op.name!r} is defined twice")
        if not attrs.has(op.params):
            raise LocalProtocolError(f"parameters of {op.name!r} must be an attrs class")
        if any(f.name == "operation" for f in attrs.fields(op.params)):
            raise LocalProtocolError(f"parameters of {op.name!r} may not have a field 'operation'")
        self._ops[op.name] = op

    def operation(
        self, name: str | None = None, *, summary: str = ""
    ) -> Callable[[Handler[P]], Handler[P]]:
        """Decorator: register ``handler``; its parameter class comes from its annotation."""

        def register(handler: Handler[P]) -> Handler[P]:
            hints = typing.get_type_hints(handler)
            hints.pop("return", None)
            if len(hints) != 1:
                raise LocalProtocolError("a handler takes exactly one annotated parameter")
            (params,) = hints.values()
            doc = summary or (handler.__doc__ or "").strip().split("\n")[0]
            self.add(Operation(name or handler.__name__, params, handler, doc))
            return handler

        return register

    def merge(self, other: Operations) -> None:
        for op in other:
            self.add(op)

    def __iter__(self) -> Iterator[Operation[Any]]:
        return iter(self._ops.values())

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def names(self) -> list[str]:
        return sorted(self._ops)

    def get(self, name: str) -> Operation[Any]:
        try:
            return self._ops[name]
        except KeyError:
            raise RequestError(
                422,
                "unknown_operation",
                f"unknown operation {name!r}; this service offers: {', '.join(self.names)}",
                field="operation",
                details={"operations": self.names},
            ) from None

    def parse(self, body: Any) -> tuple[Operation[Any], Any]:
        """Validate a create request body into ``(operation, params)`` or raise a 422."""
        if not isinstance(body, Mapping):
            raise RequestError(422, "validation_error", "the request body must be a JSON object")
        name = body.get("operation")
        if name is None:
            raise RequestError(
                422, "validation_error", "required field 'operation' is missing", field="operation"
            )
        if not isinstance(name, str):
            raise RequestError(
                422, "validation_error", "'operation' must be a string", field="operation"
            )
        op = self.get(name)
        fields = {k: v for k, v in body.items() if k != "operation"}
        return op, structure_params(fields, op.params)

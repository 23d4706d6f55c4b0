"""Operations: the typed handlers a service offers, and validation of create requests against them.

An operation is a name, an attrs class of parameters and an async handler taking an instance of it::

    import attrs

    from jobproto import Operations, narrate

    @attrs.frozen
    class EchoParams:
        messages: list[str] = attrs.field(validator=attrs.validators.max_len(100))

    ops = Operations()

    @ops.operation("echo", summary="Narrate the given messages, then succeed")
    async def echo(params: EchoParams) -> dict[str, int]:
        for message in params.messages:
            narrate("echo", message)
        return {"echoed": len(params.messages)}

A create request is validated completely (operation known, fields present, no extra fields, right
types, validators satisfied) before any job exists. The parameter classes also give each
operation's JSON Schema for ``/openapi.json``.

Mistakes are refused when the operation is registered, each naming the operation and its handler
(``module.qualname``): a decorator written without parentheses, a handler that is not ``async def``
(run blocking code from one with ``await anyio.to_thread.run_sync(...)``), a name that is not
``OPERATION_NAME`` (lower-case words joined by ``_``, dotted for namespaces, at most 64
characters), parameters that are not an attrs class, and fields whose schema cannot be published
(``Operation.json_schema``, built once at registration).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import attrs

from ._errors import LocalProtocolError, RequestError
from ._schema import schema_of
from ._wire import structure_params

__all__ = ["MAX_OPERATION_NAME", "OPERATION_NAME", "Operation", "Operations", "handler_name"]

#: what an operation name looks like: lower-case words of letters, digits and ``_``, optionally
#: dotted (``infer``, ``worker_spawn``, ``models.pull``)
OPERATION_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
MAX_OPERATION_NAME = 64

P = TypeVar("P")
Handler = Callable[[P], Awaitable[Any]]


@attrs.frozen
class Operation(Generic[P]):
    name: str
    params: type[P]
    handler: Callable[[P], Awaitable[Any]]
    summary: str = ""
    #: how the job goes on after the replica running it stopped (a shared job store): called
    #: with its parameters and the last checkpoint it stored (``set_checkpoint``; ``{}`` if
    #: none), bound as the job like the handler, and returning the job's result as the handler
    #: would. None: such a job ends ``failed`` with code ``owner_lost``.
    resume: Callable[[P, Mapping[str, Any]], Awaitable[Any]] | None = None

    @property
    def handler_name(self) -> str:
        """The handler as ``module.qualname``: how every error about this operation names it."""
        return handler_name(self.handler)

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
        """Register ``op``, or raise ``LocalProtocolError`` saying what is wrong with it."""
        where = f"operation {op.name!r} (handler {op.handler_name})"
        if not isinstance(op.name, str) or not _valid_name(op.name):
            raise LocalProtocolError(
                f"{where}: an operation name is lower-case words of letters, digits and '_',"
                f" optionally dotted (like 'infer', 'worker_spawn', 'models.pull'),"
                f" at most {MAX_OPERATION_NAME} characters"
            )
        if op.name in self._ops:
            raise LocalProtocolError(
                f"{where}: operation {op.name!r} is defined twice"
                f" (first by {self._ops[op.name].handler_name})"
            )
        if not _is_async(op.handler):
            raise LocalProtocolError(
                f"{where}: the handler must be a coroutine function: make it 'async def' and run"
                " blocking code from it with 'await anyio.to_thread.run_sync(...)'"
            )
        if op.resume is not None and not _is_async(op.resume):
            raise LocalProtocolError(
                f"{where}: its resume ({handler_name(op.resume)}) must be a coroutine function:"
                " 'async def resume(params, checkpoint)'"
            )
        if not attrs.has(op.params):
            raise LocalProtocolError(
                f"{where}: parameters must be an attrs class, not {op.params!r}"
            )
        if any(f.name == "operation" for f in attrs.fields(op.params)):
            raise LocalProtocolError(f"{where}: parameters may not have a field 'operation'")
        try:
            op.json_schema()
        except LocalProtocolError as exc:
            # jobproto._schema refuses what it cannot publish (and so cannot enforce): the same
            # error (a SchemaError keeps its class, field and reason), saying which operation and
            # where its handler is.
            exc.args = (f"{where}: {exc}", *exc.args[1:])
            raise
        self._ops[op.name] = op

    def operation(
        self,
        name: str | None = None,
        *,
        summary: str = "",
        resume: Callable[[P, Mapping[str, Any]], Awaitable[Any]] | None = None,
    ) -> Callable[[Handler[P]], Handler[P]]:
        """Decorator: register ``handler``; its parameter class comes from its annotation.

        Write it with parentheses: ``@ops.operation()`` (the name is the function's) or
        ``@ops.operation("name")`` (a valid name: ``""`` is refused, not read as the function's).
        ``resume``: see ``Operation.resume`` (jobs that outlive the replica running them).
        """
        if name is not None and not isinstance(name, str):
            if callable(name):
                raise LocalProtocolError(
                    f"@ops.operation needs parentheses: write @ops.operation() or"
                    f' @ops.operation("name") above {handler_name(name)}'
                )
            raise LocalProtocolError(f"an operation name is a string, not {name!r}")

        def register(handler: Handler[P]) -> Handler[P]:
            # None only: an explicit name, "" too, must be a valid one (add() checks it)
            op_name = str(getattr(handler, "__name__", "")) if name is None else name
            where = f"operation {op_name!r} (handler {handler_name(handler)})"
            try:
                hints = typing.get_type_hints(handler)
            except Exception as exc:  # a bad annotation, whatever it raises
                raise LocalProtocolError(f"{where}: cannot read its annotations: {exc}") from exc
            hints.pop("return", None)
            if len(hints) != 1:
                raise LocalProtocolError(
                    f"{where}: a handler takes exactly one annotated parameter (its attrs"
                    f" parameters class), it has {len(hints)}"
                )
            (params,) = hints.values()
            doc = summary or (handler.__doc__ or "").strip().split("\n")[0]
            self.add(Operation(op_name, params, handler, doc, resume))
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


def handler_name(handler: object) -> str:
    """``module.qualname`` of a handler (of the function a ``functools.partial`` wraps)."""
    target = getattr(handler, "func", handler)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def _valid_name(name: str) -> bool:
    return len(name) <= MAX_OPERATION_NAME and OPERATION_NAME.fullmatch(name) is not None


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    # an object whose __call__ is async (functools.partial is seen through by inspect)
    call = getattr(handler, "__call__", None)  # noqa: B004 - the method itself is inspected
    return not inspect.isfunction(handler) and inspect.iscoroutinefunction(call)

"""The jobproto error tree.

Every error jobproto raises is one of these::

    JobProtoError
     ├── LocalProtocolError        our own caller misused the API (illegal transition, bad event)
     │    └── SchemaError          a parameter class jobproto cannot publish as it validates it
     ├── RemoteProtocolError       a peer broke jobproto/1 (bad envelope, bad status line)
     ├── RequestError (ValueError) a request refused with a 4xx; carries status, code, field
     │    ├── FieldError               a validator refusing one field's value (a 422 naming it)
     │    ├── JobNotFound (KeyError)
     │    └── IdempotencyConflict
     ├── TransportFailed           a request did not get an answer: the connection failed or broke
     │    └── ConnectFailed        no connection at all (refused, unknown host): nothing was sent
     └── JobFailed                 raised by a handler to fail its job with a code of its choosing

A ``RequestError`` becomes the one JSON error shape on the wire (``docs/protocol.md`` §Errors)::

    {"error": {"code": "validation_error", "message": "...", "field": "max_tokens"}}

The client raises ``jobproto.client.HTTPStatusError`` (a ``RequestError``) rebuilt from that shape,
so code that catches ``RequestError`` works the same on both sides of the wire. The client raises
``TransportFailed`` (``ConnectFailed`` when no connection could be opened) where the HTTP library
raised its own transport error, which stays chained as ``__cause__``: callers catch jobproto's
errors and need not import the HTTP library.

Validators of operation parameters may raise any ``ValueError`` or ``TypeError``: the strict
converter (``_wire``) knows which attribute's validator refused, and reports that attribute as the
422's ``field`` whatever the message says (a member of a list or mapping when the refusing
validator is a member validator of ``deep_iterable``/``deep_mapping``: ``stop[1]``,
``labels[gpu]``). A validator that wants to name another field (a check
across fields, a key inside a mapping) raises ``FieldError(field, message)``; ``field`` is relative
to the class being validated, and the converter prefixes the path of nested objects
(``messages[1].content``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConnectFailed",
    "FieldError",
    "IdempotencyConflict",
    "JobFailed",
    "JobNotFound",
    "JobProtoError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RequestError",
    "TransportFailed",
]


class JobProtoError(Exception):
    """Base of every error raised by jobproto."""


class LocalProtocolError(JobProtoError):
    """The local caller asked for something jobproto/1 forbids (a programming error)."""


class RemoteProtocolError(JobProtoError):
    """A peer sent something that does not follow jobproto/1."""


class RequestError(JobProtoError, ValueError):
    """A request refused with a 4xx status and the documented error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The wire shape: ``{"error": {"code", "message", ["field"], ["details"]}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class FieldError(RequestError):
    """One field's value is refused: raise it from an attrs validator or ``__attrs_post_init__``.

    It is a ``ValueError`` (through ``RequestError``), so attrs and cattrs treat it like any
    validator error; on the wire it becomes the 422 ``validation_error`` with ``field`` set to the
    path of the field (``FieldError("content", ...)`` inside ``messages[1]`` is
    ``messages[1].content``). It is also a ``RequestError``: a request whose parameters raise it
    is refused with that 422, which is what it means.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, "validation_error", message, field=field)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.field!r}, {self.message!r})"


class JobNotFound(RequestError, KeyError):
    """No job with this id exists (or it has been removed after its retention time)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(404, "job_not_found", f"no job with id {job_id!r}", field="job_id")
        self.job_id = job_id

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class IdempotencyConflict(RequestError):
    """The Idempotency-Key was already used with a different request body."""

    def __init__(self, key: str) -> None:
        super().__init__(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
            field="Idempotency-Key",
            details={"key": key},
        )


class TransportFailed(JobProtoError):
    """A request to a peer got no answer: connecting failed, or the connection broke or timed out.

    Raised by the client adapter; the HTTP library's own error is ``__cause__``. Whether the peer
    acted on the request is unknown (except for ``ConnectFailed``), so only idempotent requests
    (or a create with an Idempotency-Key) are safe to send again.
    """


class ConnectFailed(TransportFailed):
    """No connection to the peer could be opened (refused, unknown host, unreachable).

    Nothing was sent, so the request is safe to send again, for example once the service is
    started.
    """


class JobFailed(JobProtoError):
    """Raise from a handler to end its job ``failed`` with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

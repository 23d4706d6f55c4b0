"""The worker record and the heartbeat: what a hive tells the queen about itself.

A hive sends its ``Heartbeat`` as the body of ``PUT {queen}/v1/hives/{hive_id}`` every heartbeat
interval (and at once after a worker or model changes); registering and beating are the same
request. Each ``WorkerRecord`` is one worker as the hive's supervisor sees it: the same record is
the result of ``worker_spawn`` and an entry of ``worker_list`` and of the queen's ``status``.

Both are plain attrs classes; ``jobproto.converter`` structures and unstructures them (the enum
travels as its value, ``None`` as ``null``). ``parse_heartbeat`` and ``parse_worker_record`` read
them on the queen: they ignore keys they do not know (so a newer hive is not refused by an older
queen, which would drop it out of routing) and refuse every known key with a wrong value, with a
422 ``RequestError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from jobproto import FieldError, RequestError

from .ids import check_hive_id, name_validator
from .lifecycle import WorkerState
from .reading import read_result
from .values import interval_validator, optional_url_validator, url_validator

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "Heartbeat",
    "WorkerRecord",
    "parse_heartbeat",
    "parse_worker_record",
]

#: the interval a heartbeat that does not say its own is taken to have, in seconds
DEFAULT_HEARTBEAT_INTERVAL = 5.0


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise FieldError(attribute.name, f"'{attribute.name}' must not be negative, got {value}")


def _positive_pid(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise FieldError(attribute.name, f"'{attribute.name}' must be a process id, got {value}")


def _gpus(_: object, attribute: attrs.Attribute[Any], value: list[int]) -> None:
    if any(g < 0 for g in value):
        raise FieldError(attribute.name, f"'{attribute.name}' must be GPU indices, got {value}")


def _model_names(_: object, attribute: attrs.Attribute[Any], value: list[str]) -> None:
    for name in value:
        if not name:
            raise FieldError(
                attribute.name, f"'{attribute.name}' must be model names, got {name!r}"
            )


@attrs.frozen
class WorkerRecord:
    """One worker as its hive reports it (``docs/tiers.md`` §hive, worker record)."""

    worker_id: str = attrs.field(validator=name_validator)
    #: the model's name on the hive
    model: str = attrs.field(validator=attrs.validators.min_len(1))
    state: WorkerState
    #: the engine it runs ("auto" until the worker says which one that turned out to be)
    engine: str = ""
    #: where the queen reaches it; None until it listens
    url: str | None = attrs.field(default=None, validator=optional_url_validator)
    pid: int | None = attrs.field(default=None, validator=_positive_pid)
    restarts: int = attrs.field(default=0, validator=_not_negative)
    #: when its current run started (RFC 3339, UTC)
    started_at: str | None = None
    #: the exit status of its last run (negative: killed by that signal)
    last_exit: int | None = None
    #: why it last failed
    error: str | None = None
    device: str | None = None
    #: the GPUs the hive's placement gave it (nvidia-smi indices)
    gpus: list[int] = attrs.field(factory=list, validator=_gpus)
    #: its log file on the hive's machine
    log_path: str | None = None


@attrs.frozen
class Heartbeat:
    """The body of ``PUT /v1/hives/{hive_id}`` (registration and heartbeat alike)."""

    #: where the queen reaches the hive
    url: str = attrs.field(validator=url_validator)
    #: optional in the body; when given it must match the id in the path
    hive_id: str | None = None
    #: what the hive found on its machine (``capabilities`` operation): passed on as is
    capabilities: dict[str, Any] = attrs.field(factory=dict)
    workers: list[WorkerRecord] = attrs.field(factory=list)
    #: the names of the models on the hive
    models: list[str] = attrs.field(factory=list, validator=_model_names)
    free_memory_bytes: int | None = attrs.field(default=None, validator=_not_negative)
    heartbeat_interval: float = attrs.field(
        default=DEFAULT_HEARTBEAT_INTERVAL, validator=interval_validator
    )


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "validation_error", f"{field}: {message}", field=field)


def parse_worker_record(raw: Any, path: str = "worker") -> WorkerRecord:
    """Validate one worker record (unknown keys ignored); a 422 ``RequestError`` naming the
    field as ``{path}.{field}``."""
    if not isinstance(raw, Mapping):
        raise _invalid(path, "must be an object")
    try:
        return read_result(raw, WorkerRecord)
    except RequestError as exc:
        field = f"{path}.{exc.field}" if exc.field else path
        message = exc.message.removeprefix(f"{exc.field}: ") if exc.field else exc.message
        raise _invalid(field, message) from None


def parse_heartbeat(hive_id: str, body: Any) -> Heartbeat:
    """Validate a ``PUT /v1/hives/{hive_id}`` body (unknown keys ignored), or raise a 422
    ``RequestError`` naming the field."""
    try:
        check_hive_id(hive_id, "hive_id")
    except FieldError as exc:
        raise _invalid("hive_id", exc.message) from None
    if not isinstance(body, Mapping):
        raise RequestError(422, "validation_error", "the request body must be a JSON object")
    beat = read_result(body, Heartbeat)
    if beat.hive_id is not None and beat.hive_id != hive_id:
        raise _invalid(
            "hive_id", f"{beat.hive_id!r} does not match the hive id in the path {hive_id!r}"
        )
    return beat

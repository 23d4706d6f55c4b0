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

Everything a heartbeat carries is bounded (issue 10, "Hive identity"): the interval between
``MIN_HEARTBEAT_INTERVAL`` and ``MAX_HEARTBEAT_INTERVAL`` (an interval of ``1e300`` kept a silent
hive ``up`` forever), at most ``MAX_WORKERS`` workers and ``MAX_MODELS`` models, every string at
most ``MAX_NAME`` or ``MAX_TEXT`` characters, and every worker URL on the hive's own host: the
queen contacts the workers a hive reports, so a hive that could name any address could make the
queen send prompts there, or use it to probe other machines' ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from jobproto import FieldError, RequestError

from .ids import check_hive_id, name_validator
from .lifecycle import WorkerState
from .reading import read_result
from .values import check_interval, optional_url_validator, url_validator

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "MAX_CAPABILITIES",
    "MAX_HEARTBEAT_INTERVAL",
    "MAX_MODELS",
    "MAX_NAME",
    "MAX_TEXT",
    "MAX_URL",
    "MAX_WORKERS",
    "MIN_HEARTBEAT_INTERVAL",
    "Heartbeat",
    "WorkerRecord",
    "parse_heartbeat",
    "parse_worker_record",
]

#: the interval a heartbeat that does not say its own is taken to have, in seconds
DEFAULT_HEARTBEAT_INTERVAL = 5.0
#: the heartbeat intervals a queen accepts, in seconds
MIN_HEARTBEAT_INTERVAL = 0.1
MAX_HEARTBEAT_INTERVAL = 300.0
#: most workers and models one heartbeat may list, and keys of its capabilities
MAX_WORKERS = 256
MAX_MODELS = 4096
MAX_CAPABILITIES = 256
#: longest URL, name (model, engine, device, time) and free text (error, log path), in characters
MAX_URL = 2048
MAX_NAME = 256
MAX_TEXT = 4096


def _at_most(limit: int) -> Any:
    """A validator: a string (or ``None``) of at most ``limit`` characters."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and len(value) > limit:
            raise FieldError(
                attribute.name,
                f"'{attribute.name}' must be at most {limit} characters, got {len(value)}",
            )

    return validate


def _most_items(limit: int) -> Any:
    """A validator: a list (or dict) of at most ``limit`` items."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if len(value) > limit:
            raise FieldError(
                attribute.name,
                f"'{attribute.name}' must have at most {limit} entries, got {len(value)}",
            )

    return validate


def _heartbeat_interval(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    check_interval(value, attribute.name)  # finite and positive, or its own message
    if not MIN_HEARTBEAT_INTERVAL <= value <= MAX_HEARTBEAT_INTERVAL:
        raise FieldError(
            attribute.name,
            f"'{attribute.name}' must be between {MIN_HEARTBEAT_INTERVAL:g} and"
            f" {MAX_HEARTBEAT_INTERVAL:g} seconds, got {value:g}",
        )


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
        if not name or len(name) > MAX_NAME:
            shown = name if len(name) <= MAX_NAME else name[:40] + "..."
            raise FieldError(
                attribute.name,
                f"'{attribute.name}' must be model names of 1 to {MAX_NAME} characters,"
                f" got {shown!r}",
            )


@attrs.frozen
class WorkerRecord:
    """One worker as its hive reports it (``docs/tiers.md`` §hive, worker record)."""

    worker_id: str = attrs.field(validator=name_validator)
    #: the model's name on the hive
    model: str = attrs.field(validator=[attrs.validators.min_len(1), _at_most(MAX_NAME)])
    state: WorkerState
    #: the engine it runs ("auto" until the worker says which one that turned out to be)
    engine: str = attrs.field(default="", validator=_at_most(MAX_NAME))
    #: where the queen reaches it; None until it listens (on its hive's host: see Heartbeat)
    url: str | None = attrs.field(
        default=None, validator=[_at_most(MAX_URL), optional_url_validator]
    )
    pid: int | None = attrs.field(default=None, validator=_positive_pid)
    restarts: int = attrs.field(default=0, validator=_not_negative)
    #: when its current run started (RFC 3339, UTC)
    started_at: str | None = attrs.field(default=None, validator=_at_most(MAX_NAME))
    #: the exit status of its last run (negative: killed by that signal)
    last_exit: int | None = None
    #: why it last failed
    error: str | None = attrs.field(default=None, validator=_at_most(MAX_TEXT))
    device: str | None = attrs.field(default=None, validator=_at_most(MAX_NAME))
    #: the GPUs the hive's placement gave it (nvidia-smi indices)
    gpus: list[int] = attrs.field(factory=list, validator=[_most_items(MAX_NAME), _gpus])
    #: its log file on the hive's machine
    log_path: str | None = attrs.field(default=None, validator=_at_most(MAX_TEXT))


def _host(url: str) -> str | None:
    # urlsplit lowercases the host name and drops an IPv6 literal's brackets
    return urlsplit(url).hostname


def _workers_on_hive_host(hive: Heartbeat, attribute: attrs.Attribute[Any], value: Any) -> None:
    # attrs runs validators once every field is set, so the hive's url is known (and valid) here
    _most_items(MAX_WORKERS)(hive, attribute, value)
    host = _host(hive.url)
    for i, worker in enumerate(value):
        if worker.url is not None and _host(worker.url) != host:
            raise FieldError(
                f"workers[{i}].url",
                f"worker {worker.worker_id}'s url must be on the hive's own host {host!r},"
                f" got {worker.url!r}",
            )


@attrs.frozen
class Heartbeat:
    """The body of ``PUT /v1/hives/{hive_id}`` (registration and heartbeat alike)."""

    #: where the queen reaches the hive
    url: str = attrs.field(validator=[_at_most(MAX_URL), url_validator])
    #: optional in the body; when given it must match the id in the path
    hive_id: str | None = attrs.field(default=None, validator=_at_most(MAX_NAME))
    #: what the hive found on its machine (``capabilities`` operation): passed on as is
    capabilities: dict[str, Any] = attrs.field(
        factory=dict, validator=_most_items(MAX_CAPABILITIES)
    )
    #: its workers, each with its url on this hive's host
    workers: list[WorkerRecord] = attrs.field(factory=list, validator=_workers_on_hive_host)
    #: the names of the models on the hive
    models: list[str] = attrs.field(factory=list, validator=[_most_items(MAX_MODELS), _model_names])
    free_memory_bytes: int | None = attrs.field(default=None, validator=_not_negative)
    heartbeat_interval: float = attrs.field(
        default=DEFAULT_HEARTBEAT_INTERVAL, validator=_heartbeat_interval
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

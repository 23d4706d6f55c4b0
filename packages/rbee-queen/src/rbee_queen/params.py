"""Parameters of the queen's operations (``docs/tiers.md`` §queen), validated before a job exists.

Operations forwarded to a hive take the hive's own parameters plus ``hive`` (the hive named, or
the only one). ``forward_fields`` is what goes on to the hive or worker: everything but the
queen's own routing fields, without the ``None``s (the downstream defaults are the same).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from jobproto import FieldError, converter

__all__ = [
    "ChatMessage",
    "HiveParams",
    "HiveStartParams",
    "InferParams",
    "ModelDownloadParams",
    "ModelNameParams",
    "ModelRegisterParams",
    "NoParams",
    "OnHiveParams",
    "WorkerSpawnParams",
    "WorkerStopParams",
    "forward_fields",
]

_HIVE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _hive_id(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not _HIVE_ID.fullmatch(value):
        raise ValueError(
            f"'{attribute.name}' must be 1-64 letters, digits, '.', '_' or '-', got {value!r}"
        )


def _non_empty(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must not be empty")


def _at_least(low: float) -> Any:
    return attrs.validators.ge(low)


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class HiveParams:
    hive: str = attrs.field(validator=_hive_id)


@attrs.frozen
class HiveStartParams:
    hive: str = attrs.field(default="localhost", validator=_hive_id)
    #: the hive's port (default: the queen's ``hive_port``, 9000; 0 = any free port)
    port: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(range(65536)))
    )
    #: the URL the hive reports to (default: this queen's own URL)
    queen_url: str | None = None
    #: the hive's heartbeat interval in seconds (default: the hive's own)
    heartbeat: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    models_dir: str | None = None


@attrs.frozen
class OnHiveParams:
    """An operation of one hive that takes nothing else (``worker_list``, ``model_list``)."""

    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class WorkerSpawnParams:
    model: str = attrs.field(validator=_non_empty)
    engine: str = "auto"
    worker_id: str | None = None
    device: str | None = None
    max_concurrency: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least(1))
    )
    engine_args: dict[str, str] = attrs.field(factory=dict)
    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class WorkerStopParams:
    worker_id: str = attrs.field(validator=_non_empty)
    #: default: the hive that reported this worker, else the only hive
    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class ModelDownloadParams:
    repo_id: str = attrs.field(validator=_non_empty)
    revision: str = "main"
    name: str | None = None
    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class ModelRegisterParams:
    name: str = attrs.field(validator=_non_empty)
    path: str = attrs.field(validator=_non_empty)
    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class ModelNameParams:
    name: str = attrs.field(validator=_non_empty)
    hive: str | None = attrs.field(default=None, validator=_hive_id)


@attrs.frozen
class ChatMessage:
    role: str
    content: str


def _one_input(instance: InferParams, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (instance.prompt is None) == (instance.messages is None):
        # a check across fields: name the one to add (prompt) or to drop (messages)
        raise FieldError(
            "prompt" if instance.prompt is None else "messages",
            "'prompt' must be given, or 'messages', but not both",
        )


@attrs.frozen
class InferParams:
    model: str = attrs.field(validator=_non_empty)
    prompt: str | None = None
    messages: list[ChatMessage] | None = attrs.field(default=None, validator=_one_input)
    max_tokens: int = attrs.field(default=128, validator=_at_least(1))
    temperature: float = attrs.field(default=1.0, validator=_at_least(0.0))
    top_p: float = attrs.field(
        default=1.0, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)]
    )
    top_k: int = attrs.field(default=0, validator=_at_least(0))
    seed: int | None = None
    stop: list[str] = attrs.field(factory=list)
    #: run on this hive's workers only
    hive: str | None = attrs.field(default=None, validator=_hive_id)


#: fields the queen uses itself, per parameter class; they never go downstream
_QUEEN_ONLY: dict[type, frozenset[str]] = {InferParams: frozenset({"hive", "model"})}


def forward_fields(params: Any) -> dict[str, Any]:
    """The fields of ``params`` for the hive or worker: no queen-only fields, no ``None``s."""
    own = _QUEEN_ONLY.get(type(params), frozenset({"hive"}))
    raw: dict[str, Any] = converter.unstructure(params)
    return {k: v for k, v in raw.items() if k not in own and v is not None}

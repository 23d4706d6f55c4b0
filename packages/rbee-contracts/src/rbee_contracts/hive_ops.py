"""The hive's operations: their parameters and results (queen → hive).

A hive structures these from ``POST /v1/jobs``; the queen's own types (``queen_ops``) extend
them with ``hive`` (which hive), so what the queen accepts the hive accepts too. Results:
``worker_spawn`` and ``worker_stop`` return a ``WorkerRecord``, ``worker_list`` a
``WorkerList``, the ``model_*`` operations a ``ModelInfo`` (or a ``ModelList``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

import attrs

from jobproto import FieldError

from .engines import ENGINES
from .ids import name_validator, optional_name_validator, repo_id_validator
from .records import WorkerRecord

__all__ = [
    "DEVICE_PATTERN",
    "ENGINE_ARG_KEY_PATTERN",
    "MAX_CONCURRENCY",
    "REVISION_PATTERN",
    "CapabilitiesParams",
    "ModelDeleteParams",
    "ModelDownloadParams",
    "ModelInfo",
    "ModelList",
    "ModelListParams",
    "ModelRegisterParams",
    "WorkerList",
    "WorkerListParams",
    "WorkerRecord",
    "WorkerSpawnParams",
    "WorkerStopParams",
]

#: ``cpu``, ``cuda`` (the hive picks the GPUs) or ``cuda:N[,M...]`` (nvidia-smi indices)
DEVICE_PATTERN: Final = re.compile(r"cpu|cuda(:[0-9]{1,2}(,[0-9]{1,2})*)?")
ENGINE_ARG_KEY_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
REVISION_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
MAX_CONCURRENCY: Final = 4096


def _engine(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ENGINES:
        raise FieldError(
            attribute.name, f"'{attribute.name}' must be one of {', '.join(ENGINES)}; got {value!r}"
        )


def _device(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not DEVICE_PATTERN.fullmatch(value):
        raise FieldError(
            attribute.name, f"'{attribute.name}' must be cpu, cuda or cuda:N[,M...], got {value!r}"
        )


def _engine_args(_: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    # Each entry becomes one ``--engine-arg KEY=VALUE`` of the worker's command line.
    for key, item in value.items():
        if not ENGINE_ARG_KEY_PATTERN.fullmatch(key) or "\n" in item or "\0" in item:
            raise FieldError(
                attribute.name,
                f"'{attribute.name}' must map option names to values, got the entry {key!r}",
            )


def _revision(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not REVISION_PATTERN.fullmatch(value) or ".." in value:
        raise FieldError(
            attribute.name, f"'{attribute.name}' must be a branch, tag or commit, got {value!r}"
        )


def _abs_path(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or "\0" in value or not os.path.isabs(value):
        raise FieldError(
            attribute.name, f"'{attribute.name}' must be an absolute directory path, got {value!r}"
        )


# -- parameters ------------------------------------------------------------------------------------


@attrs.frozen
class WorkerSpawnParams:
    """Start a worker for a model of the hive; done once it is ready."""

    model: str = attrs.field(validator=name_validator)
    engine: str = attrs.field(
        default="auto", validator=_engine, metadata={"schema": {"enum": list(ENGINES)}}
    )
    worker_id: str | None = attrs.field(default=None, validator=optional_name_validator)
    device: str | None = attrs.field(
        default=None, validator=_device, metadata={"schema": {"pattern": DEVICE_PATTERN.pattern}}
    )
    max_concurrency: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            [attrs.validators.ge(1), attrs.validators.le(MAX_CONCURRENCY)]
        ),
    )
    engine_args: dict[str, str] = attrs.field(factory=dict, validator=_engine_args)


@attrs.frozen
class WorkerListParams:
    pass


@attrs.frozen
class WorkerStopParams:
    worker_id: str = attrs.field(validator=name_validator)


@attrs.frozen
class ModelDownloadParams:
    repo_id: str = attrs.field(validator=repo_id_validator)
    revision: str = attrs.field(default="main", validator=_revision)
    #: the model's name on the hive (default: from the repo id)
    name: str | None = attrs.field(default=None, validator=optional_name_validator)


@attrs.frozen
class ModelRegisterParams:
    name: str = attrs.field(validator=name_validator)
    path: str = attrs.field(validator=_abs_path)


@attrs.frozen
class ModelListParams:
    pass


@attrs.frozen
class ModelDeleteParams:
    name: str = attrs.field(validator=name_validator)


@attrs.frozen
class CapabilitiesParams:
    pass


# -- results ---------------------------------------------------------------------------------------


@attrs.frozen
class WorkerList:
    workers: list[WorkerRecord]


@attrs.frozen
class ModelInfo:
    """One model on a hive (``model_download``, ``model_register``, ``model_delete``)."""

    name: str
    size_bytes: int
    #: "huggingface" (downloaded), "registered" or "local"
    source: str
    path: str
    revision: str | None = None
    repo_id: str | None = None


@attrs.frozen
class ModelList:
    models: list[ModelInfo]

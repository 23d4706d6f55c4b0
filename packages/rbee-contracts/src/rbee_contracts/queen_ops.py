"""The queen's operations: their parameters (keeper → queen).

The queen is the one judge of parameters: each type of an operation the queen passes on
*extends* the downstream type (the hive's from ``hive_ops``, the worker's ``InferParams``) with
the queen's own routing fields (``hive``; ``model`` for infer), so every value the hive or the
worker would refuse is refused by the queen first, with a 422, before anything is routed or
spawned. The downstream type of a relayed type is its attrs parent class (``downstream_type``);
``forward_fields`` is what goes on: the downstream type's fields only, without the ``None``s (the
downstream defaults are the same).

``hive_start`` has no downstream parameter type: its values go on the hive's command line
(``hive_cli``), and the rules here are the ones the hive's own settings check (``values``, ``ids``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import attrs

from jobproto import FieldError, converter

from .hive_ops import (
    ModelDeleteParams,
    ModelDownloadParams,
    ModelImportParams,
    ModelListParams,
    ModelRegisterParams,
    WorkerListParams,
    WorkerSpawnParams,
    WorkerStopParams,
)
from .ids import (
    HIVE_ID_SCHEMA,
    MODEL_REF_SCHEMA,
    check_name,
    check_repo_id,
    hive_id_validator,
    is_name,
    optional_hive_id_validator,
    repo_name,
)
from .infer import InferParams
from .values import (
    ABSOLUTE_PATH_SCHEMA,
    INTERVAL_SCHEMA,
    URL_SCHEMA,
    field_validator,
    optional_absolute_path_validator,
    optional_interval_validator,
    optional_url_validator,
)

__all__ = [
    "HOST_SCHEMA",
    "HiveInstallParams",
    "HiveParams",
    "HiveStartParams",
    "HiveUninstallParams",
    "NoParams",
    "QueenInferParams",
    "QueenModelDeleteParams",
    "QueenModelDownloadParams",
    "QueenModelImportParams",
    "QueenModelListParams",
    "QueenModelRegisterParams",
    "QueenWorkerListParams",
    "QueenWorkerSpawnParams",
    "QueenWorkerStopParams",
    "check_host_alias",
    "downstream_type",
    "forward_fields",
    "is_repo_ref",
]


def _hive() -> Any:
    """The queen's ``hive`` field: which hive (default: the only one, or the one that has it)."""
    return attrs.field(
        default=None,
        kw_only=True,
        validator=optional_hive_id_validator,
        metadata={"schema": HIVE_ID_SCHEMA},
    )


def is_repo_ref(model: str) -> bool:
    """Whether a valid ``model`` of ``QueenInferParams`` is a Hugging Face repo id (which a hive
    may download) rather than the name of a model a hive has."""
    return not is_name(model)


def _model_ref(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # A model a hive has (its name), or a Hugging Face repo id the queen may have a hive fetch;
    # the hive names what it fetches after the repo id's last part, so that must be a name too.
    if is_name(value):
        return
    try:
        check_repo_id(value, attribute.name)
        check_name(repo_name(value), attribute.name)
    except FieldError:
        raise FieldError(
            attribute.name,
            f"'{attribute.name}' must be a model name or a Hugging Face repo id (org/name) whose"
            f" name part is a model name, got {value!r}",
        ) from None


#: an SSH host alias (``Host`` of ~/.ssh/config, or rbee's ``hosts.toml``) or a host name: one
#: word that cannot be read as an option (no leading ``-``)
HOST_PATTERN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
HOST_SCHEMA: Final = {"pattern": f"^{HOST_PATTERN.pattern}$", "maxLength": 253}


def check_host_alias(value: str, what: str = "host") -> str:
    if not HOST_PATTERN.fullmatch(value):
        raise FieldError(
            what,
            f"'{what}' must be an SSH host alias or host name (letters, digits, '.', '_', '-';"
            f" not starting with '-' or '.'), got {value!r}",
        )
    return value


def _host() -> Any:
    """``host``: the machine (an SSH host alias) the hive runs on; None: the queen's own."""
    return attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(field_validator(check_host_alias)),
        metadata={"schema": HOST_SCHEMA},
    )


# -- the queen's own operations --------------------------------------------------------------------


@attrs.frozen
class NoParams:
    """``status``, ``hive_list``."""


@attrs.frozen
class HiveParams:
    """``hive_status``, ``hive_stop``: one hive, named (on ``host``, over SSH, when given)."""

    hive: str = attrs.field(validator=hive_id_validator, metadata={"schema": HIVE_ID_SCHEMA})
    host: str | None = _host()


@attrs.frozen
class HiveStartParams:
    """``hive_start``: run a hive process on the queen's machine, or on ``host`` over SSH."""

    hive: str = attrs.field(
        default="localhost", validator=hive_id_validator, metadata={"schema": HIVE_ID_SCHEMA}
    )
    #: the hive's port (default: the queen's ``hive_port``, 9000; 0 = any free port)
    port: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.in_(range(65536))),
        metadata={"schema": {"minimum": 0, "maximum": 65535}},
    )
    #: the URL the hive reports to (default: this queen's own URL; with ``host``: the host's
    #: ``queen_url`` in rbee's hosts file, else this queen's own URL, or when that is loopback
    #: this queen at its address on the SSH connection). A hive on the queen's own machine
    #: reports to this queen only: its scheme and port, and a host name the queen answers for
    #: (else refused)
    queen_url: str | None = attrs.field(
        default=None, validator=optional_url_validator, metadata={"schema": URL_SCHEMA}
    )
    #: the hive's heartbeat interval in seconds (default: the hive's own)
    heartbeat: float | None = attrs.field(
        default=None, validator=optional_interval_validator, metadata={"schema": INTERVAL_SCHEMA}
    )
    #: the hive's models directory (default: ``models`` in its state directory); absolute, as
    #: the hive's working directory is not the caller's. That it is a directory of its own (not
    #: ``/``, a system directory or the home directory: ``values.check_models_dir``) is judged
    #: on the machine the hive runs on, whose home it is: for a hive on the queen's machine by
    #: ``hive_start`` before it starts the hive (``models_dir_not_allowed``), for one on
    #: ``host`` by the hive at its start (``hive_exited``)
    models_dir: str | None = attrs.field(
        default=None,
        validator=optional_absolute_path_validator,
        metadata={"schema": ABSOLUTE_PATH_SCHEMA},
    )
    #: the machine to run it on (an SSH host alias; it needs ``hive_install`` first)
    host: str | None = _host()
    #: the address a hive on ``host`` binds (default: the host's ``hive_host`` in rbee's hosts
    #: file, else the address SSH reached it at)
    bind: str | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(field_validator(check_host_alias)),
        metadata={"schema": HOST_SCHEMA},
    )


@attrs.frozen
class HiveInstallParams:
    """``hive_install``: put ``rbee-hive`` into a virtualenv on ``host`` over SSH."""

    host: str = attrs.field(
        validator=field_validator(check_host_alias), metadata={"schema": HOST_SCHEMA}
    )
    #: the engine extra of ``rbee-worker`` to install with it (``transformers``, ``vllm``)
    extra: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.in_(("transformers", "vllm"))),
        metadata={"schema": {"enum": ["transformers", "vllm"]}},
    )
    #: the host has no package index: copy every wheel, dependencies too, from this machine
    offline: bool = False


@attrs.frozen
class HiveUninstallParams:
    """``hive_uninstall``: stop the hive on ``host`` and remove what ``hive_install`` put there."""

    host: str = attrs.field(
        validator=field_validator(check_host_alias), metadata={"schema": HOST_SCHEMA}
    )
    #: the hive's id (default: the host alias)
    hive: str | None = _hive()
    #: remove the hive's state too (its log, pid file and worker records; not its models)
    purge: bool = False


# -- relayed to a hive: the hive's parameters, plus which hive -------------------------------------


@attrs.frozen
class QueenWorkerSpawnParams(WorkerSpawnParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenWorkerListParams(WorkerListParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenWorkerStopParams(WorkerStopParams):
    #: default: the hive that reported this worker, else the only hive
    hive: str | None = _hive()


@attrs.frozen
class QueenModelDownloadParams(ModelDownloadParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenModelRegisterParams(ModelRegisterParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenModelImportParams(ModelImportParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenModelListParams(ModelListParams):
    hive: str | None = _hive()


@attrs.frozen
class QueenModelDeleteParams(ModelDeleteParams):
    hive: str | None = _hive()


# -- relayed to a worker: the worker's parameters, plus which model (and hive) ---------------------


@attrs.frozen
class QueenInferParams(InferParams):
    """``infer``: the worker's ``InferParams`` plus the model to run it on."""

    model: str = attrs.field(
        kw_only=True, validator=_model_ref, metadata={"schema": MODEL_REF_SCHEMA}
    )
    #: run on this hive's workers only
    hive: str | None = _hive()


def downstream_type(cls: type) -> type:
    """The hive's or worker's parameter type that the queen's type ``cls`` extends: its attrs
    parent class (``cls`` itself for a type of the queen's own, which extends none)."""
    for base in cls.__mro__[1:]:
        if attrs.has(base):
            return base
    return cls


@functools.cache
def _downstream_names(cls: type) -> frozenset[str]:
    return frozenset(a.name for a in attrs.fields(downstream_type(cls)))


def forward_fields(params: Any) -> dict[str, Any]:
    """The fields of ``params`` for the hive or worker: the downstream type's, no ``None``s."""
    own = _downstream_names(params.__class__)
    raw: dict[str, Any] = converter.unstructure(params)
    return {k: v for k, v in raw.items() if k in own and v is not None}

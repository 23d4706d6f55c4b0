"""The hive's operations: their parameters and results (queen → hive).

A hive structures these from ``POST /v1/jobs``; the queen's own types (``queen_ops``) extend
them with ``hive`` (which hive), so what the queen accepts the hive accepts too. Results:
``worker_spawn`` and ``worker_stop`` return a ``WorkerRecord``, ``worker_list`` a
``WorkerList``, the ``model_*`` operations a ``ModelInfo`` (or a ``ModelList``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

import attrs

from jobproto import FieldError

from .engines import (
    ENGINE_ARGS,
    ENGINES,
    PLACEMENT_NUMBERS,
    ArgRule,
    check_engine_args,
    engine_validator,
)
from .ids import (
    NAME_SCHEMA,
    REPO_ID_SCHEMA,
    name_validator,
    optional_name_validator,
    repo_id_validator,
)
from .records import WorkerRecord
from .values import ABSOLUTE_PATH_SCHEMA, absolute_path_validator, field_validator

__all__ = [
    "DEVICE_PATTERN",
    "ENGINE_ARG_KEY_PATTERN",
    "GGUF_DTYPES",
    "GGUF_FILE_PATTERN",
    "MAX_CONCURRENCY",
    "REVISION_PATTERN",
    "CapabilitiesParams",
    "ModelDeleteParams",
    "ModelDownloadParams",
    "ModelImportParams",
    "ModelInfo",
    "ModelList",
    "ModelListParams",
    "ModelRegisterParams",
    "WorkerList",
    "WorkerListParams",
    "WorkerRecord",
    "WorkerSpawnParams",
    "WorkerStopParams",
    "parse_device",
]

#: ``cpu``, ``cuda`` (the hive picks the GPUs) or ``cuda:N[,M...]`` (nvidia-smi indices, each
#: once: ``parse_device`` refuses ``cuda:0,0``)
DEVICE_PATTERN: Final = re.compile(r"cpu|cuda(?::([0-9]{1,2}(?:,[0-9]{1,2})*))?")
# ... and the published pattern says so (ECMA-262 lookaheads and back references): no index
# twice, however written (5 and 05 are one GPU; a two-digit index has no leading zero)
_INDEX = "[0-9]{1,2}"
_NO_GPU_TWICE = (
    f"(?!cuda:(?:{_INDEX},)*0?([0-9]),(?:{_INDEX},)*0?\\1(?:,|$))"
    f"(?!cuda:(?:{_INDEX},)*([1-9][0-9]),(?:{_INDEX},)*\\2(?:,|$))"
)
ENGINE_ARG_KEY_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
REVISION_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
MAX_CONCURRENCY: Final = 4096
#: a GGUF file in a Hugging Face repo: a relative path of plain components ending in ``.gguf``
#: in any case (as a local import's path may: ``.GGUF`` too)
GGUF_FILE_PATTERN: Final = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}/){0,4}[A-Za-z0-9_][A-Za-z0-9._-]{0,122}[.][Gg][Gg][Uu][Ff]"
)
#: what a GGUF model's weights are stored as once imported (float32: what vLLM's CPU build runs)
GGUF_DTYPES: Final = ("float32", "bfloat16", "float16")


def parse_device(
    value: str | None, what: str = "device"
) -> tuple[str | None, tuple[int, ...] | None]:
    """``(kind, indices)`` of a ``device``: kind None (not given), ``"cpu"`` or ``"cuda"``
    (``rbee_contracts.worker_cli.DEVICES``, the worker's ``--device``); indices None unless it
    names GPUs. A ``FieldError`` naming ``what`` for anything else."""
    if value is None:
        return None, None
    match = DEVICE_PATTERN.fullmatch(value)
    if match is None:
        raise FieldError(what, f"'{what}' must be cpu, cuda or cuda:N[,M...], got {value!r}")
    if value == "cpu":
        return "cpu", None
    if match.group(1) is None:
        return "cuda", None
    indices = tuple(int(i) for i in match.group(1).split(","))
    if len(set(indices)) != len(indices):
        raise FieldError(what, f"'{what}' names a GPU twice, got {value!r}")
    return "cuda", indices


_device = field_validator(parse_device)


def _engine_args(instance: Any, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    # Each entry becomes one ``--engine-arg KEY=VALUE`` of the worker's command line. attrs runs
    # validators once every field is set, and ``engine``'s first: ``instance.engine`` is valid.
    for key, item in value.items():
        if not ENGINE_ARG_KEY_PATTERN.fullmatch(key) or "\n" in item or "\0" in item:
            raise FieldError(
                attribute.name,
                f"'{attribute.name}' must map option names to values, got the entry {key!r}",
            )
    check_engine_args(instance.engine, value, attribute.name)


def _revision(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not REVISION_PATTERN.fullmatch(value) or ".." in value:
        raise FieldError(
            attribute.name, f"'{attribute.name}' must be a branch, tag or commit, got {value!r}"
        )


def _arg_pattern(rule: ArgRule) -> str:
    """An engine argument's value that ``check_engine_args`` takes, as plain decimal text."""
    if rule.integer:
        assert rule.minimum in (0, 1), rule
        return "^0*[1-9][0-9]*$" if rule.minimum else "^[0-9]+$"
    assert rule.minimum == 0, rule
    return "^(?:[0-9]+(?:[.][0-9]*)?|[.][0-9]+)(?:[eE][+-]?[0-9]+)?$"


#: no infinity or NaN where the hive's placement reads a number (``engine_arg_number``)
_FINITE: Final = {"pattern": "^(?![\\s]*[+-]?(?:[Ii][Nn][Ff]|[Nn][Aa][Nn]))[^\\n\\u0000]*$"}


def _engine_args_rule() -> dict[str, Any]:
    """``check_engine_args`` in JSON Schema: which arguments each engine takes (where known)."""
    open_engines = [e for e in ENGINES if e not in ENGINE_ARGS]  # the default, auto, among them
    placement = {k: _FINITE for key in PLACEMENT_NUMBERS for k in (key, key.replace("_", "-"))}
    branches: list[dict[str, Any]] = [
        {"properties": {"engine": {"enum": open_engines}, "engine_args": {"properties": placement}}}
    ]
    for engine, rules in ENGINE_ARGS.items():
        args = {key: {"pattern": _arg_pattern(rule)} for key, rule in rules.items()}
        branches.append(
            {
                "required": ["engine"],
                "properties": {
                    "engine": {"const": engine},
                    "engine_args": {"propertyNames": {"enum": sorted(rules)}, "properties": args},
                },
            }
        )
    return {"anyOf": branches}


# -- parameters ------------------------------------------------------------------------------------


@attrs.frozen
class WorkerSpawnParams:
    """Start a worker for a model of the hive; done once it is ready."""

    #: the engine arguments each engine takes (a rule across ``engine`` and ``engine_args``)
    __json_schema__: ClassVar[dict[str, Any]] = _engine_args_rule()

    model: str = attrs.field(validator=name_validator, metadata={"schema": NAME_SCHEMA})
    engine: str = attrs.field(
        default="auto", validator=engine_validator, metadata={"schema": {"enum": list(ENGINES)}}
    )
    worker_id: str | None = attrs.field(
        default=None, validator=optional_name_validator, metadata={"schema": NAME_SCHEMA}
    )
    device: str | None = attrs.field(
        default=None,
        validator=_device,
        # JSON Schema's pattern is a search (JSON Schema validation §6.3.3): anchored
        metadata={"schema": {"pattern": f"^{_NO_GPU_TWICE}(?:{DEVICE_PATTERN.pattern})$"}},
    )
    max_concurrency: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            [attrs.validators.ge(1), attrs.validators.le(MAX_CONCURRENCY)]
        ),
        metadata={"schema": {"minimum": 1, "maximum": MAX_CONCURRENCY}},
    )
    engine_args: dict[str, str] = attrs.field(
        factory=dict,
        validator=_engine_args,
        # each entry is one --engine-arg KEY=VALUE line: no newline, no NUL in a value
        metadata={
            "schema": {
                "propertyNames": {"pattern": f"^{ENGINE_ARG_KEY_PATTERN.pattern}$"},
                "additionalProperties": {"pattern": "^[^\\n\\u0000]*$"},
            }
        },
    )


@attrs.frozen
class WorkerListParams:
    pass


@attrs.frozen
class WorkerStopParams:
    worker_id: str = attrs.field(validator=name_validator, metadata={"schema": NAME_SCHEMA})


@attrs.frozen
class ModelDownloadParams:
    repo_id: str = attrs.field(validator=repo_id_validator, metadata={"schema": REPO_ID_SCHEMA})
    revision: str = attrs.field(
        default="main",
        validator=_revision,
        metadata={"schema": {"pattern": f"^(?!.*[.][.]){REVISION_PATTERN.pattern}$"}},
    )
    #: the model's name on the hive (default: from the repo id, or the GGUF file's stem)
    name: str | None = attrs.field(
        default=None, validator=optional_name_validator, metadata={"schema": NAME_SCHEMA}
    )
    #: one GGUF file of the repo (``Org/Repo:file.gguf`` on the command line): only it is
    #: downloaded, then imported as with ``model_import``
    file: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.matches_re(GGUF_FILE_PATTERN)),
    )
    #: the imported weights' dtype (with ``file`` only)
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(GGUF_DTYPES))


@attrs.frozen
class ModelImportParams:
    """Convert a GGUF file (under a model root of the hive) once into the models directory."""

    name: str = attrs.field(validator=name_validator, metadata={"schema": NAME_SCHEMA})
    path: str = attrs.field(
        validator=absolute_path_validator, metadata={"schema": ABSOLUTE_PATH_SCHEMA}
    )
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(GGUF_DTYPES))


@attrs.frozen
class ModelRegisterParams:
    name: str = attrs.field(validator=name_validator, metadata={"schema": NAME_SCHEMA})
    path: str = attrs.field(
        validator=absolute_path_validator, metadata={"schema": ABSOLUTE_PATH_SCHEMA}
    )


@attrs.frozen
class ModelListParams:
    pass


@attrs.frozen
class ModelDeleteParams:
    name: str = attrs.field(validator=name_validator, metadata={"schema": NAME_SCHEMA})


@attrs.frozen
class CapabilitiesParams:
    pass


# -- results ---------------------------------------------------------------------------------------


@attrs.frozen
class WorkerList:
    workers: list[WorkerRecord]


@attrs.frozen
class ModelInfo:
    """One model on a hive (``model_download``, ``model_register``, ``model_import``,
    ``model_delete``)."""

    name: str
    size_bytes: int
    #: "huggingface" (downloaded), "registered", "gguf" (imported) or "local"
    source: str
    path: str
    revision: str | None = None
    repo_id: str | None = None
    #: the GGUF file an imported model was converted from, and its SHA-256
    source_file: str | None = None
    sha256: str | None = None


@attrs.frozen
class ModelList:
    models: list[ModelInfo]

"""The naming rules every tier checks: hive ids, worker ids, model names, repo ids.

One rule each, here; a tier that checks a name imports its check from this module.

* A **hive id** is 1-63 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit:
  it travels in URL paths (``PUT /v1/hives/{id}``), in file names (pid files, logs) and is
  meant to read like a host name, whose labels are at most 63 characters (RFC 1035 §2.3.4).
* A **model name** and a **worker id** are 1-128 such characters with no ``..``: each becomes a
  file or directory name on the hive (models directory, worker log, pid file), so it must be a
  single safe path component. ``catalog.json`` is the hive's own file in the models directory.
* A **repo id** is a Hugging Face ``org/name`` (or ``name``).

Each ``check_*`` returns the value or raises ``jobproto.FieldError`` naming the field (a 422 that
points at it); the ``*_validator`` functions are the same checks as attrs validators.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

from jobproto import FieldError

__all__ = [
    "HIVE_ID_PATTERN",
    "NAME_PATTERN",
    "REPO_ID_PATTERN",
    "RESERVED_NAMES",
    "check_hive_id",
    "check_model_name",
    "check_name",
    "check_repo_id",
    "check_worker_id",
    "hive_id_validator",
    "name_validator",
    "optional_hive_id_validator",
    "optional_name_validator",
    "repo_id_validator",
]

HIVE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REPO_ID_PATTERN: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?"
)
#: names a model may not take: the hive's catalog file lives beside the model directories
RESERVED_NAMES: Final = frozenset({"catalog.json"})


def check_hive_id(value: str, what: str = "hive") -> str:
    if not HIVE_ID_PATTERN.fullmatch(value):
        raise FieldError(
            what,
            f"'{what}' must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or"
            f" digit; got {value!r}",
        )
    return value


def check_name(value: str, what: str = "name") -> str:
    """A model name or worker id: one safe path component (see the module docstring)."""
    if not NAME_PATTERN.fullmatch(value) or ".." in value or value in RESERVED_NAMES:
        raise FieldError(
            what,
            f"'{what}' must be 1-128 letters, digits, dots, underscores or dashes, start with a"
            f" letter or digit and not contain two dots in a row; got {value!r}",
        )
    return value


def check_model_name(value: str, what: str = "model") -> str:
    return check_name(value, what)


def check_worker_id(value: str, what: str = "worker_id") -> str:
    return check_name(value, what)


def check_repo_id(value: str, what: str = "repo_id") -> str:
    if not REPO_ID_PATTERN.fullmatch(value) or ".." in value:
        raise FieldError(what, f"'{what}' must look like org/name, got {value!r}")
    return value


# -- the same checks as attrs validators (the field's own name is the one reported) ----------------


def hive_id_validator(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    check_hive_id(value, attribute.name)


def optional_hive_id_validator(
    _: object, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    if value is not None:
        check_hive_id(value, attribute.name)


def name_validator(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    check_name(value, attribute.name)


def optional_name_validator(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_name(value, attribute.name)


def repo_id_validator(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    check_repo_id(value, attribute.name)

"""The naming rules every tier checks: hive ids, worker ids, model names, repo ids.

One rule each, here; a tier that checks a name imports its check from this module.

* A **hive id** is 1-63 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit:
  it travels in URL paths (``PUT /v1/hives/{id}``), in file names (pid files, logs) and is
  meant to read like a host name, whose labels are at most 63 characters (RFC 1035 §2.3.4).
* A **model name** and a **worker id** are 1-128 such characters with no ``..``: each becomes a
  file or directory name on the hive (models directory, worker log, pid file), so it must be a
  single safe path component. ``catalog.json`` is the hive's own file in the models directory.
* A **repo id** is a Hugging Face ``org/name`` (or ``name``). A hive names a model it downloads
  after the repo id's last part (``repo_name``), which must then be a model name.

Each ``check_*`` returns the value or raises ``jobproto.FieldError`` naming the field (a 422 that
points at it); the ``*_validator`` functions are the same checks as attrs validators, and the
``*_SCHEMA`` dicts say the same bounds in JSON Schema (a field's ``metadata={"schema": ...}``, so a
service's ``/openapi.json`` shows them).
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from jobproto import FieldError

from .values import field_validator

__all__ = [
    "CATALOG_FILE",
    "HIVE_ID_PATTERN",
    "HIVE_ID_RULE",
    "HIVE_ID_SCHEMA",
    "MODEL_REF_SCHEMA",
    "NAME_PATTERN",
    "NAME_SCHEMA",
    "REPO_ID_PATTERN",
    "REPO_ID_SCHEMA",
    "RESERVED_NAMES",
    "check_hive_id",
    "check_name",
    "check_repo_id",
    "hive_id_validator",
    "is_name",
    "name_validator",
    "optional_hive_id_validator",
    "optional_name_validator",
    "repo_id_validator",
    "repo_name",
]

HIVE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REPO_ID_PATTERN: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?"
)
#: the hive's catalog of its models, a file in the models directory beside the model directories
CATALOG_FILE: Final = "catalog.json"
#: names a model may not take
RESERVED_NAMES: Final = frozenset({CATALOG_FILE})
#: the hive-id rule in words (for messages that name the field themselves)
HIVE_ID_RULE: Final = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"

# JSON Schema's ``pattern`` is a search, not a match (JSON Schema validation §6.3.3): anchored.
# ECMA-262 lookaheads say "no '..'" and the reserved names, so each schema is the whole rule.
_NO_DOTS = "(?!.*[.][.])"
_NOT_RESERVED = "".join(f"(?!{re.escape(n)}$)" for n in sorted(RESERVED_NAMES))
HIVE_ID_SCHEMA: Final = {"pattern": f"^{HIVE_ID_PATTERN.pattern}$", "maxLength": 63}
NAME_SCHEMA: Final = {
    "pattern": f"^{_NO_DOTS}{_NOT_RESERVED}{NAME_PATTERN.pattern}$",
    "maxLength": 128,
}
REPO_ID_SCHEMA: Final = {"pattern": f"^{_NO_DOTS}{REPO_ID_PATTERN.pattern}$", "maxLength": 193}
#: a model name, or a repo id whose last part is a model name (the queen's ``infer`` ``model``)
MODEL_REF_SCHEMA: Final = {
    "pattern": "^"
    + _NO_DOTS
    + "".join(f"(?!(?:.*/)?{re.escape(n)}$)" for n in sorted(RESERVED_NAMES))
    + f"(?:{NAME_PATTERN.pattern}|{REPO_ID_PATTERN.pattern})$",
    "maxLength": 193,
}


def check_hive_id(value: str, what: str = "hive") -> str:
    if not HIVE_ID_PATTERN.fullmatch(value):
        raise FieldError(what, f"'{what}' must be {HIVE_ID_RULE}; got {value!r}")
    return value


def is_name(value: str) -> bool:
    """Whether ``value`` is a model name or worker id (``check_name`` without the error)."""
    return bool(NAME_PATTERN.fullmatch(value)) and ".." not in value and value not in RESERVED_NAMES


def check_name(value: str, what: str = "name") -> str:
    """A model name or worker id: one safe path component (see the module docstring)."""
    if not is_name(value):
        raise FieldError(
            what,
            f"'{what}' must be 1-128 letters, digits, dots, underscores or dashes, start with a"
            f" letter or digit and not contain two dots in a row; got {value!r}",
        )
    return value


def check_repo_id(value: str, what: str = "repo_id") -> str:
    if not REPO_ID_PATTERN.fullmatch(value) or ".." in value:
        raise FieldError(what, f"'{what}' must look like org/name, got {value!r}")
    return value


def repo_name(repo_id: str) -> str:
    """The name a hive gives a model it downloads from ``repo_id`` (unless told another)."""
    return repo_id.rsplit("/", 1)[-1]


# -- the same checks as attrs validators (the field's own name is the one reported) ----------------


hive_id_validator = field_validator(check_hive_id)
optional_hive_id_validator = attrs.validators.optional(hive_id_validator)
name_validator = field_validator(check_name)
optional_name_validator = attrs.validators.optional(name_validator)
repo_id_validator = field_validator(check_repo_id)

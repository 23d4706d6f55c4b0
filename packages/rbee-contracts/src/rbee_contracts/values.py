"""The value rules beside the naming ones (``ids``): http(s) URLs, intervals, absolute paths, and
the directories a hive may keep models in.

One rule each, used by every tier that checks such a value: the queen's parameter types, the
heartbeat and worker record, and the hive's own settings (which a queen's ``hive_start`` passes
on the hive's command line), so what the queen accepts the hive accepts too.

Each ``check_*`` returns the value or raises ``jobproto.FieldError`` naming the field; the
``*_validator`` functions are the same checks as attrs validators.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import attrs

from jobproto import FieldError

V = TypeVar("V")
#: an attrs validator of a field holding a ``V``
Validator = Callable[[object, "attrs.Attribute[Any]", V], None]

__all__ = [
    "ABSOLUTE_PATH_SCHEMA",
    "INTERVAL_SCHEMA",
    "URL_SCHEMA",
    "absolute_path_validator",
    "check_absolute_path",
    "check_http_url",
    "check_interval",
    "check_models_dir",
    "field_validator",
    "interval_validator",
    "is_http_url",
    "optional_absolute_path_validator",
    "optional_interval_validator",
    "optional_url_validator",
    "url_validator",
]


def is_http_url(value: str) -> bool:
    """An ``http`` or ``https`` URL with a host (``http://:9000`` has none) and, if it says
    one, a port that is a port (0-65535)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is no port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_http_url(value: str, what: str = "url") -> str:
    if not is_http_url(value):
        raise FieldError(what, f"'{what}' must be an http(s) URL with a host, got {value!r}")
    return value


def check_interval(value: float, what: str = "interval") -> float:
    """A positive, finite number of seconds."""
    if not 0 < value < math.inf:  # NaN fails both comparisons
        raise FieldError(what, f"'{what}' must be a positive number of seconds, got {value}")
    return value


def check_absolute_path(value: str, what: str = "path") -> str:
    if not value or "\0" in value or not os.path.isabs(value):
        raise FieldError(what, f"'{what}' must be an absolute directory path, got {value!r}")
    return value


#: directories of the system: neither they nor anything under them holds a hive's models
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/boot", "/run", "/lib")


def check_models_dir(value: str, what: str = "models_dir", home: str | None = None) -> str:
    """An absolute directory a hive may keep (and walk, and serve) models in: not ``/``, not a
    system directory or one under it (``SYSTEM_DIRS``, and every ``/lib*``), not the home
    directory (``home``, default the current user's) nor one of its ancestors, nor its
    ``.ssh``. The path is judged as written, normalised (``..``, ``//``); a caller that can
    should pass it with its symbolic links resolved.
    """
    check_absolute_path(value, what)
    path = PurePosixPath("/" + os.path.normpath(value).lstrip("/"))
    home_dir = PurePosixPath("/" + os.path.normpath(home or os.path.expanduser("~")).lstrip("/"))
    top = path.parts[1] if len(path.parts) > 1 else ""
    refused = (
        path == PurePosixPath("/")
        or top.startswith("lib")
        or any(path.is_relative_to(d) for d in SYSTEM_DIRS)
        or path in (home_dir, *home_dir.parents)
        or path.is_relative_to(home_dir / ".ssh")
    )
    if refused:
        raise FieldError(
            what,
            f"'{what}' must be a directory of its own for models, not the root, a system"
            f" directory, the home directory or one above it, got {value!r}",
        )
    return value


# -- the same rules in JSON Schema (a field's ``metadata={"schema": ...}``) ------------------------
#
# jobproto publishes these and enforces them beside the checks: what ``/openapi.json`` says holds.
# ``check_models_dir``'s refused directories are the check's alone (no pattern says them).

_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_H16 = "[0-9A-Fa-f]{1,4}"
#: an IPv6 address (RFC 4291 §2.2 forms 1 and 2; urlsplit checks a bracketed host is one)
_IPV6 = (
    "(?:"
    + "|".join(
        (
            f"(?:{_H16}:){{7}}{_H16}",
            f"(?:{_H16}:){{1,7}}:",
            *(f"(?:{_H16}:){{1,{7 - n}}}(?::{_H16}){{1,{n}}}" for n in range(1, 7)),
            f":(?:(?::{_H16}){{1,7}}|:)",
        )
    )
    + ")"
)
#: an http(s) URL with a host (``check_http_url``)
URL_SCHEMA: Final = {
    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
    f"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|\\[{_IPV6}\\])"
    f"(?::{_PORT}?)?(?:[/?#].*)?$"
}
#: a positive number of seconds (``check_interval``; JSON has no infinity)
INTERVAL_SCHEMA: Final = {"exclusiveMinimum": 0}
#: an absolute path without NUL (``check_absolute_path``)
ABSOLUTE_PATH_SCHEMA: Final = {"pattern": "^/[^\\u0000]*$"}


# -- the same checks as attrs validators (the field's own name is the one reported) ----------------


def field_validator(check: Callable[[V, str], object]) -> Validator[V]:
    """An attrs validator running ``check(value, field name)``: ``check``'s ``FieldError``
    names the field (``attrs.validators.optional`` of it lets ``None`` through)."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: V) -> None:
        check(value, attribute.name)

    # named after its check: what names a validator (jobproto's SchemaError, a traceback) says
    # check_http_url, not field_validator.<locals>.validate
    validate.__name__ = getattr(check, "__name__", validate.__name__)
    validate.__qualname__ = getattr(check, "__qualname__", validate.__qualname__)
    return validate


url_validator = field_validator(check_http_url)
optional_url_validator = attrs.validators.optional(url_validator)
interval_validator = field_validator(check_interval)
optional_interval_validator = attrs.validators.optional(interval_validator)
absolute_path_validator = field_validator(check_absolute_path)
optional_absolute_path_validator = attrs.validators.optional(absolute_path_validator)

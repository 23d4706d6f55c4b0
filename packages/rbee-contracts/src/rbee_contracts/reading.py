"""Reading another tier's result: its known fields strictly, the keys it added since ignored.

A service structures the *parameters* it is sent strictly (an unknown key is a 422: a typo must
not pass unnoticed). A *result* it reads from another tier is different: a newer hive or queen
may add a field, and an older reader must not fail the user's job for it. ``read_result`` drops
the keys the contract type does not know (in nested contract types too) and then structures the
rest as strictly as parameters: a known field with a wrong value is still refused.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from jobproto import structure_params

__all__ = ["read_result"]

T = TypeVar("T")


def read_result(raw: Any, cls: type[T]) -> T:
    """``raw`` (a JSON result) as ``cls``; a 422 ``jobproto.RequestError`` naming the field of
    the first known key with a wrong value (the caller words it for its own tier)."""
    if not isinstance(raw, Mapping):
        return structure_params(raw, cls)  # refused: "must be an object"
    return structure_params(_known(raw, cls), cls)


def _known(raw: Mapping[str, Any], cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        a.name: _prune(raw[a.name], hints.get(a.name, Any))
        for a in attrs.fields(cls)
        if a.name in raw
    }


def _prune(value: Any, tp: Any) -> Any:
    """``value`` with the unknown keys of the contract types ``tp`` holds removed."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and attrs.has(tp):
        return _known(value, tp) if isinstance(value, Mapping) else value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _prune(value, inner[0]) if len(inner) == 1 and value is not None else value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [_prune(v, item) for v in value]
    if origin is dict and isinstance(value, Mapping):
        _, item = typing.get_args(tp)
        return {k: _prune(v, item) for k, v in value.items()}
    return value

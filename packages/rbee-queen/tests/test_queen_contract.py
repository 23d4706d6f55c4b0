"""The queen is the one judge of parameters: every value a hive or worker would refuse, the queen
refuses first (422, the field named), before it routes anything or spawns a worker.

``REFUSED`` holds one refused value per field of every parameter type the queen takes. It is
checked for completeness against ``attrs.fields``: a field added to a shared type (or to the
queen's extension of it) without a refused example here makes
``test_every_field_has_a_refused_value`` fail, so the queen and the tiers behind it cannot
drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from jobproto import RequestError, converter
from jobproto.client import HTTPStatusError
from rbee_contracts import queen_ops
from rbee_contracts.queen_ops import (
    HiveParams,
    HiveStartParams,
    QueenInferParams,
    QueenModelDeleteParams,
    QueenModelDownloadParams,
    QueenModelListParams,
    QueenModelRegisterParams,
    QueenWorkerListParams,
    QueenWorkerSpawnParams,
    QueenWorkerStopParams,
    downstream_type,
)

pytestmark = pytest.mark.anyio

# (operation, type, a valid body, {field: the change that makes exactly that field refused})
Case = tuple[str, type, dict[str, Any], dict[str, dict[str, Any]]]

_HIVE = {"hive": "-not-a-hive-id"}

REFUSED: list[Case] = [
    (
        "infer",
        QueenInferParams,
        {"model": "tiny", "prompt": "hi"},
        {
            "prompt": {"prompt": None},
            "messages": {"prompt": None, "messages": []},
            "max_tokens": {"max_tokens": 0},
            "temperature": {"temperature": -0.5},
            "top_p": {"top_p": 0},
            "top_k": {"top_k": -1},
            "seed": {"seed": -1},
            "stop": {"stop": [""]},
            "model": {"model": "../etc"},
            "hive": _HIVE,
        },
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "tiny"},
        {
            "model": {"model": "org/tiny"},
            "engine": {"engine": "llamacpp"},
            "worker_id": {"worker_id": "w..1"},
            "device": {"device": "gpu"},
            "max_concurrency": {"max_concurrency": 0},
            "engine_args": {"engine_args": {"bad key": "1"}},
            "hive": _HIVE,
        },
    ),
    ("worker_list", QueenWorkerListParams, {}, {"hive": _HIVE}),
    (
        "worker_stop",
        QueenWorkerStopParams,
        {"worker_id": "w1"},
        {"worker_id": {"worker_id": "../w1"}, "hive": _HIVE},
    ),
    (
        "model_download",
        QueenModelDownloadParams,
        {"repo_id": "org/m"},
        {
            "repo_id": {"repo_id": "org/m/extra"},
            "revision": {"revision": "../main"},
            "name": {"name": "catalog.json"},
            "hive": _HIVE,
        },
    ),
    (
        "model_register",
        QueenModelRegisterParams,
        {"name": "m", "path": "/tmp/m"},
        {"name": {"name": ".hidden"}, "path": {"path": "relative/m"}, "hive": _HIVE},
    ),
    ("model_list", QueenModelListParams, {}, {"hive": _HIVE}),
    ("model_delete", QueenModelDeleteParams, {"name": "m"}, {"name": {"name": ""}, "hive": _HIVE}),
    (
        "hive_start",
        HiveStartParams,
        {},
        {
            "hive": _HIVE,
            "port": {"port": 65536},
            "queen_url": {"queen_url": "ftp://queen"},
            "heartbeat": {"heartbeat": 0},
            "models_dir": {"models_dir": ""},
        },
    ),
    ("hive_status", HiveParams, {"hive": "h1"}, {"hive": _HIVE}),
    ("hive_stop", HiveParams, {"hive": "h1"}, {"hive": _HIVE}),
]

CASES = [
    (op, cls, body, field, change) for op, cls, body, f in REFUSED for field, change in f.items()
]


def _ids(case: tuple[Any, ...]) -> str:
    return f"{case[0]}.{case[3]}"


def test_every_field_has_a_refused_value() -> None:
    for _, cls, _, fields in REFUSED:
        assert set(fields) == {a.name for a in attrs.fields(cls)}, cls.__name__
    # and every parameter type of the queen's module is in the table
    listed = {cls for _, cls, _, _ in REFUSED}
    declared = {
        obj
        for name in queen_ops.__all__
        if attrs.has(obj := getattr(queen_ops, name)) and attrs.fields(obj)
    }
    assert declared <= listed, declared - listed


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_refused_value_is_refused_downstream_too(case: tuple[Any, ...]) -> None:
    """Each example is one the hive or worker itself refuses (for fields they have)."""
    _, cls, body, field, change = case
    downstream = downstream_type(cls)
    converter.structure(body, cls)  # the valid body is valid
    own = {a.name for a in attrs.fields(downstream)}
    if field not in own or downstream is cls:
        return
    raw = {k: v for k, v in {**body, **change}.items() if k in own and v is not None}
    with pytest.raises(Exception) as info:
        converter.structure(raw, downstream)
    assert not isinstance(info.value, RequestError) or info.value.status == 422


async def test_the_queen_refuses_every_field_before_routing(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        refused: dict[str, str | None] = {}
        for op, _, body, field, change in CASES:
            fields = {k: v for k, v in {**body, **change}.items() if v is not None}
            if "prompt" in change and change["prompt"] is None:
                fields.pop("prompt", None)
            with pytest.raises(HTTPStatusError) as info:
                await c.client.create(op, fields)
            assert info.value.status == 422, (op, field)
            refused[f"{op}.{field}"] = info.value.field
        jobs = await c.client.list()
    assert refused == {f"{op}.{field}": field for op, _, _, field, _ in CASES}
    assert sum(hive.calls.values()) == 0 and hive.workers == {}
    assert list(jobs.jobs) == []

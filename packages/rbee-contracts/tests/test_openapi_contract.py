"""Each service's ``/openapi.json`` describes its operations with the shared contract types.

The queen, a hive and a worker are built in-process; each operation's request schema is compared
with the schema of the ``rbee_contracts`` type for it. And across the boundary: the queen's schema
of a relayed operation is the hive's (or worker's) plus the queen's own routing fields, property
for property, so the queen takes exactly what the tier behind it takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from jobproto import schema_of
from rbee_contracts import hive_ops, queen_ops
from rbee_contracts.completion import CompletionParams
from rbee_contracts.infer import InferParams
from rbee_hive.app import create_app as create_hive_app
from rbee_hive.settings import HiveSettings
from rbee_queen.app import create_app as create_queen_app
from rbee_queen.settings import QueenSettings
from rbee_worker.app import create_app as create_worker_app
from rbee_worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio

QUEEN = {
    "status": queen_ops.NoParams,
    "hive_list": queen_ops.NoParams,
    "hive_status": queen_ops.HiveParams,
    "hive_start": queen_ops.HiveStartParams,
    "hive_stop": queen_ops.HiveParams,
    "hive_install": queen_ops.HiveInstallParams,
    "hive_uninstall": queen_ops.HiveUninstallParams,
    "worker_spawn": queen_ops.QueenWorkerSpawnParams,
    "worker_list": queen_ops.QueenWorkerListParams,
    "worker_stop": queen_ops.QueenWorkerStopParams,
    "model_download": queen_ops.QueenModelDownloadParams,
    "model_register": queen_ops.QueenModelRegisterParams,
    "model_import": queen_ops.QueenModelImportParams,
    "model_list": queen_ops.QueenModelListParams,
    "model_delete": queen_ops.QueenModelDeleteParams,
    "infer": queen_ops.QueenInferParams,
    "completion": CompletionParams,
}
HIVE = {
    "worker_spawn": hive_ops.WorkerSpawnParams,
    "worker_list": hive_ops.WorkerListParams,
    "worker_stop": hive_ops.WorkerStopParams,
    "model_download": hive_ops.ModelDownloadParams,
    "model_register": hive_ops.ModelRegisterParams,
    "model_import": hive_ops.ModelImportParams,
    "model_list": hive_ops.ModelListParams,
    "model_delete": hive_ops.ModelDeleteParams,
    "capabilities": hive_ops.CapabilitiesParams,
}
WORKER = {"infer": InferParams}
#: the queen's own fields on operations it relays
QUEEN_ONLY = {"infer": {"model", "hive"}}


async def openapi(app: Any) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/openapi.json")
    response.raise_for_status()
    return dict(response.json())


def operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    schemas = doc["components"]["schemas"]
    return {name[3:]: schema for name, schema in schemas.items() if name.startswith("op_")}


def expected(operation: str, cls: type) -> dict[str, Any]:
    schema = schema_of(cls)
    return {
        "properties": {"operation": {"const": operation}, **schema["properties"]},
        "required": ["operation", *schema.get("required", [])],
        "additionalProperties": False,
    }


def comparable(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": schema["properties"],
        "required": schema["required"],
        "additionalProperties": schema["additionalProperties"],
    }


@pytest.fixture
async def documents(tmp_path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    queen = create_queen_app(QueenSettings(state_dir=tmp_path / "queen"))
    hive = create_hive_app(
        HiveSettings(models_dir=tmp_path / "models", state_dir=tmp_path / "hive")
    )
    worker = create_worker_app(WorkerSettings(engine="synthetic"), load_on_startup=False)
    return {
        "queen": operations(await openapi(queen)),
        "hive": operations(await openapi(hive)),
        "worker": operations(await openapi(worker)),
    }


async def test_each_service_documents_the_shared_types(documents: Any) -> None:
    for service, table in (("queen", QUEEN), ("hive", HIVE), ("worker", WORKER)):
        ops = documents[service]
        assert set(ops) == set(table), service
        for name, cls in table.items():
            assert comparable(ops[name]) == expected(name, cls), f"{service} {name}"


async def test_the_queen_takes_what_the_tier_behind_it_takes(documents: Any) -> None:
    queen = documents["queen"]
    behind = {**documents["hive"], **documents["worker"]}
    relayed = set(queen) & set(behind)
    assert relayed == set(HIVE) - {"capabilities"} | {"infer"}
    for name in relayed:
        own = QUEEN_ONLY.get(name, {"hive"})
        queen_props = {k: v for k, v in queen[name]["properties"].items() if k not in own}
        assert queen_props == behind[name]["properties"], name
        queen_required = [f for f in queen[name]["required"] if f not in own]
        assert queen_required == behind[name]["required"], name

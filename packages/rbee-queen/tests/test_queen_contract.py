"""The queen is the one judge of parameters: every value a hive or worker would refuse, the queen
refuses first (422, the field named), before it routes anything or spawns a worker.

``REFUSED`` holds one refused value per field of every parameter type the queen takes. It is
checked for completeness against ``attrs.fields``: a field added to a shared type (or to the
queen's extension of it) without a refused example here makes
``test_every_field_has_a_refused_value`` fail, so the queen and the tiers behind it cannot
drift apart unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

import rbee_hive.app
from jobproto import FieldError, RequestError, structure_params
from jobproto.client import HTTPStatusError
from rbee_contracts import queen_ops
from rbee_contracts.hive_cli import hive_argv
from rbee_contracts.hive_ops import WorkerSpawnParams
from rbee_contracts.ids import check_name, repo_name
from rbee_contracts.queen_ops import (
    HiveInstallParams,
    HiveParams,
    HiveStartParams,
    HiveUninstallParams,
    QueenInferParams,
    QueenModelDeleteParams,
    QueenModelDownloadParams,
    QueenModelImportParams,
    QueenModelListParams,
    QueenModelRegisterParams,
    QueenWorkerListParams,
    QueenWorkerSpawnParams,
    QueenWorkerStopParams,
    downstream_type,
)
from rbee_contracts.worker_cli import DEVICES
from rbee_hive.capabilities import GpuInfo
from rbee_hive.placement import PlacementError, plan
from rbee_hive.settings import HiveSettings
from rbee_hive.worker_spec import WorkerSpec
from rbee_worker.app import parse_args as parse_worker_args
from rbee_worker.engines.loader import create_engine

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
            "presence_penalty": {"presence_penalty": 2.5},
            "frequency_penalty": {"frequency_penalty": -2.5},
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
            "file": {"file": "../model.gguf"},
            "dtype": {"dtype": "int8"},
            "hive": _HIVE,
        },
    ),
    (
        "model_import",
        QueenModelImportParams,
        {"name": "m", "path": "/tmp/m.gguf"},
        {
            "name": {"name": "a/b"},
            "path": {"path": "m.gguf"},
            "dtype": {"dtype": "q4_1"},
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
            "host": {"host": "-oProxyCommand=x"},
            "bind": {"bind": "a b"},
        },
    ),
    ("hive_status", HiveParams, {"hive": "h1"}, {"hive": _HIVE, "host": {"host": ""}}),
    ("hive_stop", HiveParams, {"hive": "h1"}, {"hive": _HIVE, "host": {"host": "-p22"}}),
    (
        "hive_install",
        HiveInstallParams,
        {"host": "gpu1"},
        {"host": {"host": "-oX"}, "extra": {"extra": "llamacpp"}, "offline": {"offline": "yes"}},
    ),
    (
        "hive_uninstall",
        HiveUninstallParams,
        {"host": "gpu1"},
        {"host": {"host": ".x"}, "hive": _HIVE, "purge": {"purge": 1}},
    ),
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


def test_every_relayed_type_extends_its_downstream_type() -> None:
    """The queen's type of an operation it relays extends the hive's or worker's type: the
    downstream type is its attrs parent, and the queen adds fields, never changes one."""
    relayed = [
        obj
        for name in queen_ops.__all__
        if name.startswith("Queen") and attrs.has(obj := getattr(queen_ops, name))
    ]
    assert len(relayed) == 9
    for cls in relayed:
        downstream = downstream_type(cls)
        assert downstream is not cls and issubclass(cls, downstream), cls.__name__
        assert downstream.__module__ in ("rbee_contracts.hive_ops", "rbee_contracts.infer")
        theirs = {a.name: a for a in attrs.fields(downstream)}
        ours = {a.name: a for a in attrs.fields(cls)}
        assert set(ours) - set(theirs) <= {"hive", "model"}, cls.__name__
        for name, field in theirs.items():
            assert ours[name].validator is field.validator, (cls.__name__, name)
    for cls in (HiveParams, HiveStartParams, queen_ops.NoParams):
        assert downstream_type(cls) is cls


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_refused_value_is_refused_downstream_too(case: tuple[Any, ...]) -> None:
    """Each example is one the hive or worker itself refuses (for fields they have), with a
    422 that names the same field."""
    _, cls, body, field, change = case
    downstream = downstream_type(cls)
    structure_params(body, cls)  # the valid body is valid
    with pytest.raises(RequestError) as info:
        structure_params({k: v for k, v in {**body, **change}.items() if v is not None}, cls)
    assert (info.value.status, info.value.field) == (422, field)
    own = {a.name for a in attrs.fields(downstream)}
    if field not in own or downstream is cls:
        return
    raw = {k: v for k, v in {**body, **change}.items() if k in own and v is not None}
    with pytest.raises(RequestError) as info:
        structure_params(raw, downstream)
    assert (info.value.status, info.value.field) == (422, field)


# -- the refusers behind the parent types ----------------------------------------------------------
#
# A hive or worker refuses some values not in its parameter type but later: the hive's own command
# line and settings (hive_start), the hive's placement (worker_spawn's device and engine_args, in
# the job), the worker's command line and its engine's arguments (at the worker's start). Each
# case below is a value one of them refuses: the queen must refuse it first. ``ACCEPTED`` holds
# values the queen takes: each must get through every one of them.

GIB = 1 << 30
GPUS = [GpuInfo(0, "gpu0", 80 * GIB, 79 * GIB), GpuInfo(1, "gpu1", 80 * GIB, 79 * GIB)]


class _HiveBuilt(Exception):
    def __init__(self, settings: HiveSettings) -> None:
        self.settings = settings


def run_hive_command_line(fields: dict[str, Any], tmp: Path) -> HiveSettings:
    """What the hive makes of the command line the queen starts it with for ``hive_start``:
    the hive's own ``main`` (argparse, then ``HiveSettings``), stopped before it serves.
    ``SystemExit`` where the hive refuses it."""
    with attrs.validators.disabled():  # the value the queen refuses, as the hive would get it
        params = HiveStartParams(**fields)
    argv = hive_argv(
        host="127.0.0.1",
        port=9000 if params.port is None else params.port,
        hive_id=params.hive,
        queen_url=params.queen_url or "http://127.0.0.1:7833",
        state_dir=str(tmp / "state"),
        models_dir=params.models_dir or str(tmp / "models"),
        heartbeat=params.heartbeat,
    )

    def built(settings: HiveSettings) -> Any:
        raise _HiveBuilt(settings)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rbee_hive.app, "create_app", built)
        patch.setattr(rbee_hive.app.logging, "basicConfig", lambda **_: None)
        try:
            rbee_hive.app.main(argv)
        except _HiveBuilt as done:
            return done.settings
    raise AssertionError("the hive's main returned without building its settings")


def run_spawn(fields: dict[str, Any], tmp: Path) -> Any:
    """What the hive and the worker make of a ``worker_spawn``: the hive's placement (on two
    made-up GPUs), the worker command line the hive builds from it, the worker's own parsing of
    it, and the worker's engine built (not loaded) from it. ``PlacementError``, ``SystemExit``
    or ``ValueError`` where one of them refuses it."""
    spawn = {k: v for k, v in fields.items() if k != "hive"}
    with attrs.validators.disabled():  # the value the queen refuses, as the hive would get it
        params = WorkerSpawnParams(**spawn)
    placed = plan(
        model=params.model,
        engine=params.engine,
        device=params.device,
        engine_args=params.engine_args,
        model_size=GIB,
        gpus=GPUS,
        ram_free=None,
    )
    spec = WorkerSpec(
        worker_id=params.worker_id or "w1",
        model=params.model,
        model_path=tmp / params.model,
        engine=params.engine,
        device=placed.device,
        max_concurrency=params.max_concurrency,
        engine_args=params.engine_args,
    )
    settings = HiveSettings(
        models_dir=tmp / "models", state_dir=tmp / "state", worker_command=("rbee-worker",)
    )
    worker = parse_worker_args(spec.argv(settings)[1:])
    if worker.engine in ("synthetic", "transformers"):  # vllm: vLLM itself is the judge
        create_engine(
            worker.engine,
            model=worker.model,
            model_name=worker.model_name,
            device=worker.device,
            dtype=worker.dtype,
            max_concurrency=worker.max_concurrency,
            engine_args=worker.engine_args,
        )
    return worker


# (operation, queen type, the refused fields, the field the queen's 422 names, who refuses it)
BEHIND: list[tuple[str, type, dict[str, Any], str, Any]] = [
    # A1: a GPU twice
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "device": "cuda:0,0"},
        "device",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "device": "cuda:1,01"},
        "device",
        run_spawn,
    ),
    # A3: numbers placement reads, not finite
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine_args": {"tensor_parallel_size": "inf"}},
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {
            "model": "m",
            "engine": "vllm",
            "device": "cuda",
            "engine_args": {"pipeline-parallel-size": "nan"},
        },
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "vllm", "engine_args": {"kv_cache_memory_bytes": "1e999"}},
        "engine_args",
        run_spawn,
    ),
    # A4: engine args the named engine does not know, or values it refuses
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "synthetic", "engine_args": {"bogus": "1"}},
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "transformers", "engine_args": {"tensor_parallel_size": "2"}},
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "synthetic", "engine_args": {"max_model_len": "0"}},
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "synthetic", "engine_args": {"load_seconds": "soon"}},
        "engine_args",
        run_spawn,
    ),
    (
        "worker_spawn",
        QueenWorkerSpawnParams,
        {"model": "m", "engine": "transformers", "engine_args": {"threads": "1.5"}},
        "engine_args",
        run_spawn,
    ),
    # A5: a URL with no host
    (
        "hive_start",
        HiveStartParams,
        {"queen_url": "http://:9000"},
        "queen_url",
        run_hive_command_line,
    ),
    (
        "hive_start",
        HiveStartParams,
        {"queen_url": "http://[::1"},
        "queen_url",
        run_hive_command_line,
    ),
]

#: values the queen takes, and each tier behind it too (A2: synthetic on a GPU; A6: a directory
#: whose name starts with a dash)
ACCEPTED: list[tuple[str, dict[str, Any], Any]] = [
    ("worker_spawn", {"model": "m", "engine": "synthetic", "device": "cuda:1"}, run_spawn),
    ("worker_spawn", {"model": "m", "engine": "synthetic", "device": "cuda:0,1"}, run_spawn),
    ("worker_spawn", {"model": "m", "engine": "synthetic", "device": "cpu"}, run_spawn),
    ("worker_spawn", {"model": "m", "engine": "transformers", "device": "cuda:1"}, run_spawn),
    (
        "worker_spawn",
        {
            "model": "m",
            "engine": "vllm",
            "device": "cuda",
            "engine_args": {"tensor_parallel_size": "2"},
        },
        run_spawn,
    ),
    (
        "worker_spawn",
        {
            "model": "m",
            "engine": "synthetic",
            "worker_id": "w-1",
            "max_concurrency": 8,
            "engine_args": {"tokens_per_second": "50", "max_model_len": "64"},
        },
        run_spawn,
    ),
    (
        "worker_spawn",
        {
            "model": "m",
            "engine": "transformers",
            "engine_args": {"threads": "2", "max_model_len": "128"},
        },
        run_spawn,
    ),
    (
        "hive_start",
        {
            "models_dir": "/tmp/-x",
            "queen_url": "http://[::1]:9",
            "heartbeat": 0.25,
            "port": 0,
            "hive": "h.1",
        },
        run_hive_command_line,
    ),
]


def _behind_id(case: tuple[Any, ...]) -> str:
    return f"{case[0]}.{case[3]}={case[2][case[3]]}"


@pytest.mark.parametrize("case", BEHIND, ids=_behind_id)
def test_the_queen_refuses_what_a_tier_refuses_later(case: tuple[Any, ...], tmp_path: Path) -> None:
    _, cls, fields, field, refuser = case
    with pytest.raises(RequestError) as info:
        structure_params(fields, cls)
    assert (info.value.status, info.value.field) == (422, field)
    # and the value is one that tier really refuses (the case is not made up)
    downstream = downstream_type(cls)
    own = {a.name for a in attrs.fields(downstream)}
    checked = {k: v for k, v in fields.items() if k in own}
    with pytest.raises((SystemExit, PlacementError, ValueError)):
        refuser(checked, tmp_path)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: f"{c[0]}:{sorted(c[1].items())}")
def test_what_the_queen_accepts_every_tier_behind_it_accepts(
    case: tuple[Any, ...], tmp_path: Path
) -> None:
    op, fields, runner = case
    cls = QueenWorkerSpawnParams if op == "worker_spawn" else HiveStartParams
    structure_params(fields, cls)
    runner(fields, tmp_path)


def test_a_models_dir_is_an_absolute_path_and_reaches_the_hive_as_given(tmp_path: Path) -> None:
    """A6: the hive's working directory is not the caller's, so the queen takes only an
    absolute models directory; and one whose name starts with a dash is the hive's
    ``--models-dir``, not another flag."""
    for bad in ("-x", "relative/models", "--port=1"):
        with pytest.raises(RequestError) as info:
            structure_params({"models_dir": bad}, HiveStartParams)
        assert info.value.field == "models_dir"
    odd = str(tmp_path / "-x")
    settings = run_hive_command_line({"models_dir": odd, "port": 1}, tmp_path)
    assert (settings.models_dir, settings.port) == (Path(odd), 1)


def test_synthetic_on_a_gpu_gets_the_device_kind_the_worker_takes(tmp_path: Path) -> None:
    worker = run_spawn({"model": "m", "engine": "synthetic", "device": "cuda:1"}, tmp_path)
    assert worker.device == "cuda"
    assert set(DEVICES) == {"cpu", "cuda"}


def test_a_repo_id_whose_name_the_hive_refuses_is_refused(tmp_path: Path) -> None:
    """A7: the hive names a downloaded model after the repo id's last part; a repo id whose
    name the hive would refuse is refused by the queen."""
    for model in ("org/catalog.json", "catalog.json"):
        with pytest.raises(RequestError) as info:
            structure_params({"model": model, "prompt": "hi"}, QueenInferParams)
        assert info.value.field == "model"
        with pytest.raises(FieldError):
            check_name(repo_name(model))  # the hive's own check of the name
    structure_params({"model": "org/tiny", "prompt": "hi"}, QueenInferParams)


async def test_the_queen_refuses_every_field_before_routing(cluster: Any, fakes: Any) -> None:
    hive = fakes.Hive("h1")
    async with cluster([hive]) as c:
        await hive.register(c.queen_url)
        refused: dict[str, str | None] = {}
        for op, _, body, field, change in CASES:
            fields = {k: v for k, v in {**body, **change}.items() if v is not None}
            with pytest.raises(HTTPStatusError) as info:
                await c.client.create(op, fields)
            assert info.value.status == 422, (op, field)
            refused[f"{op}.{field}"] = info.value.field
        jobs = await c.client.list()
    assert refused == {f"{op}.{field}": field for op, _, _, field, _ in CASES}
    assert sum(hive.calls.values()) == 0 and hive.workers == {}
    assert list(jobs.jobs) == []

"""The value rules of the contracts: devices, engine arguments, URLs, model references, and the
same bounds in the JSON Schema a service's ``/openapi.json`` shows."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

from jobproto import FieldError, RequestError, SchemaError, schema_of, structure_params
from rbee_contracts import hive_ops, queen_ops, values
from rbee_contracts.engines import ENGINE_ARGS, ENGINES, check_engine_args, engine_arg_number
from rbee_contracts.hive_cli import hive_argv
from rbee_contracts.ids import CATALOG_FILE, RESERVED_NAMES, is_name, repo_name
from rbee_contracts.values import check_absolute_path, check_interval, is_http_url


def test_devices_parse_and_name_each_gpu_once() -> None:
    assert hive_ops.parse_device(None) == (None, None)
    assert hive_ops.parse_device("cpu") == ("cpu", None)
    assert hive_ops.parse_device("cuda") == ("cuda", None)
    assert hive_ops.parse_device("cuda:3,1") == ("cuda", (3, 1))
    for bad in ("gpu", "cuda:", "cuda:0,0", "cuda:1,01", "cpu:0", "cuda:a", " cuda"):
        with pytest.raises(FieldError) as info:
            hive_ops.parse_device(bad, "device")
        assert info.value.field == "device"


def test_engine_arg_numbers_are_finite() -> None:
    assert engine_arg_number({"tensor-parallel-size": "2"}, "tensor_parallel_size") == 2.0
    assert engine_arg_number({"tensor_parallel_size": "two"}, "tensor_parallel_size") is None
    assert engine_arg_number({}, "tensor_parallel_size") is None
    for raw in ("inf", "-inf", "nan", "1e999", "Infinity"):
        with pytest.raises(FieldError):
            engine_arg_number({"gpu_memory_utilization": raw}, "gpu_memory_utilization")


def test_engine_args_of_an_engine_known_without_it() -> None:
    check_engine_args("synthetic", {"tokens_per_second": "2.5", "max_model_len": "1"})
    check_engine_args("transformers", {"threads": "0", "max_model_len": "64"})
    # vLLM's arguments are vLLM's to judge; auto may be vLLM
    check_engine_args("vllm", {"enforce_eager": "true"})
    check_engine_args("auto", {"anything": "goes"})
    for engine, args in [
        ("synthetic", {"bogus": "1"}),
        ("synthetic", {"max-model-len": "8"}),
        ("synthetic", {"max_model_len": "0"}),
        ("synthetic", {"load_seconds": "-1"}),
        ("synthetic", {"load_seconds": "nan"}),
        ("transformers", {"threads": "1.5"}),
        ("transformers", {"tensor_parallel_size": "1"}),
        ("vllm", {"tensor_parallel_size": "inf"}),
        ("auto", {"kv-cache-memory-bytes": "nan"}),
    ]:
        with pytest.raises(FieldError) as info:
            check_engine_args(engine, args)
        assert info.value.field == "engine_args", (engine, args)
    assert set(ENGINE_ARGS) < set(ENGINES)


def test_urls_need_a_host_and_a_port_that_is_one() -> None:
    for good in ("http://h", "https://h:1/x", "http://[::1]:9000", "http://127.0.0.1:0"):
        assert is_http_url(good), good
    for bad in ("http://:9000", "ftp://h", "h:9000", "http://h:99999", "http://[::1", "http://"):
        assert not is_http_url(bad), bad


def test_intervals_and_paths() -> None:
    assert check_interval(0.5) == 0.5
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(FieldError):
            check_interval(bad)
    assert check_absolute_path("/x/-y") == "/x/-y"
    for bad in ("", "-x", "rel/x", "/x\0y"):
        with pytest.raises(FieldError):
            check_absolute_path(bad)


def test_a_repo_ref_must_name_a_model_the_hive_can_keep() -> None:
    assert CATALOG_FILE in RESERVED_NAMES and not is_name(CATALOG_FILE)
    assert repo_name("org/m") == "m" and repo_name("m") == "m"
    assert queen_ops.is_repo_ref("org/m") and not queen_ops.is_repo_ref("m")
    for bad in ("org/catalog.json", "catalog.json", "org/m/x", "../m"):
        with pytest.raises(RequestError) as info:
            structure_params({"model": bad, "prompt": "hi"}, queen_ops.QueenInferParams)
        assert info.value.field == "model", bad


def test_the_hive_command_line_gives_each_value_with_its_flag() -> None:
    argv = hive_argv(
        host="::1",
        port=0,
        hive_id="h",
        queen_url="http://q:1",
        state_dir="/s",
        models_dir="/-x",
        heartbeat=0.1,
    )
    assert all(re.fullmatch(r"--[a-z-]+=.*", arg) for arg in argv), argv
    assert "--models-dir=/-x" in argv and "--heartbeat=0.1" in argv


def _patterns(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["pattern"]] if isinstance(schema.get("pattern"), str) else []
        return found + [p for v in schema.values() for p in _patterns(v)]
    if isinstance(schema, list):
        return [p for v in schema for p in _patterns(v)]
    return []


TYPES = [getattr(m, n) for m in (hive_ops, queen_ops) for n in m.__all__ if n.endswith("Params")]


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_schema_patterns_are_anchored(cls: type) -> None:
    # JSON Schema's pattern is a search (JSON Schema validation §6.3.3)
    for pattern in _patterns(schema_of(cls)):
        assert pattern.startswith("^") and pattern.endswith("$"), (cls.__name__, pattern)


def _value(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema for its values: the non-null branch of a field that may be None."""
    return next((s for s in schema.get("anyOf", []) if s != {"type": "null"}), schema)


def test_the_schema_says_the_validators_bounds() -> None:
    props = schema_of(queen_ops.QueenWorkerSpawnParams)["properties"]
    spawn = {name: _value(schema) for name, schema in props.items()}
    device = re.compile(spawn["device"]["pattern"])
    assert device.search("cuda:0,1") and device.search("cpu")
    assert not device.search("xcpu") and not device.search("cuda:1 and more")
    mc = spawn["max_concurrency"]
    assert (mc["minimum"], mc["maximum"]) == (1, hive_ops.MAX_CONCURRENCY)
    keys = re.compile(spawn["engine_args"]["propertyNames"]["pattern"])
    assert keys.search("tensor_parallel_size") and not keys.search("bad key")
    for field in ("model", "worker_id"):
        assert spawn[field]["maxLength"] == 128
        assert not re.search(spawn[field]["pattern"], "a/b")
    assert spawn["hive"]["maxLength"] == 63
    assert not re.search(spawn["hive"]["pattern"], "-h")


def test_a_field_validator_is_named_after_its_check() -> None:
    @attrs.frozen
    class Opaque:  # a check the schema cannot say, and no metadata["schema"]: refused, named
        url: str = attrs.field(validator=values.field_validator(values.check_http_url))

    with pytest.raises(SchemaError) as info:
        schema_of(Opaque)
    assert "the validator check_http_url checks" in str(info.value)
    assert "field_validator.<locals>" not in str(info.value)
    assert values.url_validator.__name__ == "check_http_url"


def test_a_repository_s_gguf_file_ends_in_gguf_in_either_case() -> None:
    # as a local import's path may (``rbee_hive.imports``): ``.GGUF`` is a GGUF file too
    for file in ("m.gguf", "sub/m.Q4_1.GGUF", "m.Gguf"):
        assert hive_ops.ModelDownloadParams(repo_id="Org/Repo", file=file).file == file
    for file in ("", "m.gguf.txt", "../m.gguf", "m.ggml", "/m.gguf"):
        with pytest.raises(ValueError):
            hive_ops.ModelDownloadParams(repo_id="Org/Repo", file=file)

"""``read_result``: keys a type does not know are dropped (nested too); known ones are strict."""

from __future__ import annotations

import pytest

from jobproto import RequestError
from rbee_contracts.hive_ops import ModelInfo, ModelList
from rbee_contracts.queen_results import HiveStopResult, StopOutcome
from rbee_contracts.reading import read_result

INFO = {"name": "tiny", "size_bytes": 10, "source": "local", "path": "/m/tiny"}


def test_unknown_keys_are_dropped_at_every_level() -> None:
    listing = read_result({"models": [{**INFO, "added_in_v2": 1}], "total": 1}, ModelList)
    assert listing == ModelList([ModelInfo("tiny", 10, "local", "/m/tiny")])


def test_a_known_field_with_a_wrong_value_is_refused_with_its_path() -> None:
    with pytest.raises(RequestError) as bad:
        read_result({"models": [{**INFO, "size_bytes": "10"}]}, ModelList)
    assert bad.value.field == "models[0].size_bytes"
    with pytest.raises(RequestError) as outcome:
        read_result({"hive_id": "h", "pid": 1, "log": None, "command": [], "stopped": "gone"},
                    HiveStopResult)  # fmt: skip
    assert outcome.value.field == "stopped"


def test_the_stop_outcome_is_structured_as_its_enum() -> None:
    raw = {"hive_id": "h", "pid": 1, "log": None, "command": ["rbee-hive"], "stopped": "killed"}
    assert read_result(raw, HiveStopResult).stopped is StopOutcome.KILLED

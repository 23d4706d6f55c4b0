"""Every operation of every tier validates exactly what its published schema says.

For each operation of the queen, a hive, a worker and the conformance set, Hypothesis draws create
requests from the operation's published JSON Schema (``Operation.json_schema()``, what
``/openapi.json`` serves) and near-valid ones with one field made wrong
(``jobproto.conformance._schemas.cases``); ``jsonschema`` judges each. ``Operations.parse`` must
agree: a body the schema accepts is parsed, one it refuses is a 422 ``validation_error`` naming
the field. The services are built in-process (``create_app``) and never started: ``parse`` is
all that runs.

Each tier's test checks all its operations and reports every operation and field that disagrees
(with the shortest example found) before it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from jobproto import Operation, Operations, RequestError
from jobproto.conformance import conformance_operations
from jobproto.conformance._schemas import Case, cases, check_answer
from rbee_hive.app import create_app as create_hive_app
from rbee_hive.settings import HiveSettings
from rbee_queen.app import create_app as create_queen_app
from rbee_queen.settings import QueenSettings
from rbee_worker.app import create_app as create_worker_app
from rbee_worker.settings import WorkerSettings

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    # every disagreement is collected (below), so nothing is left to shrink or explain
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def answer(ops: Operations, case: Case) -> tuple[str, str | None] | None:
    """``parse`` the case's body: ``check_answer``'s complaint about what came of it and the
    field ``parse`` refused (None when it accepted), or None when they agree."""
    refused: str | None = None
    try:
        try:
            ops.parse(case.body)
        except RequestError as exc:
            refused = exc.field
            check_answer(case, exc.status, exc.to_json())
        else:
            check_answer(case, 201, {})
    except AssertionError as exc:
        return str(exc), refused
    return None


def check_operation(ops: Operations, op: Operation[Any], found: dict[tuple[str, ...], str]) -> None:
    """Run the cases of ``op``; each disagreement goes into ``found`` under (operation, field,
    direction), keeping the shortest complaint."""

    @EXAMPLES
    @given(cases(op.json_schema()))
    def agrees(case: Case) -> None:
        outcome = answer(ops, case)
        if outcome is None:
            return
        complaint, refused = outcome
        if case.valid:  # the field parse refused in a body the schema accepts
            key = (op.name, str(refused), "schema accepts, parse refuses")
        else:
            key = (op.name, str(case.field), f"schema refuses, parse: {refused or 'accepts'}")
        if key not in found or len(complaint) < len(found[key]):
            found[key] = complaint

    agrees()


def disagreements(ops: Operations) -> list[str]:
    """Every way ``parse`` disagrees with the published schemas of ``ops``: one line per
    operation, field and direction, with the shortest example."""
    found: dict[tuple[str, ...], str] = {}
    for op in ops:
        check_operation(ops, op, found)
    return [f"{op} {field} ({how}): {found[op, field, how]}" for op, field, how in sorted(found)]


def tier_operations(tier: str, tmp_path: Path) -> Operations:
    app: Any
    if tier == "queen":
        app = create_queen_app(QueenSettings(state_dir=tmp_path / "queen"))
    elif tier == "hive":
        app = create_hive_app(
            HiveSettings(models_dir=tmp_path / "models", state_dir=tmp_path / "hive")
        )
    elif tier == "worker":
        app = create_worker_app(WorkerSettings(engine="synthetic"), load_on_startup=False)
    else:
        return conformance_operations()
    ops: Operations = app.state.jobs.operations
    return ops


@pytest.mark.parametrize("tier", ["queen", "hive", "worker", "conformance"])
def test_parse_agrees_with_the_published_schema(tier: str, tmp_path: Path) -> None:
    ops = tier_operations(tier, tmp_path)
    assert len(ops) > 0
    found = disagreements(ops)
    assert not found, f"{tier}: parse() and the published schema disagree:\n" + "\n".join(found)

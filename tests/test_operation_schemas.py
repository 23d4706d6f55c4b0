"""Every operation of every tier validates exactly what its published schema says.

For each operation of the queen, a hive, a worker and the conformance set, Hypothesis draws create
requests from the operation's published JSON Schema (``Operation.json_schema()``, what
``/openapi.json`` serves) and near-valid ones with one field made wrong
(``jobproto.conformance._schemas.cases``); ``jsonschema`` judges each. ``Operations.parse`` must
agree: a body the schema accepts is parsed, one it refuses is a 422 ``validation_error`` naming
the field. The services are built in-process (``create_app``) and never started: ``parse`` is
all that runs.

Each tier's test checks all its operations and reports every one that disagrees, with the
smallest example Hypothesis found, before it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from jobproto import Operations, RequestError
from jobproto.conformance import conformance_operations
from jobproto.conformance._schemas import Case, cases, check_answer
from rbee_hive.app import create_app as create_hive_app
from rbee_hive.settings import HiveSettings
from rbee_queen.app import create_app as create_queen_app
from rbee_queen.settings import QueenSettings
from rbee_worker.app import create_app as create_worker_app
from rbee_worker.settings import WorkerSettings

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    # no explain phase: it traces every line (slow before Python 3.12) to say little more
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def answer(ops: Operations, case: Case) -> None:
    """``parse`` the case's body; ``check_answer`` judges what came of it."""
    try:
        ops.parse(case.body)
    except RequestError as exc:
        check_answer(case, exc.status, exc.to_json())
    else:
        check_answer(case, 201, {})


def disagreements(ops: Operations) -> list[str]:
    """One line per operation whose ``parse`` disagrees with its schema (the smallest example)."""
    found: list[str] = []
    for op in ops:

        @EXAMPLES
        @given(cases(op.json_schema()))
        def agrees(case: Case) -> None:
            answer(ops, case)

        try:
            agrees()
        except AssertionError as exc:
            found.append(f"{op.name}: {str(exc).splitlines()[0]}")
    return found


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

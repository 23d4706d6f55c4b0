"""``--own-operations``: the service's own operations enforce the schemas they publish.

For each operation (parametrised by the plugin: those the service publishes besides the
conformance operations), Hypothesis draws create requests from its published request schema,
valid ones and near-valid ones with one field made wrong (``jobproto.conformance._schemas``),
POSTs each, and checks the answer: a body the schema accepts is not refused, one it refuses gets
422 ``validation_error`` naming the field. An accepted job is cancelled at once, before anything
subscribes to it, so (unless the service starts jobs at once) it never runs.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from jobproto.conformance._schemas import Case, cases, check_answer, operation_schemas
from jobproto.conformance.pytest_plugin import Target

pytestmark = pytest.mark.conformance


def _answer(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def test_the_published_schema_is_enforced(
    conformance_target: Target, own_operation: str, own_operation_examples: int
) -> None:
    with conformance_target.client() as http:
        r = http.get("/openapi.json")
        assert r.status_code == 200, r.text
        schema = operation_schemas(r.json())[own_operation]

        @settings(
            max_examples=own_operation_examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=cases(schema))
        def check(case: Case) -> None:
            answer = http.post("/v1/jobs", json=case.body)
            if 200 <= answer.status_code < 300:
                cancelled = http.delete(f"/v1/jobs/{answer.json()['job_id']}")
                assert cancelled.status_code in (200, 202), cancelled.text
            check_answer(case, answer.status_code, _answer(answer))

        check()

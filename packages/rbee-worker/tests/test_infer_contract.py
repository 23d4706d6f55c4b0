"""The worker's infer payloads are the contract's types (``rbee_contracts.infer``), field for field.

The worker builds each ``data`` payload as a plain dict on the hot path (one per token) rather
than an ``InferDelta``; this test keeps that dict honest: every payload the worker sends, and its
result, structure strictly (no unknown key, none missing) as the shared types and unstructure
back to the same JSON, so a field renamed on either side fails here.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import httpx
import pytest

from jobproto import Data, converter
from jobproto.client import JobClient
from jobproto.testing import serving
from rbee_contracts.infer import InferDelta, InferResult
from rbee_worker.app import create_app
from rbee_worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio


def strictly(raw: Any, cls: type) -> Any:
    typed = converter.structure(raw, cls)  # jobproto's converter forbids unknown keys
    assert converter.unstructure(typed) == raw
    return typed


async def test_data_payloads_are_infer_deltas_and_the_result_an_infer_result() -> None:
    settings = WorkerSettings(engine="synthetic", worker_id="w-contract")
    events: list[Any] = []
    async with serving(create_app(settings)) as url, JobClient(url) as client:
        async with httpx.AsyncClient(base_url=url) as http:
            with anyio.fail_after(20):
                while (await http.get("/ready")).status_code != 200:
                    await anyio.sleep(0.02)
        result = await client.run("infer", prompt="hi", max_tokens=5, on_event=events.append)
    payloads = [e.event.payload for e in events if isinstance(e.event, Data)]
    assert payloads, "tokens arrive as data events"
    deltas = [strictly(p, InferDelta) for p in payloads]
    typed = strictly(result, InferResult)
    assert "".join(d.text for d in deltas) == typed.text
    assert sum(len(d.token_ids) for d in deltas) == typed.completion_tokens == 5
    # every field of the contract is in what the worker sends (none left to a default)
    assert all(set(p) == {a.name for a in attrs.fields(InferDelta)} for p in payloads)

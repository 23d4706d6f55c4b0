"""``GET /health`` on the queen: public (no token), and it says "up" and the version, nothing of
what runs (no hive ids), as on every rbee service (docs/protocol.md, the token rule)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from rbee_contracts.auth import join_token
from rbee_queen import __version__

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))


async def test_health_is_public_and_says_only_up_and_the_version(cluster: Any) -> None:
    async with (
        cluster(secret=SECRET, allowed_hosts=()) as c,
        httpx.AsyncClient(base_url=c.queen_url) as http,
    ):
        joined = await http.put(
            "/v1/hives/secret-hive",
            json={"url": "http://127.0.0.1:9000"},
            headers={"Authorization": f"Bearer {join_token(SECRET, 'secret-hive')}"},
        )
        assert joined.status_code == 201, joined.text
        health = await http.get("/health")
        jobs = await http.get("/v1/jobs")  # the rest still needs a token
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "version": __version__}
    assert "secret-hive" not in health.text
    assert jobs.status_code == 401

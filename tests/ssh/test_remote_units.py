"""Hives on other machines without an SSH server: the choices ``remote_hives`` and ``ssh`` make
(which queen URL a hive gets, which flags its daemon gets, which known_hosts is read) and the
refusals that come before any connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobproto.client import JobClient, RemoteJobFailed
from jobproto.testing import serving
from rbee_contracts import auth
from rbee_queen.app import create_app
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("operation", "fields"),
    [
        ("hive_install", {"host": "nowhere.invalid"}),
        ("hive_start", {"host": "nowhere.invalid", "hive": "h1"}),
        ("hive_stop", {"host": "nowhere.invalid", "hive": "h1"}),
        ("hive_uninstall", {"host": "nowhere.invalid"}),
    ],
)
async def test_a_queen_without_a_secret_refuses_remote_hives(
    tmp_path: Path, operation: str, fields: dict[str, Any]
) -> None:
    # No secret, no tokens: a hive there could neither join this queen nor be called by it.
    settings = QueenSettings(state_dir=tmp_path / "queen")
    async with serving(create_app(settings)) as url, JobClient(url) as client:
        with pytest.raises(RemoteJobFailed) as failed:
            await client.run(operation, fields)
    assert failed.value.code == "queen_without_secret"
    assert not (tmp_path / "queen" / auth.SECRET_FILE).exists()  # and none was made up

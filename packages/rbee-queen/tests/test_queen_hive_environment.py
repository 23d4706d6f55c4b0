"""What a hive started on the queen's machine gets in its environment: its own tokens, never the
keeper's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import rbee_process
from jobproto.client import RemoteJobFailed
from rbee_contracts import auth, local_layout
from rbee_queen.hives import LocalHives
from rbee_queen.registry import HiveRegistry
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio


def test_a_local_hive_gets_its_tokens_and_not_the_keepers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's token (``RBEE_TOKEN``, ``RBEE_TOKEN_FILE``), which the queen may have in its
    environment (its user's shell), reaches no hive: ``rbee_process`` adds the hive's environment
    to the queen's, so the names are emptied, which every reader takes for unset."""
    monkeypatch.setenv(auth.ENV_TOKEN, "rbee_k_the-keepers-token")
    monkeypatch.setenv(auth.ENV_TOKEN_FILE, str(tmp_path / "keeper.token"))
    secret = bytes(range(32))
    for settings in (
        QueenSettings(state_dir=tmp_path, secret=secret),
        QueenSettings(state_dir=tmp_path),
    ):
        env = LocalHives(settings, HiveRegistry()).environment("x")
        child = rbee_process.child_env(env)
        assert child.get(auth.ENV_TOKEN, "") == ""
        assert child.get(auth.ENV_TOKEN_FILE, "") == ""
        assert "rbee_k_the-keepers-token" not in child.values()
    env = LocalHives(QueenSettings(state_dir=tmp_path, secret=secret), HiveRegistry()).environment(
        "x"
    )
    assert env[auth.ENV_JOIN_TOKEN] == auth.join_token(secret, "x")
    assert env[auth.ENV_HIVE_TOKEN] == auth.hive_token(secret, "x")


async def test_a_started_hive_process_has_no_keeper_token(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through a real start: the hive command prints what it got, and exits."""
    monkeypatch.setenv(auth.ENV_TOKEN, "rbee_k_the-keepers-token")
    monkeypatch.setenv(auth.ENV_TOKEN_FILE, "/keeper/token/file")
    script = tmp_path / "env_hive.py"
    script.write_text(
        "import os\n"
        f"print('token=' + repr(os.environ.get({auth.ENV_TOKEN!r})), flush=True)\n"
        f"print('file=' + repr(os.environ.get({auth.ENV_TOKEN_FILE!r})), flush=True)\n"
        "raise SystemExit(1)\n"
    )
    state = tmp_path / "queen"
    async with cluster(hive_command=(sys.executable, str(script)), state_dir=state) as c:
        with pytest.raises(RemoteJobFailed):
            await c.client.run("hive_start", hive="x", port=0)
    log = local_layout.hive_log(state, "x").read_text()
    assert "token=''" in log and "file=''" in log, log
    assert "rbee_k_the-keepers-token" not in log and "/keeper/token/file" not in log

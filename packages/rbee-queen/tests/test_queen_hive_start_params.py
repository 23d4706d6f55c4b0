"""``hive_start`` of a hive on the queen's machine: a keeper-token caller chooses neither where
the hive sends its join token (``queen_url``: this queen only) nor a models directory that is the
root, a system directory or the home directory (``rbee_contracts.values.check_models_dir``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobproto import FieldError, RequestError, structure_params
from jobproto.client import RemoteJobFailed
from rbee_contracts.queen_ops import HiveStartParams
from rbee_contracts.values import check_models_dir

pytestmark = pytest.mark.anyio

HOME = "/home/alice"


@pytest.mark.parametrize(
    "bad",
    [
        "/",
        "//",
        "/proc",
        "/proc/self",
        "/sys",
        "/dev",
        "/etc",
        "/etc/ssh",
        "/usr",
        "/bin",
        "/boot",
        "/lib",
        "/lib64",
        "/tmp/../etc",
        HOME,
        HOME + "/",
        "/home",
        HOME + "/.ssh",
    ],
)
def test_a_models_dir_that_is_the_system_or_the_home_is_refused(bad: str) -> None:
    with pytest.raises(FieldError) as info:
        check_models_dir(bad, home=HOME)
    assert info.value.field == "models_dir"


@pytest.mark.parametrize("good", ["/srv/models", HOME + "/models", "/tmp/rbee/models", "/var/m"])
def test_a_models_dir_of_its_own_is_taken(good: str) -> None:
    assert check_models_dir(good, home=HOME) == good


@pytest.mark.parametrize(
    "bad", ["/", "/proc", "/etc", str(Path.home()), os.path.dirname(Path.home())]
)
def test_hive_start_refuses_such_a_models_dir_naming_the_field(bad: str) -> None:
    with pytest.raises(RequestError) as info:
        structure_params({"models_dir": bad}, HiveStartParams)
    assert (info.value.status, info.value.field) == (422, "models_dir")


async def test_a_served_queen_answers_422_for_models_dir_root(cluster: Any, tmp_path: Path) -> None:
    async with cluster() as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        created = await http.post(
            "/v1/jobs",
            json={"operation": "hive_start", "hive": "x", "models_dir": "/"},
        )
    assert created.status_code == 422, created.text
    assert created.json()["error"]["field"].endswith("models_dir")
    assert not (tmp_path / "queen" / "hives" / "x.pid").exists()


async def test_a_local_hive_reports_to_this_queen_only(cluster: Any, tmp_path: Path) -> None:
    """Another port on loopback (an attacker's listener), another host: refused before anything
    starts; the queen's own URL is what the hive gets by default."""
    state = tmp_path / "queen"
    async with cluster(hive_command=("/bin/false",)) as c:
        queen = c.app.state.queen
        own = queen.url
        assert queen.local_hives.queen_url(None, own) == own
        assert queen.local_hives.queen_url(own + "/", own) == own
        port = int(own.rsplit(":", 1)[1])
        assert queen.local_hives.queen_url(f"http://localhost:{port}", own)
        for elsewhere in (
            f"http://127.0.0.1:{port + 1}",
            f"http://192.0.2.7:{port}",
            f"https://127.0.0.1:{port}",
            f"http://127.0.0.1:{port}/evil",
        ):
            with pytest.raises(RemoteJobFailed) as info:
                await c.client.run("hive_start", hive="x", port=0, queen_url=elsewhere)
            assert info.value.code == "queen_url_not_allowed", elsewhere
            assert not (state / "hives" / "x.pid").exists()

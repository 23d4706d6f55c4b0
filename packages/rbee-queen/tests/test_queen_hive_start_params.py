"""``hive_start`` of a hive on the queen's machine: a keeper-token caller chooses neither where
the hive sends its join token (``queen_url``: this queen only) nor a models directory that is the
root, a system directory or the home directory (``rbee_contracts.values.check_models_dir``). The
parameters say only that ``models_dir`` is absolute (what the published schema says too): whose
home it must not be depends on the machine the hive runs on, so the queen judges it for a hive of
its own machine, before it starts one (``models_dir_not_allowed``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from jobproto import FieldError, structure_params
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
    "value", ["/", "/proc", "/etc", str(Path.home()), os.path.dirname(Path.home()), "/srv/m"]
)
def test_hive_start_takes_any_absolute_models_dir_as_a_parameter(value: str) -> None:
    """The home directory is the machine's: the parameters (and the schema) cannot refuse it."""
    assert structure_params({"models_dir": value}, HiveStartParams).models_dir == value


@pytest.mark.parametrize(
    "bad", ["/", "/etc", str(Path.home()), os.path.dirname(Path.home()), "link to the home"]
)
async def test_a_local_hive_start_refuses_such_a_models_dir_before_it_starts(
    cluster: Any, tmp_path: Path, bad: str
) -> None:
    if bad == "link to the home":  # judged with its symbolic links resolved, as the hive does
        link = tmp_path / "models"
        link.symlink_to(Path.home(), target_is_directory=True)
        bad = str(link)
    ran = tmp_path / "ran"
    async with cluster(hive_command=("/bin/sh", "-c", f'touch "{ran}"')) as c:
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("hive_start", hive="x", port=0, models_dir=bad)
    assert info.value.code == "models_dir_not_allowed"
    assert "'models_dir' must be a directory of its own for models" in info.value.message
    assert not ran.exists()
    assert not (tmp_path / "queen" / "hives" / "x.pid").exists()


async def test_a_local_hive_start_takes_a_models_dir_of_its_own(
    cluster: Any, tmp_path: Path
) -> None:
    async with cluster(hive_command=("/bin/false",)) as c:
        with pytest.raises(RemoteJobFailed) as info:
            await c.client.run("hive_start", hive="x", port=0, models_dir=str(tmp_path / "m"))
    assert info.value.code == "hive_exited"  # started (and /bin/false exited): not refused


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

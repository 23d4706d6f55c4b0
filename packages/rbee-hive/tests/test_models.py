"""The model catalog: register, list, delete, and the validation that keeps every name and path
inside the models directory (a bad one is refused with a 422 before any job exists)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobproto.client import HTTPStatusError, RemoteJobFailed
from rbee_hive import models
from rbee_hive.models import ModelCatalog, check_name
from rbee_hive.settings import HiveSettings


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x",
        "a/../b",
        "/etc",
        "/abs/path",
        "a/b",
        ".hidden",
        "-dash",
        "x" * 129,
        "catalog.json",
        "a..b",
        "sp ace",
        "new\nline",
        "nul\0",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize("name", ["tiny", "Qwen2.5-0.5B-Instruct", "a", "m_1", "x" * 128])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@given(st.text(max_size=140))
def test_an_accepted_name_stays_in_the_models_dir(name: str) -> None:
    catalog = ModelCatalog(Path("/srv/models"), hf_cache_dir=Path("/tmp/unused"))
    try:
        path = catalog.model_dir(name)
    except ValueError:
        return
    assert path.parent == Path("/srv/models")
    assert path.name == name


@pytest.mark.anyio
async def test_register_list_delete(
    start_hive: Any, make_settings: Callable[..., HiveSettings], model_dir: Path, kit: Any
) -> None:
    settings = make_settings()
    async with start_hive(settings) as h:
        result, events = await kit.run_job(
            h.client, "model_register", name="tiny", path=str(model_dir)
        )
        assert result["source"] == "registered"
        assert result["path"] == str(model_dir)
        assert result["size_bytes"] == model_dir.joinpath("config.json").stat().st_size + 1000
        assert kit.narrations(events, "model_register")

        # Not copied: the models directory holds only the catalog.
        assert not (settings.models_dir / "tiny").exists()
        catalog = json.loads((settings.models_dir / "catalog.json").read_text())
        assert catalog["models"]["tiny"]["path"] == str(model_dir)

        # A model put into the models directory by hand is listed as "local".
        local = settings.models_dir / "handmade"
        local.mkdir()
        (local / "weights.bin").write_bytes(b"1" * 10)

        listed, _ = await kit.run_job(h.client, "model_list")
        by_name = {m["name"]: m for m in listed["models"]}
        assert set(by_name) == {"tiny", "handmade"}
        assert by_name["handmade"] == {
            "name": "handmade",
            "size_bytes": 10,
            "source": "local",
            "path": str(local),
            "revision": None,
            "repo_id": None,
            "source_file": None,
            "sha256": None,
        }

        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_register", name="tiny", path=str(model_dir))
        assert exc.value.code == "model_exists"

        # Deleting a registered model forgets it; its files are the user's.
        deleted, _ = await kit.run_job(h.client, "model_delete", name="tiny")
        assert deleted["source"] == "registered"
        assert (model_dir / "weights.bin").exists()
        # Deleting a local one removes its directory.
        await kit.run_job(h.client, "model_delete", name="handmade")
        assert not local.exists()
        listed, _ = await kit.run_job(h.client, "model_list")
        assert listed["models"] == []

        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_delete", name="tiny")
        assert exc.value.code == "model_not_found"


@pytest.mark.anyio
async def test_register_refuses_what_is_not_a_directory(
    start_hive: Any, make_settings: Callable[..., HiveSettings], model_dir: Path, kit: Any
) -> None:
    async with start_hive(make_settings()) as h:
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_register", name="a", path=str(model_dir / "nope"))
        assert exc.value.code == "path_not_found"
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(
                h.client, "model_register", name="a", path=str(model_dir / "config.json")
            )
        assert exc.value.code == "not_a_directory"


@pytest.mark.anyio
async def test_register_takes_only_directories_under_the_model_roots(
    start_hive: Any,
    make_settings: Callable[..., HiveSettings],
    model_dir: Path,
    tmp_path: Path,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``/``, ``/proc``, ``~/.ssh``, a symlink under a root that leads out of it and a ``..``
    that climbs out are refused, named the roots, and never walked."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not a model")
    link = model_dir.parent / "sneaky"  # under a root, pointing out of it
    link.symlink_to(outside, target_is_directory=True)
    ssh = Path.home() / ".ssh"
    settings = make_settings()
    walked: list[Path] = []
    real_size = models.tree_size

    def spy(top: Path) -> int:
        walked.append(Path(top))
        return real_size(top)

    monkeypatch.setattr(models, "tree_size", spy)
    async with start_hive(settings) as h:
        refused = [
            "/",
            "/proc",
            str(ssh),
            str(link),
            f"{model_dir.parent}/../outside",
            str(outside / "missing"),  # outside: refused as such, whether it exists or not
        ]
        for path in refused:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_register", name="bad", path=path)
            assert exc.value.code == "path_not_allowed", path
            for root in settings.model_roots:
                assert str(root) in exc.value.message
        models_listed, _ = await kit.run_job(h.client, "model_list")
        assert models_listed["models"] == []
        # inside a root, through a symlink that stays inside: taken, as the resolved path
        inside = model_dir.parent / "also-tiny"
        inside.symlink_to(model_dir, target_is_directory=True)
        info, _ = await kit.run_job(h.client, "model_register", name="ok", path=str(inside))
        assert info["path"] == str(model_dir)
    assert walked and all(
        any(p == r or p.is_relative_to(r) for r in settings.model_roots) for p in walked
    ), walked


@pytest.mark.anyio
async def test_the_scan_takes_no_symlink_out_of_the_model_roots(
    start_hive: Any,
    make_settings: Callable[..., HiveSettings],
    model_dir: Path,
    tmp_path: Path,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link in the models directory to ``/`` or to a directory outside the roots is neither
    listed, walked, nor loaded (as registering it is refused); one to a directory under a root
    is a model. A model's size never follows a link out of the model's own directory."""
    outside = tmp_path / "outside"
    (outside / "dotssh").mkdir(parents=True)
    (outside / "dotssh" / "id_ed25519").write_text("key")
    (outside / "huge.bin").write_bytes(b"x" * 100_000)
    settings = make_settings()
    models_dir = settings.models_dir
    models_dir.mkdir(parents=True)
    (models_dir / "root").symlink_to("/", target_is_directory=True)
    (models_dir / "ssh").symlink_to(outside / "dotssh", target_is_directory=True)
    (models_dir / "linked").symlink_to(model_dir, target_is_directory=True)  # a root's model
    own = models_dir / "own"
    own.mkdir()
    (own / "weights.bin").write_bytes(b"w" * 10)
    (own / "leak.bin").symlink_to(outside / "huge.bin")  # a file link out of the model
    (own / "sub").symlink_to(outside, target_is_directory=True)  # a directory link out of it
    walked: list[Path] = []
    real_size = models.tree_size

    def spy(top: Path) -> int:
        walked.append(Path(top))
        return real_size(top)

    monkeypatch.setattr(models, "tree_size", spy)
    async with start_hive(settings) as h:
        listed, _ = await kit.run_job(h.client, "model_list")
        by_name = {m["name"]: m for m in listed["models"]}
        assert sorted(by_name) == ["linked", "own"]
        assert by_name["own"]["size_bytes"] == 10
        assert by_name["linked"]["size_bytes"] == real_size(model_dir) > 0
        assert sorted(await h.hive.catalog.names()) == ["linked", "own"]
        for name in ("root", "ssh"):
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "worker_spawn", model=name, engine="synthetic")
            assert exc.value.code == "path_not_allowed", name
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(
                    h.client, "model_register", name=f"{name}2", path=str(models_dir / name)
                )
            assert exc.value.code == "path_not_allowed", name
            with pytest.raises(RemoteJobFailed) as exc:  # nothing is written through it
                await kit.run_job(h.client, "model_download", repo_id="org/x", name=name)
            assert exc.value.code == "path_not_allowed", name
        assert h.hive.supervisor.list_workers() == []
        assert sorted(p.name for p in (outside / "dotssh").iterdir()) == ["id_ed25519"]
    assert {p.name for p in walked} <= {"own", "linked"}, walked


@pytest.mark.anyio
async def test_the_models_directory_is_always_a_root(
    start_hive: Any, make_settings: Callable[..., HiveSettings], model_dir: Path, kit: Any
) -> None:
    settings = make_settings(model_roots=(model_dir.parent,))
    nested = settings.models_dir / "by-hand" / "m"
    nested.mkdir(parents=True)
    assert settings.roots == (settings.models_dir, model_dir.parent)
    async with start_hive(settings) as h:
        for name, path in (("nested", nested), ("tiny", model_dir)):
            info, _ = await kit.run_job(h.client, "model_register", name=name, path=str(path))
            assert info["path"] == str(path)


def test_a_model_root_must_be_a_directory_of_its_own(
    make_settings: Callable[..., HiveSettings], tmp_path: Path
) -> None:
    """The models directory and every --model-root: never /, a system directory, the home
    directory or one above it, also not through a symlink."""
    to_slash = tmp_path / "to-slash"
    to_slash.symlink_to("/", target_is_directory=True)
    home = Path.home()
    refused = ["/", "/proc", "/etc/rbee", "/usr/share", "/lib64", str(home), str(home.parent)]
    climbs_to_slash = str(tmp_path) + "/.." * (len(tmp_path.parts) - 1)
    for root in [*refused, str(to_slash), climbs_to_slash]:
        for field in ("models_dir", "model_roots"):
            value: Any = root if field == "models_dir" else (tmp_path / "ok", root)
            with pytest.raises(ValueError, match=f"'{field}' must be a directory of its own"):
                make_settings(**{field: value})
    settings = make_settings(models_dir=home / "models", model_roots=(tmp_path / "mine",))
    assert settings.roots == (home / "models", tmp_path / "mine")


BAD_REQUESTS = [
    ("model_register", {"name": "../x", "path": "/tmp"}, "name"),
    ("model_register", {"name": "/etc", "path": "/tmp"}, "name"),
    ("model_register", {"name": "", "path": "/tmp"}, "name"),
    ("model_register", {"name": "ok", "path": "relative/dir"}, "path"),
    ("model_register", {"name": "ok", "path": ""}, "path"),
    ("model_delete", {"name": "../../etc"}, "name"),
    ("model_download", {"repo_id": "../x"}, "repo_id"),
    ("model_download", {"repo_id": "org/repo", "name": "a/b"}, "name"),
    ("model_download", {"repo_id": "org/repo", "revision": "../main"}, "revision"),
    ("worker_spawn", {"model": "../tiny"}, "model"),
    ("worker_spawn", {"model": "tiny", "worker_id": "../w"}, "worker_id"),
    ("worker_spawn", {"model": "tiny", "engine": "bogus"}, "engine"),
    ("worker_spawn", {"model": "tiny", "device": "tpu"}, "device"),
    ("worker_spawn", {"model": "tiny", "max_concurrency": 0}, "max_concurrency"),
    ("worker_spawn", {"model": "tiny", "engine_args": {"a=b": "c"}}, "engine_args"),
    ("worker_stop", {"worker_id": "/w"}, "worker_id"),
]


@pytest.mark.anyio
async def test_bad_parameters_are_a_422(
    start_hive: Any, make_settings: Callable[..., HiveSettings]
) -> None:
    async with start_hive(make_settings()) as h:
        for operation, fields, field in BAD_REQUESTS:
            with pytest.raises(HTTPStatusError) as exc:
                await h.client.create(operation, fields)
            assert (exc.value.status, exc.value.field) == (422, field), (operation, fields)
        jobs = await h.client.list()
        assert jobs.jobs == []  # refused before any job existed


@pytest.mark.anyio
async def test_an_entry_leading_outside_the_roots_can_be_deleted_without_touching_its_target(
    start_hive: Any, make_settings: Callable[..., HiveSettings], tmp_path: Path, kit: Any
) -> None:
    """A link in the models directory that leads out of the roots (made by hand, or left from
    before the roots) is removed by ``model_delete``: the link only, never what it points at."""
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"w")
    settings = make_settings()
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "away").symlink_to(outside, target_is_directory=True)
    async with start_hive(settings) as h:
        deleted, _ = await kit.run_job(h.client, "model_delete", name="away")
        assert deleted["name"] == "away"
        assert not (settings.models_dir / "away").is_symlink()
        assert (outside / "weights.bin").read_bytes() == b"w"
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_delete", name="away")
        assert exc.value.code == "model_not_found"

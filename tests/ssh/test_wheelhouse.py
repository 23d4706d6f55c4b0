"""The wheel cache of ``hive_install`` (``rbee_queen.wheelhouse``), with a build that writes a
wheel file instead of running ``uv build``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from rbee_queen import wheelhouse
from rbee_queen.wheelhouse import Wheelhouse

pytestmark = pytest.mark.anyio


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each build, in turn: yields to the other tasks, then writes a wheel into its out dir."""
    done: list[Path] = []

    async def build(argv: Sequence[str], what: str) -> None:
        out = Path(argv[list(argv).index("--out-dir") + 1])
        await anyio.sleep(0.05)  # a build takes a while: another job may come meanwhile
        (out / "rbee_hive-1.0-py3-none-any.whl").write_bytes(b"wheel")
        done.append(out)

    monkeypatch.setattr(wheelhouse, "_run", build)
    monkeypatch.setattr(wheelhouse.shutil, "which", lambda name: "/usr/bin/uv")
    return done


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "src-tree"
    (source / "src" / "rbee_hive").mkdir(parents=True)
    (source / "pyproject.toml").write_text("[project]\nname = 'rbee-hive'\n")
    (source / "src" / "rbee_hive" / "__init__.py").write_text("")
    return source


async def test_two_installs_at_once_build_the_wheel_once(
    tmp_path: Path, builds: list[Path]
) -> None:
    house = Wheelhouse(tmp_path / "cache")
    source = _source(tmp_path)
    wheels: list[Path] = []

    async def one() -> None:
        wheels.append(await house._wheel_of("rbee-hive", source))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    assert len(builds) == 1
    assert wheels[0] == wheels[1] and wheels[0].read_bytes() == b"wheel"
    assert [p.name for p in (tmp_path / "cache" / "own").iterdir()] == [wheels[0].parent.name]


async def test_the_source_tree_is_read_off_the_event_loop(
    tmp_path: Path, builds: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    digest = wheelhouse._source_digest

    def recording(directory: Path) -> str:
        threads.append(threading.current_thread())
        return digest(directory)

    monkeypatch.setattr(wheelhouse, "_source_digest", recording)
    await Wheelhouse(tmp_path / "cache")._wheel_of("rbee-hive", _source(tmp_path))
    assert threads and threads[0] is not threading.main_thread()

"""The wheels ``hive_install`` copies to a host: rbee's own, built here, and (offline) the rest.

rbee's own distributions (``rbee-hive``, ``rbee-worker``, ``rbee-contracts``, ``rbee-process``,
``jobproto``) are found as this queen has them installed (``importlib.metadata``): one installed
from a directory (an editable workspace checkout, ``direct_url.json`` with ``dir_info``) is built
into a wheel here (``uv build --wheel``, else ``pip wheel --no-deps``); the wheels are cached
under the queen's state dir, keyed by a digest of the sources, so an unchanged checkout is built
once. rbee's distributions installed from an index need no wheel unless the host is offline.
Two ``hive_install`` jobs at once build a wheel once: the second waits for the first (a lock per
wheel in this process), and each build writes into a directory of its own that is renamed into
place whole, so even another process building the same wheel never sees half of one.

For an ``offline`` host, ``pip download`` fetches every dependency here (pip's own cache keeps
repeated downloads local) into a directory of wheels for the host's Python and machine; the host
then installs with ``--no-index --find-links``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio
import attrs

__all__ = ["OWN_DISTRIBUTIONS", "BuildError", "Wheelhouse", "local_source"]

#: rbee's distributions a hive needs, in the order pip gets them
OWN_DISTRIBUTIONS = ("rbee-hive", "rbee-worker", "rbee-contracts", "rbee-process", "jobproto")
#: longest a wheel build or a download may take (seconds)
BUILD_TIMEOUT = 600.0


class BuildError(Exception):
    """A wheel could not be built or downloaded; the message has the tool's output."""


def local_source(name: str) -> Path | None:
    """The directory ``name`` was installed from (editable or not), else None (an index)."""
    try:
        raw = importlib.metadata.distribution(name).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"{name} is not installed next to this queen") from None
    if not raw:
        return None
    info = json.loads(raw)
    url = urlsplit(info.get("url", ""))
    if "dir_info" not in info or url.scheme != "file":
        return None
    return Path(unquote(url.path))


def _source_digest(directory: Path) -> str:
    """A digest of what goes into the wheel: pyproject.toml and every file under src/."""
    digest = hashlib.sha256()
    files = [directory / "pyproject.toml"]
    files += sorted(
        p for p in (directory / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@attrs.frozen
class Target:
    """The host's interpreter, for ``pip download``: ``(3, 11)`` and ``x86_64``."""

    version: tuple[int, int]
    machine: str

    @classmethod
    def here(cls) -> Target:
        return cls((sys.version_info[0], sys.version_info[1]), os.uname().machine)


async def _run(argv: Sequence[str], what: str) -> None:
    with anyio.fail_after(BUILD_TIMEOUT):
        done = await anyio.run_process(list(argv), check=False, stdin=None)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        tail = "\n".join(output.splitlines()[-20:])
        raise BuildError(f"{what} failed (exit status {done.returncode}):\n{tail}")


class Wheelhouse:
    """Wheels under ``{cache}`` (the queen's ``{state_dir}/wheels``)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        #: one build (or download) at a time into each cache directory, by its path
        self._locks: dict[Path, anyio.Lock] = {}

    def _lock(self, where: Path) -> anyio.Lock:
        return self._locks.setdefault(where, anyio.Lock())

    async def own_wheels(self, *, offline: bool) -> list[Path] | None:
        """A wheel of each of rbee's distributions; None when all come from an index and the host
        can reach one (it installs them by name)."""
        sources = {name: local_source(name) for name in OWN_DISTRIBUTIONS}
        if not offline and all(path is None for path in sources.values()):
            return None
        return [await self._wheel_of(name, sources[name]) for name in OWN_DISTRIBUTIONS]

    async def _wheel_of(self, name: str, source: Path | None) -> Path:
        version = importlib.metadata.version(name)
        # It reads a whole source tree: not on the event loop.
        digest = (
            "index" if source is None else await anyio.to_thread.run_sync(_source_digest, source)
        )
        where = self.cache / "own" / f"{name}-{version}-{digest}"
        async with self._lock(where):
            found = sorted(where.glob("*.whl"))
            if found:
                return found[0]
            where.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f"{where.name}.part-", dir=where.parent))
            try:
                return await self._build(name, version, source, partial, where)
            finally:
                shutil.rmtree(partial, ignore_errors=True)

    async def _build(
        self, name: str, version: str, source: Path | None, partial: Path, where: Path
    ) -> Path:
        if source is None:
            pip = await self._pip()
            build = [*pip, "download", "--no-deps", "--dest", str(partial), f"{name}=={version}"]
        elif (uv := shutil.which("uv")) is not None:
            build = [uv, "build", "--wheel", "--quiet", "--out-dir", str(partial), str(source)]
        else:
            pip = await self._pip()
            build = [*pip, "wheel", "--no-deps", "--wheel-dir", str(partial), str(source)]
        await _run(build, f"building the wheel of {name}")
        return _move_into_place(name, partial, where)

    async def _pip(self) -> list[str]:
        """A pip to run: this interpreter's, else one in a venv made once under the cache."""
        if importlib.util.find_spec("pip") is not None:
            return [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        venv = self.cache / "pip-venv"
        python = venv / "bin" / "python"
        if not python.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            await _run([base, "-m", "venv", str(venv)], "creating a venv with pip")
        return [str(python), "-m", "pip", "--disable-pip-version-check"]

    async def dependencies(self, requirements: Sequence[str], target: Target) -> list[Path]:
        """Every wheel ``requirements`` need, for ``target`` (rbee's own given as wheel files,
        so that pip takes them from here and never looks for them in an index)."""
        where = self.cache / f"deps-py{target.version[0]}.{target.version[1]}-{target.machine}"
        async with self._lock(where):
            return await self._download(requirements, target, where)

    async def _download(
        self, requirements: Sequence[str], target: Target, where: Path
    ) -> list[Path]:
        os.makedirs(where, exist_ok=True)
        argv = [*await self._pip(), "download", "--dest", str(where)]
        if target != Target.here():
            version = f"{target.version[0]}.{target.version[1]}"
            argv += ["--only-binary=:all:", "--python-version", version]
            for tag in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "linux"):
                argv += ["--platform", f"{tag}_{target.machine}"]
        argv += list(requirements)
        await _run(argv, "downloading the dependencies")
        return _files(where, "*.whl") + _files(where, "*.tar.gz")


def _files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def _move_into_place(name: str, partial: Path, where: Path) -> Path:
    """The wheel built in ``partial``, its directory renamed to ``where`` whole."""
    wheels = _files(partial, "*.whl")
    if not wheels:
        raise BuildError(f"building the wheel of {name} left no wheel in {partial}")
    try:
        partial.rename(where)
    except OSError:  # another process put the same wheel there first: take that one
        found = _files(where, "*.whl")
        if not found:
            raise BuildError(f"cannot move the wheel of {name} into {where}") from None
        return found[0]
    return where / wheels[0].name

"""The models on this machine: a catalog under the models directory, downloads from Hugging Face.

Layout::

    {models_dir}/catalog.json        what the hive knows about each model (source, repo, revision)
    {models_dir}/{name}/             a downloaded model (or a directory put there by hand: "local"),
                                     or one converted from a GGUF file ("gguf")
    {models_dir}/.{name}.import-*/   a conversion in progress (renamed to {name} once complete)
    {models_dir}/.locks/{name}.lock  held while a model is downloaded or deleted (any process)
    {models_dir}/{name}/.cache/      huggingface_hub's record of a download (files, commits)

A registered model is a directory elsewhere, recorded in ``catalog.json`` and never copied. It
must lie under one of the hive's model roots (its models directory and each ``--model-root``),
judged after symlinks and ``..`` are resolved: the hive sizes a model by walking its files, and
must never be made to walk, or hand a worker, ``/``, ``/proc`` or someone's ``~/.ssh``. An entry
that a later change of roots leaves outside them is listed, but never walked nor loaded. The same
rule holds for what the hive finds in its models directory: a name there that resolves outside
the roots (a symlink to ``/``) is not a model, neither listed, walked nor loaded. A model's size
never follows a link out of the model's own directory (``tree_size``).
Names are single path components (``NAME_PATTERN``, never ``..``), and every path the hive
derives from one is checked to sit directly under the models directory.

Downloads (``download``) run in the catalog's task group, not in the job that asked: a second
request for a model being downloaded joins the running download (single flight) and sees the same
progress; a job that goes away detaches, and the download stops when no job waits for it any more.
Another process downloading the same model is kept out by a file lock per model. The fetch itself,
its progress and what resumes are in ``downloads``.

GGUF imports (``import_gguf``; ``download`` with ``file``: one GGUF file of a repository, fetched
into the hive's Hugging Face cache, then imported) are ``imports``' (``GGUFImports``): judged by
the file's header before any work, converted by the converter process (``conversion``) in the
catalog's task group, single flight per name, under the same file lock, into a temporary
directory beside the model's that is renamed into place once complete. The catalog records the
source file, its size, modification time and SHA-256, so importing the same file again is
instant. Deleting an imported model removes the converted directory, never the source file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import filelock

from jobproto import narrate
from rbee_contracts.hive_ops import ModelInfo
from rbee_contracts.ids import CATALOG_FILE, NAME_PATTERN, check_name, check_repo_id

from .downloads import (
    HF_DIR,
    DownloadCancelled,
    Flight,
    download_error,
    fetch,
)
from .errors import ModelError
from .imports import GGUFImports, gguf_model_name
from .settings import DEFAULT_CONVERT_COMMAND

__all__ = [
    "NAME_PATTERN",
    "ModelCatalog",
    "ModelInfo",
    "check_name",
    "check_repo_id",
    "gguf_model_name",
]

logger = logging.getLogger("rbee_hive.models")

CATALOG = CATALOG_FILE  # a name no model may take (rbee_contracts.ids.RESERVED_NAMES)
#: how long leaving ``running()`` waits for download threads to stop
SHUTDOWN_GRACE = 5.0


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path``, without huggingface_hub's bookkeeping folder.

    Links are followed only where they stay inside the model's own directory (``path``
    resolved): a link to a file elsewhere counts nothing, and a linked directory is never
    entered (``os.walk`` does not follow them), so a model cannot make the hive read the
    rest of the machine."""
    own = os.path.realpath(path)
    total = 0
    for root, dirs, files in os.walk(own):
        if root == own and HF_DIR in dirs:
            dirs.remove(HF_DIR)
        for name in files:
            file = os.path.join(root, name)
            with contextlib.suppress(OSError):  # vanished meanwhile, or a dangling link
                if os.path.islink(file) and not _inside(os.path.realpath(file), own):
                    continue
                total += os.stat(file).st_size
    return total


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _no_size(path: Path) -> int:
    return 0


def _entry_info(name: str, entry: dict[str, Any], path: Path, size_bytes: int) -> ModelInfo:
    """A model in the models directory, as its catalog entry describes it."""
    return ModelInfo(
        name=name,
        size_bytes=size_bytes,
        source=str(entry.get("source", "huggingface")),
        path=str(path),
        revision=entry.get("revision"),
        repo_id=entry.get("repo_id"),
        source_file=entry.get("source_file"),
        sha256=entry.get("sha256"),
    )


class _OutsideRoots(Exception):
    """A name in the models directory that resolves outside every model root."""


# -- the catalog -----------------------------------------------------------------------------------


class ModelCatalog:
    """The models of one hive. Use ``async with catalog.running():`` around its use."""

    def __init__(
        self,
        models_dir: Path,
        *,
        hf_cache_dir: Path,
        hf_endpoint: str | None = None,
        progress_interval: float = 0.5,
        roots: tuple[Path, ...] = (),
        convert_command: Sequence[str] = DEFAULT_CONVERT_COMMAND,
        logs_dir: Path | None = None,
    ) -> None:
        self.root = Path(models_dir).expanduser().absolute()
        #: where models may be (resolved): the models directory, and the roots given
        self.roots = tuple(
            dict.fromkeys(Path(os.path.realpath(root)) for root in (self.root, *roots))
        )
        self.hf_cache_dir = hf_cache_dir
        self.hf_endpoint = hf_endpoint
        self.progress_interval = progress_interval
        self._flights: dict[str, Flight] = {}
        #: GGUF imports (``imports``); their logs in ``logs_dir`` (default: ``.logs`` in the
        #: models directory)
        self.imports = GGUFImports(
            self, convert_command, Path(logs_dir) if logs_dir is not None else self.root / ".logs"
        )
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ModelCatalog]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".locks").mkdir(exist_ok=True)
        await anyio.to_thread.run_sync(self.imports.remove_leftovers)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                # Downloads stop at their next chunk. A thread stuck on a silent connection is
                # not waited for past SHUTDOWN_GRACE (huggingface_hub's own timeouts end it).
                for flight in list(self._flights.values()):
                    flight.tracker.cancelled.set()
                self.imports.cancel_all()  # each kills its converter's process group
                tg.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_GRACE
                self._tg = None

    # -- paths -------------------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """``{models_dir}/{name}``, checked to be a direct child of the models directory."""
        check_name(name)
        path = self.root / name
        if path.parent != self.root or os.path.normpath(path) != str(path):
            raise ValueError(f"model name {name!r} escapes the models directory")
        return path

    def within_roots(self, path: Path) -> bool:
        """Whether ``path``, resolved, is one of the model roots or lies under one."""
        real = Path(os.path.realpath(path))
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def _busy(self, name: str) -> bool:
        """Whether ``name`` is being downloaded or imported by this hive."""
        return name in self._flights or name in self.imports.running

    def _lock(self, name: str) -> filelock.FileLock:
        return filelock.FileLock(str(self.root / ".locks" / f"{check_name(name)}.lock"))

    @contextlib.contextmanager
    def _held(self, name: str, busy: str) -> Iterator[None]:
        """Model ``name``'s file lock, taken at once or refused as ``model_busy`` (``busy`` says
        why); entered and left on one thread (filelock's locks are per thread)."""
        lock = self._lock(name)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise ModelError("model_busy", busy) from None
        try:
            yield
        finally:
            lock.release()

    def _catalog_lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.root / ".locks" / "catalog.lock"))

    # -- catalog.json ------------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads((self.root / CATALOG).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ModelError(
                "catalog_corrupt", f"{self.root / CATALOG} is not JSON: {exc}"
            ) from exc
        models = raw.get("models") if isinstance(raw, dict) else None
        return {k: v for k, v in (models or {}).items() if isinstance(v, dict)}

    def _write(self, models: dict[str, dict[str, Any]]) -> None:
        path = self.root / CATALOG
        tmp = path.with_name(f".{CATALOG}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "models": models}, indent=2, sort_keys=True))
        os.replace(tmp, path)  # atomic: a reader sees the old catalog or the new one

    def _update(self, name: str, entry: dict[str, Any] | None) -> None:
        with self._catalog_lock():
            models = self._read()
            if entry is None:
                models.pop(name, None)
            else:
                models[name] = entry
            self._write(models)

    # -- queries (sync, run in a thread) -----------------------------------------------------------

    def _info(
        self, name: str, entry: dict[str, Any] | None, sized: bool = True
    ) -> ModelInfo | None:
        size = tree_size if sized else _no_size
        if entry is not None and entry.get("source") == "registered":
            path = Path(str(entry.get("path", "")))
            nbytes = size(path) if self.within_roots(path) and path.is_dir() else 0
            return ModelInfo(
                name=name,
                size_bytes=nbytes,
                source="registered",
                path=str(path),
                revision=entry.get("revision"),
            )
        path = self.model_dir(name)
        if not self.within_roots(path):
            # A link in the models directory to somewhere outside the roots: what registering
            # it would refuse, the scan does not take either (nothing there is looked at).
            raise _OutsideRoots(name)
        if not path.is_dir():
            return None
        if entry is None:
            if (path / HF_DIR / "huggingface").is_dir():
                return None  # a download that never finished: not a usable model
            return ModelInfo(name=name, size_bytes=size(path), source="local", path=str(path))
        return _entry_info(name, entry, path, size(path))

    def _list_sync(self, sized: bool = True) -> list[ModelInfo]:
        entries = self._read()
        names = set(entries)
        for child in self.root.iterdir():
            if child.is_dir() and NAME_PATTERN.fullmatch(child.name) and ".." not in child.name:
                names.add(child.name)
        out = []
        for name in sorted(names):
            if self._busy(name):
                continue
            try:
                info = self._info(name, entries.get(name), sized)
            except (ValueError, _OutsideRoots):
                continue
            if info is not None:
                out.append(info)
        return out

    def _get_sync(self, name: str) -> ModelInfo:
        check_name(name)
        try:
            info = None if self._busy(name) else self._info(name, self._read().get(name))
        except _OutsideRoots:
            raise ModelError(
                "path_not_allowed",
                f"{self.root / name} leads outside this hive's model roots: it is no model",
            ) from None
        if info is None:
            raise ModelError("model_not_found", f"no model named {name!r} on this hive")
        return info

    async def list_models(self) -> list[ModelInfo]:
        return await anyio.to_thread.run_sync(self._list_sync)

    async def get(self, name: str) -> ModelInfo:
        return await anyio.to_thread.run_sync(self._get_sync, name)

    async def names(self) -> list[str]:
        # The heartbeat's list: no sizes, so no walk through every model's files.
        infos = await anyio.to_thread.run_sync(self._list_sync, False)
        return [info.name for info in infos]

    # -- register / delete -------------------------------------------------------------------------

    def _not_allowed(self, path: str) -> ModelError:
        roots = ", ".join(str(root) for root in self.roots)
        return ModelError(
            "path_not_allowed",
            f"{path} is not under a model root of this hive ({roots}): put the model there,"
            " or make its directory a root (rbee's model_roots setting for the local hive,"
            " --model-root for a hive started by hand)",
        )

    def _register_sync(self, name: str, path: str) -> ModelInfo:
        self.model_dir(name)
        target = Path(path)
        if not target.is_absolute():
            raise ModelError("invalid_path", f"path must be absolute, got {path!r}")
        # Judged where symlinks and ".." lead, and before anything about the path is looked at:
        # a refusal outside the roots says nothing of what exists there.
        target = Path(os.path.realpath(target))
        if not self.within_roots(target):
            raise self._not_allowed(path)
        if not target.exists():
            raise ModelError("path_not_found", f"{path} does not exist")
        if not target.is_dir():
            raise ModelError("not_a_directory", f"{path} is not a directory")
        with self._catalog_lock():
            models = self._read()
            if name in models or self.model_dir(name).exists() or self._busy(name):
                raise ModelError("model_exists", f"a model named {name!r} already exists")
            models[name] = {"source": "registered", "path": str(target), "added_at": time.time()}
            self._write(models)
        return ModelInfo(
            name=name, size_bytes=tree_size(target), source="registered", path=str(target)
        )

    async def register(self, name: str, path: str) -> ModelInfo:
        """Record ``path`` (an existing directory, absolute, under a model root) as model
        ``name``; nothing copied."""
        return await anyio.to_thread.run_sync(self._register_sync, name, path)

    def _forget_outside(self, name: str, error: ModelError) -> ModelInfo:
        """Delete an entry that leads outside the model roots: forget a registered one, remove a
        link in the models directory (the link only: what it points at is never touched)."""
        link = self.model_dir(name)
        entry = self._read().get(name)
        registered = entry is not None and entry.get("source") == "registered"
        if registered:
            path = str(entry.get("path", "")) if entry else ""
        elif link.is_symlink():
            link.unlink()
            path = str(link)
        else:
            raise error
        self._update(name, None)
        return ModelInfo(
            name=name, size_bytes=0, source="registered" if registered else "local", path=path
        )

    def _forget_missing(self, name: str, error: ModelError) -> ModelInfo:
        """Delete an entry whose files were removed by hand (a download's, an import's): the
        entry is forgotten, under the model's lock; ``error`` when there is none."""
        with self._held(name, f"model {name!r} is being downloaded or imported"):
            entry = self._read().get(name)
            path = self.model_dir(name)
            if entry is None or path.exists() or path.is_symlink():
                raise error
            self._update(name, None)
        return _entry_info(name, entry, path, 0)

    def _delete_sync(self, name: str) -> ModelInfo:
        try:
            info = self._get_sync(name)
        except ModelError as exc:
            if exc.code == "model_not_found":
                return self._forget_missing(name, exc)
            if exc.code != "path_not_allowed":
                raise
            return self._forget_outside(name, exc)
        if info.source == "registered":
            self._update(name, None)  # the files are the user's: only forget them
            return info
        with self._held(name, f"model {name!r} is being downloaded or imported"):
            path = self.model_dir(name)
            if path.is_symlink():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            self._update(name, None)
        return info

    async def delete(self, name: str) -> ModelInfo:
        """Delete a downloaded, imported (or local) model's files; forget a registered one, or
        an entry whose files were removed by hand. An imported model's source file is never
        touched."""
        if self._busy(name):
            raise ModelError("model_busy", f"model {name!r} is being downloaded or imported")
        return await anyio.to_thread.run_sync(self._delete_sync, name)

    # -- download ----------------------------------------------------------------------------------

    async def download(
        self,
        repo_id: str,
        revision: str = "main",
        name: str | None = None,
        *,
        file: str | None = None,
        dtype: str = "float32",
    ) -> ModelInfo:
        """Download ``repo_id`` at ``revision`` as model ``name`` (default: the repo's name).

        With ``file`` (a GGUF file of the repository) only that file is downloaded, into the
        hive's Hugging Face cache, and imported as ``import_gguf`` does (default name: the file's
        stem, ``gguf_model_name``), with ``dtype``.

        Narrates and reports progress on the current job. A second call for the same model while
        one runs joins it. Cancelling the call stops the download if nobody else waits for it.
        """
        check_repo_id(repo_id)
        if file is not None:
            return await self.imports.download(repo_id, revision, name, file, dtype)
        if name is None:
            try:
                name = check_name(repo_id.rsplit("/", 1)[-1])
            except ValueError:
                raise ModelError("invalid_name", f"pass a name: {repo_id!r} is not one") from None
        check_name(name)
        if name not in self._flights:
            await anyio.to_thread.run_sync(self._check_target, name, repo_id)
        if self._tg is None:
            raise RuntimeError("the model catalog is not running")
        if name in self.imports.running:  # looked up after the check: it yielded to the loop
            raise ModelError("model_busy", f"{name!r} is being imported")
        flight = self._flights.get(name)  # looked up after the check: it yielded to the loop
        if flight is None:
            flight = self._flights[name] = Flight(name, repo_id, revision, self.model_dir(name))
            self._tg.start_soon(self._run, flight, name=f"download {name}")
        elif (flight.repo_id, flight.revision) != (repo_id, revision):
            raise ModelError(
                "model_busy",
                f"{name!r} is being downloaded from {flight.repo_id}@{flight.revision}",
            )
        else:
            narrate("model_download", f"joining the running download of {name}")
        ctx = contextvars.copy_context()
        flight.observers.append(ctx)
        try:
            await flight.done.wait()
        finally:
            flight.observers.remove(ctx)
            if not flight.done.is_set() and not flight.observers:
                logger.info("nobody waits for the download of %s any more: stopping it", name)
                flight.tracker.cancelled.set()
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result

    def _check_target(self, name: str, repo_id: str) -> None:
        """Refuse to download over a model that is not an earlier download of the same repo."""
        entry = self._read().get(name)
        if entry is not None and (
            entry.get("source") != "huggingface" or entry.get("repo_id") != repo_id
        ):
            where = entry.get("repo_id") or entry.get("path")
            raise ModelError(
                "model_exists",
                f"a model named {name!r} already exists ({entry.get('source')} {where});"
                " choose another name",
            )
        target = self.model_dir(name)
        if not self.within_roots(target):  # a link out of the roots: never written through
            raise ModelError("path_not_allowed", f"{target} leads outside this hive's model roots")
        earlier_download = (target / HF_DIR / "huggingface").is_dir()
        if entry is None and target.is_dir() and not earlier_download and any(target.iterdir()):
            raise ModelError("model_exists", f"{target} already holds files; choose another name")

    async def _run(self, flight: Flight) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._report, flight)
                try:
                    flight.result = await anyio.to_thread.run_sync(
                        self._download_sync, flight, abandon_on_cancel=True
                    )
                except Exception as exc:  # caught here, not as a group from the task group
                    flight.error = download_error(exc, flight, self.hf_endpoint)
                except anyio.get_cancelled_exc_class():
                    flight.tracker.cancelled.set()  # the thread stops at its next chunk
                    flight.error = download_error(DownloadCancelled(), flight, self.hf_endpoint)
                    raise
                finally:
                    tg.cancel_scope.cancel()
            if flight.result is not None:
                flight.report(final=True)
        finally:
            del self._flights[flight.name]
            flight.done.set()

    async def _report(self, flight: Flight) -> None:
        while True:
            flight.report()
            await anyio.sleep(self.progress_interval)

    def _download_sync(self, flight: Flight) -> ModelInfo:
        def record(commit: str) -> None:
            entry = {
                "source": "huggingface",
                "repo_id": flight.repo_id,
                "revision": commit,
                "requested_revision": flight.revision,
                "downloaded_at": time.time(),
            }
            self._update(flight.name, entry)

        commit = fetch(
            flight,
            lock=self._lock(flight.name),
            cache_dir=self.hf_cache_dir,
            endpoint=self.hf_endpoint,
            record=record,
        )
        path = flight.local_dir
        return ModelInfo(
            name=flight.name,
            size_bytes=tree_size(path),
            source="huggingface",
            path=str(path),
            revision=commit,
            repo_id=flight.repo_id,
        )

    # -- GGUF import (``imports``) -----------------------------------------------------------------

    async def import_gguf(self, name: str, path: str, dtype: str = "float32") -> ModelInfo:
        """Convert the GGUF file at ``path`` (absolute, under a model root) once into the models
        directory as model ``name``, its weights stored as ``dtype`` (``GGUFImports``)."""
        return await self.imports.import_gguf(name, path, dtype)

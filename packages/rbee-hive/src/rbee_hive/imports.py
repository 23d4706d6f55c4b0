"""GGUF imports of one model catalog: ``model_import``, and ``model_download`` of one GGUF file.

Theory of operation
-------------------
An import is judged before any work, in this order: the path (register's rule: absolute, under a
model root once links and ``..`` are resolved, a regular file named ``*.gguf``), the file's
header (``gguf_header``: GGUF versions 2 and 3, ``general.architecture`` among
``conversion.SUPPORTED_ARCHITECTURES``), and the name (``model_exists`` when another model has
it; the same file under it again is done at once: see below). A download of one GGUF file
(``download``) is judged by the name before anything is fetched, then by its first
``PROBE_BYTES`` (one ``Range`` request: the architecture is the first key of the files llama.cpp
writes) before the whole file is downloaded, and by its header once in the hive's cache.

The work runs in the catalog's task group, not in the job that asked (as downloads do): one
``Conversion`` per name (single flight). A second request for the same import joins it and sees
the same narration; one for the same name from elsewhere is ``model_busy``; a job that goes away
detaches, and the import stops (the converter's process group killed, its directory removed)
when no job waits for it any more. Another process is kept out by the model's file lock, which
the import holds from the digest to the catalog entry::

    lock ─▶ same file? ─▶ SHA-256 (progress) ─▶ same digest? ─▶ converter into .{name}.import-*
         ─▶ file unchanged since the digest? ─▶ rename to {name} ─▶ catalog entry ─▶ unlock

"The same file" is the catalog entry's source file with its size and modification time (no
digest needed), or any file with the entry's SHA-256; with the same dtype, the model is returned
as it is ("already imported"). A different file or dtype under a taken name is ``model_exists``:
the user deletes the model first, or picks another name. A file whose size, modification time
or inode changed between its digest and the end of its conversion (a copy still being written)
is ``source_changed``: nothing is recorded, as the digest may not be of what was converted.

A hive killed mid-import leaves its ``.{name}.import-*`` directory (its converter exits once the
hive is gone: ``rbee_worker.gguf_import.exit_with_parent``). The next import of that name
removes it, under the lock; and when the catalog starts, ``remove_leftovers`` removes each one
whose model's lock it can take at once (one whose lock is held is another process's running
import).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import filelock

from jobproto import narrate, progress
from rbee_contracts.hive_ops import ModelInfo
from rbee_contracts.ids import is_name

from .conversion import Conversion, check_architecture, hash_file, run_converter
from .downloads import Flight, download_error, fetch_file, human
from .errors import ModelError
from .gguf_header import GGUFError, GGUFHeader, parse_header_start, read_header

if TYPE_CHECKING:
    from .models import ModelCatalog

__all__ = ["GGUFImports", "gguf_model_name"]

logger = logging.getLogger("rbee_hive.imports")

#: what ``tempfile.mkdtemp`` adds to an import's prefix ``.{name}.import-``: eight of these
#: characters, and nothing else (so ``.m.import-x.import-*`` is model ``m.import-x``'s, not ``m``'s)
TEMP_SUFFIX = r"[a-z0-9_]{8}"
#: any import's temporary directory, and the model name it is of
_ANY_TEMP = re.compile(r"\.(?P<name>.+)\.import-" + TEMP_SUFFIX)

#: how much of a repository's GGUF file is read to judge it before it is downloaded (the
#: architecture is the first key/value of the files llama.cpp writes)
PROBE_BYTES = 256 * 1024


class GGUFImports:
    """The GGUF imports of ``catalog`` (its ``imports``); the imports running, by name, are
    ``running``."""

    def __init__(
        self, catalog: ModelCatalog, convert_command: Sequence[str], logs_dir: Path
    ) -> None:
        self.catalog = catalog
        self.convert_command = tuple(convert_command)
        #: the converter's logs go to ``{logs_dir}/imports/{name}.log``
        self.logs_dir = logs_dir
        self.running: dict[str, Conversion] = {}

    def remove_leftovers(self) -> None:
        """Remove the ``.{name}.import-*`` directories interrupted imports left in the models
        directory, each only when its model's lock can be taken at once (a held lock is another
        process's import, still running). Run when the catalog starts."""
        for entry in self.catalog.root.iterdir():
            match = _ANY_TEMP.fullmatch(entry.name)
            if match is None or not is_name(match["name"]):
                continue
            if entry.is_symlink() or not entry.is_dir():
                continue
            lock = self.catalog._lock(match["name"])
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue
            try:
                logger.info("removing %s, left by an interrupted import", entry)
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                lock.release()

    def cancel_all(self) -> None:
        """Stop every import (the hive is stopping): each kills its converter's group."""
        for conversion in list(self.running.values()):
            conversion.scope.cancel()

    async def import_gguf(self, name: str, path: str, dtype: str = "float32") -> ModelInfo:
        """Convert the GGUF file at ``path`` (absolute, under a model root) once into the models
        directory as model ``name``, its weights stored as ``dtype``.

        Refused before any work: a path outside the roots, not a regular ``.gguf`` file, not
        GGUF, or of an architecture the hive does not import. The same file imported again
        under the same name with the same dtype returns at once. Narrates and reports progress
        on the current job; a second call for the same import joins it; cancelling the only
        call kills the converter and leaves nothing behind.
        """
        self.catalog.model_dir(name)
        src, header = await anyio.to_thread.run_sync(self._check_source, path)
        return await self._import(name, src, header, dtype, {})

    def _check_source(self, path: str) -> tuple[Path, GGUFHeader]:
        """The GGUF file ``path`` names, resolved, and its header (register's path rule)."""
        given = Path(path)
        if not given.is_absolute():
            raise ModelError("invalid_path", f"path must be absolute, got {path!r}")
        target = Path(os.path.realpath(given))  # judged where links and ".." lead, first
        if not self.catalog.within_roots(target):
            raise self.catalog._not_allowed(path)
        if not target.exists():
            raise ModelError("path_not_found", f"{path} does not exist")
        if not target.is_file():
            raise ModelError("not_a_file", f"{path} is not a regular file")
        if not given.name.lower().endswith(".gguf"):
            raise ModelError("not_gguf", f"{path} is not a GGUF file (its name must end in .gguf)")
        return target, self._header(target)

    def _header(self, path: Path) -> GGUFHeader:
        try:
            header = read_header(path)
        except GGUFError as exc:
            raise ModelError(exc.code, exc.message) from None
        except OSError as exc:
            raise ModelError("path_not_readable", f"{path} cannot be read: {exc}") from None
        check_architecture(header, path)
        return header

    async def _import(
        self, name: str, src: Path, header: GGUFHeader, dtype: str, origin: dict[str, Any]
    ) -> ModelInfo:
        if not self.catalog._busy(name):
            done = await anyio.to_thread.run_sync(self._imported, name, src, dtype, None, origin)
            if done is not None:
                narrate("model_import", f"{name} is already imported from {src}", model=name)
                return done

        async def work(conversion: Conversion) -> ModelInfo:
            return await self._convert(conversion, src, header, dtype, origin)

        return await self._fly(name, ("file", str(src), dtype), work)

    async def download(
        self, repo_id: str, revision: str, name: str | None, file: str, dtype: str
    ) -> ModelInfo:
        if name is None:
            name = gguf_model_name(file)
        self.catalog.model_dir(name)
        if not self.catalog._busy(name):
            await anyio.to_thread.run_sync(self._check_gguf_target, name, repo_id, file, dtype)

        async def work(conversion: Conversion) -> ModelInfo:
            flight = Flight(
                name, repo_id, revision, self.catalog.hf_cache_dir, observers=conversion.observers
            )
            src, commit = await self._fetch_file(flight, file)
            header = await anyio.to_thread.run_sync(self._header, src)
            origin = {"repo_id": repo_id, "revision": commit, "requested_revision": revision}
            return await self._convert(conversion, src, header, dtype, {**origin, "file": file})

        return await self._fly(name, ("hub", repo_id, revision, file, dtype), work)

    @staticmethod
    def _judge_start(where: str) -> Callable[[bytes], None]:
        """Refuse a repository's GGUF file by its first bytes (``fetch_file``'s ``judge``),
        before it is downloaded, when they show it is no GGUF or of an architecture the hive
        does not import. One whose start says too little is judged once downloaded."""

        def judge(data: bytes) -> None:
            try:
                header = parse_header_start(data, where)
            except GGUFError as exc:
                raise ModelError(exc.code, exc.message) from None
            if header is not None:
                check_architecture(header, where)

        return judge

    def _check_gguf_target(self, name: str, repo_id: str, file: str, dtype: str) -> None:
        """Refuse, before downloading, a name taken by anything but this file of this repo
        imported as ``dtype``."""
        entry = self.catalog._read().get(name)
        target = self.catalog.model_dir(name)
        if entry is None:
            if target.exists() or target.is_symlink():
                raise ModelError(
                    "model_exists", f"{target} already holds files; choose another name"
                )
            return
        if (entry.get("source"), entry.get("repo_id"), entry.get("file")) != (
            "gguf",
            repo_id,
            file,
        ):
            where = entry.get("source_file") or entry.get("repo_id") or entry.get("path")
            raise ModelError(
                "model_exists",
                f"a model named {name!r} already exists ({entry.get('source')} {where});"
                " choose another name",
            )
        if entry.get("dtype") != dtype:
            raise ModelError(
                "model_exists",
                f"{name!r} was imported as {entry.get('dtype')}: delete it first to import it as"
                f" {dtype}, or choose another name",
            )

    async def _fetch_file(self, flight: Flight, file: str) -> tuple[Path, str]:
        """Download ``file`` of ``flight``'s repository, reporting progress as downloads do."""
        result: tuple[Path, str] | None = None
        error: ModelError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.catalog._report, flight)
            try:
                result = await anyio.to_thread.run_sync(
                    lambda: fetch_file(
                        flight,
                        file,
                        cache_dir=self.catalog.hf_cache_dir,
                        endpoint=self.catalog.hf_endpoint,
                        judge=self._judge_start(f"{flight.repo_id}:{file}"),
                        judge_bytes=PROBE_BYTES,
                    ),
                    abandon_on_cancel=True,
                )
            except Exception as exc:  # caught here, not as a group from the task group
                error = download_error(exc, flight, self.catalog.hf_endpoint)
            except anyio.get_cancelled_exc_class():
                flight.tracker.cancelled.set()  # the thread stops at its next chunk
                raise
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        assert result is not None
        flight.report(final=True)
        return result

    async def _fly(
        self,
        name: str,
        key: tuple[str, ...],
        work: Callable[[Conversion], Awaitable[ModelInfo]],
    ) -> ModelInfo:
        """Run ``work`` as the import of ``name`` in the catalog's task group, or join the one
        running with the same ``key``; wait for its end."""
        if self.catalog._tg is None:
            raise RuntimeError("the model catalog is not running")
        if name in self.catalog._flights:
            raise ModelError("model_busy", f"{name!r} is being downloaded")
        conversion = self.running.get(name)
        if conversion is None:
            conversion = self.running[name] = Conversion(name, key)
            self.catalog._tg.start_soon(self._run_import, conversion, work, name=f"import {name}")
        elif conversion.key != key:
            raise ModelError(
                "model_busy", f"{name!r} is being imported from {' '.join(conversion.key[1:])}"
            )
        else:
            narrate("model_import", f"joining the running import of {name}", model=name)
        ctx = contextvars.copy_context()
        conversion.observers.append(ctx)
        try:
            await conversion.done.wait()
        finally:
            conversion.observers.remove(ctx)
            if not conversion.done.is_set() and not conversion.observers:
                logger.info("nobody waits for the import of %s any more: stopping it", name)
                conversion.scope.cancel()
        if conversion.error is not None:
            raise conversion.error
        assert conversion.result is not None
        return conversion.result

    async def _run_import(
        self, conversion: Conversion, work: Callable[[Conversion], Awaitable[ModelInfo]]
    ) -> None:
        try:
            with conversion.scope:
                try:
                    conversion.result = await work(conversion)
                except ModelError as exc:
                    conversion.error = exc
                except Exception as exc:
                    logger.exception("the import of %s failed", conversion.name)
                    conversion.error = ModelError(
                        "conversion_failed",
                        f"importing {conversion.name} failed: {type(exc).__name__}: {exc}",
                    )
        finally:
            if conversion.result is None and conversion.error is None:
                conversion.error = ModelError(
                    "import_cancelled", f"the import of {conversion.name} was stopped"
                )
            del self.running[conversion.name]
            conversion.done.set()

    async def _convert(
        self,
        conversion: Conversion,
        src: Path,
        header: GGUFHeader,
        dtype: str,
        origin: dict[str, Any],
    ) -> ModelInfo:
        """The import itself, under the model's file lock: digest, convert, rename, record."""
        name = conversion.name
        # Taken and released on the loop's thread; a non-blocking attempt, so the loop never
        # waits on it.
        with self.catalog._held(name, f"another process is downloading or importing {name!r}"):
            # Judged again under the lock: another process may have imported it meanwhile.
            done = await anyio.to_thread.run_sync(self._imported, name, src, dtype, None, origin)
            digest = None
            if done is None:
                # What the digest is of: the conversion must read the same file (_convert_locked)
                before = await anyio.to_thread.run_sync(os.stat, src)
                digest = await self._digest(conversion, src)
                done = await anyio.to_thread.run_sync(
                    self._imported, name, src, dtype, digest, origin
                )
            if done is not None:
                conversion.tell(
                    narrate, "model_import", f"{name} is already imported from {src}", model=name
                )
                return done
            assert digest is not None
            return await self._convert_locked(
                conversion, src, header, dtype, digest, before, origin
            )

    async def _convert_locked(
        self,
        conversion: Conversion,
        src: Path,
        header: GGUFHeader,
        dtype: str,
        digest: str,
        stat: os.stat_result,
        origin: dict[str, Any],
    ) -> ModelInfo:
        """Convert ``src`` (``stat``: as it was before its ``digest``) and install the result;
        ``source_changed`` when the file changed meanwhile (a copy still being written): the
        digest would not be of what was converted."""
        name = conversion.name
        layers = f", {header.block_count} layers" if header.block_count else ""
        conversion.tell(
            narrate,
            "model_import",
            f"converting {src.name} ({header.architecture}{layers}, {human(stat.st_size)})"
            f" to {dtype}",
            model=name,
            architecture=header.architecture,
        )
        tmp = await anyio.to_thread.run_sync(self._fresh_temp, name)
        try:
            summary = await run_converter(
                self.convert_command,
                src,
                tmp,
                dtype,
                log_path=self.logs_dir / "imports" / f"{name}.log",
                conversion=conversion,
                progress_interval=self.catalog.progress_interval,
            )
            await anyio.to_thread.run_sync(self._unchanged, src, stat)
            entry: dict[str, Any] = {
                "source": "gguf",
                "source_file": str(src),
                "sha256": digest,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "dtype": dtype,
                "architecture": header.architecture,
                "imported_at": time.time(),
                **origin,
            }
            if isinstance(summary.get("parameters"), int):
                entry["parameters"] = summary["parameters"]
            info = await anyio.to_thread.run_sync(self._install, name, tmp, entry)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))
        seconds = summary.get("seconds")
        took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        conversion.tell(
            narrate,
            "model_import",
            f"imported {name}{took}: {human(info.size_bytes)} at {info.path}",
            model=name,
        )
        return info

    async def _digest(self, conversion: Conversion, src: Path) -> str:
        """The SHA-256 of ``src``, computed in a thread, with progress on the import's jobs."""
        size = (await anyio.to_thread.run_sync(os.stat, src)).st_size
        counter = [0]
        cancelled = threading.Event()
        conversion.tell(narrate, "model_import", f"computing the SHA-256 of {src} ({human(size)})")

        async def report() -> None:
            while True:
                await anyio.sleep(self.catalog.progress_interval)
                done = counter[0]
                conversion.tell(
                    progress,
                    "model_import",
                    done,
                    size,
                    unit="B",
                    message=f"sha256: {human(done)} of {human(size)}",
                )

        digest: str | None = None
        failure: OSError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(report)
            try:
                digest = await anyio.to_thread.run_sync(
                    hash_file, src, counter, cancelled, abandon_on_cancel=True
                )
            except OSError as exc:  # caught here, not as a group from the task group
                failure = exc
            except anyio.get_cancelled_exc_class():
                cancelled.set()  # the thread stops at its next block
                raise
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise ModelError("path_not_readable", f"{src} cannot be read: {failure}")
        assert digest is not None
        conversion.tell(
            progress, "model_import", size, size, unit="B", message=f"sha256: {digest[:16]}…"
        )
        return digest

    @staticmethod
    def _unchanged(src: Path, before: os.stat_result) -> None:
        """Refuse an import whose source file changed since ``before`` was taken."""
        try:
            now = os.stat(src)
        except OSError as exc:
            raise ModelError("path_not_found", f"{src} cannot be read any more: {exc}") from None
        if (now.st_ino, now.st_size, now.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            raise ModelError(
                "source_changed",
                f"{src} changed while it was imported (its size or modification time is not"
                " what it was when its SHA-256 was computed): import it again once nothing"
                " writes to it any more",
            )

    def _imported(
        self,
        name: str,
        src: Path,
        dtype: str,
        digest: str | None,
        origin: dict[str, Any],
    ) -> ModelInfo | None:
        """The model ``name`` when it is an import of this file (the same path, size and
        modification time, or the same ``digest``) as ``dtype``; None when it is to be made.
        ``model_exists`` when the name is taken by anything else; with ``digest`` None, a
        different file is not judged yet (the caller computes the digest and asks again)."""
        entry = self.catalog._read().get(name)
        target = self.catalog.model_dir(name)
        if not self.catalog.within_roots(target):  # a link out of the roots: never written through
            raise ModelError("path_not_allowed", f"{target} leads outside this hive's model roots")
        if entry is None:
            if target.exists() or target.is_symlink():
                raise ModelError(
                    "model_exists", f"{target} already holds files; choose another name"
                )
            return None
        if entry.get("source") != "gguf":
            where = entry.get("repo_id") or entry.get("path")
            raise ModelError(
                "model_exists",
                f"a model named {name!r} already exists ({entry.get('source')} {where});"
                " choose another name",
            )
        try:
            stat = os.stat(src)
        except OSError as exc:
            raise ModelError("path_not_found", f"{src} cannot be read any more: {exc}") from None
        same_file = (entry.get("source_file"), entry.get("size"), entry.get("mtime_ns")) == (
            str(src),
            stat.st_size,
            stat.st_mtime_ns,
        )
        same_digest = digest is not None and entry.get("sha256") == digest
        if not same_file and not same_digest:
            if digest is None:
                return None
            raise ModelError(
                "model_exists",
                f"{name!r} was imported from another file ({entry.get('source_file')}, sha256"
                f" {str(entry.get('sha256'))[:16]}…): delete it first, or choose another name",
            )
        if entry.get("dtype") != dtype:
            raise ModelError(
                "model_exists",
                f"{name!r} was imported as {entry.get('dtype')}: delete it first to import it as"
                f" {dtype}, or choose another name",
            )
        if not (target / "config.json").is_file():
            return None  # its files are gone: converted again
        if not same_file:  # the same bytes elsewhere (or touched): known by this file from now
            entry = {
                **entry,
                **origin,
                "source_file": str(src),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
            self.catalog._update(name, entry)
        return self.catalog._info(name, entry)

    def _fresh_temp(self, name: str) -> Path:
        """An empty directory beside the model's for the converter to write; what a killed
        hive left from an earlier import of ``name`` is removed first (the caller holds the
        model's lock, so none of it is in use)."""
        prefix = f".{name}.import-"
        # Exactly what mkdtemp makes of the prefix: another name's (".m.import-x.import-*"
        # beside ".m.import-*") is in use under that name's lock, not this one.
        ours = re.compile(re.escape(prefix) + TEMP_SUFFIX)
        for stale in self.catalog.root.iterdir():
            if ours.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
                logger.info("removing %s, left by an interrupted import", stale)
                shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.catalog.root))

    def _install(self, name: str, tmp: Path, entry: dict[str, Any]) -> ModelInfo:
        """Move a finished conversion into place and record it."""
        if not (tmp / "config.json").is_file():
            raise ModelError(
                "conversion_failed", "the converter said it was done but wrote no config.json"
            )
        target = self.catalog.model_dir(name)
        if target.is_symlink():
            raise ModelError("model_exists", f"{target} already exists; choose another name")
        if target.is_dir():
            # Only what is left of an earlier import of this name, without its config.json
            # (``_imported`` judged it under this same lock), is replaced.
            earlier = self.catalog._read().get(name)
            if (
                earlier is None
                or earlier.get("source") != "gguf"
                or (target / "config.json").exists()
            ):
                raise ModelError("model_exists", f"{target} already exists; choose another name")
            shutil.rmtree(target)
        os.rename(tmp, target)
        self.catalog._update(name, entry)
        info = self.catalog._info(name, entry)
        assert info is not None
        return info


def gguf_model_name(file: str) -> str:
    """The default model name for a GGUF file of a repository: its stem, made a valid name
    (``Org/Repo:sub/SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q4_1``)."""
    stem = file.rsplit("/", 1)[-1]
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem)
    name = re.sub(r"\.{2,}", ".", name).lstrip("._-")[:128]
    if not is_name(name):
        raise ModelError("invalid_name", f"pass a name: nothing in {file!r} makes one")
    return name

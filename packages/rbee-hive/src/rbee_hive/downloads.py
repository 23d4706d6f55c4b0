"""One model download from Hugging Face: the fetch (in a worker thread), its progress, its errors.

``fetch()`` asks the hub which commit ``revision`` is and what files it has (one
``model_info(files_metadata=True)`` call, which also gives the total size up front), takes the
model's file lock, and runs ``snapshot_download(repo_id, revision=<commit>, local_dir=...)``.
Passing the commit keeps every file of one download at the same commit, and it is what lets
huggingface_hub skip files already complete at that commit without asking the hub again.

Progress: huggingface_hub reports bytes to a ``tqdm_class``; ``ByteTracker.bar_class()`` is a
tqdm-shaped class that only counts (thread-safe). The event loop samples the count every
``progress_interval`` seconds (``Flight.report``) and sends ``progress`` events (bytes done, total,
rate over the last few seconds, ETA) to every job waiting for the download. Sampling from the
loop, rather than reporting from huggingface_hub's threads, bounds the event rate and keeps
narration on the loop. The tracker is also how a download stops: once cancelled, its next
``update()`` raises ``DownloadCancelled`` inside huggingface_hub's thread. A tracker also hands
every byte it counts to the ``byte_sink`` of the context it was made in (the hive's metrics set it
for each request, ``rbee_hive.metrics``), from huggingface_hub's threads: the sink is thread-safe.

What resumes (verified against huggingface_hub 2.4 with the tests' fake hub):

- within one download, a connection that breaks mid-file is retried (up to 5 times, 1 s apart)
  with ``Range: bytes=<n>-``, where n counts whole 10 MiB chunks written (``DOWNLOAD_CHUNK_SIZE``):
  a file cut after 11 MiB resumes from 10 MiB, one cut before its first 10 MiB starts over;
- across downloads, each completed file is recorded in ``{local_dir}/.cache/huggingface/`` with
  its commit and is not fetched again;
- a file half-written when a download ended is started over: since huggingface_hub#4228 partial
  files are per-process temporaries (``<file>.<etag>.<random>.incomplete``), deleted on failure.
  Those a killed process left behind are removed before the next attempt (``remove_stale_partials``,
  under the model's lock so none is in use).
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs
import filelock

from jobproto import narrate, progress

from .errors import ModelError

if TYPE_CHECKING:
    from .models import ModelInfo

__all__ = [
    "ByteTracker",
    "DownloadCancelled",
    "Flight",
    "byte_sink",
    "download_error",
    "fetch",
    "fetch_file",
    "first_bytes",
    "human",
    "remove_stale_partials",
]

logger = logging.getLogger("rbee_hive.downloads")

HF_DIR = ".cache"  # huggingface_hub's bookkeeping inside a local_dir download

#: where a tracker made in this context also counts its bytes (None: nowhere)
byte_sink: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "rbee_hive_byte_sink", default=None
)


class DownloadCancelled(Exception):
    """Raised inside the download thread (from the tracker) to stop a download."""


class ByteTracker:
    """Bytes written by one download, fed by huggingface_hub's threads. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.cancelled = threading.Event()
        self._sink = byte_sink.get()

    def add(self, n: float) -> None:
        if self.cancelled.is_set():
            raise DownloadCancelled("download cancelled")
        if n:
            with self._lock:
                self.received += int(n)
            if self._sink is not None:
                self._sink(int(n))

    def bar_class(self) -> type:
        """A class shaped like tqdm for ``snapshot_download(tqdm_class=...)``.

        snapshot_download makes three bars from it: a file counter, a bar of bytes received from
        the network ("Downloading bytes") and one of bytes written to disk; this counts the
        last. Every method tqdm callers use exists and draws nothing.
        """
        tracker = self

        class _Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                desc = str(kwargs.get("desc") or "")
                self.counts = kwargs.get("unit") == "B" and not desc.startswith("Downloading")
                self.n: float = 0
                self.total = kwargs.get("total")
                self.format_dict: dict[str, Any] = {"rate": None}
                initial = kwargs.get("initial") or 0
                if initial:
                    self.update(initial)

            def update(self, n: float | None = 1) -> None:
                n = n or 0
                self.n += n
                if self.counts:
                    tracker.add(n)
                elif tracker.cancelled.is_set():
                    raise DownloadCancelled("download cancelled")

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def _ignore(self, *args: Any, **kwargs: Any) -> None:
                pass

            close = refresh = set_postfix_str = set_description = set_description_str = _ignore
            set_postfix = clear = display = _ignore

        return _Bar


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA unknown"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours}h{minutes:02d}m{secs:02d}s" if hours else f"ETA {minutes}m{secs:02d}s"


@attrs.define(eq=False)
class Flight:
    """One download in progress, shared by every job that asked for it (single flight)."""

    name: str
    repo_id: str
    revision: str
    local_dir: Path
    tracker: ByteTracker = attrs.field(factory=ByteTracker)
    #: the contexts of the jobs waiting for this download: narration goes to each
    observers: list[contextvars.Context] = attrs.field(factory=list)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    phase: str = "resolving"  # set by the thread, narrated by the loop
    total: int | None = None
    present: int = 0  # bytes already complete on disk when the download started
    result: ModelInfo | None = None
    error: ModelError | None = None
    _told: str | None = None  # the phase last narrated
    _samples: collections.deque[tuple[float, int]] = attrs.field(
        factory=lambda: collections.deque(maxlen=10)
    )

    def tell(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Narrate on every job waiting for this download (each in its own context)."""
        for ctx in list(self.observers):
            ctx.run(fn, *args, **kwargs)
        if not self.observers:
            fn(*args, **kwargs)  # logging only

    def report(self, final: bool = False) -> None:
        """Narrate a new phase; while downloading, send one progress event."""
        phase = self.phase
        if self._told != phase:
            self._told = phase
            self.tell(narrate, "model_download", phase, model=self.name, repo_id=self.repo_id)
        if not phase.startswith("downloading") and not final:
            return
        total = self.total
        done = self.present + self.tracker.received
        if total is not None:
            done = total if final else min(done, total)
        # The rate over the last few samples (a sliding window), not since the start.
        now = time.monotonic()
        self._samples.append((now, done))
        t0, b0 = self._samples[0]
        rate = (done - b0) / (now - t0) if now > t0 else 0.0
        left = (total - done) / rate if total is not None and rate > 0 else None
        parts = [human(done) + (f" of {human(total)}" if total is not None else "")]
        parts.append(f"{human(rate)}/s")
        parts.append("done" if final else eta(left))
        self.tell(progress, "model_download", done, total, unit="B", message=", ".join(parts))


def fetch(
    flight: Flight,
    *,
    lock: filelock.FileLock,
    cache_dir: Path,
    endpoint: str | None,
    record: Callable[[str], None],
) -> str:
    """Download ``flight`` into its ``local_dir`` (blocking: run it in a thread).

    ``record(commit)`` is called once the files are complete, still under the model's lock.
    Returns the commit downloaded. Errors propagate as raised: the caller maps them once, with
    ``download_error``.
    """
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi(endpoint=endpoint).model_info(
        flight.repo_id, revision=flight.revision, files_metadata=True
    )
    commit = info.sha
    if commit is None:
        raise ModelError("download_failed", "the hub did not say which commit to download")
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    if all(size is not None for size in sizes.values()):
        flight.total = sum(cast(int, size) for size in sizes.values())
    _acquire(lock, flight)
    try:
        local_dir = flight.local_dir
        remove_stale_partials(local_dir)
        flight.present = sum(
            size for path, size in sizes.items() if size and _has_size(local_dir / path, size)
        )
        flight.phase = (
            f"downloading {flight.repo_id}@{commit[:12]} ({len(sizes)} files) into {local_dir}"
        )
        snapshot_download(
            flight.repo_id,
            revision=commit,
            local_dir=str(local_dir),
            cache_dir=str(cache_dir),  # the hive's own cache, never the user's
            endpoint=endpoint,
            tqdm_class=cast(Any, flight.tracker.bar_class()),
        )
        record(commit)
    finally:
        lock.release()
    flight.phase = f"downloaded {flight.repo_id}@{commit[:12]}"
    return commit


def fetch_file(
    flight: Flight,
    filename: str,
    *,
    cache_dir: Path,
    endpoint: str | None,
    judge: Callable[[bytes], None] | None = None,
    judge_bytes: int = 256 * 1024,
) -> tuple[Path, str]:
    """Download one file of ``flight``'s repository (a GGUF model is one file) into the hive's
    Hugging Face cache (blocking: run it in a thread); its path there and the commit.

    One ``model_info`` call gives the commit and the file's size (the progress total), then
    ``hf_hub_download`` at that commit: a file already in the cache at that commit is not
    fetched again, and its path is the same as the first time (the import that follows knows
    it by that path, its size and its modification time). ``flight.local_dir`` is the cache.

    ``judge`` sees the file's first ``judge_bytes`` before a file not in the cache is
    downloaded (``first_bytes``), and may refuse it by raising: a GGUF file of an architecture
    the hive does not import is refused without downloading it.
    """
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    info = HfApi(endpoint=endpoint).model_info(
        flight.repo_id, revision=flight.revision, files_metadata=True
    )
    commit = info.sha
    if commit is None:
        raise ModelError("download_failed", "the hub did not say which commit to download")
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    if filename not in sizes:
        ggufs = sorted(name for name in sizes if name.lower().endswith(".gguf"))[:20]
        has = f"its GGUF files: {', '.join(ggufs)}" if ggufs else "it has no GGUF file"
        raise ModelError(
            "file_not_found", f"{flight.repo_id}@{flight.revision} has no file {filename!r} ({has})"
        )
    flight.total = sizes[filename]
    cached = try_to_load_from_cache(
        flight.repo_id, filename, cache_dir=str(cache_dir), revision=commit
    )
    if (
        isinstance(cached, str)
        and flight.total is not None
        and _has_size(Path(cached), flight.total)
    ):
        flight.present = flight.total
    elif judge is not None:
        start = first_bytes(flight.repo_id, filename, commit, endpoint=endpoint, limit=judge_bytes)
        if start is not None:
            judge(start)
    flight.phase = f"downloading {filename} from {flight.repo_id}@{commit[:12]}"
    path = hf_hub_download(
        flight.repo_id,
        filename,
        revision=commit,
        cache_dir=str(cache_dir),  # the hive's own cache, never the user's
        endpoint=endpoint,
        tqdm_class=cast(Any, flight.tracker.bar_class()),
    )
    flight.phase = f"downloaded {filename} from {flight.repo_id}@{commit[:12]}"
    return Path(path), commit


def first_bytes(
    repo_id: str, filename: str, revision: str, *, endpoint: str | None, limit: int
) -> bytes | None:
    """The first ``limit`` bytes of a file of a repository (one ``Range`` request, blocking),
    or None when they cannot be had: best effort, the download that follows says what fails."""
    import httpx
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils._headers import build_hf_headers

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
        headers = {**build_hf_headers(), "Range": f"bytes=0-{limit - 1}"}
        with (
            httpx.Client(follow_redirects=True, timeout=10.0) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code not in (200, 206):
                return None
            data = bytearray()
            for chunk in response.iter_bytes():  # a server that ignores Range: cut short
                data += chunk
                if len(data) >= limit:
                    break
            return bytes(data[:limit])
    except Exception as exc:  # a probe: any failure means "not known yet"
        logger.debug("could not read the start of %s:%s: %s", repo_id, filename, exc)
        return None


def _acquire(lock: filelock.FileLock, flight: Flight) -> None:
    """Take the model's lock; while another process holds it, wait (and say so), cancellably."""
    try:
        lock.acquire(timeout=0)
        return
    except filelock.Timeout:
        flight.phase = "waiting for another process that downloads this model"
    while not flight.tracker.cancelled.is_set():
        try:
            lock.acquire(timeout=0.5)
            return
        except filelock.Timeout:
            continue
    raise DownloadCancelled("download cancelled")


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def remove_stale_partials(local_dir: Path) -> None:
    """Delete ``*.incomplete`` files a killed download left behind (never reused since
    huggingface_hub 2.x names them per process). The caller holds the model's lock."""
    download_dir = local_dir / HF_DIR / "huggingface" / "download"
    if not download_dir.is_dir():
        return
    for partial in download_dir.rglob("*.incomplete"):
        logger.info("removing %s, left by an interrupted download", partial)
        partial.unlink(missing_ok=True)


def download_error(exc: Exception, flight: Flight, endpoint: str | None = None) -> ModelError:
    """The job failure for what ended a download. Its message names the repository and what was
    reached for: the hub (``endpoint``, huggingface_hub's default when None) and, when the
    failure came from a request, that request's URL."""
    repo_id, revision = flight.repo_id, flight.revision
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, DownloadCancelled):
        return ModelError("download_cancelled", f"the download of {flight.name} was stopped")
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = (endpoint or constants.ENDPOINT).rstrip("/")
    # GatedRepoError is a RepositoryNotFoundError: test it first.
    if isinstance(exc, GatedRepoError):
        return ModelError(
            "repo_gated", f"{repo_id} on {hub} is gated: accept its terms and set HF_TOKEN"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelError(
            "repo_not_found", f"no model repository {repo_id!r} on {hub} (or it is private)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelError("revision_not_found", f"{repo_id} on {hub} has no revision {revision!r}")
    if isinstance(exc, OfflineModeIsEnabled):
        return ModelError("hub_offline", "downloads are disabled (HF_HUB_OFFLINE is set)")
    logger.warning("download of %s from %s failed", flight.name, hub, exc_info=exc)
    url = _request_url(exc)
    lines = str(exc).strip().splitlines()  # huggingface_hub appends a line of links
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    at = f" ({url})" if url and url not in detail else ""
    return ModelError(
        "download_failed", f"downloading {repo_id}@{revision} from {hub} failed{at}: {detail}"
    )


def _request_url(exc: BaseException) -> str | None:
    """The URL of the request that failed, when the exception (or its cause) carries one:
    httpx's errors have ``request``, huggingface_hub's HTTP errors a ``response``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for holder in (current, getattr(current, "response", None)):
            try:
                request = getattr(holder, "request", None)  # httpx raises when it has none
            except RuntimeError:
                request = None
            url = getattr(request, "url", None)
            if url is not None:
                return str(url)
        current = current.__cause__ or current.__context__
    return None

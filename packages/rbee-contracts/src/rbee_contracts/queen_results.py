"""The queen's own results (queen → keeper): ``status``, ``hive_list``, ``hive_status``,
``hive_start`` and ``hive_stop``.

The queen's relayed operations return the hive's or worker's result as is (``hive_ops``,
``infer.InferResult``); its parameters are in ``queen_ops``. The queen builds these types and
unstructures them with ``jobproto.converter``; ``GET /v1/hives`` and ``GET /v1/hives/{hive_id}``
serve the same ``HiveListResult`` and ``HiveDetail``. A reader (the keeper) structures what it
reads fields of with ``rbee_contracts.reading.read_result``: a newer queen may add fields.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from jobproto import JobState

from .hive_ops import ModelInfo
from .lifecycle import HiveState
from .records import WorkerRecord

__all__ = [
    "HiveDetail",
    "HiveInstallResult",
    "HiveListResult",
    "HiveModelInfo",
    "HiveStartResult",
    "HiveStatusResult",
    "HiveStopResult",
    "HiveUninstallResult",
    "HiveView",
    "HostView",
    "JobSummary",
    "LocalHiveProcess",
    "QueenModelList",
    "QueenWorkerList",
    "QueenWorkerRecord",
    "StatusResult",
    "StopOutcome",
    "UnregisteredHive",
]


class StopOutcome(enum.StrEnum):
    """How ``hive_stop`` ended the hive: the values of ``rbee_process.StopOutcome`` (the process
    module names them; this is their wire form, and a queen test pins the two to each other)."""

    NOT_RUNNING = "not running"  # nothing of it was alive: nothing was signalled
    STOPPED = "stopped"  # it ended within the grace period after SIGTERM
    KILLED = "killed"  # it needed SIGKILL


@attrs.frozen
class LocalHiveProcess:
    """A hive process the queen's machine runs, as its pid file records it."""

    hive_id: str
    pid: int
    #: its log file
    log: str | None
    command: list[str]
    #: the SSH host alias of the machine it runs on (None: the queen's own)
    host: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class HiveStartResult(LocalHiveProcess):
    """``hive_start``: the hive's process, once the hive has registered."""

    #: True: it ran already (and is registered); nothing was started
    already_running: bool


@attrs.frozen
class HiveStopResult(LocalHiveProcess):
    """``hive_stop``: the process that was stopped, and how."""

    stopped: StopOutcome


@attrs.frozen
class QueenWorkerRecord(WorkerRecord):
    """A worker as the queen reports it: its hive's record plus the queen's own knowledge."""

    hive_id: str = attrs.field(kw_only=True)
    #: the state of the hive that reported it
    hive_state: HiveState = attrs.field(kw_only=True)
    #: requests the queen is relaying to it now
    in_flight: int = attrs.field(kw_only=True)
    #: True: passed a /health probe; False: failed one (or broke); None: not probed yet
    healthy: bool | None = attrs.field(kw_only=True)


@attrs.frozen
class QueenWorkerList:
    """``worker_list`` with no hive named while several hives are registered: the workers of
    every hive that answered, each naming its hive (a ``WorkerList`` to a reader of that type).
    One hive named, or only one registered: the hive's own ``WorkerList`` is relayed as is."""

    workers: list[QueenWorkerRecord]
    #: hives left out: down, or unreachable when asked (each narrated)
    skipped: list[str] = attrs.field(factory=list, kw_only=True)


@attrs.frozen
class HiveModelInfo(ModelInfo):
    """A model on one of several hives: the hive's ``ModelInfo`` and the hive that has it."""

    hive_id: str = attrs.field(kw_only=True)


@attrs.frozen
class QueenModelList:
    """``model_list`` with no hive named while several hives are registered: the models of
    every hive that answered, each naming its hive (a ``ModelList`` to a reader of that type)."""

    models: list[HiveModelInfo]
    #: hives left out: down, or unreachable when asked (each narrated)
    skipped: list[str] = attrs.field(factory=list, kw_only=True)


@attrs.frozen
class HiveView:
    """A registered hive, as ``status`` lists it. Its ``state`` is derived from the time since
    its last heartbeat (``lifecycle``, theory of operation)."""

    hive_id: str
    url: str
    state: HiveState
    #: its last heartbeat (RFC 3339, UTC)
    last_seen: str
    seconds_since_seen: float
    heartbeat_interval: float
    capabilities: dict[str, Any]
    models: list[str]
    free_memory_bytes: int | None


@attrs.frozen
class HiveDetail(HiveView):
    """A hive with its workers: an entry of ``hive_list``, and ``GET /v1/hives/{hive_id}``."""

    workers: list[QueenWorkerRecord]


@attrs.frozen
class HostView:
    """A host of rbee's hosts file (``hive_list``): where a hive can be installed over SSH."""

    alias: str
    hostname: str | None
    port: int | None
    user: str | None


@attrs.frozen
class HiveListResult:
    hives: list[HiveDetail]
    #: the hosts configured in rbee's hosts file
    hosts: list[HostView] = attrs.field(factory=list, kw_only=True)


@attrs.frozen
class HiveInstallResult:
    """``hive_install``: what was installed where."""

    host: str
    #: the virtualenv on the host
    venv: str
    #: the distributions asked for (``rbee-hive``, ``rbee-worker[extra]``)
    packages: list[str]
    #: ``wheels``: copied from the queen's machine; ``index``: from the host's package index
    source: str
    offline: bool


@attrs.frozen
class HiveUninstallResult:
    """``hive_uninstall``: the hive stopped (how) and the paths removed on the host."""

    host: str
    hive_id: str
    stopped: StopOutcome
    removed: list[str]


@attrs.frozen
class HiveStatusResult(HiveDetail):
    """``hive_status`` of a registered hive; ``process`` when the queen's machine runs it."""

    process: LocalHiveProcess | None


@attrs.frozen
class UnregisteredHive:
    """``hive_status`` of a hive the queen's machine runs that has not registered (yet): only
    its process. It has no ``state``: a ``HiveState`` is known from heartbeats only."""

    hive_id: str
    process: LocalHiveProcess


@attrs.frozen
class JobSummary:
    job_id: str
    operation: str
    state: JobState


@attrs.frozen
class StatusResult:
    """``status``: the cluster as the queen sees it, and the queen's jobs in flight."""

    hives: list[HiveView]
    workers: list[QueenWorkerRecord]
    #: model name -> the hives that have it
    models: dict[str, list[str]]
    #: requests the queen is relaying to workers now
    in_flight: int
    #: the queen's queued and running jobs
    jobs: list[JobSummary]

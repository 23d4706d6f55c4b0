"""Settings of one queen process (``docs/tiers.md`` §queen)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import attrs

from rbee_contracts.local_layout import HIVE_STOP_GRACE

__all__ = ["QueenSettings", "default_state_dir"]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/rbee/queen`` (``~/.local/state/rbee/queen`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rbee" / "queen"


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _optional_hosts(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError("allowed_hosts must be a sequence of host names, not one string")
    return tuple(value)


def _tls_pair(settings: QueenSettings, attribute: attrs.Attribute[Any], value: Path | None) -> None:
    if (settings.tls_cert is None) != (value is None):
        raise ValueError("tls_cert and tls_key go together: give both or neither")


def _redacted(url: str | None) -> str:
    """A Redis URL as settings show it: never with its password (``redis://host:port/db``)."""
    if url is None:
        return "None"
    from jobproto.redis import redacted_url  # the extra's module, only for a queen that has one

    return repr(redacted_url(url))


def _default_hive_command() -> tuple[str, ...]:
    # The same interpreter as the queen: the hive is installed next to it in the workspace.
    return (sys.executable, "-m", "rbee_hive.app")


@attrs.frozen
class QueenSettings:
    host: str = "127.0.0.1"
    port: int = 8500
    #: the URL hives started by this queen report to (default: http://host:port as bound)
    public_url: str | None = None
    #: a hive silent for this many of its own heartbeat intervals is ``down``
    hive_timeout_beats: int = attrs.field(default=3, validator=_positive)
    #: pid files (``hives/``) and logs (``logs/``) of hives started by ``hive_start``
    state_dir: Path = attrs.field(factory=default_state_dir, converter=Path)
    #: the command that runs a hive; ``hive_start`` appends its flags (tests put a fake here)
    hive_command: tuple[str, ...] = attrs.field(factory=_default_hive_command, converter=tuple)
    #: the port ``hive_start`` gives a local hive unless the request names one
    hive_port: int = 9000
    #: the address a hive started here listens on (loopback unless other machines must reach it)
    hive_host: str = "127.0.0.1"
    #: longest wait for a started hive's first registration (seconds)
    hive_start_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: grace between SIGTERM and SIGKILL when stopping a hive (seconds): longer than the hive's
    #: own for its workers (rbee-hive's stop_grace, 10 s) plus rbee_process.KILL_WAIT (5 s) and a
    #: margin, so a hive stopping its workers is never killed halfway
    hive_stop_grace: float = attrs.field(default=HIVE_STOP_GRACE, validator=_positive)
    #: longest wait for a spawned worker to be ready, download included (seconds)
    worker_ready_timeout: float = attrs.field(default=600.0, validator=_positive)
    #: timeout of a worker's ``/health`` probe (seconds)
    health_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: a completion (the OpenAI API's job) nobody has read for this long is cancelled, and its
    #: generation with it (seconds): how long a client that lost its connection has to resume
    abandon_grace: float = attrs.field(default=10.0, validator=_positive)

    # -- trust (rbee_contracts.auth; ARCHITECTURE.md, "Trust between tiers") --------------------
    #: the queen's secret, from which every token is derived. None: no authentication at all
    #: (in-process tests and library use); ``rbee-queen`` always loads or creates one.
    secret: bytes | None = attrs.field(default=None, repr=False)
    #: host names the queen answers for besides loopback names, its bound address and its public
    #: URL's host; None: any ``Host`` (in-process tests and library use). ``rbee-queen`` checks.
    allowed_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_hosts)
    #: origins (``https://ui.example:8443``) whose pages may call the queen; none by default
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: serve HTTPS with this certificate and key (both or neither)
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path, validator=_tls_pair)
    #: verify hives and workers that serve HTTPS against this CA (or pinned certificate)
    tls_ca: Path | None = attrs.field(default=None, converter=_optional_path)

    # -- replicas (rbee_queen.replicas; README, "Two queens on one Redis") ---------------------
    #: the Redis that queen replicas share (jobs, hives, in-flight counts); None: this queen
    #: alone, its jobs in its memory. It may hold a password: shown only without it.
    redis_url: str | None = attrs.field(default=None, repr=_redacted)
    #: this queen's id among the replicas (None: host name, pid and a random suffix)
    replica_id: str | None = None
    #: how long a replica's hold on the jobs it runs lasts without renewal (seconds): a job
    #: whose replica died is adopted by another after this (and up to half of it again)
    lease_ttl: float = attrs.field(default=5.0, validator=_positive)

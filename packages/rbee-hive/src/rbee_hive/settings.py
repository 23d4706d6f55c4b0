"""Settings of one hive: where it listens, which queen it reports to, where models and state live,
and how it supervises workers. One frozen attrs class; ``app.main()`` builds it from flags."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from rbee_contracts.ids import hive_id_validator
from rbee_contracts.values import optional_url_validator

__all__ = ["DEFAULT_WORKER_COMMAND", "HiveSettings", "default_models_dir", "default_state_dir"]

#: how a hive starts a worker: the worker's own module, with the hive's interpreter (the same venv).
DEFAULT_WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "rbee_worker.app")


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var) or str(Path.home() / fallback)
    return Path(base) / "rbee"


def default_models_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "models"


def default_state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "hive"


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _argv(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _command(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(part, str) and part for part in value):
        raise ValueError("worker_command must be a non-empty list of non-empty strings")


@attrs.frozen
class HiveSettings:
    host: str = "127.0.0.1"
    port: int = 9000
    #: this hive's name at the queen (``PUT {queen}/v1/hives/{hive_id}``)
    hive_id: str = attrs.field(default="localhost", validator=hive_id_validator)
    #: where to register and send heartbeats; None: no registration (a standalone hive)
    queen_url: str | None = attrs.field(default=None, validator=optional_url_validator)
    #: the URL the queen should use for this hive (default: http://host:port as bound)
    public_url: str | None = attrs.field(default=None, validator=optional_url_validator)
    models_dir: Path = attrs.field(factory=default_models_dir, converter=Path)
    #: worker logs (``logs/{worker_id}.log``), worker pid files, the Hugging Face download cache
    state_dir: Path = attrs.field(factory=default_state_dir, converter=Path)
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    #: the argument list that starts a worker; the hive appends the contract's flags
    #: (``--model PATH --engine E --host H --port 0 --worker-id ID ...``)
    worker_command: tuple[str, ...] = attrs.field(
        default=DEFAULT_WORKER_COMMAND, converter=_argv, validator=_command
    )
    #: the address workers bind (the queen talks to workers directly, so it must reach it)
    worker_host: str = "127.0.0.1"
    #: seconds between SIGTERM and SIGKILL when a worker is stopped
    stop_grace: float = attrs.field(default=10.0, validator=_positive)
    #: consecutive restarts of a crashed worker before it is left ``failed``
    restart_limit: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    #: restart n waits backoff_initial * 2**(n-1) seconds, at most backoff_max
    backoff_initial: float = attrs.field(default=1.0, validator=_positive)
    backoff_max: float = attrs.field(default=60.0, validator=_positive)
    #: a worker that stayed ready this long has its consecutive-restart count reset
    restart_reset_after: float = attrs.field(default=600.0, validator=_positive)
    #: a worker not ready this many seconds after it was started is stopped and counted as failed
    ready_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: seconds between ``GET /ready`` polls while a worker starts
    ready_poll_interval: float = attrs.field(default=0.25, validator=_positive)
    #: seconds between download progress events
    progress_interval: float = attrs.field(default=0.5, validator=_positive)
    #: Hugging Face endpoint for downloads (None: huggingface_hub's default / ``HF_ENDPOINT``)
    hf_endpoint: str | None = attrs.field(default=None, validator=optional_url_validator)

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files of running workers (to clean up after a hive that was killed)."""
        return self.state_dir / "run"

    @property
    def hf_cache_dir(self) -> Path:
        """huggingface_hub's cache for our downloads: kept in the hive's state, not the user's."""
        return self.state_dir / "hf-cache"

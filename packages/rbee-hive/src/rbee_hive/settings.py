"""Settings of one hive: where it listens, which queen it reports to, where models and state live,
how it supervises workers, and whom it trusts. One frozen attrs class; ``app.main()`` builds it
from flags and, for the tokens, the environment (``rbee_contracts.auth``: tokens never come from
the command line, which other users can read in ``ps``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from rbee_contracts.auth import LOOPBACK_NAMES, allowed_host_names, is_wildcard, machine_names
from rbee_contracts.ids import hive_id_validator
from rbee_contracts.records import MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL
from rbee_contracts.values import check_models_dir, optional_url_validator

__all__ = [
    "DEFAULT_CONVERT_COMMAND",
    "DEFAULT_WORKER_COMMAND",
    "ENV_MODEL_ROOTS",
    "LOOPBACK_NAMES",
    "HiveSettings",
    "default_models_dir",
    "default_state_dir",
    "is_wildcard",
]

#: the model roots when no ``--model-root`` is given (``os.pathsep``-separated), for a hive that
#: a queen starts with flags of its own
ENV_MODEL_ROOTS = "RBEE_HIVE_MODEL_ROOTS"

#: how a hive starts a worker: the worker's own module, with the hive's interpreter (the same venv).
DEFAULT_WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "rbee_worker.app")
#: how a hive converts a GGUF file (``model_import``): the worker package's converter, with the
#: hive's interpreter (the worker's ``gguf`` extra installs what it needs)
DEFAULT_CONVERT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "rbee_worker.gguf_import")


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


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def _paths(value: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(Path(item).expanduser() for item in value)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _roots(_: object, attribute: attrs.Attribute[Any], value: Path | tuple[Path, ...]) -> None:
    """Each model root (the models directory, each ``--model-root``) a directory of its own:
    ``values.check_models_dir``, as written and with its symbolic links resolved (the hive
    walks and serves what is under a root)."""
    for root in (value,) if isinstance(value, Path) else value:
        written = os.path.abspath(root)
        for path in dict.fromkeys((written, os.path.realpath(written))):
            check_models_dir(path, attribute.name)


def _command(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(part, str) and part for part in value):
        raise ValueError(f"{attribute.name} must be a non-empty list of non-empty strings")


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
    models_dir: Path = attrs.field(factory=default_models_dir, converter=Path, validator=_roots)
    #: worker logs (``logs/{worker_id}.log``), worker pid files, the Hugging Face download cache
    state_dir: Path = attrs.field(factory=default_state_dir, converter=Path)
    #: within the bounds the queen takes (``rbee_contracts.records``)
    heartbeat_interval: float = attrs.field(
        default=5.0,
        validator=[
            attrs.validators.ge(MIN_HEARTBEAT_INTERVAL),
            attrs.validators.le(MAX_HEARTBEAT_INTERVAL),
        ],
    )
    #: the argument list that starts a worker; the hive appends the contract's flags
    #: (``--model PATH --engine E --host H --port 0 --worker-id ID ...``)
    worker_command: tuple[str, ...] = attrs.field(
        default=DEFAULT_WORKER_COMMAND, converter=_argv, validator=_command
    )
    #: the argument list that converts a GGUF file; the hive appends ``SRC DEST --dtype DTYPE``
    #: (``rbee_hive.conversion``)
    convert_command: tuple[str, ...] = attrs.field(
        default=DEFAULT_CONVERT_COMMAND, converter=_argv, validator=_command
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

    # -- trust (ARCHITECTURE.md, "Trust between tiers"; rbee_contracts.auth) -------------------
    #: the token callers must present (the queen's hive token for this hive); each of its workers
    #: gets its own, derived from it (``auth.worker_token``). None: no authentication, allowed
    #: on loopback only (``app.main`` refuses more)
    token: str | None = attrs.field(default=None, repr=False)
    #: the token this hive presents to the queen with every heartbeat
    join_token: str | None = attrs.field(default=None, repr=False)
    #: certificate and key to serve HTTPS with (the hive and its workers); both or neither
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    #: a CA (or the pinned certificate itself) that verifies the queen; None: the system's CAs
    tls_ca: Path | None = attrs.field(default=None, converter=_optional_path)
    #: host names the hive answers for besides loopback, its bound address and its public URL's
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: origins whose web pages may call the hive (exact ``scheme://host:port``); none by default
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: directories under which ``model_register`` takes a directory, besides the models directory
    model_roots: tuple[Path, ...] = attrs.field(default=(), converter=_paths, validator=_roots)

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")

    @property
    def scheme(self) -> str:
        """``https`` when the hive (and so each of its workers) serves TLS."""
        return "https" if self.tls_cert is not None else "http"

    @property
    def roots(self) -> tuple[Path, ...]:
        """Where models may live: the models directory, always, and ``model_roots``."""
        return tuple(dict.fromkeys((self.models_dir, *self.model_roots)))

    def host_names(self) -> tuple[str, ...]:
        """The ``Host`` names the hive answers for (jobproto's ``Security.allowed_hosts``; the
        rule every tier shares: ``rbee_contracts.auth.allowed_host_names``)."""
        return allowed_host_names(self.host, self.public_url, self.allowed_hosts)

    def worker_host_names(self) -> tuple[str, ...]:
        """The names a worker must answer for besides loopback and its bound address (its
        ``--allowed-host`` flags): those the queen may reach this machine by."""
        names = list(self.host_names())
        if is_wildcard(self.worker_host):
            # a worker's URL then names this machine (supervisor._advertised_host)
            names.extend(name.lower() for name in machine_names())
        skip = {*LOOPBACK_NAMES, self.worker_host.strip("[]").lower()}
        return tuple(name for name in dict.fromkeys(names) if name not in skip)

    @property
    def logs_dir(self) -> Path:
        """Worker logs (``{worker_id}.log``) and converter logs (``imports/{name}.log``)."""
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files of running workers (to clean up after a hive that was killed)."""
        return self.state_dir / "run"

    @property
    def hf_cache_dir(self) -> Path:
        """huggingface_hub's cache for our downloads: kept in the hive's state, not the user's."""
        return self.state_dir / "hf-cache"

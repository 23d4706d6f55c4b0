"""Settings of the ``rbee`` command line, and where each one comes from.

Every setting is read from four places; a later one wins over an earlier one:

1. the built-in default;
2. the TOML file ``$XDG_CONFIG_HOME/rbee/config.toml`` (default ``~/.config/rbee/config.toml``;
   another file with ``--config PATH`` or ``RBEE_CONFIG``), top-level keys named as below;
3. the environment variable ``RBEE_<NAME>``;
4. the command-line flag (only the settings that have one).

=================  ========================  ====================================================
setting            environment / flag        meaning (default)
=================  ========================  ====================================================
queen_url          RBEE_QUEEN_URL            the queen every command talks to
                   --queen-url               (``http://127.0.0.1:8500``)
state_dir          RBEE_STATE_DIR            pid files and logs of the local queen and hive
                   --state-dir               (``$XDG_STATE_HOME/rbee``: ``~/.local/state/rbee``)
models_dir         RBEE_MODELS_DIR           models of the local hive
                   --models-dir              (``$XDG_DATA_HOME/rbee/models``)
hive_host          RBEE_HIVE_HOST            address the local hive listens on (``127.0.0.1``)
hive_port          RBEE_HIVE_PORT            port of the local hive (``9000``)
                   --hive-port
hive_id            RBEE_HIVE_ID              name of the local hive (``localhost``)
queen_command      RBEE_QUEEN_COMMAND        how to run the queen; ``--host``/``--port`` are
                                             appended (``python -m rbee_queen.app``)
hive_command       RBEE_HIVE_COMMAND         how to run the hive; ``--host --port --hive-id
                                             --queen-url --models-dir --state-dir`` are appended
                                             (``python -m rbee_hive.app``)
start_timeout      RBEE_START_TIMEOUT        seconds to wait for a started service to answer (30)
stop_timeout       RBEE_STOP_TIMEOUT         seconds between SIGTERM and SIGKILL on stop (10)
cancel_timeout     RBEE_CANCEL_TIMEOUT       seconds Ctrl+C waits for the queen to cancel (8)
token_file         RBEE_TOKEN_FILE           the file that holds the keeper's token for the queen
                                             (``{state_dir}/queen/keeper.token``, which the
                                             local queen writes each time it starts)
tls_ca             RBEE_TLS_CA               a CA certificate, or the queen's own self-signed
                                             certificate (pinned), that an ``https`` queen_url
                                             is verified against (the system's CAs)
model_roots        RBEE_MODEL_ROOTS          directories under which the local hive registers
                                             models, besides models_dir (none); a TOML list, or
                                             ``os.pathsep``-separated in the environment
=================  ========================  ====================================================

The local hive gets ``model_roots`` through the queen the keeper starts, in that queen's
environment (``RBEE_HIVE_MODEL_ROOTS``, which the queen's local hives inherit): it is this
machine's setting, so it never travels in a job's parameters, and a hive on another machine
keeps its own. A change takes effect when the queen is started again (``rbee queen stop``).

The token itself is read from ``RBEE_TOKEN`` (which wins over ``token_file``) and from nowhere
else: a flag would put it in the argument list, which other users can read with ``ps``, and a
config file is easily shared. ``rbee config show`` never prints it: it prints ``***`` and where
it came from. A token file must not be readable by other users (``chmod 600``).

Commands are a TOML array of strings in the file and a shell-quoted string in the environment
(``RBEE_QUEEN_COMMAND="rbee-queen --log-level debug"``). Relative paths in the file are relative
to the file's directory; in the environment and on the command line, to the working directory.
``rbee config show`` prints every setting with its value and where that value came from.

Paths follow the XDG Base Directory Specification: a ``XDG_*`` variable that is empty or not
absolute is ignored.
"""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from jobproto import FieldError
from rbee_contracts.auth import ENV_TOKEN, KEEPER_TOKEN_FILE
from rbee_contracts.ids import HIVE_ID_RULE, check_hive_id
from rbee_contracts.values import check_models_dir

__all__ = [
    "HIVE_MODEL_ROOTS_ENV",
    "SETTINGS",
    "TOKEN_FROM_ENV",
    "ConfigError",
    "SettingSpec",
    "Settings",
    "default_config_file",
    "load_settings",
]


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names where it came from."""


# -- parsers: (raw value, base dir for relative paths) -> typed value -----------------------------


def _parse_url(raw: Any, _: Path) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL like http://127.0.0.1:8500, got {raw!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"has a bad port: {exc}") from None
    return raw.rstrip("/")


def _parse_str(raw: Any, _: Path) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a non-empty string")
    return raw


def _parse_hive_id(raw: Any, _: Path) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    try:
        return check_hive_id(raw, "hive_id")
    except FieldError as exc:  # the one hive-id rule, said without the field name (named above)
        raise ValueError(f"must be {HIVE_ID_RULE}, got {raw!r}") from exc


def _parse_path(raw: Any, base: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a path")
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base / path


def _parse_paths(raw: Any, base: Path) -> tuple[Path, ...]:
    if isinstance(raw, str):  # the environment: like PATH
        raw = [part for part in raw.split(os.pathsep) if part]
    if not isinstance(raw, list):
        raise ValueError("must be a list of paths")
    roots = tuple(dict.fromkeys(_parse_path(item, base) for item in raw))
    for root in roots:  # the hive's own rule, said here rather than in the hive's log
        try:
            check_models_dir(str(root))
        except FieldError:
            raise ValueError(
                f"must be directories of their own for models, not the root, a system"
                f" directory, the home directory or one above it, got {str(root)!r}"
            ) from None
    return roots


def _parse_port(raw: Any, _: Path) -> int:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 65535:
        raise ValueError(f"must be a port number 1..65535, got {raw!r}")
    return raw


def _parse_seconds(raw: Any, _: Path) -> float:
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not raw > 0:
        raise ValueError(f"must be a positive number of seconds, got {raw!r}")
    return float(raw)


def _parse_command(raw: Any, _: Path) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = shlex.split(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
        raise ValueError("must be a non-empty list of strings (or a shell-quoted string)")
    return tuple(raw)


# -- defaults -------------------------------------------------------------------------------------


def _xdg(env: Mapping[str, str], name: str, fallback: str) -> Path:
    # XDG Base Directory Specification: "If an implementation encounters a relative path in any of
    # these variables it should consider the path invalid and ignore it."
    value = env.get(name, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def default_config_file(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/rbee/config.toml`` (``~/.config/rbee/config.toml``)."""
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "rbee" / "config.toml"


@attrs.frozen
class SettingSpec:
    """One setting: its name (TOML key and ``Settings`` attribute), parser, default and help."""

    name: str
    parse: Callable[[Any, Path], Any]
    default: Callable[[Mapping[str, str]], Any]
    help: str
    flag: str | None = None

    @property
    def env(self) -> str:
        return "RBEE_" + self.name.upper()


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "queen_url",
        _parse_url,
        lambda env: "http://127.0.0.1:8500",
        "the queen every command talks to",
        "--queen-url",
    ),
    SettingSpec(
        "state_dir",
        _parse_path,
        lambda env: _xdg(env, "XDG_STATE_HOME", ".local/state") / "rbee",
        "pid files and logs of the local queen and hive",
        "--state-dir",
    ),
    SettingSpec(
        "models_dir",
        _parse_path,
        lambda env: _xdg(env, "XDG_DATA_HOME", ".local/share") / "rbee" / "models",
        "models of the local hive",
        "--models-dir",
    ),
    SettingSpec(
        "hive_host", _parse_str, lambda env: "127.0.0.1", "address the local hive listens on"
    ),
    SettingSpec(
        "hive_port", _parse_port, lambda env: 9000, "port of the local hive", "--hive-port"
    ),
    SettingSpec("hive_id", _parse_hive_id, lambda env: "localhost", "name of the local hive"),
    SettingSpec(
        "queen_command",
        _parse_command,
        lambda env: (sys.executable, "-m", "rbee_queen.app"),
        "how to run the queen; --host and --port are appended",
    ),
    SettingSpec(
        "hive_command",
        _parse_command,
        lambda env: (sys.executable, "-m", "rbee_hive.app"),
        "how to run the hive; --host, --port, --hive-id, --queen-url, --models-dir and"
        " --state-dir are appended",
    ),
    SettingSpec(
        "start_timeout",
        _parse_seconds,
        lambda env: 30.0,
        "seconds to wait for a started service to answer",
    ),
    SettingSpec(
        "stop_timeout", _parse_seconds, lambda env: 10.0, "seconds between SIGTERM and SIGKILL"
    ),
    SettingSpec(
        "cancel_timeout",
        _parse_seconds,
        lambda env: 8.0,
        "seconds Ctrl+C waits for the queen to cancel a job",
    ),
    SettingSpec(
        "token_file",
        _parse_path,
        lambda env: None,  # {state_dir}/queen/keeper.token: load_settings fills it in
        "the keeper's token for the queen (RBEE_TOKEN wins over it)",
    ),
    SettingSpec(
        "tls_ca",
        _parse_path,
        lambda env: None,
        "CA certificate or the queen's pinned certificate, for an https queen_url",
    ),
    SettingSpec(
        "model_roots",
        _parse_paths,
        lambda env: (),
        "directories under which the local hive registers models, besides models_dir",
    ),
)

#: the local hive's model roots in its environment (``rbee_hive.settings.ENV_MODEL_ROOTS``),
#: ``os.pathsep``-separated
HIVE_MODEL_ROOTS_ENV = "RBEE_HIVE_MODEL_ROOTS"

#: where the token came from when ``RBEE_TOKEN`` gives it
TOKEN_FROM_ENV = f"env {ENV_TOKEN}"


@attrs.frozen
class Settings:
    """The resolved settings. ``sources[name]`` says where each value came from."""

    queen_url: str
    state_dir: Path
    models_dir: Path
    hive_host: str
    hive_port: int
    hive_id: str
    queen_command: tuple[str, ...]
    hive_command: tuple[str, ...]
    start_timeout: float
    stop_timeout: float
    cancel_timeout: float
    token_file: Path
    tls_ca: Path | None
    model_roots: tuple[Path, ...]
    config_file: Path
    config_file_found: bool
    sources: Mapping[str, str] = attrs.field(factory=dict)
    #: ``RBEE_TOKEN``; never printed (``repr`` leaves it out), see ``queen_access``
    token: str | None = attrs.field(default=None, repr=False)

    def queen_environment(self) -> dict[str, str]:
        """What the local queen gets in its environment from these settings, for the hives it
        starts here: ``model_roots``, when set (else the queen inherits the caller's
        ``RBEE_HIVE_MODEL_ROOTS``, the hive's own variable, if any)."""
        if not self.model_roots:
            return {}
        return {HIVE_MODEL_ROOTS_ENV: os.pathsep.join(str(root) for root in self.model_roots)}

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly values (paths as strings, commands as lists, an unset
        one as None). The token is not a setting of the file and is not among them."""
        out: dict[str, Any] = {}
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(item) if isinstance(item, Path) else item for item in value]
            out[spec.name] = value
        return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    known = {spec.name for spec in SETTINGS}
    if "token" in data:
        raise ConfigError(
            f"{path}: the token is not read from the config file (it is easily shared):"
            f" set {ENV_TOKEN}, or token_file to a file only you can read"
        )
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
        )
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve every setting: defaults, then the config file, then ``RBEE_*``, then ``flags``.

    ``flags`` maps setting names to values given on the command line (None: not given).
    ``config_file`` (the ``--config`` flag) must exist; so must ``RBEE_CONFIG`` when set; the
    default file may be absent. Raises ``ConfigError`` naming the bad value and its source.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    flags = flags or {}
    explicit = config_file
    if explicit is None and env.get("RBEE_CONFIG"):
        explicit = Path(env["RBEE_CONFIG"]).expanduser()
    path = explicit if explicit is not None else default_config_file(env)
    path = path if path.is_absolute() else cwd / path
    found = path.is_file()
    if explicit is not None and not found:
        raise ConfigError(f"config file {path} does not exist")
    file_values = _read_file(path) if found else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        candidates: list[tuple[str, Any, Path]] = [("default", spec.default(env), cwd)]
        if spec.name in file_values:
            candidates.append((f"file {path}", file_values[spec.name], path.parent))
        if env.get(spec.env):
            candidates.append((f"env {spec.env}", env[spec.env], cwd))
        if flags.get(spec.name) is not None:
            candidates.append((f"flag {spec.flag or spec.name}", flags[spec.name], cwd))
        source, raw, base = candidates[-1]
        try:
            values[spec.name] = raw if source == "default" else spec.parse(raw, base)
        except ValueError as exc:
            raise ConfigError(f"setting {spec.name} ({source}) {exc}") from None
        sources[spec.name] = source
    if values["token_file"] is None:  # the file the local queen writes, under this state_dir
        values["token_file"] = values["state_dir"] / "queen" / KEEPER_TOKEN_FILE
    token = env.get(ENV_TOKEN, "").strip() or None
    if token is not None:
        sources["token"] = TOKEN_FROM_ENV
    return Settings(
        **values, config_file=path, config_file_found=found, sources=sources, token=token
    )

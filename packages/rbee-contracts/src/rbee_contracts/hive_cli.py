"""The queen→hive boundary that is not jobproto: the command line a queen starts a hive with.

``hive_start`` runs ``python -m rbee_hive.app`` (the queen's ``hive_command``) with these flags.
Every value goes in the ``--flag=VALUE`` form, one argument each, so a value that starts with
``-`` (a directory called ``-x``) is the flag's value and never read as another flag.

Tokens are never flags (``ps`` shows a command line to every user): the hive reads the token it
accepts from ``RBEE_HIVE_TOKEN``/``RBEE_HIVE_TOKEN_FILE`` and its join token from
``RBEE_JOIN_TOKEN``/``RBEE_JOIN_TOKEN_FILE`` in its environment (``rbee_contracts.auth``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .queen_results import StopOutcome

__all__ = ["DaemonAnswer", "hive_argv", "hive_optional_flags"]


def hive_argv(
    *,
    host: str,
    port: int,
    hive_id: str,
    queen_url: str,
    state_dir: str,
    models_dir: str,
    heartbeat: float | None = None,
    public_url: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    allowed_hosts: Sequence[str] = (),
    model_roots: Sequence[str] = (),
) -> list[str]:
    """The hive's flags (after its command): where it listens, who it is, whom it reports to."""
    argv = [
        f"--host={host}",
        f"--port={port}",
        f"--hive-id={hive_id}",
        f"--queen-url={queen_url}",
        f"--state-dir={state_dir}",
        f"--models-dir={models_dir}",
    ]
    if heartbeat is not None:
        argv.append(f"--heartbeat={heartbeat!r}")  # repr: the float itself, no rounding
    return argv + hive_optional_flags(
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        allowed_hosts=allowed_hosts,
        model_roots=model_roots,
    )


def hive_optional_flags(
    *,
    public_url: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    allowed_hosts: Sequence[str] = (),
    model_roots: Sequence[str] = (),
) -> list[str]:
    """The hive's flags that have no default of their own (only those given), in the same form;
    also for a starter that passes the rest of the hive's flags another way
    (``python -m rbee_hive.daemon start ... -- FLAGS``)."""
    argv = [] if public_url is None else [f"--public-url={public_url}"]
    for flag, value in (("tls-cert", tls_cert), ("tls-key", tls_key), ("tls-ca", tls_ca)):
        if value is not None:
            argv.append(f"--{flag}={value}")
    argv += [f"--allowed-host={host}" for host in allowed_hosts]
    argv += [f"--model-root={root}" for root in model_roots]
    return argv


@attrs.frozen
class DaemonAnswer:
    """What ``python -m rbee_hive.daemon start|stop|status`` prints, as its last line of JSON:
    the hive's machine → the queen, which runs it over SSH. Each action fills its own fields."""

    ok: bool
    #: the hive's log on its machine
    log: str
    #: the hive's process (None: none runs, or none did)
    pid: int | None = None
    command: list[str] = attrs.field(factory=list)
    #: why ``ok`` is false
    error: str | None = None
    #: start: the hive ran already (nothing was started)
    already_running: bool | None = None
    #: status: whether the hive runs
    running: bool | None = None
    #: stop: how it ended
    stopped: StopOutcome | None = None
    #: stop: the workers a killed hive had left, stopped now
    leftover_workers: list[str] = attrs.field(factory=list)

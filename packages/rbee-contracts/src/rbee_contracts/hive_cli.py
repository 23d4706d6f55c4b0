"""The queen→hive boundary that is not jobproto: the command line a queen starts a hive with.

``hive_start`` runs ``python -m rbee_hive.app`` (the queen's ``hive_command``) with these flags.
Every value goes in the ``--flag=VALUE`` form, one argument each, so a value that starts with
``-`` (a directory called ``-x``) is the flag's value and never read as another flag.
"""

from __future__ import annotations

__all__ = ["hive_argv"]


def hive_argv(
    *,
    host: str,
    port: int,
    hive_id: str,
    queen_url: str,
    state_dir: str,
    models_dir: str,
    heartbeat: float | None = None,
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
    return argv

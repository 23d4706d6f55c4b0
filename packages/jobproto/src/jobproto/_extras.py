"""Optional dependencies: an import that fails names the extra that installs it.

Modules that need an extra import it like this, so that ``import jobproto.server`` without
uvicorn says ``pip install 'jobproto[server]'`` instead of only "No module named 'uvicorn'"::

    from jobproto._extras import missing_extra

    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, "server", "jobproto.server") from exc
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(exc: ModuleNotFoundError, extra: str, needed_by: str) -> ModuleNotFoundError:
    """The error to raise when ``needed_by`` cannot import what the ``extra`` extra installs.

    Keeps ``name`` (the module that is missing), so code that checks ``exc.name`` still works.
    """
    missing = exc.name or "a module"
    return ModuleNotFoundError(
        f"{needed_by} needs {missing!r}, which is not installed: pip install 'jobproto[{extra}]'",
        name=exc.name,
    )

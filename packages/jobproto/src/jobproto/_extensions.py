"""Names of the ASGI extensions jobproto's server offers and its ASGI adapter uses.

A module of its own, importing nothing, so that ``jobproto._http`` (uvicorn) and
``jobproto.asgi`` (no uvicorn) share the names without importing each other.
"""

from __future__ import annotations

__all__ = ["ABORT_EXTENSION"]

#: ``scope["extensions"][ABORT_EXTENSION] == {"abort": callable}``: drop the connection at once
ABORT_EXTENSION = "jobproto.abort"

"""Names of the ASGI extensions jobproto's server offers and its ASGI adapter uses.

A module of its own, importing nothing, so that ``jobproto._http`` (uvicorn) and
``jobproto.asgi`` (no uvicorn) share the names without importing each other.
"""

from __future__ import annotations

__all__ = ["ABORT_EXTENSION", "DISCONNECT_EXTENSION"]

#: ``scope["extensions"][ABORT_EXTENSION] == {"abort": callable}``: drop the connection at once
ABORT_EXTENSION = "jobproto.abort"

#: ``scope["extensions"][DISCONNECT_EXTENSION] == {"watch": callable}``: ``watch(callback)`` has
#: the server call ``callback()`` once, when the connection is lost (at once if it already is);
#: ``watch(None)`` forgets it. A stream that has it needs no task waiting in ``receive()``.
DISCONNECT_EXTENSION = "jobproto.disconnect"

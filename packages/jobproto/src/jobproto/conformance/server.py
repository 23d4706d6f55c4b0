"""``python -m jobproto.conformance.server``: the reference service for conformance runs.

    python -m jobproto.conformance.server --host 127.0.0.1 --port 0 --port-file /tmp/port

serves the conformance operations on the given address; with ``--port 0`` the kernel picks a free
port, written to ``--port-file`` (and printed as ``listening on http://HOST:PORT``) once the server
listens. Every ``ServiceSettings`` limit has a flag (``--max-log-events``, ``--subscribe-timeout``,
``--retention-ttl``, ``--keepalive-interval``, ``--start-mode``, ...; see ``--help``). SIGTERM or
SIGINT stops it cleanly, with exit status 0.
"""

from __future__ import annotations

from ._server import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

"""A small TCP proxy between a browser and the queen that can cut connections on demand.

``CuttingProxy(target_port)`` listens on a free loopback port and copies bytes both ways, one
thread per direction. It keeps the first ``CAPTURE_LIMIT`` bytes each client sent on each
connection, so a test can see which requests went through (their heads: request line and
headers), and ``cut(needle)`` closes at once every open connection whose captured bytes contain
``needle``: the browser sees its stream break mid-body, as when a network drops, and the
server sees a disconnect.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator

__all__ = ["CuttingProxy"]

CAPTURE_LIMIT = 64 * 1024
_HEAD = re.compile(
    rb"(?:GET|HEAD|POST|PUT|DELETE|OPTIONS) [^\r\n]* HTTP/1\.[01]\r\n(?:[^\r\n]+\r\n)*\r\n"
)


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.captured = bytearray()
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class CuttingProxy:
    """Loopback TCP proxy to ``127.0.0.1:target_port``; ``url`` is where to point a browser."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.cuts = 0
        accept = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            conn = _Connection(client, upstream)
            with self._lock:
                self._connections.append(conn)
            for source, sink, capture in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pipe, args=(conn, source, sink, capture), daemon=True
                )
                thread.start()
                with self._lock:
                    self._threads.append(thread)

    def _pipe(
        self, conn: _Connection, source: socket.socket, sink: socket.socket, capture: bool
    ) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if capture and len(conn.captured) < CAPTURE_LIMIT:
                    with self._lock:
                        conn.captured += chunk[: CAPTURE_LIMIT - len(conn.captured)]
                sink.sendall(chunk)
        except OSError:
            pass
        conn.close()

    def cut(self, needle: bytes) -> int:
        """Close every open connection that carried ``needle``; how many were closed."""
        with self._lock:
            chosen = [c for c in self._connections if not c.closed and needle in c.captured]
        for conn in chosen:
            conn.close()
        self.cuts += len(chosen)
        return len(chosen)

    def request_heads(self) -> Iterator[str]:
        """The head of every request seen so far (request line and headers), in order per
        connection."""
        with self._lock:
            captured = [bytes(c.captured) for c in self._connections]
        for data in captured:
            for match in _HEAD.finditer(data):
                yield match.group(0).decode("latin-1")

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            conn.close()
        for thread in threads:
            thread.join(5)

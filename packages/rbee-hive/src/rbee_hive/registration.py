"""Registration and heartbeat: ``PUT {queen}/v1/hives/{hive_id}`` every heartbeat interval.

Registering and beating are the same request (the queen's endpoint is idempotent), so a queen
that restarts learns about this hive at the next beat and nothing else has to happen. A beat
that fails is logged and the next one is simply tried on schedule. Each request is bounded by a
timeout shorter than the interval, so beats never pile up.

Beats are sent on a fixed schedule, and also early (``kick()``) when a worker changes state, so
the queen hears of a crashed worker within a fraction of a second rather than a whole interval.

Every beat carries the hive's join token (``Authorization: Bearer``): the queen takes a hive's
registration only from the holder of that hive's join token. The token is in no log line: a
failed beat logs the URL and what failed, never the request.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from rbee_contracts.auth import bearer

__all__ = ["HeartbeatSender"]

logger = logging.getLogger("rbee_hive.registration")

#: fewest seconds between two beats, however often kick() is called
MIN_SPACING = 0.2


class HeartbeatSender:
    """Sends ``snapshot()`` (a ``rbee_contracts.records.Heartbeat`` body) to the queen on a
    schedule. Run ``run()`` in a task group."""

    def __init__(
        self,
        queen_url: str,
        hive_id: str,
        interval: float,
        snapshot: Callable[[], Awaitable[dict[str, Any]]],
        *,
        http: httpx.AsyncClient | None = None,
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = f"{queen_url.rstrip('/')}/v1/hives/{quote(hive_id, safe='')}"
        self.interval = interval
        self.snapshot = snapshot
        self._http = http
        self._headers = bearer(token)
        self._verify = verify
        self._kicked = anyio.Event()
        self.sent = 0  # beats the queen accepted
        self.failed = 0  # beats that failed in a row
        self.last_ok: float | None = None

    def __repr__(self) -> str:
        return f"HeartbeatSender(url={self.url!r})"

    def client(self, timeout: httpx.Timeout | float) -> httpx.AsyncClient:
        """An HTTP client for beats: the join token on every request, the queen verified."""
        return httpx.AsyncClient(timeout=timeout, headers=self._headers, verify=self._verify)

    def kick(self) -> None:
        """Send the next beat now instead of at its scheduled time."""
        self._kicked.set()

    async def run(self, *, ready: anyio.Event | None = None) -> None:
        """Beat forever. With ``ready``, wait for it first (the hive's own URL must be known)."""
        if ready is not None:
            await ready.wait()
        timeout = httpx.Timeout(min(10.0, max(1.0, self.interval * 0.8)))
        if self._http is not None:
            await self._loop(self._http, timeout)
        else:
            async with self.client(timeout) as http:
                await self._loop(http, timeout)

    async def _loop(self, http: httpx.AsyncClient, request_timeout: httpx.Timeout) -> None:
        while True:
            # Reset before the beat: a change while it is being built or sent earns another one.
            self._kicked = anyio.Event()
            sent_at = time.monotonic()
            await self.beat(http, request_timeout)
            with anyio.move_on_after(max(0.0, sent_at + self.interval - time.monotonic())):
                await self._kicked.wait()
            await anyio.sleep(max(0.0, sent_at + MIN_SPACING - time.monotonic()))

    async def beat(
        self, http: httpx.AsyncClient, request_timeout: httpx.Timeout | None = None
    ) -> bool:
        """Send one beat; True when the queen accepted it. Never raises for network trouble."""
        try:
            body = await self.snapshot()
            response = await http.put(
                self.url,
                json=body,
                headers=self._headers,
                timeout=request_timeout or httpx.USE_CLIENT_DEFAULT,
            )
            response.raise_for_status()
        except (httpx.HTTPError, OSError) as exc:
            self.failed += 1
            # Warn once; a queen that stays down is not worth a warning per beat.
            level = logging.WARNING if self.failed == 1 else logging.DEBUG
            logger.log(
                level, "heartbeat to %s failed (%d in a row): %r", self.url, self.failed, exc
            )
            return False
        if self.failed:
            logger.info("heartbeat to %s works again after %d failures", self.url, self.failed)
        self.failed = 0
        self.sent += 1
        self.last_ok = time.time()
        return True

"""The hive's state in one object: its settings, model catalog, worker supervisor and heartbeat.

``HiveService.running()`` is the hive's part of the app lifespan: it starts the catalog, the
supervisor and the heartbeat in one task group and, on the way out, stops the heartbeat, then
every worker (SIGTERM, then SIGKILL), then any download.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from jobproto import converter
from rbee_contracts.records import Heartbeat

from . import capabilities
from .models import ModelCatalog
from .registration import HeartbeatSender
from .settings import HiveSettings, is_wildcard
from .supervisor import Supervisor
from .trust import client_context

__all__ = ["HiveService"]

logger = logging.getLogger("rbee_hive")


class HiveService:
    """The state of one hive process (the queen's record of a hive is ``HiveRecord``)."""

    def __init__(self, settings: HiveSettings) -> None:
        self.settings = settings
        self.catalog = ModelCatalog(
            settings.models_dir,
            hf_cache_dir=settings.hf_cache_dir,
            hf_endpoint=settings.hf_endpoint,
            progress_interval=settings.progress_interval,
            roots=settings.roots,
            convert_command=settings.convert_command,
            logs_dir=settings.logs_dir,
        )
        self.heartbeat: HeartbeatSender | None = None
        if settings.queen_url is not None:
            self.heartbeat = HeartbeatSender(
                settings.queen_url,
                settings.hive_id,
                settings.heartbeat_interval,
                self.snapshot,
                token=settings.join_token,
                verify=client_context(settings.tls_ca),
            )
        self.supervisor = Supervisor(settings, on_change=self._changed)
        self._url: str | None = None
        if settings.public_url is not None:
            self._url = settings.public_url.rstrip("/")
        elif settings.port != 0:
            self._url = f"{settings.scheme}://{_url_host(settings.host)}:{settings.port}"
        self._url_known: anyio.Event | None = None

    @property
    def url(self) -> str | None:
        """The URL the queen should use for this hive (None until a port-0 hive is bound)."""
        return self._url

    def advertise(self, port: int) -> None:
        """Tell the hive the port it is bound to (for ``--port 0``); no-op with a public URL."""
        if self.settings.public_url is None:
            self._url = f"{self.settings.scheme}://{_url_host(self.settings.host)}:{port}"
        if self._url_known is not None:
            self._url_known.set()

    async def announce(self) -> None:
        """Beat now and wait for it, so the queen knows of a change (a model registered, say)
        before the job that made it ends; a user's next command can count on it."""
        if self.heartbeat is None or self._url is None:
            return
        with anyio.move_on_after(5):
            async with self.heartbeat.client(5) as http:
                await self.heartbeat.beat(http)

    def _changed(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.kick()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HiveService]:
        self._url_known = anyio.Event()
        if self._url is not None:
            self._url_known.set()
        async with (
            self.catalog.running(),
            self.supervisor.running(),
            anyio.create_task_group() as tg,
        ):
            if self.heartbeat is not None:
                # A port-0 hive knows its URL only once bound (advertise()): beat after that.
                tg.start_soon(functools.partial(self.heartbeat.run, ready=self._url_known))
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def heartbeat_body(self) -> Heartbeat:
        """What the hive tells the queen (docs/tiers.md, hive); its URL must be known."""
        if self._url is None:
            raise RuntimeError("the hive's URL is not known before it is bound (advertise())")
        caps = await capabilities.collect()
        return Heartbeat(
            url=self._url,
            hive_id=self.settings.hive_id,
            capabilities=caps,
            workers=[worker.record() for worker in self.supervisor.list_workers()],
            models=await self.catalog.names(),
            free_memory_bytes=caps["ram_free_bytes"],
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    async def snapshot(self) -> dict[str, Any]:
        """The heartbeat body as JSON: sent by ``HeartbeatSender``, served as ``GET /v1/hive``."""
        raw: dict[str, Any] = converter.unstructure(await self.heartbeat_body())
        return raw


def _url_host(host: str) -> str:
    if is_wildcard(host):
        # Bound to every interface: the machine's name is the best guess at how others reach it
        # (--public-url says it exactly).
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host

"""Queen replicas: what one queen hears, every queen sharing its Redis knows.

Queens started with one ``--redis-url`` (and one secret) share their jobs through jobproto's
``RedisStore``: a job created on one is listed, streamed and cancelled on any. This module
shares the rest of what routing needs, through the same Redis, as small records that expire
by themselves (``RedisStore.put_record``) and a message for each change (``publish``):

* **Hives.** A heartbeat a replica accepts (the hive's token, its address checked against the
  connection it came on, the hive id's binding) is stored as the record ``("hive", id)``, for a
  few of the hive's beats, and published. Every other replica applies it to its own
  ``HiveRegistry`` as if the hive had beaten there, with the checks that make sense away from the
  connection: the registration parsed again, the hive id bound to the credential that first
  registered it (``hive_id_taken``) and its host pinned (``hive_address_changed``); the address
  check against the peer was the receiving replica's to make. A record is applied only when it is
  newer than what the registry holds. A hive forgotten on one replica (``hive_stop``) is forgotten
  on every one (a record that says ``removed``).
* **In-flight counts.** Each replica writes its own per-worker counts as ``("inflight",
  replica)`` when they change (at most every ``DEBOUNCE`` s) and every ``IN_FLIGHT_INTERVAL`` s;
  the record lives three intervals, so the counts of a replica that stopped go away by
  themselves. Routing ("least busy") adds the other replicas' counts to the queen's own
  (``HiveRegistry.set_shared_in_flight``).

Each replica loads every record as it starts, applies the others' messages as they come, and
loads every record again each ``RELOAD_INTERVAL`` s, which makes up for a message missed while
Redis was away. Redis being away costs this sharing only: the replica keeps routing with what
it knows, logs the outage once, and catches up when Redis is back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio

from jobproto import RequestError, converter
from jobproto.store import StoreUnavailable

from .registry import HiveRegistry, Registration, WorkerKey, parse_registration

__all__ = [
    "CHANNEL",
    "DEBOUNCE",
    "IN_FLIGHT_INTERVAL",
    "RELOAD_INTERVAL",
    "ReplicaSync",
    "SharedRecords",
]

logger = logging.getLogger("rbee_queen.replicas")

#: the channel every replica publishes its changes on and listens to
CHANNEL = "replicas"
#: seconds between loads of every record
RELOAD_INTERVAL = 2.0
#: seconds between writes of a replica's in-flight counts when nothing changes
IN_FLIGHT_INTERVAL = 2.0
#: a change of the in-flight counts is written this many seconds later, with the changes after it
DEBOUNCE = 0.05
#: a hive's record outlives its last accepted heartbeat by this many beats beyond its timeout
EXTRA_BEATS = 1
#: longest wait for the records at start (seconds): a queen without Redis starts anyway
LOAD_TIMEOUT = 5.0
#: a stopped hive's records heard before it stopped are ignored for this long (seconds): longer
#: than any record of it lives
FORGET_HORIZON = 600.0
#: seconds before a record that could not be written is tried again
RETRY = 1.0
#: longest wait before listening again after the subscription broke (seconds)
MAX_BACKOFF = 5.0


class SharedRecords(Protocol):
    """What this module needs of the shared store (``jobproto.redis.RedisStore``)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put_record(
        self, kind: str, key: str, value: Mapping[str, Any], ttl: float
    ) -> None: ...

    async def records(self, kind: str) -> dict[str, Mapping[str, Any]]: ...

    async def publish(self, channel: str, message: str) -> None: ...

    def subscribe(self, channel: str) -> AsyncIterator[str]: ...


class ReplicaSync:
    """One replica's side of the sharing: writes what it hears, applies what the others heard.

    ``running()`` owns its store (opened and closed there, apart from the job service's, whose
    lifespan is the service's own) and its tasks. ``hive_heard`` and the registry's listener
    calls never block: they leave the write to a task.
    """

    def __init__(
        self,
        registry: HiveRegistry,
        store: SharedRecords,
        replica: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.store = store
        self.replica = replica
        self.clock = clock
        #: hive id -> the record to write (the latest only: a burst of beats is one write)
        self._hives: dict[str, dict[str, Any]] = {}
        self._hives_changed = anyio.Event()
        self._counts_changed = anyio.Event()
        #: replica -> its last in-flight counts
        self._others: dict[str, dict[WorkerKey, int]] = {}
        #: hive id -> when it was forgotten here: records heard before then are not applied
        self._forgotten: dict[str, float] = {}
        #: applying another replica's record: the registry's listener writes nothing back
        self._applying = False
        self._outage = False
        registry.listener = self

    def __repr__(self) -> str:
        return f"ReplicaSync(replica={self.replica!r})"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The store open, every record loaded (bounded: Redis may be away), the tasks running."""
        with anyio.move_on_after(LOAD_TIMEOUT):
            try:
                await self.store.open()
                await self.load()
            except StoreUnavailable as exc:
                self._failed("load the other replicas' records", exc)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                tg.start_soon(self._reload)
                tg.start_soon(self._write_hives)
                tg.start_soon(self._write_counts)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(LOAD_TIMEOUT):
                await self.store.close()

    # -- what this replica heard -------------------------------------------------------------------

    def hive_heard(self, registration: Registration, owner: str | None, now: float) -> None:
        """A heartbeat this replica accepted: every replica shall know it."""
        self._forgotten.pop(registration.hive_id, None)
        self._hives[registration.hive_id] = {
            "replica": self.replica,
            "heard": now,
            "owner": owner,
            "heartbeat": converter.unstructure(registration.heartbeat),
            "ttl": (self.registry.timeout_beats + EXTRA_BEATS)
            * registration.heartbeat.heartbeat_interval,
        }
        self._hives_changed.set()

    def hive_removed(self, hive_id: str) -> None:
        """The registry's listener: this replica forgot a hive (``hive_stop``)."""
        now = self.clock()
        self._forgotten[hive_id] = now
        if self._applying:
            return
        self._hives[hive_id] = {
            "replica": self.replica,
            "heard": now,
            "removed": True,
            "ttl": RELOAD_INTERVAL * 5,
        }
        self._hives_changed.set()

    def in_flight_changed(self) -> None:
        """The registry's listener: this replica's in-flight counts changed."""
        self._counts_changed.set()

    # -- what the others heard ---------------------------------------------------------------------

    async def load(self) -> None:
        """Apply every record in the store (``StoreUnavailable`` when it cannot be read)."""
        hives = await self.store.records("hive")
        counts = await self.store.records("inflight")
        horizon = self.clock() - FORGET_HORIZON
        self._forgotten = {h: at for h, at in self._forgotten.items() if at > horizon}
        for hive_id, value in hives.items():
            self.apply_hive(hive_id, value)
        self._others = {
            replica: _counts(value) for replica, value in counts.items() if replica != self.replica
        }
        self._share_counts()

    def apply_hive(self, hive_id: str, value: Mapping[str, Any]) -> None:
        """Apply a hive record another replica wrote, when it is newer than what is known."""
        if value.get("replica") == self.replica:
            return
        heard = value.get("heard")
        if not isinstance(heard, (int, float)) or not math.isfinite(heard):
            logger.warning("a hive record for %r without a valid time: ignored", hive_id)
            return
        heard = min(float(heard), self.clock())  # another machine's clock may be ahead
        known = self.registry.get(hive_id) if hive_id in self.registry else None
        if known is not None and known.last_seen >= heard:
            return  # what this replica knows is as new
        if heard <= self._forgotten.get(hive_id, -math.inf):
            return  # a heartbeat from before the hive was stopped
        self._applying = True
        try:
            if value.get("removed"):
                if known is not None:
                    self.registry.remove(hive_id)
                return
            owner = value.get("owner")
            registration = parse_registration(hive_id, value.get("heartbeat"))
            self.registry.register(
                registration, heard, owner=owner if isinstance(owner, str) else None
            )
        except RequestError as exc:
            logger.warning(
                "replica %s's heartbeat of hive %s refused here: %s (%s)",
                value.get("replica"),
                hive_id,
                exc.message,
                exc.code,
            )
        finally:
            self._applying = False

    def apply_counts(self, replica: str, value: Mapping[str, Any]) -> None:
        if replica == self.replica:
            return
        self._others[replica] = _counts(value)
        self._share_counts()

    def _share_counts(self) -> None:
        total: dict[WorkerKey, int] = {}
        for counts in self._others.values():
            for key, n in counts.items():
                total[key] = total.get(key, 0) + n
        self.registry.set_shared_in_flight(total)

    # -- tasks -------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        failures = 0
        while True:
            messages = self.store.subscribe(CHANNEL)
            try:
                async for message in messages:
                    failures = 0
                    self._recovered()
                    self._apply_message(message)
            except StoreUnavailable as exc:
                self._failed("listen to the other replicas", exc)
            finally:
                # the subscription holds a connection of its own: closed now, not by the GC
                close = getattr(messages, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()
            failures += 1
            await anyio.sleep(min(MAX_BACKOFF, 0.1 * 2**failures))

    def _apply_message(self, message: str) -> None:
        try:
            change = json.loads(message)
            kind, key, value = change["kind"], change["key"], change["value"]
        except (ValueError, TypeError, KeyError):
            logger.warning("a message on %r that is not a replica's change: ignored", CHANNEL)
            return
        if not isinstance(key, str) or not isinstance(value, Mapping):
            return
        if kind == "hive":
            self.apply_hive(key, value)
        elif kind == "inflight":
            self.apply_counts(key, value)

    async def _reload(self) -> None:
        while True:
            await anyio.sleep(RELOAD_INTERVAL)
            try:
                await self.load()
            except StoreUnavailable as exc:
                self._failed("load the other replicas' records", exc)
            else:
                self._recovered()

    async def _write_hives(self) -> None:
        while True:
            await self._hives_changed.wait()
            self._hives_changed = anyio.Event()
            pending, self._hives = self._hives, {}
            failed = False
            for hive_id, value in pending.items():
                ttl = value.pop("ttl")
                if not await self._put("hive", hive_id, value, ttl):
                    failed = True  # written again soon, unless a newer one came in meanwhile
                    self._hives.setdefault(hive_id, {**value, "ttl": ttl})
            if failed:
                await anyio.sleep(RETRY)
                self._hives_changed.set()

    async def _write_counts(self) -> None:
        while True:
            with anyio.move_on_after(IN_FLIGHT_INTERVAL):
                await self._counts_changed.wait()
                await anyio.sleep(DEBOUNCE)  # the changes right after it go in the same write
            self._counts_changed = anyio.Event()
            counts = self.registry.own_in_flight()
            value = {
                "replica": self.replica,
                "at": self.clock(),
                "counts": [[hive, worker, n] for (hive, worker), n in sorted(counts.items())],
            }
            await self._put("inflight", self.replica, value, 3 * IN_FLIGHT_INTERVAL)

    async def _put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> bool:
        try:
            await self.store.put_record(kind, key, value, ttl)
            message = {"kind": kind, "key": key, "value": value}
            await self.store.publish(CHANNEL, json.dumps(message, separators=(",", ":")))
        except StoreUnavailable as exc:
            self._failed(f"share {kind} {key}", exc)
            return False
        self._recovered()
        return True

    def _failed(self, what: str, exc: StoreUnavailable) -> None:
        if not self._outage:  # once per outage, not once per try
            self._outage = True
            # the detail names the store's (redacted) address; the message is the client's
            logger.warning("replica %s: cannot %s: %s (retrying)", self.replica, what, exc.detail)

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            logger.info("replica %s: hives and in-flight counts shared again", self.replica)


def _counts(value: Mapping[str, Any]) -> dict[WorkerKey, int]:
    """In-flight counts from a record; rows that are not ``[hive, worker, n]`` are skipped."""
    out: dict[WorkerKey, int] = {}
    rows = value.get("counts")
    if not isinstance(rows, list):
        return out
    for row in rows:
        if (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], str)
            and isinstance(row[2], int)
            and not isinstance(row[2], bool)
            and row[2] > 0
        ):
            out[(row[0], row[1])] = row[2]
    return out

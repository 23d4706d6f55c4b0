"""The queen's picture of the cluster: hives, their workers, and the queen's own in-flight counts.

Sans-IO: no clock, no sockets. Every call that depends on time takes ``now`` (epoch seconds), so
liveness is a pure function of what was heard and when:

* A hive registers and heartbeats with the same idempotent ``PUT /v1/hives/{id}`` body
  (``parse_registration`` validates it). Each heartbeat *replaces* what the hive said before:
  the hive's supervisor is the truth about its workers and models.
* A hive id belongs to the credential that first registered it (its ``owner``, the principal's
  name): a heartbeat for that id from another one is 403 ``hive_id_taken``, so nobody takes over
  a hive's id and with it the prompts routed there. The queen's own tokens give ``PUT
  /v1/hives/H`` to hive H's join token only, so this holds already at the door; the binding
  keeps it true whatever authenticator a queen is given. Without authentication (no secret:
  in-process tests, library use) there is no owner and no binding.
* The queen contacts only the URLs of accepted heartbeats: the hive's and its workers' (which
  must be on the hive's own host, ``rbee_contracts.records``). The hive's own host must be the
  address its heartbeat came from (checked where the peer is known, ``rbee_queen.routes``), and
  it is pinned at the first registration: while the hive is known, a heartbeat naming another
  host is 403 ``hive_address_changed`` (another port on the same host is a restarted hive). The
  pin ends when the hive is forgotten (``remove``: ``hive_stop``), so one hive id cannot run on
  two machines at once, and a join token cannot move its hive's traffic elsewhere.
* A hive is ``up`` while ``now - last_seen <= hive_timeout_beats * heartbeat_interval`` (its own
  interval, as it declared it), ``down`` after: its ``HiveState`` is derived, never stored.
  Nothing is removed for being down: a hive that comes back is ``up`` again with its next
  heartbeat, and a queen restarted from nothing learns every hive again the same way.
* A worker the queen has just spawned is ``noted`` so that the requests waiting for it can use it
  before the hive's heartbeats say it is ready; the first heartbeat that reports it in a state
  other than ``starting`` (or the timeout) ends that.
* The in-flight count per worker is the queen's own: requests it is relaying to that worker now.
  Queen replicas (``rbee_queen.replicas``) add the others' counts (``set_shared_in_flight``), so
  "least busy" counts every replica's requests; ``in_flight`` stays this queen's own.
* A worker *incarnation* (hive, id, url, pid) is probed on ``/health`` before its first use; a
  failed probe or a broken connection keeps that incarnation out of routing. A restarted worker
  has a new pid and url, so it is probed afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs

from jobproto import RequestError
from rbee_contracts.hive_ops import ModelList
from rbee_contracts.lifecycle import HiveState, WorkerState
from rbee_contracts.queen_results import HiveDetail, HiveView, QueenWorkerRecord
from rbee_contracts.records import Heartbeat, WorkerRecord, parse_heartbeat
from rbee_contracts.values import is_http_url

__all__ = [
    "HiveRecord",
    "HiveRegistry",
    "Incarnation",
    "Registration",
    "RegistryListener",
    "WorkerKey",
    "WorkerView",
    "parse_registration",
    "url_host",
]

WorkerKey = tuple[str, str]  # (hive_id, worker_id)
Incarnation = tuple[str, str, str | None, int | None]  # (hive_id, worker_id, url, pid)


# -- the registration body -------------------------------------------------------------------------


@attrs.frozen
class Registration:
    """One accepted heartbeat: the hive's id (from the path) and what it said."""

    hive_id: str
    heartbeat: Heartbeat

    @property
    def workers(self) -> list[WorkerRecord]:
        return self.heartbeat.workers


def parse_registration(hive_id: str, body: Any) -> Registration:
    """Validate a ``PUT /v1/hives/{hive_id}`` body (``rbee_contracts.records.Heartbeat``), or
    raise a 422 ``RequestError`` naming a field.

    Unknown keys are ignored on purpose: a heartbeat from a newer hive must not be refused by an
    older queen (the hive would drop out of routing).
    """
    if isinstance(body, Mapping):
        # the path's id where the body names none, and a valid URL without its trailing slash,
        # put in before the one structuring (a refused URL is echoed as sent)
        url = body.get("url")
        body = {
            **body,
            "hive_id": hive_id if body.get("hive_id") is None else body["hive_id"],
            **({"url": url.rstrip("/")} if isinstance(url, str) and is_http_url(url) else {}),
        }
    return Registration(hive_id, parse_heartbeat(hive_id, body))


# -- the registry ----------------------------------------------------------------------------------


@attrs.define
class HiveRecord:
    """A registered hive: its last heartbeat, when it was heard, and the workers the queen
    spawned on it that its heartbeats have not reported yet."""

    hive_id: str
    heartbeat: Heartbeat
    first_seen: float
    last_seen: float
    #: the name of the credential that registered it (None: registered without authentication)
    owner: str | None = None
    #: workers the queen spawned that the hive has not reported yet: id -> (record, noted at)
    noted: dict[str, tuple[WorkerRecord, float]] = attrs.field(factory=dict)

    @property
    def url(self) -> str:
        return self.heartbeat.url

    def workers(self) -> list[WorkerRecord]:
        # what the queen noted is newer than the heartbeat it arrived after (see register)
        reported = [w for w in self.heartbeat.workers if w.worker_id not in self.noted]
        return reported + [rec for rec, _ in self.noted.values()]


@attrs.frozen
class WorkerView:
    """A worker as the scheduler sees it: the hive's record plus the queen's own knowledge."""

    hive_id: str
    hive_state: HiveState
    record: WorkerRecord
    in_flight: int
    #: True: passed a /health probe; False: failed one (or broke); None: not probed yet
    healthy: bool | None

    @property
    def key(self) -> WorkerKey:
        return (self.hive_id, self.record.worker_id)

    @property
    def incarnation(self) -> Incarnation:
        return (self.hive_id, self.record.worker_id, self.record.url, self.record.pid)

    @property
    def worker_id(self) -> str:
        return self.record.worker_id

    @property
    def url(self) -> str | None:
        return self.record.url

    @property
    def routable(self) -> bool:
        return (
            self.hive_state == HiveState.UP
            and self.record.state == WorkerState.READY
            and self.record.url is not None
            and self.healthy is not False
        )


class RegistryListener(Protocol):
    """Told of the registry's changes that other queen replicas must hear of."""

    def hive_removed(self, hive_id: str) -> None: ...

    def in_flight_changed(self) -> None: ...


class HiveRegistry:
    """Hives by id, with liveness computed from ``now`` and the queen's in-flight counts."""

    def __init__(self, timeout_beats: int = 3) -> None:
        self.timeout_beats = timeout_beats
        self._hives: dict[str, HiveRecord] = {}
        self._in_flight: dict[WorkerKey, int] = {}
        #: the other queen replicas' in-flight counts, added to this queen's own for routing
        self._shared_in_flight: Mapping[WorkerKey, int] = {}
        #: told of removals and in-flight changes (``rbee_queen.replicas``); None: no replicas
        self.listener: RegistryListener | None = None
        self._health: dict[Incarnation, bool] = {}
        #: (hive_id, model) -> size in bytes, learnt from the hives' model listings
        self._sizes: dict[tuple[str, str], int] = {}
        #: (hive_id, requested model) -> the name the hive gave it when it downloaded it
        self._aliases: dict[tuple[str, str], str] = {}

    # -- hives -------------------------------------------------------------------------------------

    def register(self, registration: Registration, now: float, *, owner: str | None = None) -> bool:
        """Register or heartbeat (idempotent); True when the hive was not known before.

        ``owner`` is the caller's credential (principal name; None without authentication). A
        hive registered by one credential refuses heartbeats from another: 403 ``hive_id_taken``;
        one whose URL names another host than its first did: 403 ``hive_address_changed``.
        """
        hive = self._hives.get(registration.hive_id)
        if hive is None:
            self._hives[registration.hive_id] = HiveRecord(
                registration.hive_id, registration.heartbeat, now, now, owner
            )
            return True
        if hive.owner is not None and owner != hive.owner:
            raise RequestError(
                403,
                "hive_id_taken",
                f"hive id {registration.hive_id!r} is registered with another credential",
                field="hive_id",
            )
        pinned, host = url_host(hive.url), url_host(registration.heartbeat.url)
        if host != pinned:
            raise RequestError(
                403,
                "hive_address_changed",
                f"hive {registration.hive_id!r} is registered at {pinned!r}, not {host!r}: stop"
                " it there (hive_stop) before it runs elsewhere",
                field="url",
            )
        hive.heartbeat = registration.heartbeat
        hive.last_seen = now
        # A noted worker gives way to the hive's word once a heartbeat reports it, unless that
        # heartbeat still says ``starting``: it was sent before the spawn finished (it crossed
        # the spawn's answer on the way), and believing it would start a second worker.
        settled = {w.worker_id for w in registration.workers if w.state != WorkerState.STARTING}
        horizon = self.timeout_beats * registration.heartbeat.heartbeat_interval
        hive.noted = {
            wid: (rec, at)
            for wid, (rec, at) in hive.noted.items()
            if wid not in settled and now - at <= horizon
        }
        live = {(hive.hive_id, w.worker_id, w.url, w.pid) for w in hive.workers()}
        self._health = {
            inc: ok for inc, ok in self._health.items() if inc[0] != hive.hive_id or inc in live
        }
        return False

    def remove(self, hive_id: str) -> None:
        """Forget a hive (it was stopped): its id and its address are free again."""
        if self._hives.pop(hive_id, None) is not None and self.listener is not None:
            self.listener.hive_removed(hive_id)

    def get(self, hive_id: str) -> HiveRecord:
        return self._hives[hive_id]

    def __contains__(self, hive_id: object) -> bool:
        return hive_id in self._hives

    def hives(self) -> list[HiveRecord]:
        return sorted(self._hives.values(), key=lambda h: h.hive_id)

    def state(self, hive: HiveRecord, now: float) -> HiveState:
        silent = now - hive.last_seen
        if silent <= self.timeout_beats * hive.heartbeat.heartbeat_interval:
            return HiveState.UP
        return HiveState.DOWN

    # -- workers -----------------------------------------------------------------------------------

    def note_worker(self, hive_id: str, record: WorkerRecord, now: float) -> None:
        """A worker the queen spawned: usable at once, until the hive's heartbeats take over."""
        hive = self._hives.get(hive_id)
        if hive is not None:
            hive.noted[record.worker_id] = (record, now)

    def forget_worker(self, hive_id: str, worker_id: str) -> None:
        """A worker stopped through the queen: out of routing before the next heartbeat says so."""
        hive = self._hives.get(hive_id)
        if hive is None:
            return
        hive.noted.pop(worker_id, None)
        kept = [w for w in hive.heartbeat.workers if w.worker_id != worker_id]
        hive.heartbeat = attrs.evolve(hive.heartbeat, workers=kept)

    def workers(self, now: float) -> list[WorkerView]:
        out = []
        for hive in self.hives():
            state = self.state(hive, now)
            for record in hive.workers():
                key = (hive.hive_id, record.worker_id)
                inc = (hive.hive_id, record.worker_id, record.url, record.pid)
                out.append(
                    WorkerView(
                        hive.hive_id,
                        state,
                        record,
                        self._in_flight.get(key, 0) + self._shared_in_flight.get(key, 0),
                        self._health.get(inc),
                    )
                )
        return out

    def acquire(self, key: WorkerKey) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        if self.listener is not None:
            self.listener.in_flight_changed()

    def release(self, key: WorkerKey) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        if self.listener is not None:
            self.listener.in_flight_changed()

    def own_in_flight(self) -> dict[WorkerKey, int]:
        """This queen's in-flight counts, by worker (a copy)."""
        return dict(self._in_flight)

    def set_shared_in_flight(self, counts: Mapping[WorkerKey, int]) -> None:
        """The other replicas' in-flight counts, by worker (replacing the last ones)."""
        self._shared_in_flight = counts

    def in_flight(self, key: WorkerKey | None = None) -> int:
        """Requests the queen is relaying to one worker now (to all of them without ``key``)."""
        if key is None:
            return sum(self._in_flight.values())
        return self._in_flight.get(key, 0)

    def set_health(self, incarnation: Incarnation, healthy: bool) -> None:
        self._health[incarnation] = healthy

    # -- models ------------------------------------------------------------------------------------

    def learn_models(self, hive_id: str, listing: ModelList) -> None:
        """Remember model sizes from a ``model_list`` result."""
        for info in listing.models:
            self._sizes[(hive_id, info.name)] = info.size_bytes

    def model_size(self, hive_id: str, model: str) -> int | None:
        return self._sizes.get((hive_id, self.local_name(hive_id, model)))

    def set_alias(self, hive_id: str, model: str, local_name: str) -> None:
        if local_name != model:
            self._aliases[(hive_id, model)] = local_name

    def local_name(self, hive_id: str, model: str) -> str:
        """The name ``hive_id`` knows ``model`` by (a download may have named it differently)."""
        return self._aliases.get((hive_id, model), model)

    # -- views -------------------------------------------------------------------------------------

    def worker_record(self, view: WorkerView) -> QueenWorkerRecord:
        return QueenWorkerRecord(
            **attrs.asdict(view.record, recurse=False),
            hive_id=view.hive_id,
            hive_state=view.hive_state,
            in_flight=view.in_flight,
            healthy=view.healthy,
        )

    def reported_worker(self, hive_id: str, record: WorkerRecord, now: float) -> QueenWorkerRecord:
        """A worker record hive ``hive_id`` sent (``worker_list``), with the queen's knowledge."""
        state = self.state(self._hives[hive_id], now)
        view = WorkerView(
            hive_id,
            state,
            record,
            self._in_flight.get((hive_id, record.worker_id), 0)
            + self._shared_in_flight.get((hive_id, record.worker_id), 0),
            self._health.get((hive_id, record.worker_id, record.url, record.pid)),
        )
        return self.worker_record(view)

    def hive_view(self, hive: HiveRecord, now: float) -> HiveView:
        """A hive for users (``status``)."""
        reg = hive.heartbeat
        return HiveView(
            hive_id=hive.hive_id,
            url=reg.url,
            state=self.state(hive, now),
            last_seen=_timestamp(hive.last_seen),
            seconds_since_seen=round(max(0.0, now - hive.last_seen), 3),
            heartbeat_interval=reg.heartbeat_interval,
            capabilities=dict(reg.capabilities),
            models=list(reg.models),
            free_memory_bytes=reg.free_memory_bytes,
        )

    def hive_detail(
        self, hive: HiveRecord, now: float, workers: Iterable[WorkerView]
    ) -> HiveDetail:
        """A hive with its workers among ``workers`` (``hive_list``, ``GET /v1/hives/{id}``)."""
        return HiveDetail(
            **attrs.asdict(self.hive_view(hive, now), recurse=False),
            workers=[self.worker_record(w) for w in workers if w.hive_id == hive.hive_id],
        )

    def snapshot(self, now: float) -> list[HiveDetail]:
        workers = self.workers(now)
        return [self.hive_detail(h, now, workers) for h in self.hives()]


def url_host(url: str) -> str:
    """The host of ``url`` as the registry compares hosts: lower case, an IPv6 literal without
    its brackets (``urlsplit``'s ``hostname``)."""
    return urlsplit(url).hostname or ""


def _timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"

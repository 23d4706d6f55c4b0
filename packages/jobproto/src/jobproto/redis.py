"""Jobs in Redis, shared by every replica of a service: ``RedisStore`` (extra ``redis``).

    from jobproto.redis import RedisStore

    store = RedisStore("redis://localhost:6379/0", namespace="my-service", lease_ttl=5.0)

Each job is a hash, and its event log a stream whose entry ids are ``"{seq}-1"``: a client's
``Last-Event-ID: N`` reads from entry ``N-1`` on, on any replica. Streams are bounded as an
``EventLog`` is (trimmed to ``max_log_events`` once over it by a sixteenth, exactly, so a
replica's view of the log keeps what Redis keeps); a reader whose cursor fell before the first
entry kept gets a ``Gap``, as from an ``EventLog``. Every change that touches more than one
key (create with its idempotency key, claim, append with fencing and the terminal
transition, ending a queued job, adopting, renewing leases) is one Lua script, so it happens
once across replicas: one claim, one terminal event, ever.

Keys, under the namespace ``ns``:

=============================  ======  =====================================================
``{ns}:job:{id}``              hash    op, body, corr, created, idx, trace, key, state, started,
                                       finished, result, error, reason (JSON), last (the last
                                       stored seq), owner, ckpt (the owner's checkpoint, JSON)
``{ns}:log:{id}``              stream  entry ``{seq}-1``: ``f`` the frame, ``t`` "1" if terminal
``{ns}:seq``                   string  the counter behind each job's ``idx`` (list order)
``{ns}:jobs``                  zset    id by idx: the list, newest first
``{ns}:queued``                zset    id by created_at: what the sweep may expire
``{ns}:running``               zset    ids of running jobs: where ``orphans`` looks
``{ns}:finished``              zset    id by finished_at: what the sweep drops from the list
``{ns}:lease:{id}``            string  the owner, ``PX lease_ttl``: gone means the owner died
``{ns}:key:{idempotency key}`` string  JSON ``{fp, job}``
``{ns}:nudge:{replica}``       stream  wakes that replica's ``follow``
``{ns}:rec:{kind}:{key}``      string  ``put_record`` values (``PX ttl``), indexed by
                                       ``{ns}:recs:{kind}`` (zset, key by expiry)
=============================  ======  =====================================================

A finished job's hash, log and idempotency key expire ``retention`` seconds after it finished
(Redis does the dropping). Every Redis error (unreachable, timeout, loading, read-only, out of
memory, busy) becomes ``StoreUnavailable`` (HTTP 503): its client-facing message names the kind
of error only; the detail (``StoreUnavailable.detail``, for logs) names the redacted URL and
never its password (``redacted_url``).

What a stream delivers exactly once is what Redis keeps: that holds across a restart of Redis
only with ``appendonly yes`` and ``appendfsync always`` (an acknowledged append is on disk), and
under memory pressure only with ``maxmemory-policy noeviction`` (a full Redis refuses writes,
which the service answers 503, rather than evicting jobs and logs). With weaker settings a
restart or an eviction may lose the newest events, or whole jobs.

Blocking reads (``wait``, ``follow``, subscriptions) use a connection pool of their own, so a
read that waits never holds up a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ._extras import missing_extra

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.exceptions import RedisError
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "redis", "jobproto.redis") from exc

from ._correlation import new_job_id
from ._errors import IdempotencyConflict, JobNotFound, LocalProtocolError
from ._events import Cancelled, Expired, Failed, Gap, JobEvent, TerminalEvent
from ._log import EventLog
from ._registry import _FINISH, Job, JobRegistry
from ._states import JobState, next_state
from ._wire import encode_frame
from .store import StoreUnavailable, expired_reason

__all__ = ["RedisStore", "redacted_url"]

#: how long a subscription waits for a message before it looks at its connection again
PUBSUB_POLL = 5.0


def _split_credentials(url: str) -> tuple[str, str, str]:
    """``(scheme://, credentials, the rest)``: the credentials are everything after ``://`` up
    to the LAST ``@`` of the URL, whatever they hold (a password may hold ``/``, ``#``, ``?``
    or ``@`` unescaped, which a URL parser takes for the end of the authority)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    credentials, at, host = rest.rpartition("@")
    if not at:
        return scheme + sep, "", rest
    return scheme + sep, credentials, host


def redacted_url(url: str) -> str:
    """``url`` without its credentials: ``redis://user:pass@host:6379/0`` -> ``redis://host:6379/0``
    (a ``password`` query parameter is dropped too)."""
    head, _, rest = _split_credentials(url)
    try:
        parts = urlsplit(head + rest)
    except ValueError:
        return "<a Redis URL that does not parse>"
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = urlencode([(k, v) for k, v in query if k.lower() != "password"])
    # not urlunsplit: it drops the empty host of unix:///path (which is then no URL redis-py reads)
    out = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return out + (f"?{kept}" if kept else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _secrets(url: str) -> list[str]:
    """The password of ``url`` in every spelling an error could quote it in."""
    _, credentials, rest = _split_credentials(url)
    user, colon, password = credentials.partition(":")
    found = [password if colon else user]
    with contextlib.suppress(ValueError):
        found += [p for k, p in parse_qsl(urlsplit(rest).query) if k.lower() == "password"]
    return sorted({s for p in found for s in (p, unquote(p)) if s}, key=len, reverse=True)


# -- scripts ---------------------------------------------------------------------------------------
# KEYS name what a script changes; keys derived from a stored value (a job's idempotency key, the
# jobs of a renew) are built from the namespace in ARGV: one Redis, never a cluster.

_CREATE = """
if ARGV[2] ~= '' then
  local seen = redis.call('GET', KEYS[5])
  if seen then
    local s = cjson.decode(seen)
    if s['fp'] ~= ARGV[3] then return {'conflict'} end
    local h = redis.call('HGETALL', ARGV[9] .. ':job:' .. s['job'])
    if #h > 0 then return {'replay', s['job'], h} end
  end
end
local idx = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'op', ARGV[4], 'body', ARGV[5], 'corr', ARGV[6], 'created', ARGV[7],
  'idx', idx, 'trace', ARGV[8], 'key', ARGV[2], 'state', 'queued', 'last', 0)
redis.call('ZADD', KEYS[2], idx, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[5], cjson.encode({fp = ARGV[3], job = ARGV[1]}))
end
return {'created', idx}
"""

_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'state', 'owner')
local st = h[1]
if not st then return -1 end
-- claimed by this owner already (a retry whose first reply was lost): the same answer
if st == 'running' and h[2] == ARGV[1] then return redis.call('HGETALL', KEYS[1]) end
if st ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[2], 'owner', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: owner, after, maxlen, checkpoint ('' keeps it), end ('1'), state, finished, result,
# error, reason, retention ms, job id, namespace, frames...
_APPEND = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'state', 'last', 'key')
local n = #ARGV - 14
local skip = tonumber(ARGV[14])
-- this batch is stored already (a retry whose first reply was lost): written, as it was
if n > 0 and h[1] == ARGV[1] and tonumber(h[3]) == tonumber(ARGV[2]) + skip + n then return 1 end
if h[1] ~= ARGV[1] or h[2] ~= 'running' or tonumber(h[3]) ~= tonumber(ARGV[2]) then
  return 0
end
-- seqs after + 1 .. after + skip were lost before they were stored: readers get a gap there
local seq = tonumber(ARGV[2]) + skip
for i = 15, #ARGV do
  seq = seq + 1
  if ARGV[5] == '1' and i == #ARGV then
    redis.call('XADD', KEYS[2], seq .. '-1', 'f', ARGV[i], 't', '1')
  else
    redis.call('XADD', KEYS[2], seq .. '-1', 'f', ARGV[i])
  end
end
-- EventLog's rule, exactly: trim to maxlen once over maxlen + maxlen // 16
local maxlen = tonumber(ARGV[3])
if redis.call('XLEN', KEYS[2]) > maxlen + math.max(1, math.floor(maxlen / 16)) then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', maxlen)
end
redis.call('HSET', KEYS[1], 'last', seq)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'ckpt', ARGV[4]) end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'state', ARGV[6], 'finished', ARGV[7], 'result', ARGV[8],
    'error', ARGV[9], 'reason', ARGV[10])
  redis.call('ZREM', KEYS[3], ARGV[12])
  redis.call('DEL', KEYS[4])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[12])
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
  redis.call('PEXPIRE', KEYS[2], ARGV[11])
  if h[4] and h[4] ~= '' then redis.call('PEXPIRE', ARGV[13] .. ':key:' .. h[4], ARGV[11]) end
end
return 1
"""

# ARGV: frame, state, now, reason, retention ms, job id, namespace, maxlen
_END_QUEUED = """
local h = redis.call('HMGET', KEYS[1], 'state', 'key')
if not h[1] then return -1 end
if h[1] ~= 'queued' then return 0 end
redis.call('XADD', KEYS[2], '1-1', 'f', ARGV[1], 't', '1')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished', ARGV[3], 'reason', ARGV[4],
  'result', 'null', 'error', 'null', 'last', 1)
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if h[2] and h[2] ~= '' then redis.call('PEXPIRE', ARGV[7] .. ':key:' .. h[2], ARGV[5]) end
return redis.call('HGETALL', KEYS[1])
"""

_ADOPT = """
local h = redis.call('HMGET', KEYS[1], 'state', 'owner')
if h[1] ~= 'running' then return 0 end
-- adopted by this owner already (a retry whose first reply was lost): the same answer
local mine = h[2] == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[1]
if not mine and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: owner, lease ms, namespace, job ids...; returns {lost ids, {id, cancel reason, ...}}
_RENEW = """
local lost = {}
local cancels = {}
for i = 4, #ARGV do
  local h = redis.call('HMGET', ARGV[3] .. ':job:' .. ARGV[i], 'owner', 'state', 'cancel')
  if h[1] == ARGV[1] and h[2] == 'running' then
    redis.call('SET', ARGV[3] .. ':lease:' .. ARGV[i], ARGV[1], 'PX', ARGV[2])
    if h[3] then
      cancels[#cancels + 1] = ARGV[i]
      cancels[#cancels + 1] = h[3]
    end
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return {lost, cancels}
"""

# ARGV: owner, namespace, job ids...: the leases of a replica that stops, given up at once (the
# jobs stay running: another replica adopts them at its next look instead of after the TTL)
_RELEASE = """
local n = 0
for i = 3, #ARGV do
  local lease = ARGV[2] .. ':lease:' .. ARGV[i]
  if redis.call('GET', lease) == ARGV[1] then
    redis.call('DEL', lease)
    n = n + 1
  end
end
return n
"""

# A cancel request is kept with the running job it names: its owner sees it at its next renew
# (and hears it at once through the channel), and a replica that adopts the job honours it.
_REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
return 1
"""

_ORPHANS = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. ':lease:' .. id) == 0 then
    if redis.call('EXISTS', ARGV[1] .. ':job:' .. id) == 0 then
      redis.call('ZREM', KEYS[1], id)  -- the job is gone (expired, or lost by Redis)
    else
      out[#out + 1] = id
    end
  end
end
return out
"""

# Record expiry by Redis's clock (TIME), not the replicas' (theirs may disagree).
_PUT_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

_RECORDS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local value = redis.call('GET', ARGV[1] .. key)
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
"""


#: JSON for a Redis field: ASCII only, so a string with a lone surrogate (legal JSON, which
#: a create body may hold, but not UTF-8, which Redis's client writes) is stored as its escape
_STORED = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
_stored = _STORED.encode


class RedisStore:
    """A ``JobStore`` on Redis, shared by every replica that uses the same URL and namespace.

    ``max_log_events`` bounds each job's stream as an ``EventLog`` bounds its frames,
    ``lease_ttl`` is how long a running job stays its owner's without a ``renew``, ``retention``
    how long a finished job is kept (the service sets it to its own retention before it runs jobs).
    ``max_connections`` bounds each of its connection pools; a command waits up to
    ``pool_timeout`` for a free connection (then ``StoreUnavailable``). Renewing leases has
    connections of its own, with a timeout of ``lease_ttl / 4`` (at least 0.25 s) and no
    retry: a renew every ``lease_ttl / 3`` plus its timeout stays within the lease.

    Exactly once across a Redis restart or under memory pressure needs Redis configured for
    it: ``appendonly yes``, ``appendfsync always`` and ``maxmemory-policy noeviction`` (see the
    module docstring).
    """

    shared = True

    def __init__(
        self,
        url: str,
        namespace: str = "jobproto",
        *,
        max_log_events: int = 10_000,
        lease_ttl: float = 5.0,
        retention: float = 3600.0,
        max_connections: int = 64,
        pool_timeout: float = 5.0,
    ) -> None:
        if max_log_events < 1:
            raise LocalProtocolError("max_log_events must be at least 1")
        self.namespace = namespace
        self.max_log_events = max_log_events
        self.lease_ttl = lease_ttl
        self.retention = retention
        self.url = redacted_url(url)
        self._secrets = _secrets(url)
        # One quick retry rides out a dropped connection (Redis restarted: the pool's
        # connections are dead, a fresh one works); past it StoreUnavailable comes at once.
        # Every script a retry may run twice takes a second run from the same caller as the
        # first (claim, append, adopt: the same answer, nothing written twice).
        retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), 1)
        common: dict[str, Any] = {"socket_connect_timeout": 2.0, "retry": retry}

        def pool(size: int, **kwargs: Any) -> aioredis.Redis:
            # a bounded pool whose callers wait for a free connection (up to pool_timeout,
            # then StoreUnavailable), not one that fails every command past its size
            connections = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=size, timeout=pool_timeout, **{**common, **kwargs}
            )
            return aioredis.Redis.from_pool(connections)  # closed with the client

        try:
            self._redis = pool(max_connections, socket_timeout=5.0)
        except ValueError:
            # redis-py's message quotes what it misread, which may be part of the password
            raise LocalProtocolError(
                f"the Redis URL {self.url} does not parse (percent-encode its password)"
            ) from None
        # blocking reads (XREAD BLOCK, SUBSCRIBE) wait as long as asked: no socket timeout, but
        # keepalives and a health check, so a connection gone half-open is noticed
        self._blocking = pool(
            max_connections, socket_timeout=None, socket_keepalive=True, health_check_interval=10
        )
        # Lease renewal has connections of its own, so a busy pool never holds it up, and a
        # timeout well within the lease (no retry): a renew that cannot answer in time is
        # tried again by the caller while the lease still holds.
        quick = max(0.25, lease_ttl / 4)  # (a floor for the short leases of tests)
        self._leases = pool(
            2,
            socket_timeout=quick,
            socket_connect_timeout=quick,
            retry=Retry(NoBackoff(), 0),
        )
        self._create = self._redis.register_script(_CREATE)
        self._claim = self._redis.register_script(_CLAIM)
        self._append = self._redis.register_script(_APPEND)
        self._end_queued = self._redis.register_script(_END_QUEUED)
        self._adopt = self._redis.register_script(_ADOPT)
        self._renew = self._leases.register_script(_RENEW)
        self._release = self._leases.register_script(_RELEASE)
        self._request_cancel = self._redis.register_script(_REQUEST_CANCEL)
        self._orphans = self._redis.register_script(_ORPHANS)
        self._put_record = self._redis.register_script(_PUT_RECORD)
        self._records = self._redis.register_script(_RECORDS)
        # replica -> the last nudge entry its follow() has seen
        self._nudged: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, namespace={self.namespace!r})"

    # -- keys and errors ---------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Redis failing to answer becomes ``StoreUnavailable``, its message free of secrets."""
        try:
            yield
        except (RedisError, OSError) as exc:
            # every error Redis answers (unreachable, timeout, loading, read-only, out of
            # memory, busy with a script...) is the store being unavailable; the client is told
            # its kind, and only the log learns where and what (redacted)
            raise StoreUnavailable(type(exc).__name__, self._why(exc)) from exc

    def _why(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return f"{self.url}: {text}"

    @property
    def _retention_ms(self) -> int:
        return max(1, round(self.retention * 1000))

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease_ttl * 1000))

    # -- snapshots ---------------------------------------------------------------------------------

    def _job(self, job_id: str, raw: Any, params: Any = None) -> Job:
        """A snapshot ``Job`` from a hash (a dict, or HGETALL's flat list from a script)."""
        if isinstance(raw, list):
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        h = {k.decode(): v.decode() for k, v in raw.items()}
        last = int(h.get("last", "0"))
        state = JobState(h["state"])
        error = json.loads(h.get("error", "null"))
        reason = json.loads(h.get("reason", "null"))
        return Job(
            id=job_id,
            operation=h["op"],
            params=params,
            correlation_id=h["corr"],
            created_at=float(h["created"]),
            index=int(h["idx"]),
            log=EventLog(self.max_log_events, first_seq=last + 1),
            trace_headers=json.loads(h["trace"]),
            idempotency_key=h["key"] or None,
            state=state,
            started_at=float(h["started"]) if h.get("started") else None,
            finished_at=float(h["finished"]) if h.get("finished") else None,
            result=json.loads(h.get("result", "null")),
            error=None if error is None else Failed(error["code"], error["message"]),
            # a running job's: the cancel asked of its owner (``request_cancel``), if any
            cancel_reason=reason
            if reason is not None or state is not JobState.RUNNING
            else h.get("cancel"),
            subscribed=state is not JobState.QUEUED,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        with self._guard():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        await self._blocking.aclose()
        await self._leases.aclose()

    # -- the JobStore protocol ---------------------------------------------------------------------

    async def create(
        self,
        operation: str,
        body: Mapping[str, Any],
        params: Any,
        correlation_id: str,
        now: float,
        *,
        trace_headers: Mapping[str, str],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Job, bool]:
        job_id = new_job_id()
        key = idempotency_key or ""
        keys = [
            self._key("job", job_id),
            self._key("jobs"),
            self._key("queued"),
            self._key("seq"),
            self._key("key", key),
        ]
        args = [job_id, key, fingerprint, operation, _stored(dict(body)), correlation_id, repr(now)]
        args += [_stored(dict(trace_headers)), self.namespace]
        with self._guard():
            out = await self._create(keys=keys, args=args)
        tag = out[0].decode()
        if tag == "conflict":
            raise IdempotencyConflict(key)
        if tag == "replay":
            return self._job(out[1].decode(), out[2]), False
        job = Job(
            id=job_id,
            operation=operation,
            params=params,
            correlation_id=correlation_id,
            created_at=now,
            index=int(out[1]),
            log=EventLog(self.max_log_events),
            trace_headers=dict(trace_headers),
            idempotency_key=idempotency_key,
        )
        return job, True

    async def get(self, job_id: str) -> Job:
        with self._guard():
            raw = await self._redis.hgetall(self._key("job", job_id))
        if not raw:
            raise JobNotFound(job_id)
        return self._job(job_id, raw)

    async def body(self, job_id: str) -> dict[str, Any]:
        """The body the job was created with (its parameters: the service parses them)."""
        with self._guard():
            raw = await self._redis.hget(self._key("job", job_id), "body")
        if raw is None:
            raise JobNotFound(job_id)
        body: dict[str, Any] = json.loads(raw)
        return body

    async def has_key(self, idempotency_key: str) -> bool:
        with self._guard():
            return bool(await self._redis.exists(self._key("key", idempotency_key)))

    async def page(
        self, *, state: JobState | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]:
        high: str | int = JobRegistry._parse_cursor(cursor) - 1
        page: list[Job] = []
        batch = max(limit + 1, 64)
        while True:
            with self._guard():
                rows: Any = await self._redis.zrevrangebyscore(
                    self._key("jobs"), high, "-inf", start=0, num=batch, withscores=True
                )
                if not rows:
                    return page, None
                async with self._redis.pipeline(transaction=False) as pipe:
                    for member, _ in rows:
                        pipe.hgetall(self._key("job", member.decode()))
                    hashes: Any = await pipe.execute()
            gone = []
            for (member, _), raw in zip(rows, hashes, strict=True):
                job_id = member.decode()
                if not raw:  # expired after its retention: the list forgets it too
                    gone.append(job_id)
                    continue
                job = self._job(job_id, raw)
                if state is not None and job.state is not state:
                    continue
                if len(page) == limit:
                    return page, str(page[-1].index)
                page.append(job)
            if gone:
                with self._guard():
                    await self._redis.zrem(self._key("jobs"), *gone)
            high = f"({int(rows[-1][1])}"

    async def claim(self, job_id: str, owner: str, now: float) -> Job | None:
        keys = [
            self._key("job", job_id),
            self._key("queued"),
            self._key("running"),
            self._key("lease", job_id),
        ]
        with self._guard():
            out = await self._claim(keys=keys, args=[owner, repr(now), self._lease_ms, job_id])
        if out == -1:
            raise JobNotFound(job_id)
        return None if out == 0 else self._job(job_id, out)

    async def append(
        self,
        job_id: str,
        owner: str,
        after: int,
        frames: Sequence[bytes],
        *,
        checkpoint: Mapping[str, Any] | None = None,
        end: Job | None = None,
        skip: int = 0,
    ) -> bool:
        if skip < 0:
            raise LocalProtocolError(f"skip must be >= 0, not {skip}")
        keys = [
            self._key("job", job_id),
            self._key("log", job_id),
            self._key("running"),
            self._key("lease", job_id),
            self._key("finished"),
        ]
        ending: list[str] = ["", "", "", "", "", ""]
        if end is not None:
            if not frames or end.finished_at is None:
                raise LocalProtocolError("an end needs its terminal frame and finished_at")
            error = (
                None
                if end.error is None
                else {"code": end.error.code, "message": end.error.message}
            )
            ending = [
                "1",
                end.state.value,
                repr(end.finished_at),
                _stored(end.result),
                _stored(error),
                _stored(end.cancel_reason),
            ]
        ckpt = "" if checkpoint is None else _stored(dict(checkpoint))
        args: list[str | bytes | int] = [owner, after, self.max_log_events, ckpt, *ending]
        args += [self._retention_ms, job_id, self.namespace, skip, *frames]
        with self._guard():
            return bool(await self._append(keys=keys, args=args))

    async def end_queued(self, job_id: str, event: TerminalEvent, now: float) -> Job | None:
        state = next_state(JobState.QUEUED, _FINISH[event.TYPE])  # cancelled or expired only
        hash_key = self._key("job", job_id)
        with self._guard():
            corr: Any = await self._redis.hget(hash_key, "corr")
        if corr is None:
            raise JobNotFound(job_id)
        frame = encode_frame(JobEvent(1, job_id, corr.decode(), now, event))
        reason = event.reason if isinstance(event, (Cancelled, Expired)) else None
        keys = [hash_key, self._key("log", job_id), self._key("queued"), self._key("finished")]
        args = [frame, state.value, repr(now), _stored(reason), self._retention_ms, job_id]
        args += [self.namespace, self.max_log_events]
        with self._guard():
            out = await self._end_queued(keys=keys, args=args)
        if out == -1:
            raise JobNotFound(job_id)
        return None if out == 0 else self._job(job_id, out)

    async def read(
        self, job_id: str, after: int, limit: int | None = None
    ) -> tuple[Gap | None, list[bytes]]:
        with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(self._key("job", job_id), "last")
                pipe.xrange(self._key("log", job_id), f"{after + 1}-0", "+", count=limit)
                last_raw, entries = await pipe.execute()
        if last_raw is None:
            raise JobNotFound(job_id)
        last = int(last_raw)
        if after > last or after < 0:
            raise LocalProtocolError(f"cursor {after} is outside 0..{last}")
        if not entries:  # nothing after `after`, or (the log expired) nothing at all
            return (None if after == last else Gap(after, last + 1)), []
        first = _seq(entries[0][0])
        gap = Gap(after=after, first_available=first) if first > after + 1 else None
        # frames in a row, as from an EventLog: a hole further on (events its owner lost before
        # they were stored, ``append(skip=)``) is the next read's gap
        frames = []
        expected = first
        for entry_id, fields in entries:
            if _seq(entry_id) != expected:
                break
            frames.append(fields[b"f"])
            expected += 1
        return gap, frames

    async def wait(self, job_id: str, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        with self._guard():
            if not await self._redis.exists(self._key("job", job_id)):
                raise JobNotFound(job_id)
        # XREAD from an explicit id answers at once when the log already has a later entry:
        # nothing appended between the check above and the read is missed
        streams = {self._key("log", job_id): f"{after}-1"}
        block = max(1, round(timeout * 1000)) if timeout > 0 else None
        found = await self._xread(streams, block, count=1)
        return bool(found)

    async def sweep(self, now: float, subscribe_timeout: float, retention: float) -> list[str]:
        with self._guard():
            due: Any = await self._redis.zrangebyscore(
                self._key("queued"), "-inf", now - subscribe_timeout
            )
        expired = []
        for member in due:
            job_id = member.decode()
            try:
                job = await self.end_queued(job_id, Expired(expired_reason(subscribe_timeout)), now)
            except JobNotFound:
                with self._guard():
                    await self._redis.zrem(self._key("queued"), job_id)
                continue
            if job is not None:
                expired.append(job_id)
        with self._guard():
            gone = await self._redis.zrangebyscore(self._key("finished"), "-inf", now - retention)
            if gone:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._key("jobs"), *gone)
                    pipe.zrem(self._key("finished"), *gone)
                    await pipe.execute()
        return expired

    # -- leases: which replica runs a job ----------------------------------------------------------

    async def renew(self, owner: str, job_ids: Iterable[str]) -> set[str]:
        """Extend the lease of every job ``owner`` still runs; return the ids it no longer owns
        (another replica adopted them, or they ended): their runners must stop."""
        return (await self.renew_leases(owner, job_ids))[0]

    async def renew_leases(
        self, owner: str, job_ids: Iterable[str]
    ) -> tuple[set[str], dict[str, str]]:
        """``renew``, and the cancel requests kept for the jobs renewed: ``(lost ids, {job id:
        reason})``. It has connections of its own (a busy pool never delays it) and a timeout
        well within the lease."""
        ids = list(job_ids)
        if not ids:
            return set(), {}
        with self._guard():
            lost, cancels = await self._renew(
                keys=[], args=[owner, self._lease_ms, self.namespace, *ids]
            )
        asked = {k.decode(): v.decode() for k, v in zip(cancels[::2], cancels[1::2], strict=True)}
        return {m.decode() for m in lost}, asked

    async def release(self, owner: str, job_ids: Iterable[str]) -> int:
        """Give up the leases ``owner`` holds on ``job_ids`` (a replica shutting down, its runners
        stopped): the jobs stay running, and another replica adopts them at its next look for
        lapsed leases instead of after the TTL. The number of leases given up."""
        ids = list(job_ids)
        if not ids:
            return 0
        with self._guard():
            return int(await self._release(keys=[], args=[owner, self.namespace, *ids]))

    async def orphans(self, now: float) -> list[str]:
        """Running jobs whose lease lapsed: their owner stopped renewing (it died)."""
        with self._guard():
            out = await self._orphans(keys=[self._key("running")], args=[self.namespace])
        return [m.decode() for m in out]

    async def adopt(
        self, job_id: str, owner: str, now: float
    ) -> tuple[Job, Mapping[str, Any] | None] | None:
        """Take over a running job whose lease lapsed: ``(job, its checkpoint)``, or None when it
        is not an orphan (any more)."""
        keys = [self._key("job", job_id), self._key("lease", job_id)]
        with self._guard():
            out = await self._adopt(keys=keys, args=[owner, self._lease_ms])
        if out == 0:
            return None
        job = self._job(job_id, out)
        h = dict(zip(out[::2], out[1::2], strict=True))
        ckpt = h.get(b"ckpt")
        return job, (None if not ckpt else json.loads(ckpt))

    # -- cancel across replicas --------------------------------------------------------------------

    async def request_cancel(self, job_id: str, reason: str) -> None:
        """Ask whichever replica runs ``job_id`` to cancel it: kept with the job (its owner sees
        it at its next ``renew_leases``, an adopter gets it as the job's ``cancel_reason``) and
        published (every ``cancel_requests`` hears it at once)."""
        with self._guard():
            await self._request_cancel(keys=[self._key("job", job_id)], args=[reason])
        await self.publish("cancel", _stored({"job": job_id, "reason": reason}))

    async def cancel_requests(self) -> AsyncIterator[tuple[str, str]]:
        """``(job_id, reason)`` for each ``request_cancel`` of any replica, from subscribing on.

        An async generator holding a connection: close it (``contextlib.aclosing``)."""
        async for message in self.subscribe("cancel"):
            data = json.loads(message)
            yield data["job"], data["reason"]

    # -- following logs ----------------------------------------------------------------------------

    async def follow(
        self, cursors: Mapping[str, int], block: float, *, replica: str
    ) -> dict[str, list[bytes]]:
        """New frames of each job after its cursor, waiting up to ``block`` seconds for any.

        One ``XREAD BLOCK`` over every log and this replica's nudge stream: ``nudge(replica)``
        ends the wait at once (to follow a job added since). A job whose frames skip seqs lost
        some to trimming: the caller reads the seq of each frame (or uses ``read``).
        """
        nudge_key = self._key("nudge", replica)
        if replica not in self._nudged:
            try:
                async with asyncio.timeout(5.0):
                    with self._guard():
                        newest: Any = await self._blocking.xrevrange(nudge_key, "+", "-", count=1)
            except TimeoutError:
                raise StoreUnavailable("TimeoutError", f"{self.url}: no answer in 5 s") from None
            self._nudged[replica] = newest[0][0] if newest else b"0-0"
        streams: dict[str, str | bytes] = {
            self._key("log", job_id): f"{after}-1" for job_id, after in cursors.items()
        }
        streams[nudge_key] = self._nudged[replica]
        found = await self._xread(streams, max(1, round(block * 1000)))
        out: dict[str, list[bytes]] = {}
        prefix = self._key("log", "").encode()
        for key, entries in found:
            if key == nudge_key.encode():
                self._nudged[replica] = entries[-1][0]
            else:
                out[key[len(prefix) :].decode()] = [fields[b"f"] for _, fields in entries]
        return out

    async def mark_subscribed(self, job_id: str) -> None:
        """A stream waits for the queued ``job_id``: the sweep no longer expires it (as a
        subscribed job in one process), whichever replica's stream it is."""
        with self._guard():
            await self._redis.zrem(self._key("queued"), job_id)

    async def nudge(self, replica: str) -> None:
        """Wake ``replica``'s ``follow`` now."""
        key = self._key("nudge", replica)
        with self._guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"n": "1"}, maxlen=16, approximate=True)
                pipe.pexpire(key, 3_600_000)
                await pipe.execute()

    async def _xread(
        self, streams: Mapping[str, str | bytes], block: int | None, count: int | None = None
    ) -> list[Any]:
        # the socket has no timeout (it waits as long as asked): a server that stops answering
        # without closing the connection is caught here
        wait = 5.0 + (block or 0) / 1000
        try:
            async with asyncio.timeout(wait):
                with self._guard():
                    found: Any = await self._blocking.xread(
                        dict[Any, Any](streams), count=count, block=block
                    )
        except TimeoutError:
            raise StoreUnavailable("TimeoutError", f"{self.url}: no answer in {wait:g} s") from None
        return list(found or [])

    # -- shared records and messages ---------------------------------------------------------------

    async def put_record(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> None:
        """Store ``value`` under ``(kind, key)`` for ``ttl`` seconds (every replica's ``records``
        sees it until then)."""
        keys = [self._key("recs", kind), self._key("rec", kind, key)]
        with self._guard():
            await self._put_record(
                keys=keys, args=[key, _stored(dict(value)), max(1, round(ttl * 1000))]
            )

    async def records(self, kind: str) -> dict[str, Mapping[str, Any]]:
        """Every live record of ``kind``, by key."""
        with self._guard():
            out = await self._records(
                keys=[self._key("recs", kind)], args=[self._key("rec", kind, "")]
            )
        return {k.decode(): json.loads(v) for k, v in zip(out[::2], out[1::2], strict=True)}

    async def publish(self, channel: str, message: str) -> None:
        with self._guard():
            await self._redis.publish(self._key("chan", channel), message)

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        """The messages ``publish``ed on ``channel`` from now on (an async generator holding a
        connection of its own: close it, e.g. with ``contextlib.aclosing``)."""
        pubsub = self._blocking.pubsub()
        try:
            with self._guard():
                await pubsub.subscribe(self._key("chan", channel))
            while True:
                # a finite wait: the health check then pings a connection that went quiet, and
                # one gone half-open raises (the caller subscribes again) instead of hanging
                try:
                    async with asyncio.timeout(PUBSUB_POLL + 5.0):
                        with self._guard():
                            message = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=PUBSUB_POLL
                            )
                except TimeoutError:
                    raise StoreUnavailable("TimeoutError", f"{self.url}: no answer") from None
                if message is not None:
                    yield message["data"].decode()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _seq(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])

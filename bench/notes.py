"""The notes at the end of docs/benchmarks.md: what was changed to reach the figures, what was found
outside jobproto, and why the targets that are missed are missed. The tables above them are
regenerated on every run; these paragraphs are not, so they cite the tables, and any number of
their own says when and how it was taken."""

from __future__ import annotations

__all__ = ["NOTES"]

NOTES = """\
## Notes

### Changes made to reach these figures

Each was found with a profile (py-spy) of a worker or the queen under the relay load of
section 2 and checked against the code before it (for 1-4: flat-out relay, 100 streams x 1,000
tokens, three runs each, back to back, medians; for 5-7: section 2 run three times before and
after; all taken 2026-11-24 on this machine). All tests, `mypy --strict` and ruff pass with them.

1. **Waking subscribers** (`asgi/_service.py`). `JobHandle.notify()` replaced the job's
   `anyio.Event` with a new one on every event, and creating one costs a look-up of the running
   async library: a quarter of `emit()`'s time in a relaying queen. A stream with nothing to send
   now parks one future on the handle (`wait_change`) and `notify()` resolves the parked futures; an
   event emitted while every subscriber is busy sending costs a dict check.
2. **The stream loop** (`asgi/_stream.py`). It opened an anyio `fail_after` scope around every send
   and a `move_on_after` scope around every wait: now one cancel scope per stream whose deadline is
   set before a send and cleared after it (the final, empty body is now under the send timeout too),
   and the wait is the parked future with one timer. The disconnect watcher is a bare asyncio task
   that flags the stream and ends its wait, instead of an anyio task group (its cancel scopes, task
   handle and event: ~3 KiB of an idle stream's 21); the stream endpoint drops its `Request` once it
   has read the cursor. Behaviour is unchanged (disconnect still noticed at once on a quiet stream,
   keepalives, lag and send timeouts). With 1 and 2: worker CPU per relayed token 30 -> 18 us, queen
   52 -> 37 us, tokens/s through the queen 12,250 -> 16,960; idle stream 21.3 -> 17.8 KiB
   (tracemalloc, 500 streams).
3. **Encoding** (`_wire.py`). `json.dumps` with options builds a `JSONEncoder` per call: the
   encoder is built once (it keeps no state between calls). Timestamps are formatted once per
   millisecond (`lru_cache`), to exactly the text of before (checked on 1.2 million random
   timestamps and the rounding edge cases). `encode_frame` went from ~6 to ~4 us; section 6
   shows it at about 2x sse-starlette's encoder fed with `json.dumps`.
4. **`sniffio` is now a dependency of jobproto** (`packages/jobproto/pyproject.toml`, and one
   line in `uv.lock`). httpcore (under httpx) runs `import sniffio` in every lock and event it
   sets up and falls back to asyncio when that fails; since anyio 4.11 no longer depends on
   sniffio, nothing installed it, and a failed import is not cached: Python searches `sys.path`
   again each time, about 40 times per request (encode/httpcore#1102, PR #1103, not released).
   With sniffio installed, 200 httpx requests took 456,000 Python function calls instead of
   806,000, and the queen, which makes two requests per relayed job and reads every stream
   through httpcore, relayed ~25,000 instead of ~16,700 tokens/s at 100 streams (runs minutes
   apart, not back to back). Every rbee tier and the keeper benefit.

5. **Coalescing token deltas** (`Job.emit(merge=)`, `jobproto.concat_data`, docs/protocol.md
   §4.3). A data event emitted with a merge function joins the previous one while no subscriber
   has read it: the log's newest entry stays pending and is encoded once, when a reader reaches
   it. A subscriber that keeps up still gets every event on its own (the paced rows of section 2
   are unchanged by it); one that falls behind gets fewer, larger events, so the cost per token of
   every tier behind it falls as load rises instead of its lag growing. The worker's `infer`
   emits its deltas this way and the queen's relay (`relay(merge=)`) re-emits them this way.
   It moved the relay's throughput ratio at 100 streams from ~0.53x to ~0.7-0.8x, and lifted the
   direct path too (fewer events to write and to read).
6. **uvloop and httptools** (`jobproto[server]`, `jobproto.server.config()`/`run()`). uvicorn
   picks them when installed, but jobproto's `serve()` ran its own `asyncio.run` and so never used
   uvloop; every tier now runs through `jobproto.server.run()` on the loop uvicorn's config picks.
   Every server of this benchmark, the baselines included, runs on the same stack (see Machine).
7. **The queen's connection pools** (`rbee_queen/remote.py`). The queen relayed through one
   `httpx.AsyncClient` with httpx's default limit of 100 connections; a relayed stream holds one
   for its whole life, so beyond 100 streams relays queued, and httpcore's pool scans all its
   connections (idle ones quadratically) on every request that starts or ends: over 80 % of the
   queen's samples at 500 streams. Relays were then spread over pools of 32 (500 streams went
   from 0.14x to ~0.5-0.65x of direct); change 10 replaced those pools.
8. **The synthetic engine's pacing** read the clock twice and could ask anyio for a negative sleep
   under load, failing the job (found by this benchmark's paced worker; fixed).

Changes 9-14 were measured on 2026-12-03 on this machine while other work ran on it (load
average 5-12): their figures are CPU time of the process concerned (which the load moves far
less than wall time), from variants run alternately, back to back, as medians [min-max].

9. **Create and stream in one request** (docs/protocol.md §2.2.2; `asgi/_routes.py`,
   `JobClient.submit`). A `POST /v1/jobs` whose `Accept` asks for `text/event-stream` is answered
   `201` with the job's stream (a `created` block, then exactly what `GET sse_url` sends), and
   the request is the job's first subscriber. `JobClient.run`, the relay (every hop of the queen)
   and the keeper use it; a server that answers JSON gets the second request as before. Client
   CPU per small job (create + follow to the end): 5.4 -> 4.3 ms; server CPU per job 1.93 [1.80-
   2.27] -> 1.52 [1.10-1.57] ms; worker + queen CPU per relayed token at 100 streams 86 / 78.5 ->
   66 / 57.5 us (two runs each). Per event nothing changed (15.2 vs 15.5 us of client CPU): the
   stream is the same loop and the same reader. Section 3 has the wall-clock rows.
10. **The queen's transport** (`rbee_queen/remote.py`; new dependencies httpx-aiohttp and
   aiohttp). Every call from the queen to a hive or a worker goes through one `httpx.AsyncClient`
   whose transport is aiohttp's: httpx's API (so `JobClient` and the relay did not change), with
   aiohttp's C parser instead of h11 and a pool that hands out a connection without scanning the
   others, so the pools of 32 (change 7) are gone; the pool has no bound. On top of httpx-aiohttp
   0.2 the queen maps aiohttp's errors as httpcore reports them (a refused connection is a
   connect error, an answer that is no HTTP a protocol error, a bad chunk mid-stream breaks the
   stream instead of hanging it) with messages that never hold the request's headers (its token).
   Queen CPU per relayed token, flat out: 100 streams 19.0 [17.8-20.7] -> 15.7 [11.0-16.5] us,
   500 streams 64.4 [63.4-65.0] -> 43.6 [42.4-47.6] us; worker + queen at 500 streams 99.4 ->
   72.8 us (direct: 34.0).
11. **One timer per stream** (`asgi/_stream.py`): the fan-out straggler. Each stream armed a timer
   per wait (keepalive) and another per send (the send timeout, an anyio cancel scope's
   deadline) and cancelled both; a cancelled timer lives until the loop's next turn, so one event
   to 1,000 subscribers left ~5,000 objects alive together: ~7 collections per event (152 in
   section 4's 21 events; sse-starlette 22) and, every ~150, a full one (110-480 ms here). One
   fell in every run's 20 events, and that event reached all 1,000 late: 5 % of the pairs, the
   p99 (found with `gc.callbacks` in the server beside per-event latencies; with the collector
   off jobproto's p99 was already below sse-starlette's). Now one timer serves both deadlines,
   re-armed only when the nearest one moves earlier; a send past its deadline cancels the
   stream's own task, told from other cancels with `uncancel()` as `asyncio.timeout` does. Six
   runs each: collections 152 -> 23 per run, full ones 1 -> 0, server CPU 1.08-1.21 -> 0.61-0.75 s
   (sse-starlette 1.10-1.60 s).
12. **A disconnect callback instead of a watcher task** (`jobproto._http`, the
   `jobproto.disconnect` extension). `jobproto.server`'s protocol classes tell a stream when its
   connection is lost, so it needs no task waiting in `receive()` (under another server it keeps
   that task); their own per-connection state is in `__slots__` (added to uvicorn's instance
   dict, it made the dict grow past its shared size: ~1.2 KiB per connection). Idle stream at
   5,000 streams (section 5's method, back to back): 22.1 -> 20.7 KiB with change 11, 19.1 with
   the callback, 18.0 with the slots.
13. **The start-up heap is frozen** (`jobproto.server.run`: `gc.collect(); gc.freeze()` once the
   server listens, as vLLM's server does). The queen holds ~77,000 objects after start-up; every
   full collection walked them (60 ms of CPU each on the loaded machine, ~0 after). The queen's
   full-collection pauses over the relay runs: median ~119 ms (77-175) -> ~71 ms (39-113).
14. **Requests beyond `max_concurrency` wait in vLLM's own scheduler** (`rbee_worker.worker`,
   `engines/vllm.py`). At 32 concurrent requests the worker held the 24 beyond vLLM's 8
   sequences itself, so every finished sequence left a slot empty until the next request had
   passed the worker's admission, been tokenized and reached the engine core. The vllm engine now
   says it queues (`queues_requests`) and the admission hands it the queued requests at once
   (same bounds, `busy`, narration and counts). Engine-core CPU per round of 32 x 128 tokens:
   2,680 -> 2,185 ms direct to the worker, 3,085 -> 2,530 ms through the queen (vLLM's server
   2,480 / 2,125 ms in the same runs); side by side, tokens/s did not move beyond the noise.

Where the queue formed at 8 concurrent requests (section 7's question): timestamps at every tier
(the client's clock, each job's `created_at`/`started_at`, each tier's first data event) and
py-spy of the worker and the queen. The worker costs what vLLM's server costs: ~3 ms of CPU per
request to create the job, tokenize and hand it to vLLM (vLLM's server ~3.75 ms), and 7-30 ms
from its job to the first token, as on vLLM's server; rbee_worker's own code is 2-4 % of its
samples (the rest is vLLM's output handler and tokenizer, and the job's stream). The 8 requests
waited in the queen: 25-80 ms from its job's start to the worker's job, ~5 ms of queen CPU per
request, competing on two cores with the engine that is already generating the first requests'
tokens; its scheduler is under 1 % of its samples, the relay's HTTP client and the stream to the
client the rest, which changes 9 and 10 cut.

Tried and not kept (this round):

* **granian** (2.8.9, embedded) behind `jobproto.server`: server CPU per event of a jobproto
  stream, 100 streams x 500 events, four rounds alternating, 18.0 [16.4-20.0] us against 16.5
  [16.0-17.6] under uvicorn with httptools: a stream's cost is the app's, not the HTTP parser's.
  It also cannot keep `jobproto.server`'s guarantees: no transport to abort a frozen client's
  connection, its own 4xx answers instead of `HttpLimits`' 408/431 in the error shape, no hook to
  end open streams at exit.
* **A larger young-generation threshold** (700 -> 2,000 or 10,000): less collector time in all
  (1.34 -> 0.60 s over a relay run) but each young collection longer (gen-1 worst 7 -> 20-67 ms),
  the wrong way for a p99.
* **Passing relayed frames through without decoding them**: the profile of section 2 puts
  decoding the downstream envelope and re-emitting it at 1-2 % of the queen's samples each, while
  it would need the relayed `origin` stated once per job instead of per event (a protocol change
  every subscriber must follow); not done for that share.

Tried and not kept earlier: decoding the downstream stream in the relay with jobproto's own SSE
decoder instead of httpx-sse's three layers of async generators (section 6 shows the decoder
faster): no difference in the relay's CPU per token back to back, so httpx-sse stays.

### Found outside rbee (not changed)

* uvicorn's `send()` to a client that has gone returns silently (ASGI 2.4 allows raising
  `OSError`, uvicorn does not): a stream learns of a disconnect only from `receive()`, which is
  why a stream under another server keeps its disconnect watcher task; `jobproto.server` tells
  it through the `jobproto.disconnect` extension instead (change 12).
* httpcore's pool cost (change 7) and its failed `import sniffio` per lock (change 4) are
  httpcore's; the queen no longer goes through httpcore (change 10), the keeper and the other
  tiers' clients still do, with sniffio installed.
* httpx-aiohttp 0.2 reports a refused connection, and a peer that closes before answering, as
  `ConnectTimeout`, lets aiohttp's `ClientResponseError` (whose repr holds the request's headers)
  escape for an answer that is no HTTP, and with aiohttp 3.14 a bad chunk size after the body has
  started closes the connection without waking the body's reader; the queen's transport maps and
  wakes them itself (change 10).

### Targets missed, and why

This run's machine was slower than the one of earlier reports: section 6, which is CPU alone in
one process, ran at about 0.6x its earlier speed (encoding 1.26 million events/s against 2.16
million), and the baselines moved the same way (sse-starlette's streams in section 1: 30,600
against 39,600 events/s; section 2's direct path at 100 streams: 37,000 against 65,900
tokens/s). Ratios taken in the same run are comparable across reports; absolute milliseconds
are not.

* **Relay >= 0.9x direct throughput at 100 streams** (0.88x; at 500 streams 0.84x against the 0.8x
  target, met). Flat out, every process on the path is CPU-bound and the relayed path has one more
  on two shared cores: worker + queen spend 1.4-2.1x the CPU per token of the worker alone (section
  2's CPU rows); the queen's share is the "queen CPU per relayed token" row. The profile table of
  section 2 shows what is left of the queen's per-job cost after changes 9 and 10 (one request per
  hop, aiohttp's pool: 16-23 % and 9-14 % of its samples, against 21-25 % and 30-32 % for the create
  request and httpcore's pool alone before) and that sending to the client and the event loop's own
  wake-ups are now the largest shares: what a stream costs any jobproto server (section 1).
* **Added latency <= 0.25 ms p50 per token at one stream** (0.67 ms). At 50 tok/s each token
  crosses the queen on its own: a read, aiohttp's parser, httpx-sse, the envelope's decoding and
  re-encoding as an event of the queen's job, waking the stream, the send path and a write,
  plus one more process wake-up than the direct path. The target's 0.25 ms is what a Python
  relay that passes SSE bytes through untouched adds; jobproto's relay re-emits
  typed events with their own seq and origin, and passing frames through would need the origin
  stated once per relayed job (a protocol change) for the 1-2 % of the queen's samples that
  decoding and re-encoding take (section 2's profile).
* **Added latency <= 10 ms p99 per token at 100 streams** (59 ms; p50 5.4 ms). 100 paced
  streams put 5,000 tokens/s through the queen while the worker and the client (200 streams:
  both paths are read at once) share the same two cores, so a token waits whenever the queen is
  not the process on a core. What remains in the queen itself is its full garbage collections:
  after change 13 they still take 40-110 ms (what they walk is the run's own objects: the finished
  jobs kept for their retention time, with their logs), and one such pause delays every token
  relayed during it. Keeping finished logs as objects the collector does not track (their frames
  are bytes already; the entries around them are not) is the next step; not made here.
* **Idle stream <= 16 KiB** (18.1 KiB at 5,000 streams; 15.1 KiB at 1,000, within it). The
  floor row of section 5 (a raw ASGI endpoint in Starlette that sent its first frame and waits,
  no task) is 13.7 KiB at 5,000: a jobproto stream costs 4.4 KiB more, after changes 11 and 12
  took 4 KiB off. The largest single part of that is jobproto's correlation middleware, which
  keeps its `bind_job` context and frames for the stream's life (~1.7 KiB); the rest is the
  stream's own frame, its subscriber, its one timer and parked future.
* **(vLLM, tiny model) rbee <= 1.1x vLLM's time to first token at 8 concurrent requests**
  (1.45x, runs 1.06-2.51x; 21 ms added, against 1.6 ms at one request, met). Eight requests
  that arrive at once wait in the queen, which takes ~5 ms of CPU per request to create its job,
  route it, create the worker's job and start both streams, on two cores that the engine is
  already using to generate the first requests' tokens: the worker's own admission and its way to
  the engine cost what vLLM's server costs (the note above). On SmolLM2-135M-Instruct, where a
  token costs the engine tens of times more, the same comparison is 0.97x, and at 32 concurrent
  requests 1.00x on both models: the queen's fixed cost per request shows only where the engine's
  first token is nearly free.
"""

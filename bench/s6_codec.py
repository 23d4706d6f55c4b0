"""6. Codec: the sans-IO SSE encoder and decoder, beside sse-starlette's encoder and httpx-sse's
decoder.

In this process, no I/O: events/s over the same data (a jobproto ``data`` envelope of ~190
bytes). Encoding: ``jobproto.encode(data=, event=, id=)`` against sse-starlette's
``ServerSentEvent(...).encode()``; and jobproto's per-event log path, ``encode_frame`` (envelope +
JSON + frame), against ``json.dumps`` of the same envelope + sse-starlette. Decoding: the bytes of
10,000 events fed in 4 KiB chunks (and one event per chunk, as a slow stream arrives) to
``jobproto.SSEDecoder.feed`` against what httpx-sse does per response (an incremental UTF-8 decoder,
its line decoder, its event decoder), each producing every event.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable

from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder
from sse_starlette import ServerSentEvent as StarletteEvent

from jobproto import Data, JobEvent, SSEDecoder, encode, encode_frame

from ._ctx import Ctx
from ._report import Row, Section
from ._stats import ratio_stat, stat
from .servers import envelope, frame, token_payload

__all__ = ["run"]

JOB_ID = "job_0123456789abcdef0123456789abcdef"
CORRELATION_ID = "corr_0123456789abcdef0123"


def _rate(fn: Callable[[], int], min_seconds: float = 0.2) -> float:
    """Events per second of ``fn`` (which returns how many events it handled)."""
    events = 0
    started = time.perf_counter()
    while True:
        events += fn()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return events / elapsed


def _httpx_sse_decode(chunks: list[bytes]) -> int:
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    sse = HttpxSSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text_decoder.decode(chunk)):
            if sse.decode(line.rstrip("\n")) is not None:
                count += 1
    return count


def _jobproto_decode(chunks: list[bytes]) -> int:
    decoder = SSEDecoder()
    return sum(len(decoder.feed(chunk)) for chunk in chunks)


async def run(ctx: Ctx) -> Section:
    sec = Section(
        key="codec",
        title="6. Codec (sans-IO SSE)",
        ours_name="jobproto",
        base_name="sse-starlette's encoder, httpx-sse's decoder",
        method=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    batch = 1000
    datas = [envelope(i + 1, JOB_ID, CORRELATION_ID, token_payload(i)) for i in range(batch)]
    ids = [str(i + 1) for i in range(batch)]
    records = [
        JobEvent(i + 1, JOB_ID, CORRELATION_ID, time.time(), Data(token_payload(i)))
        for i in range(batch)
    ]
    dicts = [json.loads(d) for d in datas]

    def ours_encode() -> int:
        for d, i in zip(datas, ids, strict=True):
            encode(data=d, event="data", id=i)
        return batch

    def base_encode() -> int:
        for d, i in zip(datas, ids, strict=True):
            StarletteEvent(data=d, event="data", id=i, sep="\n").encode()
        return batch

    def ours_frame() -> int:
        for r in records:
            encode_frame(r)
        return batch

    def base_frame() -> int:
        for d, i in zip(dicts, ids, strict=True):
            StarletteEvent(
                data=json.dumps(d, ensure_ascii=False, separators=(",", ":")),
                event="data",
                id=i,
                sep="\n",
            ).encode()
        return batch

    stream = b"".join(frame(i + 1, JOB_ID, CORRELATION_ID, token_payload(i)) for i in range(10_000))
    big = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    single = [frame(i + 1, JOB_ID, CORRELATION_ID, token_payload(i)) for i in range(2000)]
    cases = [
        ("encode one event (data, event, id)", ours_encode, base_encode, "sse-starlette"),
        (
            "encode a log entry (envelope + JSON + frame)",
            ours_frame,
            base_frame,
            "json.dumps + sse-starlette",
        ),
        (
            "decode, 4 KiB chunks",
            lambda: _jobproto_decode(big),
            lambda: _httpx_sse_decode(big),
            "httpx-sse",
        ),
        (
            "decode, one event per chunk",
            lambda: _jobproto_decode(single),
            lambda: _httpx_sse_decode(single),
            "httpx-sse",
        ),
    ]
    assert _jobproto_decode(big) == _httpx_sse_decode(big) == 10_000
    for name, ours_fn, base_fn, base_name in cases:
        ours: list[float] = []
        base: list[float] = []
        for rep in range(ctx.repeats):
            for which in ("o", "b") if rep % 2 == 0 else ("b", "o"):
                if which == "o":
                    ours.append(_rate(ours_fn))
                else:
                    base.append(_rate(base_fn))
        sec.rows.append(
            Row(
                name,
                "events/s",
                stat(ours),
                stat(base),
                ratio_stat(ours, base),
                base_name=base_name,
            )
        )
        ctx.log(f"codec {name}: {stat(ours).median:,.0f} vs {stat(base).median:,.0f} events/s")
    return sec

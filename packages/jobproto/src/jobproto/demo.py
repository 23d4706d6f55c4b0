"""``python -m jobproto.demo``: two jobproto services and a job streamed into your terminal.

It starts, on loopback ports of their own, a "kitchen" service (operation ``cook``: narrates its
steps, reports progress and streams the recipe word by word as ``data`` events) and a "front"
service (operation ``order``: relays a ``cook`` job from the kitchen onto its own job). Then it acts
as a client: creates one ``order`` job at the front, streams it, and prints narration on stderr
and the streamed words on stdout. Halfway through it drops its own connection on purpose and
resumes with Last-Event-ID, to show that nothing is lost or repeated.

Options: ``--words N`` (default 40), ``--rate R`` words per second (default 20), ``--no-break``.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import aclosing
from typing import Any

import anyio
import attrs
import uvicorn

from . import Data, Narration, Operations, Progress, narrate, progress
from ._events import Gap, JobEvent
from ._narration import emit_data
from .asgi import ServiceSettings, create_app
from .client import JobClient
from .relay import relay
from .server import Server, bound_port

TEXT = (  # noqa: SIM905 - prose reads better than a list of words
    "Whisk two eggs with a pinch of salt. Melt butter in a pan over a low flame. Pour the eggs "
    "in and stir slowly, folding the curds from the edge to the centre. Take the pan off the heat "
    "while the eggs still shine; they finish cooking on the way to the plate. Serve on warm toast "
    "with chives and black pepper, and eat at once."
).split()


@attrs.frozen
class CookParams:
    words: int = attrs.field(default=40, validator=attrs.validators.in_(range(1, 1001)))
    rate: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))


@attrs.frozen
class OrderParams:
    words: int = attrs.field(default=40, validator=attrs.validators.in_(range(1, 1001)))
    rate: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))


def kitchen_operations() -> Operations:
    ops = Operations()

    @ops.operation("cook")
    async def cook(params: CookParams) -> dict[str, Any]:
        """Stream a recipe word by word."""
        narrate("cook_start", f"cooking {params.words} words at {params.rate:g} words/s")
        for i in range(params.words):
            emit_data({"text": TEXT[i % len(TEXT)] + " "})
            if i % 10 == 9 or i == params.words - 1:
                progress("cook", i + 1, params.words, unit="words")
            await anyio.sleep(1 / params.rate)
        narrate("cook_done", "plated")
        return {"words": params.words}

    return ops


def front_operations(kitchen_url: str) -> Operations:
    ops = Operations()

    @ops.operation("order")
    async def order(params: OrderParams) -> dict[str, Any]:
        """Order a dish: relay a cook job from the kitchen."""
        narrate("order_received", "sending the order to the kitchen")
        async with JobClient(kitchen_url) as kitchen:
            fields = {"words": params.words, "rate": params.rate}
            result = await relay(kitchen, "cook", fields, service="kitchen")
        narrate("order_served", "the kitchen is done")
        return {"served": True, "kitchen": result}

    return ops


async def _start(app: Any, tg: anyio.abc.TaskGroup) -> tuple[Server, str]:
    server = Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"), app.state.jobs
    )
    tg.start_soon(server.serve)
    with anyio.fail_after(10):
        while not server.started:
            await anyio.sleep(0.01)
    return server, f"http://127.0.0.1:{bound_port(server)}"


def _show(ev: JobEvent | Gap) -> None:
    if isinstance(ev, Gap):
        print(f"\n[gap] {ev.lost} events lost", file=sys.stderr)
        return
    where = f"{ev.origin.service}" if ev.origin is not None else "front"
    event = ev.event
    if isinstance(event, Data):
        print(event.payload.get("text", ""), end="", flush=True)
    elif isinstance(event, Narration):
        print(f"\n[{where} #{ev.seq}] {event.action}: {event.message}", file=sys.stderr)
    elif isinstance(event, Progress):
        print(
            f"\n[{where} #{ev.seq}] {event.current:g}/{event.total:g} {event.unit}", file=sys.stderr
        )


async def main(words: int, rate: float, break_stream: bool) -> int:
    async with anyio.create_task_group() as tg:
        kitchen, kitchen_url = await _start(
            create_app(kitchen_operations(), ServiceSettings(service_name="kitchen")), tg
        )
        front, front_url = await _start(
            create_app(front_operations(kitchen_url), ServiceSettings(service_name="front")), tg
        )
        print(f"kitchen on {kitchen_url}, front on {front_url}", file=sys.stderr)
        started = time.perf_counter()
        async with JobClient(front_url) as client:
            job = await client.create("order", {"words": words, "rate": rate})
            print(f"job {job.job_id} (correlation id {job.correlation_id})", file=sys.stderr)
            last = 0
            seen = 0
            if break_stream:
                async with aclosing(client.events(job.job_id)) as events:
                    async for ev in events:
                        _show(ev)
                        if isinstance(ev, JobEvent):
                            last, seen = ev.seq, seen + 1
                        if seen >= words // 2:
                            break
                print(
                    f"\n[demo] dropped the connection after seq {last}; resuming", file=sys.stderr
                )
            async with aclosing(client.events(job.job_id, after=last)) as events:
                async for ev in events:
                    _show(ev)
                    if isinstance(ev, JobEvent):
                        if ev.seq != last + 1:
                            print(f"\n[demo] out of order: {ev.seq} after {last}", file=sys.stderr)
                            return 1
                        last = ev.seq
            status = await client.status(job.job_id)
        elapsed = time.perf_counter() - started
        print(
            f"\n[demo] job {status.state}: {status.result} — {last} events, gap-free, "
            f"in {elapsed:.2f} s",
            file=sys.stderr,
        )
        kitchen.should_exit = front.should_exit = True
    return 0 if status.state == "succeeded" else 1


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobproto.demo", description=__doc__)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--no-break", action="store_true", help="do not drop the stream halfway")
    args = parser.parse_args(argv)
    return anyio.run(main, args.words, args.rate, not args.no_break)


if __name__ == "__main__":
    raise SystemExit(cli())

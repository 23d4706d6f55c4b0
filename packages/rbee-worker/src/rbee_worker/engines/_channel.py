"""A one-way channel of deltas from a generating thread to the task that consumes them.

The thread must never wait for the event loop: a busy loop (many streams to write) would
otherwise slow generation down token by token. So ``put`` appends under a lock and only wakes the
consumer when it is actually waiting, with one ``call_soon_threadsafe``; a consumer that falls
behind finds several deltas and takes them as one (the coalescing the protocol allows). The buffer
is bounded by the generation itself: at most ``max_tokens`` deltas, each one token.

The wake-up goes through the asyncio loop directly, as jobproto's ``JobHandle.emit`` does:
the worker is served by uvicorn on asyncio, and anyio's ``from_thread`` calls block the thread
until the loop has run them.
"""

from __future__ import annotations

import asyncio
import threading

import anyio

from .base import Delta, merge_deltas

__all__ = ["DeltaChannel"]


class DeltaChannel:
    """Create it in the event loop; ``put``/``close`` from one thread; iterate in one task."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._items: list[Delta] = []
        self._closed = False
        self._error: BaseException | None = None
        self._waiter: anyio.Event | None = None
        #: set by the consumer's side to ask the thread to stop between two tokens
        self.cancelled = threading.Event()

    # -- the thread's side ----------------------------------------------------------------------

    def put(self, delta: Delta) -> None:
        with self._lock:
            self._items.append(delta)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(waiter.set)

    def close(self, error: BaseException | None = None) -> None:
        """No more deltas; ``error`` is raised to the consumer after what was put before it."""
        with self._lock:
            self._closed = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(waiter.set)

    # -- the consumer's side --------------------------------------------------------------------

    def cancel(self) -> None:
        self.cancelled.set()

    def __aiter__(self) -> DeltaChannel:
        return self

    async def __anext__(self) -> Delta:
        while True:
            with self._lock:
                items, self._items = self._items, []
                closed, error = self._closed, self._error
                waiter = None
                if not items and not closed:
                    waiter = self._waiter = anyio.Event()
            if items:
                return merge_deltas(items)
            if error is not None:
                raise error
            if closed:
                raise StopAsyncIteration
            assert waiter is not None
            await waiter.wait()

"""The event log behind a job's stream: encoded frames by sequence number, bounded.

Each event is encoded once, when it is appended; every subscriber reads the same bytes. A
subscriber is a cursor (the last seq it has sent), not a queue, so fan-out costs nothing per
subscriber until it reads, and a slow subscriber holds no memory of its own. When the log is over
its bound, the oldest frames are dropped; a reader whose cursor points before what is retained
gets a ``Gap``.

The newest entry may be *pending*: appended with a function that makes its frame, called when a
reader first reaches it (or when the next entry is appended). Until then its owner may change what
it will encode (``Job`` merges data events into it while nobody has read it: coalescing).
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import LocalProtocolError
from ._events import Gap

__all__ = ["EventLog"]


class EventLog:
    """Frames for seqs ``first_seq .. last_seq`` (at least the last ``max_events`` appended)."""

    __slots__ = ("_first_seq", "_frames", "_max_events", "_pending", "_slack")

    def __init__(self, max_events: int = 10_000, first_seq: int = 1) -> None:
        """``first_seq`` above 1: the log continues one whose events up to ``first_seq - 1`` are
        held elsewhere (a job store), so its seqs and ``last_seq`` keep their meaning."""
        if max_events < 1:
            raise LocalProtocolError("max_events must be at least 1")
        if first_seq < 1:
            raise LocalProtocolError("first_seq must be at least 1")
        self._frames: list[bytes] = []
        self._first_seq = first_seq
        self._max_events = max_events
        # Trim in batches: dropping one frame per append would memmove the whole list every time.
        self._slack = max(1, max_events // 16)
        self._pending: Callable[[], bytes] | None = None

    @property
    def first_seq(self) -> int:
        """The oldest seq still retained (``last_seq + 1`` when nothing is)."""
        return self._first_seq

    @property
    def last_seq(self) -> int:
        """The seq of the newest event; 0 before the first."""
        return self._first_seq + len(self._frames) - 1

    @property
    def next_seq(self) -> int:
        return self.last_seq + 1

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def pending(self) -> bool:
        """Whether the newest entry is pending: no reader has reached it yet."""
        return self._pending is not None

    def append(self, frame: bytes) -> int:
        """Add the frame of event ``next_seq``; return its seq."""
        self._seal()
        self._frames.append(frame)
        self._trim()
        return self.last_seq

    def append_pending(self, make_frame: Callable[[], bytes]) -> int:
        """Add event ``next_seq``, its frame to be made by ``make_frame`` when first needed."""
        self._seal()
        self._frames.append(b"")
        self._pending = make_frame
        self._trim()
        return self.last_seq

    def _seal(self) -> None:
        if self._pending is not None:
            make_frame, self._pending = self._pending, None
            self._frames[-1] = make_frame()

    def _trim(self) -> None:
        if len(self._frames) > self._max_events + self._slack:
            drop = len(self._frames) - self._max_events
            del self._frames[:drop]
            self._first_seq += drop

    def skip_to(self, seq: int) -> None:
        """Drop every frame and continue at ``seq`` (beyond ``next_seq``): the events before it are
        gone, and a reader whose cursor is before it gets a ``Gap``. (A replica's copy of a log
        kept elsewhere, whose owner trimmed events the copy never had.)"""
        if seq <= self.next_seq:
            raise LocalProtocolError(f"skip_to({seq}) skips nothing: next seq {self.next_seq}")
        self._pending = None
        self._frames.clear()
        self._first_seq = seq

    def read(self, after: int, limit: int | None = None) -> tuple[Gap | None, list[bytes]]:
        """Frames of the events after seq ``after`` (at most ``limit``), and a gap if any were lost.

        ``after`` may not be beyond ``last_seq``: a cursor from the future is the caller's bug.
        """
        if after > self.last_seq or after < 0:
            raise LocalProtocolError(f"cursor {after} is outside 0..{self.last_seq}")
        gap = None
        if after < self._first_seq - 1:
            gap = Gap(after=after, first_available=self._first_seq)
            after = self._first_seq - 1
        start = after - self._first_seq + 1
        end = len(self._frames) if limit is None else min(len(self._frames), start + limit)
        if end == len(self._frames) and start < end:
            self._seal()
        return gap, self._frames[start:end]

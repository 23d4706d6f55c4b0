"""Reading a job's stream the way a client does: subscribe, hang up, resume, reconnect.

``follow`` reads into a ``View`` (``_model``): ``max_events`` events and then it hangs up, or to
the end. A stream may end before its terminal event (a lagging subscriber, §4.7); ``finish`` then
reconnects with ``Last-Event-ID`` set to the last event seen (a gap does not move it, §4.5), as a
client must, until the terminal event, a bounded number of times, and only where that is
legitimate (``may_end_early``), so a service that cuts streams for no reason is still caught.
"""

from __future__ import annotations

import httpx
from hypothesis import strategies as st

from ._model import JobRecord, View
from ._probe import CursorMode, StreamReader, expect

__all__ = ["finish", "follow", "open_stream", "resume_point"]

_MAX_RECONNECTS = 64


def open_stream(
    http: httpx.Client,
    job: JobRecord,
    after: int | None = None,
    mode: CursorMode = "query",
    timeout: float = 30.0,
) -> StreamReader:
    """Subscribe to ``job``; the answer is checked to be a stream (§4.1)."""
    reader = StreamReader(
        http, job.job_id, after=after, mode=mode, correlation_id=job.correlation_id, timeout=timeout
    )
    try:
        reader.check_opened()
    except BaseException:
        reader.close()
        raise
    return reader


def follow(
    http: httpx.Client,
    view: View,
    after: int | None = None,
    mode: CursorMode = "query",
    max_events: int | None = None,
    *,
    timeout: float = 30.0,
    may_end_early: bool = True,
) -> None:
    """Read ``view``'s job after ``after`` into ``view``: ``max_events`` events, or to the end
    (reconnecting when ``may_end_early``, else failing if the stream ends before the terminal)."""
    with open_stream(http, view.job, after, mode, timeout) as reader:
        view.connections += 1
        for item in reader.read(max_events):
            view.add(item)
        if view.finished:
            reader.expect_end()
    if max_events is None:
        finish(http, view, timeout, may_end_early)


def finish(http: httpx.Client, view: View, timeout: float, may_end_early: bool) -> None:
    """A stream ended before its terminal event: reconnect as a client must (§4.7, §10)."""
    job = view.job
    for _ in range(_MAX_RECONNECTS):
        if view.finished:
            return
        expect(may_end_early, f"stream of {job.job_id} ended before its terminal event")
        before = view.last_seen
        view.rewind(before)  # Last-Event-ID is the last event seen; a gap does not move it
        with open_stream(http, job, before, "header", timeout) as reader:
            view.connections += 1
            for item in reader.read():
                view.add(item)
            if view.finished:
                reader.expect_end()
        expect(view.last_seen > before, f"stream of {job.job_id}: a reconnect brought nothing")
    expect(view.finished, f"stream of {job.job_id}: {_MAX_RECONNECTS} reconnects, no end")


def resume_point(view: View) -> st.SearchStrategy[int]:
    """Where a subscriber resumes: mostly after the last event it saw (as a client does), else
    after any event it saw, or from the start. Drawn from the end, not the start, of the list."""
    seen = [0, *view.seen_seqs()]
    anywhere = st.integers(0, len(seen) - 1).map(lambda i: seen[-1 - i])
    return st.one_of(st.just(seen[-1]), anywhere)

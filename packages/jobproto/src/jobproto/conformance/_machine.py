"""The jobproto/1 conformance state machine: a random walk of clients against one service.

Theory of operation
-------------------
``ConformanceMachine`` is a Hypothesis ``RuleBasedStateMachine``. Each rule is one thing a client
may do (create a job, or create it and read its stream in the same request, read its stream whole
or in part, resume from any seq it has seen, fan out, cancel twice, ask for a status or a page of
the list, replay a key with or without the stream, send something wrong) and checks the answer
on the spot against docs/protocol.md. What must hold across rules lives in ``_model``: the states
seen of a job only follow the transition table; every copy of a log entry is byte-identical; each
subscriber's view, stitched across its resumes, covers the log exactly once. ``teardown`` cancels
what still runs, replays every job to its end and checks its log against the operation's behaviour
and its final status.

All I/O goes through one synchronous ``httpx.Client`` with a read timeout, and every stream has a
deadline, so no step can hang. The service is shared by all examples of a run (and maybe by other
clients): the machine only reasons about jobs it made, and its idempotency keys carry a per-run
prefix. A stream may end before its terminal event when the subscriber lags too far behind
(§4.7); the machine then reconnects with ``Last-Event-ID``, as a client should, but only where the
service's ``max_subscriber_lag`` is unknown or small enough for that to be legitimate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, cast

import attrs
import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .._correlation import is_valid_correlation_id
from .._wire import CREATED_FIELDS
from ._create_stream import JSON_ACCEPTS, STREAM_ACCEPT, STREAM_ACCEPTS, created_of, post_stream
from ._model import JobRecord, View, expected_length
from ._probe import (
    TERMINAL,
    TIMESTAMP,
    CursorMode,
    StreamReader,
    check_error,
    check_headers,
    expect,
    json_body,
)
from ._refusals import (
    refuse_create,
    refuse_create_cursor,
    refuse_cursor,
    refuse_key,
    refuse_list,
    refuse_oversize,
    refuse_route,
    refuse_unauthenticated,
    refuse_unknown_job,
)
from ._strategies import (
    BAD_CREATE,
    BAD_CURSORS,
    BAD_LIST,
    BAD_ROUTES,
    bad_job_ids,
    correlation_ids,
    create_bodies,
    idempotency_keys,
)
from ._streams import finish, follow, open_stream, resume_point

__all__ = ["ConformanceConfig", "ConformanceMachine", "run_conformance"]

_CREATED_KEYS = frozenset(
    {"job_id", "sse_url", "status_url", "operation", "state", "correlation_id", "created_at"}
)
_MODES: list[CursorMode] = ["header", "query", "both"]
#: how many events a subscriber reads before it hangs up: often a few, sometimes many
_COUNTS = st.integers(0, 8) | st.integers(0, 120)


@attrs.frozen
class ConformanceConfig:
    """How to reach the service under test and what the suite may assume about it."""

    #: the service's root, e.g. ``http://127.0.0.1:7833``
    base_url: str = "http://testserver"
    #: a sync transport instead of the network (``base_url`` then only names the host)
    transport: httpx.BaseTransport | None = None
    #: the service's largest accepted create body; None skips the oversize checks
    max_body_bytes: int | None = 1 << 20
    #: the service's ``max_subscriber_lag``; None (unknown): any stream may end early (§4.7)
    max_subscriber_lag: int | None = None
    #: seconds one socket read may take (streams of the conformance operations are never quiet
    #: for much longer than a second)
    read_timeout: float = 10.0
    #: seconds one whole stream may stay open
    stream_timeout: float = 30.0
    #: Hypothesis settings of a run
    max_examples: int = 80
    step_count: int = 25
    #: shrink a failing walk to a minimal one; this reruns it hundreds of times (minutes, up to
    #: Hypothesis' own limit of 5), so by default the first failing walk is reported as found
    shrink: bool = False
    #: the bearer token the service requires; every request carries it, and the walk also
    #: checks that requests without it (or with a wrong one) are refused (§Authentication)
    token: str | None = attrs.field(default=None, repr=False)

    def client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.read_timeout, connect=5.0)
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(
            base_url=self.base_url, transport=self.transport, timeout=timeout, headers=headers
        )

    def hypothesis_settings(self) -> settings:
        phases = [p for p in Phase if self.shrink or p not in (Phase.shrink, Phase.explain)]
        return settings(
            max_examples=self.max_examples,
            stateful_step_count=self.step_count,
            deadline=None,
            phases=phases,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )


def run_conformance(config: ConformanceConfig) -> None:
    """Run the state machine against one service; raises on the first non-conformance."""
    with config.client() as http:
        # Hypothesis calls this with no arguments, like the class it is typed as.
        factory = cast("type[RuleBasedStateMachine]", lambda: ConformanceMachine(config, http))
        run_state_machine_as_test(factory, settings=config.hypothesis_settings())


def _canonical(body: Any) -> str:
    """Two bodies are the same request when their JSON values are (§2.2.1)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@attrs.define(eq=False)
class _Keyed:
    key: str
    body: dict[str, Any]
    job: JobRecord

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"_Keyed({self.key!r}, {self.job!r})")


class ConformanceMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    views = Bundle("views")

    def __init__(self, config: ConformanceConfig, http: httpx.Client) -> None:
        super().__init__()
        self.config = config
        self.http = http
        self.run_id = uuid.uuid4().hex[:12]
        self.made: list[JobRecord] = []
        self.keyed: list[_Keyed] = []

    # -- streams -----------------------------------------------------------------------------------

    def _stream(
        self, job: JobRecord, after: int | None = None, mode: CursorMode = "query"
    ) -> StreamReader:
        return open_stream(self.http, job, after, mode, self.config.stream_timeout)

    def _may_end_early(self, job: JobRecord) -> bool:
        lag = self.config.max_subscriber_lag
        events = expected_length(job.body)
        return lag is None or events is None or events + 1 > lag

    def _follow(
        self,
        view: View,
        after: int | None = None,
        mode: CursorMode = "query",
        max_events: int | None = None,
    ) -> None:
        """Read ``view``'s job after ``after``: ``max_events`` events, or to its end."""
        follow(
            self.http,
            view,
            after,
            mode,
            max_events,
            timeout=self.config.stream_timeout,
            may_end_early=self._may_end_early(view.job),
        )

    def _continue(self, view: View) -> None:
        finish(self.http, view, self.config.stream_timeout, self._may_end_early(view.job))

    def _full_replay(self, job: JobRecord) -> View:
        replay = View(job)
        self._follow(replay, after=0)
        return replay

    def _finish_view(self, view: View) -> None:
        """A subscriber read to the end: compare it with a full replay and with the status."""
        view.check_against(self._full_replay(view.job))
        status = self._status(view.job, "status after the end")
        expect(status["state"] in TERMINAL, f"job {view.job.job_id} ended but is {status}")
        view.job.check_log()

    # -- plain requests ----------------------------------------------------------------------------

    def _status(self, job: JobRecord, where: str = "status") -> Mapping[str, Any]:
        r = self.http.get(f"/v1/jobs/{job.job_id}")
        expect(r.status_code == 200, f"GET /v1/jobs/{job.job_id}: {r.status_code} {r.text!r}")
        check_headers(r)
        body = json_body(r)
        job.check_status(body, where)
        return dict(body)

    def _create(
        self, body: Any, cid: str | None, key: str | None, accept: str | None = None
    ) -> tuple[httpx.Response, Any]:
        headers = {"Content-Type": "application/json"}
        if accept is not None:  # one that does not ask for the stream: the JSON answer
            headers["Accept"] = accept
        if cid is not None:
            headers["X-Correlation-ID"] = cid
        if key is not None:
            headers["Idempotency-Key"] = key
        r = self.http.post("/v1/jobs", content=json.dumps(body).encode(), headers=headers)
        return r, json_body(r)

    def _check_created(self, r: httpx.Response, out: Any, cid: str | None) -> str:
        """The seven fields of a create answer (§2.2) and its headers; returns the header id."""
        sent = cid if cid is not None and is_valid_correlation_id(cid) else None
        header_cid = check_headers(r, sent)
        where = f"create -> {r.status_code}"
        missing = _CREATED_KEYS - set(out if isinstance(out, dict) else {})
        expect(not missing, f"{where}: answer lacks {sorted(missing)}: {out!r}")
        expect(isinstance(out["job_id"], str), f"{where}: job_id {out['job_id']!r}")
        expect(
            out["sse_url"] == out["status_url"] + "/stream"
            and str(out["status_url"]).endswith("/v1/jobs/" + out["job_id"]),
            f"{where}: urls {out}",
        )
        location = r.headers.get("location")
        expect(location == out["status_url"], f"{where}: Location {location!r}, answer {out}")
        stamp = out["created_at"]
        expect(isinstance(stamp, str) and bool(TIMESTAMP.fullmatch(stamp)), f"{where}: {stamp!r}")
        return header_cid

    def _record(
        self, r: httpx.Response, out: Any, body: dict[str, Any], cid: str | None
    ) -> JobRecord:
        expect(r.status_code == 201, f"create {body!r}: {r.status_code} {r.text!r}")
        return self._new_record(r, out, body, cid)

    def _new_record(
        self, r: httpx.Response, out: Any, body: dict[str, Any], cid: str | None
    ) -> JobRecord:
        """A new job from a create's answer whose status was checked (the JSON, or the head
        of a create-and-stream's)."""
        header_cid = self._check_created(r, out, cid)
        job_id = out["job_id"]
        expect(out["operation"] == body["operation"], f"create: operation {out['operation']!r}")
        expect(out["correlation_id"] == header_cid, f"create: correlation id {out!r} vs header")
        expect(out["state"] in ("queued", "running"), f"create: a new job is {out['state']!r}")
        expect(all(j.job_id != job_id for j in self.made), f"create: job id {job_id} reused")
        job = JobRecord(job_id, body, header_cid, len(self.made))
        job.observe_state(out["state"], "create")
        self.made.append(job)
        return job

    def _check_replay(
        self, known: _Keyed, body: dict[str, Any], r: httpx.Response, out: Any
    ) -> None:
        if _canonical(body) != _canonical(known.body):
            check_error(r, status=409, code="idempotency_conflict", field="Idempotency-Key")
            return
        expect(r.status_code == 200, f"replayed create: {r.status_code} {r.text!r}")
        self._check_created(r, out, None)
        replayed = r.headers.get("idempotent-replayed", "")
        expect(replayed.lower() == "true", f"replayed create: Idempotent-Replayed {replayed!r}")
        job = known.job
        expect(out["job_id"] == job.job_id, f"a replay made another job: {out!r}")
        expect(out["correlation_id"] == job.correlation_id, f"replay: {out!r}, not the original")
        job.observe_state(out["state"], "replayed create")

    # -- creating ----------------------------------------------------------------------------------

    @initialize(target=jobs, body=create_bodies, cid=correlation_ids)
    def first_job(self, body: dict[str, Any], cid: str | None) -> JobRecord:
        """Every walk starts with a job, so the rules about jobs can run from the first step."""
        return self._new_job(body, cid)

    @rule(target=jobs, body=create_bodies, cid=correlation_ids, accept=JSON_ACCEPTS)
    def create(self, body: dict[str, Any], cid: str | None, accept: str | None) -> JobRecord:
        r, out = self._create(body, cid, None, accept)
        return self._record(r, out, body, cid)

    def _new_job(self, body: dict[str, Any], cid: str | None) -> JobRecord:
        r, out = self._create(body, cid, None)
        return self._record(r, out, body, cid)

    @rule(
        target=jobs,
        body=create_bodies,
        cid=correlation_ids,
        accept=STREAM_ACCEPTS,
        k=st.none() | _COUNTS,
    )
    def create_and_stream(
        self, body: dict[str, Any], cid: str | None, accept: str, k: int | None
    ) -> JobRecord:
        """Create a job and read its stream in the same request (§2.2.2): ``k`` events, or to
        its end; the answer counts as a subscriber like any stream."""
        with post_stream(
            self.http, body, cid=cid, accept=accept, timeout=self.config.stream_timeout
        ) as reader:
            job = self._record_streamed(reader, body, cid)
            view = self._read_answer(reader, job, 0, k)
        if k is None:
            self._finish_from(view, 0)
        return job

    def _record_streamed(
        self, reader: StreamReader, body: dict[str, Any], cid: str | None
    ) -> JobRecord:
        """A new job from its created block (§2.2.2), which must say what GET status says."""
        created = created_of(reader)
        job = self._new_record(reader.response, created, body, cid)
        self._check_created_block(job, created)
        return job

    def _check_created_block(self, job: JobRecord, created: Mapping[str, Any]) -> None:
        status = self._status(job, "status after a created block")
        fixed = [k for k in CREATED_FIELDS if k != "state"]  # the state moves on
        for key in fixed:
            expect(
                created[key] == status[key],
                f"created block of {job.job_id}: {key} {created[key]!r}, status {status[key]!r}",
            )

    def _view_after(self, job: JobRecord, after: int) -> View:
        """A subscriber that has the log up to ``after`` (0, or a seq some subscriber saw)."""
        view = View(job)
        view.cursor = after
        view.finished = job.terminal_seq is not None and after >= job.terminal_seq
        if after == 0:  # the teardown compares it with a replay from the start
            job.views.append(view)
        return view

    def _read_answer(self, reader: StreamReader, job: JobRecord, after: int, k: int | None) -> View:
        """The events after the created block, into a new subscriber's view."""
        view = self._view_after(job, after)
        view.connections += 1
        for item in reader.read(k):
            view.add(item)
        if view.finished:
            reader.expect_end()
        return view

    def _finish_from(self, view: View, after: int) -> None:
        """Read a create-and-stream's view to the end (reconnecting as a client does), then
        compare it with a replay from the same cursor and with the status."""
        if not view.finished:
            self._continue(view)
        replay = self._view_after(view.job, after) if after else View(view.job)
        self._follow(replay, after, "header")
        view.check_against(replay)
        status = self._status(view.job, "status after the end")
        expect(status["state"] in TERMINAL, f"job {view.job.job_id} ended but is {status}")
        view.job.check_log()

    @rule(
        target=jobs,
        body=create_bodies,
        cid=correlation_ids,
        key=idempotency_keys,
        stream=st.booleans(),
    )
    def create_with_key(
        self, body: dict[str, Any], cid: str | None, key: str, stream: bool
    ) -> JobRecord:
        key = f"{self.run_id}-{key}"
        known = next((k for k in self.keyed if k.key == key), None)
        if stream and known is None:
            with post_stream(
                self.http, body, cid=cid, key=key, timeout=self.config.stream_timeout
            ) as reader:
                job = self._record_streamed(reader, body, cid)
                view = self._read_answer(reader, job, 0, None)
            self._finish_from(view, 0)
        else:
            r, out = self._create(body, cid, key)
            if known is not None:  # the walk drew a key it used before
                self._check_replay(known, body, r, out)
                return known.job
            job = self._record(r, out, body, cid)
        job.idempotency_key = key
        self.keyed.append(_Keyed(key, body, job))
        return job

    @precondition(lambda self: bool(self.keyed))
    @rule(
        data=st.data(),
        variant=st.sampled_from(["same", "other", "invalid"]),
        accept=st.none() | STREAM_ACCEPTS,
    )
    def replay_key(self, data: st.DataObject, variant: str, accept: str | None) -> None:
        """A key used before; with an ``Accept`` that asks for the stream, a replay answers
        with the job's stream after any seq seen (§2.2.2), refusals with the JSON of §5."""
        known = data.draw(st.sampled_from(self.keyed), label="key")
        if variant == "invalid":  # validation comes before the key lookup (§2.2)
            r, _ = self._create({"operation": "echo", "bogus": True}, None, known.key, accept)
            check_error(r, status=422, code="validation_error", field="bogus")
            return
        if variant == "same":  # the same JSON value with its members in another order
            body = dict(reversed(list(known.body.items())))
        else:
            other = create_bodies.filter(lambda b: _canonical(b) != _canonical(known.body))
            body = data.draw(other, label="body")
        if accept is not None and variant == "same":
            after = data.draw(st.sampled_from([0, *sorted(known.job.log)]), label="after")
            k = data.draw(st.none() | _COUNTS, label="k")
            self._replay_stream(known, body, accept, after, k)
            return
        r, out = self._create(body, None, known.key, accept)
        self._check_replay(known, body, r, out)

    def _replay_stream(
        self, known: _Keyed, body: dict[str, Any], accept: str, after: int, k: int | None
    ) -> None:
        job = known.job
        with post_stream(
            self.http,
            body,
            key=known.key,
            after=after or None,
            accept=accept,
            replayed=True,
            timeout=self.config.stream_timeout,
        ) as reader:
            created = created_of(reader)
            where = f"replayed create-and-stream of {job.job_id}"
            expect(created["job_id"] == job.job_id, f"{where}: another job {created}")
            ok = created["correlation_id"] == job.correlation_id
            expect(ok, f"{where}: {created}, not the original correlation id")
            job.observe_state(created["state"], where)
            self._check_created_block(job, created)
            view = self._read_answer(reader, job, after, k)
        if k is None:
            self._finish_from(view, after)

    # -- reading -----------------------------------------------------------------------------------

    @rule(target=views, job=jobs)
    def read_to_end(self, job: JobRecord) -> View:
        view = View(job)
        job.views.append(view)
        self._follow(view)
        self._finish_view(view)
        return view

    @rule(target=views, job=jobs, k=_COUNTS)
    def read_part(self, job: JobRecord, k: int) -> View:
        """Read ``k`` events, then hang up mid-stream."""
        view = View(job)
        job.views.append(view)
        self._follow(view, max_events=k)
        return view

    @rule(
        view=views,
        data=st.data(),
        mode=st.sampled_from(_MODES),
        k=st.none() | _COUNTS,
    )
    def resume(self, view: View, data: st.DataObject, mode: CursorMode, k: int | None) -> None:
        """Reconnect after any seq this subscriber has seen (Last-Event-ID and/or ``?after=``)."""
        seq = data.draw(resume_point(view), label="after")
        view.rewind(seq)
        self._follow(view, seq, mode, k)
        if k is None:
            self._finish_view(view)

    @rule(
        job=jobs,
        data=st.data(),
        pieces=st.lists(st.tuples(_COUNTS, st.sampled_from(_MODES)), min_size=1, max_size=6),
    )
    def read_in_pieces(
        self, job: JobRecord, data: st.DataObject, pieces: list[tuple[int, CursorMode]]
    ) -> None:
        """One subscriber that hangs up again and again, each time resuming after a random seq
        it has seen, then reads to the end: stitched together, it saw the log exactly once."""
        view = View(job)
        job.views.append(view)
        self._follow(view, max_events=pieces[0][0])
        for k, mode in pieces[1:]:
            seq = data.draw(resume_point(view), label="after")
            view.rewind(seq)
            self._follow(view, seq, mode, k)
        seq = data.draw(resume_point(view), label="after")
        view.rewind(seq)
        self._follow(view, seq, pieces[-1][1])
        self._finish_view(view)

    @rule(job=jobs, n=st.integers(2, 4))
    def fan_out(self, job: JobRecord, n: int) -> None:
        """Several subscribers at once, read in turns: every one sees the same log."""
        views = [View(job) for _ in range(n)]
        job.views.extend(views)
        readers: list[StreamReader] = []
        try:
            for view in views:
                readers.append(self._stream(job))
                view.connections += 1
            active = list(zip(views, readers, strict=True))
            while active:
                for pair in list(active):
                    view, reader = pair
                    item = reader.next_item()
                    if item is not None:
                        view.add(item)
                    if item is None or view.finished:
                        if view.finished:
                            reader.expect_end()
                        active.remove(pair)
        finally:
            for reader in readers:
                reader.close()
        for view in views:
            self._continue(view)
            self._finish_view(view)

    # -- cancel, status, list ----------------------------------------------------------------------

    @rule(job=jobs)
    def cancel_twice(self, job: JobRecord) -> None:
        first = self._cancel(job)
        second = self._cancel(job)
        if first[0] == 200:
            expect(second == first, f"cancel of {job.job_id}: {first}, then {second}")

    def _cancel(self, job: JobRecord) -> tuple[int, str]:
        r = self.http.delete(f"/v1/jobs/{job.job_id}")
        expect(r.status_code in (200, 202), f"DELETE {job.job_id}: {r.status_code} {r.text!r}")
        check_headers(r)
        body = json_body(r)
        job.check_status(body, f"DELETE -> {r.status_code}")
        ended = body["state"] in TERMINAL
        expect(ended == (r.status_code == 200), f"DELETE -> {r.status_code} with {body['state']}")
        return r.status_code, body["state"]

    @rule(job=jobs)
    def status(self, job: JobRecord) -> None:
        self._status(job)

    @rule(
        state=st.none() | st.sampled_from(sorted(TERMINAL | {"queued", "running"})),
        limit=st.none() | st.integers(1, 100),
        pages=st.integers(1, 3),
    )
    def list_jobs(self, state: str | None, limit: int | None, pages: int) -> None:
        self._pages(state, limit, pages)

    @rule()
    def list_unfiltered(self) -> None:
        """Page through the newest jobs: each of ours shows up once, unless it was removed."""
        mine = {j.job_id for j in self.made}
        listed: set[str] = set()
        params: dict[str, str] = {"limit": "100"}
        for _ in range(5):  # ours are the newest, unless another client is busy meanwhile
            entries, cursor = self._page(params, None)
            listed.update(str(e["job_id"]) for e in entries)
            if mine <= listed or cursor is None:
                break
            params["cursor"] = cursor
        else:
            return  # a busy service: more jobs than a step should page through
        for job in self.made:
            if job.job_id not in listed:
                r = self.http.get(f"/v1/jobs/{job.job_id}")
                expect(r.status_code == 404, f"job {job.job_id} exists but is not listed")

    def _pages(
        self, state: str | None, limit: int | None, pages: int
    ) -> tuple[list[Mapping[str, Any]], bool]:
        """Up to ``pages`` pages of the list, checked; (entries, whether the last page came)."""
        params: dict[str, str] = {}
        if state is not None:
            params["state"] = state
        if limit is not None:
            params["limit"] = str(limit)
        entries: list[Mapping[str, Any]] = []
        for _ in range(pages):
            page, cursor = self._page(params, entries)
            entries += page
            if cursor is None:
                return entries, True
            params["cursor"] = cursor  # the next page, with the same state (§2.4)
        return entries, False

    def _page(
        self, params: dict[str, str], before: list[Mapping[str, Any]] | None
    ) -> tuple[list[Mapping[str, Any]], str | None]:
        """One page of the list, checked (with ``before``, the pages before it); its cursor."""
        r = self.http.get("/v1/jobs", params=params)
        expect(r.status_code == 200, f"GET /v1/jobs {params}: {r.status_code} {r.text!r}")
        check_headers(r)
        page = json_body(r)
        ok = isinstance(page, dict) and isinstance(page.get("jobs"), list)
        expect(ok and "next_cursor" in page, f"list: {page!r}")
        limit = int(params.get("limit", 50))
        expect(len(page["jobs"]) <= limit, f"list {params}: {len(page['jobs'])} jobs")
        mine = {j.job_id: j for j in self.made}
        earlier = before or []
        seen = {e["job_id"] for e in earlier}
        indexes = [mine[e["job_id"]].index for e in earlier if e["job_id"] in mine]
        for entry in page["jobs"]:
            expect(isinstance(entry, dict), f"list {params}: entry {entry!r}")
            job_id = entry.get("job_id")
            expect(job_id not in seen, f"list {params}: {job_id} twice")
            seen.add(job_id)
            job = mine.get(str(job_id))
            if job is not None:
                job.check_status(entry, "list")
                newest_first = not indexes or job.index < indexes[-1]
                expect(newest_first, f"list {params}: not newest first at {job_id}")
                indexes.append(job.index)
            if "state" in params:
                expect(entry.get("state") == params["state"], f"list {params}: {entry!r}")
        cursor = page["next_cursor"]
        expect(cursor is None or isinstance(cursor, str), f"list: next_cursor {cursor!r}")
        return page["jobs"], cursor

    # -- bad input ---------------------------------------------------------------------------------

    def _still_alive(self) -> None:
        """After any refused request the service still answers."""
        if self.made:
            self._status(self.made[-1], "status after bad input")
        else:
            r = self.http.get("/v1/jobs", params={"limit": "1"})
            expect(r.status_code == 200, f"list after bad input: {r.status_code}")

    @rule(
        data=st.data(),
        kind=st.sampled_from(
            [
                "create",
                "key",
                "oversize",
                "stream_cursor",
                "unknown_job",
                "list",
                "route",
                "unauthenticated",
            ]
        ),
        accept=st.none() | st.just(STREAM_ACCEPT),
    )
    def bad_request(self, data: st.DataObject, kind: str, accept: str | None) -> None:
        """Something the service must refuse with a 4xx and the error shape (§5), then live on.
        A create is refused alike whether or not it asks for the stream (§2.2.2)."""
        http = self.http
        if kind == "create":
            name = data.draw(st.sampled_from(sorted(BAD_CREATE)), label="bad_create")
            refuse_create(http, BAD_CREATE[name], data.draw(correlation_ids, label="cid"), accept)
        elif kind == "key":
            refuse_key(http, data.draw(st.sampled_from(["", "k" * 256]), label="key"), accept)
        elif kind == "oversize" and self.config.max_body_bytes is not None:
            refuse_oversize(http, self.config.max_body_bytes, data.draw(st.booleans()), accept)
        elif kind == "stream_cursor":
            cursor = [*BAD_CURSORS, ("1", "invalid_cursor"), ("999", "invalid_cursor")]
            value, code = data.draw(st.sampled_from(cursor), label="cursor")
            code = code.replace("invalid_query", "invalid_header")
            key = None
            if code == "invalid_cursor" and data.draw(st.booleans(), label="with_key"):
                key = f"{self.run_id}-refused-{uuid.uuid4().hex[:8]}"
            refuse_create_cursor(http, data.draw(STREAM_ACCEPTS), value, code, key)
        elif kind == "unknown_job":
            job_id = data.draw(bad_job_ids, label="job_id")
            refuse_unknown_job(
                http, job_id, data.draw(st.sampled_from(["get", "delete", "stream"]))
            )
        elif kind == "list":
            refuse_list(http, *data.draw(st.sampled_from(BAD_LIST), label="query"))
        elif kind == "route":
            refuse_route(http, *data.draw(st.sampled_from(BAD_ROUTES), label="route"))
        elif kind == "unauthenticated" and self.config.token is not None:
            # Without the token, or with a wrong one, every job route is 401, the same answer
            # for the newest job made and for one that does not exist (§Authentication).
            credential = data.draw(st.sampled_from(["none", "wrong", "not_bearer"]))
            method = data.draw(st.sampled_from(["create", "get", "delete", "stream"]))
            other = data.draw(bad_job_ids, label="job_id")
            job_ids = [self.made[-1].job_id, other] if self.made else [other]
            refuse_unauthenticated(http, credential, method, job_ids)
        self._still_alive()  # the jobs, untouched by refused requests, still answer

    @rule(
        job=jobs,
        cursor=st.sampled_from([*BAD_CURSORS, ("future", "invalid_cursor")]),
        header=st.booleans(),
    )
    def bad_cursor(self, job: JobRecord, cursor: tuple[str, str], header: bool) -> None:
        value, code = cursor
        if value == "future":  # past last_seq, whatever the job has done meanwhile
            value = str(10**9)
        refuse_cursor(self.http, job.job_id, value, code, header)
        self._still_alive()

    # -- the end of one example --------------------------------------------------------------------

    def teardown(self) -> None:
        """Every job ends; its replay, its status and all its subscribers' views agree."""
        for job in self.made:
            if job.final_state is None:
                self._cancel(job)
        for job in self.made:
            replay = self._full_replay(job)
            status = self._status(job, "status at teardown")
            expect(status["state"] in TERMINAL, f"job {job.job_id} did not end: {status}")
            for view in job.views:
                if view.finished:
                    view.check_against(replay)
            job.check_log()
            expect(job.terminal_seq == replay.cursor, f"job {job.job_id}: replay {replay.cursor}")

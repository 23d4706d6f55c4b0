"""Tests for narration, redaction and log context (jobproto._narration). No event loop: the
current job is a context variable, bound here to a fake sink with ``bind_job``."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from jobproto._errors import LocalProtocolError
from jobproto._events import Data, Event, Narration, Origin, Progress
from jobproto._merge import Merge
from jobproto._narration import (
    ContextFilter,
    JobSink,
    bind_job,
    current_correlation_id,
    current_job,
    emit_data,
    narrate,
    progress,
    redact,
    redact_text,
)
from jobproto._redact import MAX_DEPTH as REDACT_DEPTH

LOGGER = "jobproto.narration"


class FakeSink:
    def __init__(self, job_id: str = "job_fake", correlation_id: str = "corr-fake") -> None:
        self.job_id = job_id
        self.correlation_id = correlation_id
        self.events: list[Event] = []
        self.origins: list[Origin | None] = []

    def emit(
        self, event: Event, origin: Origin | None = None, *, merge: Merge | None = None
    ) -> None:
        self.events.append(event)
        self.origins.append(origin)


@pytest.fixture
def sink() -> Iterator[FakeSink]:
    job = FakeSink()
    with bind_job(job):
        yield job


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


def narration_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# --- narrate --------------------------------------------------------------------------------------


def test_outside_a_job_narration_is_logged_only(logs: pytest.LogCaptureFixture) -> None:
    assert current_job() is None
    narrate("load", "loading the model", model="m")
    (record,) = narration_records(logs)
    assert record.levelno == logging.INFO
    assert record.getMessage() == "load: loading the model"
    assert record.job_id is None  # type: ignore[attr-defined]
    assert record.correlation_id is None  # type: ignore[attr-defined]
    assert record.action == "load"  # type: ignore[attr-defined]
    assert record.fields == {"model": "m"}  # type: ignore[attr-defined]


def test_inside_a_job_narration_is_emitted_and_logged(
    sink: FakeSink, logs: pytest.LogCaptureFixture
) -> None:
    narrate("load", "loading", level="warning", model="m", size=3)
    assert sink.events == [Narration("load", "loading", "warning", {"model": "m", "size": 3})]
    (record,) = narration_records(logs)
    assert record.levelno == logging.WARNING
    assert record.job_id == "job_fake"  # type: ignore[attr-defined]
    assert record.correlation_id == "corr-fake"  # type: ignore[attr-defined]
    assert record.action == "load"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("level", "levelno"),
    [
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
    ],
)
def test_levels(sink: FakeSink, logs: pytest.LogCaptureFixture, level: str, levelno: int) -> None:
    narrate("a", "m", level=level)
    assert sink.events == [Narration("a", "m", level, {})]
    assert [r.levelno for r in narration_records(logs)] == [levelno]


@pytest.mark.parametrize("level", ["INFO", "warn", "critical", "", "trace"])
def test_invalid_level_raises(sink: FakeSink, logs: pytest.LogCaptureFixture, level: str) -> None:
    with pytest.raises(ValueError, match="level"):
        narrate("a", "m", level=level)
    assert sink.events == []
    assert narration_records(logs) == []


def test_a_job_gets_narration_even_when_logging_is_off(
    sink: FakeSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    narrate("a", "quiet", level="debug")
    assert sink.events == [Narration("a", "quiet", "debug", {})]
    assert narration_records(caplog) == []


def test_narration_is_redacted_on_the_stream_and_in_the_log(
    sink: FakeSink, logs: pytest.LogCaptureFixture
) -> None:
    narrate(
        "fetch",
        "GET https://bob:hunter2@example.com/x with Authorization: Bearer abc.def-ghi",
        headers={"Authorization": "Bearer abc.def-ghi", "Accept": "text/plain"},
        password="hunter2",
    )
    (event,) = sink.events
    assert isinstance(event, Narration)
    assert "hunter2" not in event.message
    assert "abc.def-ghi" not in event.message
    assert event.message.startswith("GET https://bob:***@example.com/x")
    assert event.fields == {
        "headers": {"Authorization": "***", "Accept": "text/plain"},
        "password": "***",
    }
    (record,) = narration_records(logs)
    assert "hunter2" not in record.getMessage()
    assert "abc.def-ghi" not in record.getMessage()
    assert record.fields == event.fields  # type: ignore[attr-defined]


def test_narration_without_fields_has_empty_fields(sink: FakeSink) -> None:
    narrate("a", "m")
    assert sink.events == [Narration("a", "m", "info", {})]


# --- redaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOi.J9.abc", "eyJhbGciOi.J9.abc"),
        ("bearer abc123", "abc123"),
        ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("password=hunter2 next", "hunter2"),
        ("PASSWORD = hunter2", "hunter2"),
        ("pwd:hunter2", "hunter2"),
        ('password="correct horse battery"', "correct horse battery"),
        ("api_key: abcdef123", "abcdef123"),
        ("api-key=abcdef123&x=1", "abcdef123"),
        ("apikey: 'abc def'", "abc def"),
        ("url?access_token=tok123&x=1", "tok123"),
        ("token=tok123", "tok123"),
        ("secret: s3cr3t", "s3cr3t"),
        ("clone https://user:pa55word@github.com/org/repo.git", "pa55word"),
        ("redis://default:pa55word@cache:6379/0", "pa55word"),
        ("postgresql+psycopg2://app:pa55word@db/x", "pa55word"),
        ("dsn=my_https://app:pa55word@db/x", "pa55word"),
        ("using hf_AbCdEfGhIjKlMnOpQrSt12", "AbCdEfGhIjKlMnOpQrSt12"),
        ("key sk-proj-abcdefghijklmnop1234", "abcdefghijklmnop1234"),
    ],
)
def test_redact_text_masks_secrets(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert "***" in out


def test_redact_text_keeps_the_shape() -> None:
    assert redact_text("password=hunter2, user=bob") == "password=***, user=bob"
    assert redact_text("https://bob:pw@example.com/a") == "https://bob:***@example.com/a"
    assert redact_text("hf_AbCdEfGhIjKlMnOpQrSt12 ok") == "hf_*** ok"


@pytest.mark.parametrize(
    "text",
    [
        "loading model meta-llama/Llama-3-8B",
        "https://example.com/a:b/c",
        "generated 12 tokens in 0.5 s",
        "hf_short",
        "",
        "line\nbreak\r\n",
    ],
)
def test_redact_text_leaves_ordinary_text_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    ['config {"password": "hunter2"}', "settings {'api_key': 'hunter2'}"],
)
def test_redact_text_masks_quoted_keys(text: str) -> None:
    """A secret in JSON or in a Python dict repr (``f"{settings}"``, a common thing to narrate)
    is masked too: the key may be quoted before its ``:``.
    """
    assert "hunter2" not in redact_text(text)


def test_redact_nested_structures() -> None:
    value = {
        "headers": {"Authorization": "x", "X-Api-Key": "k", "Accept": "json"},
        "db": {"url": "postgres://u:pw@db/x", "Password": "p"},
        "list": ["Bearer abc", {"token": "t"}, 3, None],
        "tuple": ("Bearer abc",),
        "n": 3,
        "ok": True,
        "none": None,
    }
    assert redact(value) == {
        "headers": {"Authorization": "***", "X-Api-Key": "***", "Accept": "json"},
        "db": {"url": "postgres://u:***@db/x", "Password": "***"},
        "list": ["Bearer ***", {"token": "***"}, 3, None],
        "tuple": ["Bearer ***"],
        "n": 3,
        "ok": True,
        "none": None,
    }


def test_redact_does_not_modify_its_input() -> None:
    value = {"headers": {"Authorization": "x"}}
    redact(value)
    assert value == {"headers": {"Authorization": "x"}}


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "passwd",
        "db_password",
        "token",
        "access_token",
        "api_key",
        "apiKey",
        "API-KEY",
        "authorization",
        "Authorisation",
        "cookie",
        "Set-Cookie",
        "client_secret",
        "credentials",
        "private_key",
        "session_id",
    ],
)
def test_secret_named_fields_are_masked(key: str) -> None:
    assert redact({key: "value"}) == {key: "***"}
    assert redact({key: {"nested": 1}}) == {key: "***"}
    assert redact({key: 12345}) == {key: "***"}


@pytest.mark.parametrize("empty", [None, "", [], {}])
def test_empty_secret_fields_stay_empty(empty: Any) -> None:
    # "no password set" is worth seeing, and shows no secret.
    assert redact({"password": empty}) == {"password": empty}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_tokens", 256),
        ("prompt_tokens", 12),
        ("completion_tokens", 30),
        ("num_tokens", 7),
        ("passage", "the retrieved text"),
    ],
)
def test_counts_and_text_named_like_a_secret_word_are_not_masked(key: str, value: Any) -> None:
    """A key that merely contains a secret word is not a secret: ``max_tokens=256`` (a count,
    narrated by every generation) and a retrieval ``passage`` stay readable.
    """
    assert redact({key: value}) == {key: value}


# --- progress and data ----------------------------------------------------------------------------


def test_progress_inside_a_job(sink: FakeSink, logs: pytest.LogCaptureFixture) -> None:
    progress("download", 3, 10, unit="files")
    progress("download", 0.5, None, message="half way, token=abc123")
    assert sink.events == [
        Progress("download", 3, 10, "files", ""),
        Progress("download", 0.5, None, "", "half way, token=***"),
    ]
    first, second = narration_records(logs)
    assert first.levelno == logging.DEBUG
    assert first.getMessage() == "download: 3/10 files"
    assert first.job_id == "job_fake"  # type: ignore[attr-defined]
    assert "abc123" not in second.getMessage()


def test_progress_outside_a_job_logs_only(logs: pytest.LogCaptureFixture) -> None:
    progress("download", 1, 2)
    (record,) = narration_records(logs)
    assert record.job_id is None  # type: ignore[attr-defined]
    assert record.action == "download"  # type: ignore[attr-defined]


def test_emit_data_inside_a_job(sink: FakeSink) -> None:
    emit_data({"token": "hi"})
    emit_data("plain")
    emit_data(None)
    assert sink.events == [Data({"token": "hi"}), Data("plain"), Data(None)]


def test_emit_data_outside_a_job_is_a_no_op(logs: pytest.LogCaptureFixture) -> None:
    emit_data({"token": "hi"})
    assert narration_records(logs) == []


def test_events_keep_their_order(sink: FakeSink) -> None:
    narrate("a", "one")
    progress("a", 1)
    emit_data(2)
    narrate("a", "three")
    assert [type(e) for e in sink.events] == [Narration, Progress, Data, Narration]


# --- the context variable -------------------------------------------------------------------------


def test_current_job_and_correlation(sink: FakeSink) -> None:
    assert current_job() is sink
    assert current_correlation_id() == "corr-fake"


def test_a_job_brings_its_own_correlation_id() -> None:
    job = FakeSink()
    with bind_job(None, correlation_id="corr-request"), bind_job(job):
        assert current_correlation_id() == "corr-fake"
    with bind_job(job, correlation_id="corr-fake"):
        assert current_correlation_id() == "corr-fake"
    with (
        pytest.raises(LocalProtocolError, match="corr-other"),
        bind_job(job, correlation_id="corr-other"),
    ):
        pass
    assert current_job() is None


def test_request_correlation_without_a_job() -> None:
    assert current_correlation_id() is None
    with bind_job(None, correlation_id="corr-request"):
        assert current_correlation_id() == "corr-request"
        assert current_job() is None
    assert current_correlation_id() is None


def test_bind_job_restores_what_was_bound_before(sink: FakeSink) -> None:
    inner = FakeSink("job_inner", "corr-inner")
    with bind_job(inner) as bound:
        assert bound is inner
        narrate("a", "to the inner job")
        with bind_job(None, correlation_id="corr-detached"):
            assert current_job() is None  # a task detached from any job narrates to logging only
            narrate("a", "to nobody")
            assert current_correlation_id() == "corr-detached"
        assert current_job() is inner
    assert current_job() is sink
    assert current_correlation_id() == "corr-fake"
    assert [e.message for e in inner.events] == ["to the inner job"]  # type: ignore[union-attr]
    assert sink.events == []


def test_bind_job_restores_after_an_exception(sink: FakeSink) -> None:
    with pytest.raises(KeyError), bind_job(FakeSink("job_x", "corr-x")):
        raise KeyError("x")
    assert current_job() is sink


def test_a_fake_sink_is_a_job_sink() -> None:
    sink: JobSink = FakeSink()  # mypy checks the protocol (emit takes an origin)
    sink.emit(Data(1), Origin("hive", "job_h", 3))
    assert isinstance(sink, FakeSink) and sink.origins == [Origin("hive", "job_h", 3)]


def test_the_job_propagates_into_a_copied_context(sink: FakeSink) -> None:
    """A task copies the context when it is created; ``copy_context().run`` is the same."""

    def deep_in_the_call_tree() -> str | None:
        narrate("child", "from a task")
        emit_data(1)
        return current_correlation_id()

    ctx = contextvars.copy_context()
    assert ctx.run(deep_in_the_call_tree) == "corr-fake"
    assert sink.events == [Narration("child", "from a task", "info", {}), Data(1)]


def test_a_job_set_in_a_copied_context_does_not_leak_out() -> None:
    other = FakeSink("job_other", "corr-other")

    def handler() -> None:
        with bind_job(other):
            narrate("a", "inside")

    contextvars.copy_context().run(handler)
    assert current_job() is None
    narrate("a", "outside")
    assert other.events == [Narration("a", "inside", "info", {})]


def test_two_contexts_two_jobs() -> None:
    one, two = FakeSink("job_1", "c1"), FakeSink("job_2", "c2")

    def run_as(job: FakeSink, message: str) -> None:
        with bind_job(job):
            narrate("a", message)

    contextvars.copy_context().run(run_as, one, "for one")
    contextvars.copy_context().run(run_as, two, "for two")
    assert [e.message for e in one.events] == ["for one"]  # type: ignore[union-attr]
    assert [e.message for e in two.events] == ["for two"]  # type: ignore[union-attr]


# --- ContextFilter --------------------------------------------------------------------------------


def make_record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_context_filter_inside_a_job(sink: FakeSink) -> None:
    record = make_record()
    assert ContextFilter().filter(record)
    assert record.job_id == "job_fake"  # type: ignore[attr-defined]
    assert record.correlation_id == "corr-fake"  # type: ignore[attr-defined]


def test_context_filter_outside_a_job() -> None:
    record = make_record()
    assert ContextFilter().filter(record)
    assert record.job_id == "-"  # type: ignore[attr-defined]
    assert record.correlation_id == "-"  # type: ignore[attr-defined]


def test_context_filter_with_a_request_correlation() -> None:
    with bind_job(None, correlation_id="corr-request"):
        record = make_record()
        ContextFilter().filter(record)
        assert record.correlation_id == "corr-request"  # type: ignore[attr-defined]
        assert record.job_id == "-"  # type: ignore[attr-defined]


def test_context_filter_keeps_explicit_values(sink: FakeSink) -> None:
    record = make_record(job_id="job_explicit", correlation_id="corr-explicit")
    ContextFilter().filter(record)
    assert record.job_id == "job_explicit"  # type: ignore[attr-defined]
    assert record.correlation_id == "corr-explicit"  # type: ignore[attr-defined]


def test_context_filter_on_a_handler_formats_the_ids(sink: FakeSink) -> None:
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter("%(correlation_id)s %(job_id)s %(message)s"))
    log = logging.getLogger("test_narration.handler")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("plain app log")
        narrate_logger = logging.getLogger(LOGGER)
        narrate_logger.addHandler(handler)
        old_level = narrate_logger.level
        narrate_logger.setLevel(logging.INFO)
        try:
            narrate("a", "narrated")
        finally:
            narrate_logger.removeHandler(handler)
            narrate_logger.setLevel(old_level)
    finally:
        log.removeHandler(handler)
    assert lines == ["corr-fake job_fake plain app log", "corr-fake job_fake a: narrated"]


# --- arguments are checked at the call ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kind", "start"),
    [
        (("x", "three", "ten"), TypeError, "progress(): current must be a number, got 'three'"),
        (("x", 1, "ten"), TypeError, "progress(): total must be a number, got 'ten'"),
        (("x", True), TypeError, "progress(): current must be a number"),
        (("x", 1, False), TypeError, "progress(): total must be a number"),
        (("x", None), TypeError, "progress(): current must be a number"),
        (("x", float("nan")), ValueError, "progress(): current must be a finite number"),
        (("x", 1, float("inf")), ValueError, "progress(): total must be a finite number"),
        ((3, 1), TypeError, "progress(): action must be a string"),
    ],
)
def test_progress_refuses_bad_arguments_at_the_call(
    sink: FakeSink, args: tuple[Any, ...], kind: type[Exception], start: str
) -> None:
    with pytest.raises(kind) as info:
        progress(*args)
    assert str(info.value).startswith(start)
    assert sink.events == []


@pytest.mark.parametrize("keyword", ["unit", "message"])
def test_progress_refuses_a_unit_or_message_that_is_not_text(sink: FakeSink, keyword: str) -> None:
    with pytest.raises(TypeError, match=rf"^progress\(\): {keyword} must be a string"):
        progress("x", 1, 2, **{keyword: 5})
    assert sink.events == []


def test_progress_takes_ints_floats_and_unknown_totals(sink: FakeSink) -> None:
    progress("x", 0)
    progress("x", 1.5, 3)
    progress("x", 2, 2.0, unit="GB", message="")
    assert [e.current for e in sink.events if isinstance(e, Progress)] == [0, 1.5, 2]


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        ({1, 2}, TypeError, "emit_data(): payload is not JSON: set {1, 2}"),
        ({"a": [1, {2}]}, TypeError, "emit_data(): payload['a'][1] is not JSON: set {2}"),
        ({"a": float("nan")}, ValueError, "emit_data(): payload['a'] is not JSON: nan"),
        ([float("-inf")], ValueError, "emit_data(): payload[0] is not JSON: -inf"),
        ({(1, 2): "x"}, TypeError, "emit_data(): payload[(1, 2)] is not JSON: a key of type"),
        (b"bytes", TypeError, "emit_data(): payload is not JSON: bytes"),
        (
            {"text": "t", "token_ids": [1, "2", object()]},
            TypeError,
            "emit_data(): payload['token_ids'][2]",
        ),
    ],
)
def test_emit_data_refuses_a_payload_that_is_not_json_at_the_call(
    sink: FakeSink, payload: Any, kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind) as info:
        emit_data(payload)
    assert str(info.value).startswith(message)
    assert sink.events == []


def test_emit_data_refuses_outside_a_job_too() -> None:
    """A mistake shows in a unit test that runs the code without a job."""
    with pytest.raises(TypeError, match=r"^emit_data\(\)"):
        emit_data({"when": object()})


def test_emit_data_refuses_a_circular_payload(sink: FakeSink) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"^emit_data\(\): payload\[0\]\[0\].*circular"):
        emit_data(loop)


def test_emit_data_takes_every_json_value(sink: FakeSink) -> None:
    import enum

    class Size(enum.IntEnum):
        BIG = 2

    payloads: list[Any] = [
        {"text": "hi", "token_ids": [1, 2]},
        {"text": "hi", "token_ids": []},
        ("a", 1, 2.5, None, True),
        {1: "int keys become strings", None: 0, 1.5: "x"},
        {"nested": {"deep": [[{"x": [None]}]]}, "size": Size.BIG},
        "plain",
        0,
        None,
    ]
    for payload in payloads:
        emit_data(payload)
    assert [e.payload for e in sink.events if isinstance(e, Data)] == payloads


@pytest.mark.parametrize(
    ("call", "kind", "start"),
    [
        (lambda: narrate("a", "m", obj=object()), TypeError, "narrate(): field 'obj' is not JSON"),
        (lambda: narrate("a", "m", n={"k": [1, {2}]}), TypeError, "narrate(): field 'n'['k'][1]"),
        (lambda: narrate("a", "m", x=float("nan")), ValueError, "narrate(): field 'x' is not JSON"),
        (lambda: narrate(1, "m"), TypeError, "narrate(): action must be a string"),
        (lambda: narrate("a", None), TypeError, "narrate(): message must be a string"),
        (lambda: narrate("a", "m", level="loud"), ValueError, "narrate(): level must be one of"),
    ],
)
def test_narrate_refuses_bad_arguments_at_the_call(
    sink: FakeSink, logs: pytest.LogCaptureFixture, call: Any, kind: type[Exception], start: str
) -> None:
    with pytest.raises(kind) as info:
        call()
    assert str(info.value).startswith(start)
    assert sink.events == []
    assert narration_records(logs) == []


def test_narrate_refuses_a_circular_field(sink: FakeSink) -> None:
    loop: dict[str, Any] = {}
    loop["again"] = loop
    with pytest.raises(ValueError, match=r"^narrate\(\): field 'loop'\['again'\].*circular"):
        narrate("step", "looping", loop=loop)
    assert sink.events == []


def test_redact_masks_what_is_nested_deeper_than_it_looks() -> None:
    loop: list[Any] = []
    loop.append(loop)
    out = redact(loop)  # no RecursionError: past its depth, a value is masked
    for _ in range(REDACT_DEPTH):
        out = out[0]
    assert out == "***"

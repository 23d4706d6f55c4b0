"""Redaction of log records (jobproto._redact): the message, its arguments, the traceback and the
stack text are masked as events are, and formatters that read arguments still find them."""

from __future__ import annotations

import io
import logging
import sys
import time
import traceback
from collections.abc import Iterator

import pytest

from jobproto._redact import RedactingFilter, install_log_redaction, redact_record, redact_text

SECRET = "abc123secret"


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args or None, exc_info)


def raised(text: str) -> BaseException:
    try:
        raise ValueError(text)
    except ValueError as exc:
        return exc


def formatted(rec: logging.LogRecord) -> str:
    return logging.Formatter("%(message)s").format(rec)


def test_the_message_and_its_arguments_are_masked() -> None:
    rec = redact_record(record("login failed: %s (%d tries)", f"token={SECRET}", 3))
    assert rec.getMessage() == "login failed: token=*** (3 tries)"
    assert rec.args == ("token=***", 3)  # still arguments: formatters that read them work


def test_a_secret_split_between_message_and_argument_is_masked() -> None:
    rec = redact_record(record("calling with password=%s", SECRET))
    assert rec.getMessage() == "calling with password=***"
    assert SECRET not in formatted(rec)


def test_mapping_arguments_are_masked() -> None:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "%(url)s", None, None)
    rec.args = {"url": f"https://bob:{SECRET}@example.com/"}
    redact_record(rec)
    assert rec.getMessage() == "https://bob:***@example.com/"


def test_the_traceback_is_masked() -> None:
    rec = redact_record(record("handler failed", exc=raised(f"Authorization: Bearer {SECRET}")))
    text = formatted(rec)
    assert "Traceback (most recent call last)" in text
    assert "ValueError: Authorization: ***" in text or "Bearer ***" in text
    assert SECRET not in text


def test_stack_info_is_masked() -> None:
    rec = record("here")
    rec.stack_info = f"Stack (most recent call last):\n  token={SECRET}"
    assert SECRET not in formatted(redact_record(rec))


def test_redacting_twice_changes_nothing_more() -> None:
    rec = redact_record(record("a %s", f"token={SECRET}", exc=raised(f"pwd={SECRET}")))
    first = formatted(rec)
    assert formatted(redact_record(rec)) == first


def test_a_record_that_cannot_be_formatted_is_left_for_its_handler() -> None:
    rec = record("%d items", "not a number", exc=raised(f"token={SECRET}"))
    assert redact_record(rec) is rec  # no exception from the filter into the logging call
    with pytest.raises(TypeError):
        rec.getMessage()
    assert rec.exc_text is not None and SECRET not in rec.exc_text


@pytest.fixture
def stream_handler() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("jobproto.tests.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, out, handler
    finally:
        logger.removeHandler(handler)


def test_the_filter_on_a_handler_masks_what_it_writes(
    stream_handler: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, out, handler = stream_handler
    handler.addFilter(RedactingFilter())
    try:
        raise RuntimeError(f"hf_{'a' * 20} and token={SECRET}")
    except RuntimeError:
        logger.exception("job failed with secret=%s", SECRET)
    text = out.getvalue()
    assert "job failed with secret=***" in text
    assert "RuntimeError: hf_*** and token=***" in text
    assert SECRET not in text and "a" * 20 not in text


def test_install_log_redaction_filters_every_handler_once(
    stream_handler: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, out, handler = stream_handler
    root = logging.getLogger()
    root_handler = logging.StreamHandler(sys.stderr)
    root.addHandler(root_handler)
    try:
        install_log_redaction()
        install_log_redaction()
        for h in (handler, root_handler):
            assert sum(isinstance(f, RedactingFilter) for f in h.filters) == 1
        logger.warning("token=%s", SECRET)
        assert SECRET not in out.getvalue()
    finally:
        root.removeHandler(root_handler)
        for h in (handler, root_handler):
            for f in list(h.filters):
                if isinstance(f, RedactingFilter):
                    h.removeFilter(f)


# Text shaped against each pattern of redact_text: runs of what a pattern's repeated parts accept,
# openings that never close. The log redacts request lines (up to the 64 KiB head limit), so each
# must take time linear in its length.
ADVERSARIAL = [
    "a.",  # a URL scheme that never reaches ://
    "a-",
    "sk-",
    "sk-a",
    "a://b:",  # URL userinfo that never reaches @
    "://a:",
    "://a",
    "basic ",
    "bearer\t",
    "token=' ",  # a quote that never closes
    'password:"',
    "password ",
    "hf_a",
    " ",
    ":",
]


@pytest.mark.parametrize("unit", ADVERSARIAL)
def test_redaction_takes_linear_time_on_adversarial_text(unit: str) -> None:
    text = unit * (2**20 // len(unit))  # 1 MiB: linear patterns take milliseconds
    start = time.perf_counter()
    redact_text(text)
    # A generous bound: the quadratic URL pattern took 1.6 s on 64 KiB, minutes on 1 MiB.
    assert time.perf_counter() - start < 2.0


def access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's h11 and httptools protocols log each request."""
    args = ("127.0.0.1:51234", "GET", path, "1.1", 200)
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )


def access_line(rec: logging.LogRecord) -> str:
    from uvicorn.logging import AccessFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    handler.addFilter(RedactingFilter())
    handler.handle(rec)
    return out.getvalue()


def test_a_secret_in_the_access_log_request_line_is_masked() -> None:
    line = access_line(access_record(f"/jobs?token={SECRET}"))
    assert line == '127.0.0.1:51234 - "GET /jobs?token=*** HTTP/1.1" 200 OK\n'


def test_an_access_log_line_whose_arguments_together_look_secret_is_still_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "basic HTTP/1.1" reads as Basic credentials across the path and the HTTP version: the
    # arguments stay five, as uvicorn's AccessFormatter unpacks them, and the line is written.
    rec = access_record("/hidden/basic")
    line = access_line(rec)
    assert "Logging error" not in capsys.readouterr().err
    assert line == '127.0.0.1:51234 - "GET /hidden/basic HTTP/1.1" 200 OK\n'
    assert rec.args == ("127.0.0.1:51234", "GET", "/hidden/basic", "1.1", 200)
    assert rec.getMessage() == '127.0.0.1:51234 - "GET /hidden/basic ***" 200'


def test_a_secret_across_message_and_arguments_keeps_the_arguments() -> None:
    rec = redact_record(record("user %s password=%s at %s", "bob", SECRET, f"token={SECRET}"))
    assert rec.getMessage() == "user bob password=*** at token=***"
    assert SECRET not in formatted(rec)
    # Still three arguments, each redacted on its own (a formatter that reads them gets that).
    assert rec.args == ("bob", SECRET, "token=***")


def test_a_secret_across_message_and_mapping_arguments_keeps_the_arguments() -> None:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "pwd=%(p)s %(u)s", None, None)
    rec.args = {"p": SECRET, "u": f"https://bob:{SECRET}@h/"}
    redact_record(rec)
    assert rec.getMessage() == "pwd=*** https://bob:***@h/"
    assert rec.args == {"p": SECRET, "u": "https://bob:***@h/"}


class OwnTracebacks(logging.Formatter):
    """Formats ``exc_info`` itself, as python-json-logger, Rich and Sentry do, never exc_text."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            return text + "\n" + "".join(traceback.format_exception(*record.exc_info))
        return text + "\n" + (record.exc_text or "")


def test_formatters_that_format_the_exception_themselves_get_the_masked_traceback() -> None:
    rec = redact_record(record("handler failed", exc=raised(f"token={SECRET}")))
    text = OwnTracebacks().format(rec)
    assert "ValueError: token=***" in text and SECRET not in text
    # The plain and uvicorn's formatters still print the (masked) traceback.
    from uvicorn.logging import DefaultFormatter

    for formatter in (logging.Formatter(), DefaultFormatter("%(message)s", use_colors=False)):
        text = formatter.format(rec)
        assert "Traceback (most recent call last)" in text
        assert "ValueError: token=***" in text and SECRET not in text


def test_rich_tracebacks_are_masked() -> None:
    rich_console = pytest.importorskip("rich.console")
    rich_logging = pytest.importorskip("rich.logging")
    out = io.StringIO()
    console = rich_console.Console(file=out, width=200, color_system=None)
    handler = rich_logging.RichHandler(console=console, rich_tracebacks=True)
    handler.addFilter(RedactingFilter())
    handler.handle(record("handler failed", exc=raised(f"token={SECRET}")))
    text = out.getvalue()
    assert "token=***" in text and SECRET not in text

"""Tests for identifiers (jobproto._correlation): job ids, correlation ids, W3C traceparent."""

from __future__ import annotations

import math
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobproto._correlation import (
    CORRELATION_HEADER,
    accept_correlation_id,
    is_valid_correlation_id,
    is_valid_job_id,
    is_valid_traceparent,
    new_correlation_id,
    new_job_id,
)

URLSAFE = set(string.ascii_letters + string.digits + "-_")

# --- job ids --------------------------------------------------------------------------------------


def test_job_id_format() -> None:
    for _ in range(100):
        job_id = new_job_id()
        assert re.fullmatch(r"job_[A-Za-z0-9_\-]{22}", job_id)
        assert is_valid_job_id(job_id)


def test_job_ids_are_unique_and_carry_at_least_122_bits() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    tails = [job_id.removeprefix("job_") for job_id in ids]
    assert all(len(t) == 22 and set(t) <= URLSAFE for t in tails)
    # Entropy, position by position: a position that takes k values carries at most log2(k) bits.
    # 10 000 samples see all 64 values of a uniform base64 position with overwhelming probability,
    # so a generator with fewer random bits (a counter, a timestamp prefix, a short token) fails.
    bits = sum(math.log2(len({t[i] for t in tails})) for i in range(22))
    assert bits >= 122
    # And no position is stuck: every one varies.
    assert all(len({t[i] for t in tails}) > 1 for i in range(22))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "job_",
        "job_" + "a" * 21,
        "job_" + "a" * 23,
        "JOB_" + "a" * 22,
        "job_" + "a" * 21 + "!",
        "job_" + "a" * 21 + "=",
        "job-" + "a" * 22,
        " job_" + "a" * 22,
        "job_" + "a" * 22 + "\n",
        "job_" + "é" * 22,
    ],
    ids=repr,
)
def test_invalid_job_ids(value: str) -> None:
    assert not is_valid_job_id(value)


# --- correlation ids ------------------------------------------------------------------------------


def test_new_correlation_ids_are_valid_and_unique() -> None:
    ids = {new_correlation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_correlation_id(c) for c in ids)


def test_header_name() -> None:
    assert CORRELATION_HEADER == "X-Correlation-ID"


@pytest.mark.parametrize(
    "value",
    ["a", "corr-1", "A.b_c:d-9", "x" * 128, "4bf92f3577b34da6a3ce929d0e0e4736", "req:2024.01"],
)
def test_well_formed_correlation_ids_are_kept(value: str) -> None:
    assert is_valid_correlation_id(value)
    assert accept_correlation_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "x" * 129,
        "has space",
        "new\nline",
        "trailing\n",
        "cr\r",
        "tab\t",
        "slash/x",
        "quote'",
        'dq"',
        "semi;colon",
        "comma,x",
        "é",
        "emoji🐝",
        "nul\0",
        "percent%20",
    ],
    ids=repr,
)
def test_bad_correlation_ids_are_replaced(value: str | None) -> None:
    if value is not None:
        assert not is_valid_correlation_id(value)
    replaced = accept_correlation_id(value)
    assert replaced != value
    assert is_valid_correlation_id(replaced)
    assert accept_correlation_id(value) != replaced  # a fresh one each time


@settings(max_examples=200)
@given(st.text(max_size=140))
def test_accept_always_returns_a_valid_id(value: str) -> None:
    out = accept_correlation_id(value)
    assert is_valid_correlation_id(out)
    assert (out == value) == is_valid_correlation_id(value)
    assert is_valid_correlation_id(value) == bool(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value))


# --- traceparent (W3C Trace Context level 1, section 3.2) -----------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    "value",
    [
        VALID,
        f"00-{TRACE}-{PARENT}-00",
        f"00-{TRACE}-{PARENT}-ff",  # unknown flags are allowed
        f"01-{TRACE}-{PARENT}-01",
        f"01-{TRACE}-{PARENT}-01-what-the-future-will-be",  # later versions may add fields
        f"cc-{TRACE}-{PARENT}-09-extra",
        f"fe-{TRACE}-{PARENT}-01",
        f" {VALID} ",  # optional whitespace around a header value
    ],
)
def test_valid_traceparents(value: str) -> None:
    assert is_valid_traceparent(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        VALID.upper(),
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"0A-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01-extra",
        f"00-{TRACE}-{PARENT}-01-extra",
        f"00-{TRACE}-{PARENT}-01-",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}0-{PARENT}-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}-001",
        f"0-{TRACE}-{PARENT}-01",
        f"000-{TRACE}-{PARENT}-01",
        f"00_{TRACE}_{PARENT}_01",
        f"00-{TRACE}-{PARENT}",
        f"01-{TRACE}-{PARENT}-01extra",  # a future version's extra fields start with "-"
        f"00-{TRACE[:-1]}g-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01\n00-{TRACE}-{PARENT}-01",
    ],
    ids=repr,
)
def test_invalid_traceparents(value: str) -> None:
    assert not is_valid_traceparent(value)


@settings(max_examples=200)
@given(
    version=st.text("0123456789abcdef", min_size=2, max_size=2),
    trace=st.text("0123456789abcdef", min_size=32, max_size=32),
    parent=st.text("0123456789abcdef", min_size=16, max_size=16),
    flags=st.text("0123456789abcdef", min_size=2, max_size=2),
    rest=st.none() | st.text(max_size=10).filter(lambda t: "\n" not in t and "\r" not in t),
)
def test_traceparent_rule(
    version: str, trace: str, parent: str, flags: str, rest: str | None
) -> None:
    value = f"{version}-{trace}-{parent}-{flags}" + ("" if rest is None else "-" + rest)
    expected = (
        version != "ff"
        and trace != "0" * 32
        and parent != "0" * 16
        and (rest is None or version != "00")
    )
    assert is_valid_traceparent(value) == expected

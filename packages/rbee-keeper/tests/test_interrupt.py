"""Ctrl+C: ``python -m rbee_keeper.cli infer ...`` as a real process, interrupted with SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rbee_keeper.runner import EXIT_INTERRUPTED


def start_infer(env: dict[str, str], queen: str, model: str) -> tuple[subprocess.Popen[str], str]:
    """Start an infer with --json and return it with its job id, once tokens flow."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbee_keeper.cli", "infer", "hi", "-m", model, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env, RBEE_QUEEN_URL=queen),
        start_new_session=True,
    )
    assert proc.stdout is not None
    job_id = None
    while True:
        line = proc.stdout.readline()
        assert line, "the keeper ended before streaming"
        event = json.loads(line)
        job_id = event["job_id"]
        if event["type"] == "data":
            return proc, job_id


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


@pytest.fixture
def env(env: dict[str, str], fake_queen_token_file: Path) -> dict[str, str]:
    """The keeper presents the session's fake queen's token."""
    return dict(env, RBEE_TOKEN_FILE=str(fake_queen_token_file))


def job_state(queen: str, job_id: str, token: str) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    state = httpx.get(f"{queen}/v1/jobs/{job_id}", headers=auth).json()["state"]
    assert isinstance(state, str)
    return state


def test_ctrl_c_cancels_the_job_on_the_queen_and_exits_130(
    fake_queen: str, fake_queen_token: str, env: dict[str, str]
) -> None:
    proc, job_id = start_infer(env, fake_queen, "slow")
    assert job_state(fake_queen, job_id, fake_queen_token) == "running"
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=15)
    assert code == EXIT_INTERRUPTED
    assert f"cancelling job {job_id}" in err
    assert err.rstrip().endswith("rbee: cancelled")
    assert job_state(fake_queen, job_id, fake_queen_token) == "cancelled"


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(
    fake_queen: str, fake_queen_token: str, env: dict[str, str]
) -> None:
    # "stubborn" takes 3 s to honour a cancel; the second Ctrl+C does not wait for it.
    proc, job_id = start_infer(env, fake_queen, "stubborn")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=15)
    assert time.monotonic() - started < 2.0
    assert code == EXIT_INTERRUPTED
    assert f"cancelling job {job_id}" in err
    # The cancel was asked for: the queen ends the job after its grace.
    deadline = time.monotonic() + 10
    while (
        job_state(fake_queen, job_id, fake_queen_token) == "running" and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert job_state(fake_queen, job_id, fake_queen_token) == "cancelled"


def test_ctrl_c_on_jobs_stream_detaches_without_cancelling(
    fake_queen: str, fake_queen_token: str, env: dict[str, str]
) -> None:
    owner, job_id = start_infer(env, fake_queen, "slow")
    try:
        # `python -m rbee_keeper` is the same command as `rbee`.
        watcher = subprocess.Popen(
            [sys.executable, "-m", "rbee_keeper", "jobs", "stream", job_id, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env, RBEE_QUEEN_URL=fake_queen),
            start_new_session=True,
        )
        assert watcher.stdout is not None
        while json.loads(watcher.stdout.readline())["type"] != "data":
            pass
        watcher.send_signal(signal.SIGINT)
        code, _, err = finish(watcher, timeout=15)
        assert code == EXIT_INTERRUPTED
        assert f"detached; job {job_id} goes on" in err
        assert job_state(fake_queen, job_id, fake_queen_token) == "running"
    finally:
        owner.send_signal(signal.SIGINT)
        code, _, _ = finish(owner, timeout=15)
    assert code == EXIT_INTERRUPTED
    assert job_state(fake_queen, job_id, fake_queen_token) == "cancelled"

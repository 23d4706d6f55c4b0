"""The queen's web page in a real browser: headless Debian chromium driven by Playwright, against
the session's real queen, hive and workers (the tiny model; the synthetic engine at a set token
rate where a generation must last long enough to be cut).

The browser reaches the queen through ``CuttingProxy`` (``web_proxy.py``), which can break one
stream's connection mid-generation: the page's ``EventSource`` must resume with Last-Event-ID and
show the job's text with nothing missing or repeated.

A screenshot of the page is saved in the test's tmp dir, and also to ``$RBEE_SCREENSHOT`` when
set (``RBEE_SCREENSHOT=docs/dashboard.png``). Chromium must be at ``/usr/bin/chromium``; when it
is missing and we are root, it is installed from Debian's packages (bounded), else the test fails
and says why.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
APT_TIMEOUT = 600
#: the synthetic worker's rate: 60 tokens take ~3 s, long enough to cut the stream in the middle
SLOW_RATE = 20.0
SLOW_MODEL = "web-slow"


def _sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"rbee_e2e_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CuttingProxy = _sibling("web_proxy").CuttingProxy


def ensure_chromium() -> None:
    """Chromium at ``CHROMIUM``: installed from Debian's packages when missing and we are root
    (each step bounded in time); otherwise the test fails with what to do."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, timeout=APT_TIMEOUT, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-500:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"installing chromium left no {CHROMIUM}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing from the test environment")
    with sync_playwright() as playwright:
        # --no-sandbox: chromium's sandbox refuses to run as root (CI's containers)
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def proxy(cluster: Any) -> Iterator[Any]:
    port = int(cluster.queen_url.rsplit(":", 1)[1])
    cutting = CuttingProxy(port)
    try:
        yield cutting
    finally:
        cutting.close()


@pytest.fixture(scope="module")
def page(browser: Any, proxy: Any, cluster: Any) -> Iterator[Any]:
    """The page, with the keeper's token entered once (kept in the browser's localStorage)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    errors: list[str] = []  # uncaught exceptions in the page's scripts
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto(proxy.url + "/")
    opened.fill("#token", cluster.keeper_token)
    opened.click("#token-save")
    opened.wait_for_selector("#conn.ok", timeout=15_000)
    opened.errors = errors
    try:
        yield opened
    finally:
        context.close()


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in another thread: Playwright's sync API runs an event loop in this one, so
    the cluster's helpers that run one of their own (``anyio.run``) cannot run here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=120)


def job_result(cluster: Any, job_id: str) -> dict[str, Any]:
    status = cluster.get(f"{cluster.queen_url}/v1/jobs/{job_id}")
    assert status["state"] == "succeeded", status
    return dict(status["result"])


def run_prompt(page: Any, model: str, prompt: str, max_tokens: int) -> None:
    page.fill("#model", model)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", prompt)
    page.click("#run")


def screenshot(page: Any, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    target = os.environ.get("RBEE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=target, full_page=True)


def test_the_page_shows_the_cluster_and_streams_a_prompt(
    cluster: Any, page: Any, tmp_path: Path
) -> None:
    off_loop(cluster.stop_workers, "tiny")  # the worker this test sees is the one its prompt starts
    page.wait_for_selector('#hives tr[data-hive="localhost"]', timeout=15_000)
    hive_row = page.inner_text('#hives tr[data-hive="localhost"]')
    assert "up" in hive_row and "ago" in hive_row

    run_prompt(page, "tiny", "Say hello to the bees.", 24)
    # the first prompt starts a worker (loading the model): its narration shows up live
    page.wait_for_selector('#output[data-state="succeeded"]', timeout=150_000)
    job_id = page.get_attribute("#output", "data-job-id")
    shown = page.inner_text("#output")
    result = job_result(cluster, job_id)
    assert shown == result["text"] and shown
    assert "stop" in page.inner_text("#run-status") or "length" in page.inner_text("#run-status")
    narration = page.inner_text("#narration")
    assert "routed: worker" in narration

    # the worker appears with its model and state; the chart has a point for it
    (worker,) = [w for w in cluster.queen_workers() if w["model"] == "tiny"]
    row = page.wait_for_selector(
        f'#workers tr[data-worker="{worker["worker_id"]}"][data-state="ready"]', timeout=15_000
    )
    assert "tiny" in row.inner_text()
    page.wait_for_selector(f'#legend li[data-worker="{worker["worker_id"]}"]', timeout=5_000)
    assert page.errors == []


def test_a_cut_stream_resumes_with_nothing_missing_or_repeated(
    cluster: Any, page: Any, proxy: Any, tmp_path: Path
) -> None:
    off_loop(cluster.register, SLOW_MODEL)
    try:
        worker = cluster.spawn_synthetic(SLOW_MODEL, rate=SLOW_RATE)
        run_prompt(page, SLOW_MODEL, "Tell the bees a long story.", 60)
        page.wait_for_selector('#output[data-state="running"]', timeout=15_000)
        job_id = page.get_attribute("#output", "data-job-id")
        stream = f"/v1/jobs/{job_id}/stream".encode()
        # some tokens shown, many still to come: cut the stream's connection
        page.wait_for_function(
            "() => document.querySelector('#output').textContent.length >= 40", timeout=15_000
        )
        assert proxy.cut(stream) == 1
        before = page.inner_text("#output")
        state = cluster.get(f"{cluster.queen_url}/v1/jobs/{job_id}")["state"]
        assert state == "running", "the generation ended before the cut: nothing to resume"

        page.wait_for_selector('#output[data-state="succeeded"]', timeout=60_000)
        shown = page.inner_text("#output")
        result = job_result(cluster, job_id)
        assert result["completion_tokens"] == 60
        assert shown == result["text"]  # nothing missing, nothing repeated
        assert before and len(before) < len(shown) and shown.startswith(before)

        # the browser came back on its own, saying where it was
        heads = [h for h in proxy.request_heads() if h.startswith(f"GET {stream.decode()}")]
        resumed = [
            int(m.group(1))
            for h in heads
            if (m := re.search(r"(?im)^last-event-id: *(\d+)", h)) is not None
        ]
        assert len(heads) >= 2 and resumed and min(resumed) > 0, heads
        assert page.get_attribute("#output", "data-connects") == str(len(heads))

        # both workers are in the chart; the screenshot shows the whole page
        page.wait_for_selector(f'#legend li[data-worker="{worker["worker_id"]}"]', timeout=5_000)
        deadline = time.monotonic() + 5
        while page.locator("#legend li").count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        screenshot(page, tmp_path)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        assert page.errors == []
    finally:
        off_loop(cluster.cleanup, SLOW_MODEL)
        # the page must not have put the token anywhere but a header
        token = cluster.keeper_token
        assert all(token not in h.split("\r\n", 1)[0] for h in proxy.request_heads())
        httpx.get(cluster.queen_url + "/health", timeout=5).raise_for_status()

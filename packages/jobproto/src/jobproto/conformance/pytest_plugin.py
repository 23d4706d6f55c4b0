"""pytest plugin of the conformance suite: the ``--url`` option and the services to test.

Without ``--url`` every conformance test runs against two reference targets:

* ``in-process``: the reference app served by uvicorn in a thread of the test process;
* ``subprocess``: ``python -m jobproto.conformance.server`` on loopback, a real server process in
  its own process group (SIGTERM, then SIGKILL to the group, when the tests are done).

With ``--url URL`` they run against that service alone. Tests that need to know the service's
limits (log size, subscribe timeout, retention, keepalive interval) take the ``tuned_target``
fixture: a second server per reference target with small limits, and a skip for ``--url``, whose
limits the suite cannot know.

Load it with ``-p jobproto.conformance.pytest_plugin``, or import its names into a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import attrs
import pytest

from ..asgi import ServiceSettings
from ._machine import ConformanceConfig
from ._server import ServerProcess, ThreadedServer, settings_args

__all__ = [
    "MAIN_SETTINGS",
    "TUNED_SETTINGS",
    "Target",
    "conformance_config",
    "conformance_target",
    "pytest_addoption",
    "pytest_generate_tests",
    "tuned_target",
]

TargetKind = Literal["in-process", "subprocess", "url"]

#: the reference service the state machine walks: default limits, except a log small enough for
#: the largest burst (300 events) to overflow it, so random walks meet gap frames too
MAIN_SETTINGS = ServiceSettings(max_log_events=200, keepalive_interval=1.0)

#: the reference service for tests that depend on limits: everything small and fast
TUNED_SETTINGS = ServiceSettings(
    max_log_events=64,
    subscribe_timeout=1.0,
    retention_ttl=3.0,
    keepalive_interval=0.2,
    sweep_interval=0.1,
)


@attrs.frozen
class Target:
    """A service under test: where it is, and its settings when the suite knows them."""

    kind: TargetKind
    url: str
    settings: ServiceSettings | None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobproto-conformance", "jobproto/1 conformance suite")
    group.addoption(
        "--url",
        default=None,
        help="run the conformance suite against the jobproto/1 service at this URL "
        "(it must offer the conformance operations); default: the reference service",
    )
    group.addoption(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="largest create body the --url service accepts (default 1 MiB; 0: unknown)",
    )
    group.addoption(
        "--conformance-shrink",
        action="store_true",
        help="shrink a failing random walk to a minimal one (slow: minutes)",
    )
    group.addoption(
        "--conformance-examples",
        type=int,
        default=None,
        help="Hypothesis examples of the state machine per target",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    url = metafunc.config.getoption("url", None)
    kinds = ["url"] if url else ["in-process", "subprocess"]
    for name in ("conformance_target", "tuned_target"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, kinds, indirect=True, scope="session")


def _serve(
    kind: str, settings: ServiceSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if kind == "in-process":
        server = ThreadedServer(settings)
        url = server.start()
        try:
            yield Target("in-process", url, settings)
        finally:
            server.stop()
    else:
        process = ServerProcess.spawn(settings_args(settings), tmp_path_factory.mktemp("server"))
        try:
            yield Target("subprocess", process.url, settings)
        finally:
            process.stop()


@pytest.fixture(scope="session")
def conformance_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The service the conformance tests run against (parametrised: see the module docstring)."""
    kind = request.param
    if kind == "url":
        yield Target("url", str(request.config.getoption("url")).rstrip("/"), None)
        return
    yield from _serve(kind, MAIN_SETTINGS, tmp_path_factory)


@pytest.fixture(scope="session")
def tuned_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A reference service with ``TUNED_SETTINGS``; a skip with ``--url`` (limits unknown)."""
    kind = request.param
    if kind == "url":
        pytest.skip("needs a service with known limits; --url names an arbitrary one")
    yield from _serve(kind, TUNED_SETTINGS, tmp_path_factory)


@pytest.fixture
def conformance_config(
    conformance_target: Target, pytestconfig: pytest.Config
) -> ConformanceConfig:
    """How the state machine reaches ``conformance_target``."""
    known = conformance_target.settings
    if known is not None:
        config = ConformanceConfig(
            base_url=conformance_target.url,
            max_body_bytes=known.max_body_bytes,
            max_subscriber_lag=known.max_subscriber_lag,
        )
    else:
        max_body = pytestconfig.getoption("max_body_bytes", 1 << 20) or None
        config = ConformanceConfig(base_url=conformance_target.url, max_body_bytes=max_body)
    examples = pytestconfig.getoption("conformance_examples", None)
    if examples:
        config = attrs.evolve(config, max_examples=examples)
    if pytestconfig.getoption("conformance_shrink", False):
        config = attrs.evolve(config, shrink=True)
    return config

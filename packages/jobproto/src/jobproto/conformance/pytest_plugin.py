"""pytest plugin of the conformance suite: the ``--url`` option and the services to test.

Without ``--url`` every conformance test runs against three reference targets:

* ``in-process``: the reference app served by uvicorn in a thread of the test process;
* ``subprocess``: ``python -m jobproto.conformance.server`` on loopback, a real server process in
  its own process group (SIGTERM, then SIGKILL to the group, when the tests are done);
* ``token``: that server process requiring a bearer token the suite generates: every request
  carries it, and the suite checks that requests without it are refused (fewer random walks:
  the protocol itself is walked on the other two).

With ``--url URL`` they run against that service alone; when it needs a token, give it with
``--jobproto-token-file PATH`` or in ``$JOBPROTO_TOKEN`` (never on the command line).

Tests that need to know the service's limits (log size, subscribe timeout, retention, keepalive
interval) take the ``tuned_target`` fixture: a second server with small limits per tokenless
reference target, and a skip for ``--url``, whose limits the suite cannot know.

Load it with ``-p jobproto.conformance.pytest_plugin``, or import its names into a conftest.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import httpx
import pytest

from ..asgi import ServiceSettings
from ._machine import ConformanceConfig
from ._server import TOKEN_ENV, ServerProcess, ThreadedServer, settings_args, token_from

__all__ = [
    "MAIN_SETTINGS",
    "TUNED_SETTINGS",
    "Target",
    "authenticated_target",
    "conformance_config",
    "conformance_target",
    "pytest_addoption",
    "pytest_generate_tests",
    "tuned_target",
]

TargetKind = Literal["in-process", "subprocess", "token", "url"]

#: random walks of the state machine against the ``token`` target (unless given on the command
#: line): enough to meet every rule with the token, the protocol is walked on the others
TOKEN_TARGET_EXAMPLES = 15

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
    #: the bearer token the service requires, if any
    token: str | None = attrs.field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The headers that authenticate a request to the service (none without a token)."""
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """A client of the service whose every request carries the token."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobproto-conformance", "jobproto/1 conformance suite")
    group.addoption(
        "--url",
        default=None,
        help="run the conformance suite against the jobproto/1 service at this URL "
        "(it must offer the conformance operations); default: the reference service",
    )
    group.addoption(
        "--jobproto-token-file",
        default=None,
        type=Path,
        help="the --url service needs the bearer token in this file "
        f"(default: ${TOKEN_ENV} if set); the suite then also checks requests without it are 401",
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
    if "conformance_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["in-process", "subprocess", "token"]
        metafunc.parametrize("conformance_target", kinds, indirect=True, scope="session")
    if "tuned_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["in-process", "subprocess"]
        metafunc.parametrize("tuned_target", kinds, indirect=True, scope="session")
    if "authenticated_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["token"]
        metafunc.parametrize("authenticated_target", kinds, indirect=True, scope="session")


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
        token = secrets.token_urlsafe(32) if kind == "token" else None
        process = ServerProcess.spawn(
            settings_args(settings), tmp_path_factory.mktemp("server"), token=token
        )
        try:
            yield Target("token" if token else "subprocess", process.url, settings, token)
        finally:
            process.stop()


def _given_token(config: pytest.Config) -> str | None:
    path = config.getoption("jobproto_token_file", None)
    try:
        return token_from(path, os.environ)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--jobproto-token-file: {exc}") from None


@pytest.fixture(scope="session")
def conformance_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The service the conformance tests run against (parametrised: see the module docstring)."""
    kind = request.param
    if kind == "url":
        url = str(request.config.getoption("url")).rstrip("/")
        yield Target("url", url, None, _given_token(request.config))
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


@pytest.fixture(scope="session")
def authenticated_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A service that needs a bearer token: the reference server with a generated one, or the
    ``--url`` service with ``--jobproto-token-file``/``JOBPROTO_TOKEN`` (a skip without a token:
    the suite cannot know whether that service needs one)."""
    kind = request.param
    if kind == "url":
        token = _given_token(request.config)
        if token is None:
            pytest.skip("--url was given without a token (--jobproto-token-file, JOBPROTO_TOKEN)")
        url = str(request.config.getoption("url")).rstrip("/")
        yield Target("url", url, None, token)
        return
    yield from _serve(kind, MAIN_SETTINGS, tmp_path_factory)


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
            token=conformance_target.token,
        )
    else:
        max_body = pytestconfig.getoption("max_body_bytes", 1 << 20) or None
        config = ConformanceConfig(
            base_url=conformance_target.url,
            max_body_bytes=max_body,
            token=conformance_target.token,
        )
    examples = pytestconfig.getoption("conformance_examples", None)
    if examples:
        config = attrs.evolve(config, max_examples=examples)
    elif conformance_target.kind == "token":
        config = attrs.evolve(config, max_examples=TOKEN_TARGET_EXAMPLES)
    if pytestconfig.getoption("conformance_shrink", False):
        config = attrs.evolve(config, shrink=True)
    return config

"""pytest plugin of the conformance suite: its options, the services to test, and the checks
that a ``--jobproto-url`` service can be tested at all.

The suite itself ships in the package (``jobproto.conformance.suite``), so it runs from an
installed wheel with nothing but ``jobproto[conformance]``::

    python -m jobproto.conformance --url http://127.0.0.1:8000        # the usual way
    pytest -p jobproto.conformance.pytest_plugin --pyargs jobproto.conformance.suite \\
        --jobproto-url http://127.0.0.1:8000                           # the same, by hand

Without ``--jobproto-url`` every test runs against three reference targets (they need the
``server`` extra too):

* ``in-process``: the reference app served by uvicorn in a thread of the test process;
* ``subprocess``: ``python -m jobproto.conformance.server`` on loopback, a real server process in
  its own process group (SIGTERM, then SIGKILL to the group, when the tests are done);
* ``token``: that server process requiring a bearer token the suite generates: every request
  carries it, and the suite checks that requests without it are refused (fewer random walks:
  the protocol itself is walked on the other two).

With ``--jobproto-url URL`` they run against that service alone, after a check that it offers
the conformance operations (else one message: how to mount them and keep them out of
production). When it needs a token, give it with ``--jobproto-token-file PATH`` or in
``$JOBPROTO_TOKEN`` (never on the command line). Checks the suite cannot make against an
arbitrary service are left out, and the summary says once why: those that depend on the
service's limits (log size, subscribe timeout, retention, keepalive interval: the
``tuned_target`` fixture) and, without a token, those of authentication.

``--jobproto-own-operations`` adds property checks of the service's own operations (every
operation its ``/openapi.json`` publishes except the conformance ones; against the reference
targets, the conformance operations themselves): values drawn from each published request
schema must be accepted, near-valid ones refused with 422 naming the field. Every accepted job is
cancelled at once, before anything subscribes to it; a service that starts jobs at once
(``start_mode="immediate"``) runs them, so point it at a test deployment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import settings

from ..asgi import ServiceSettings
from ._machine import ConformanceConfig
from ._operations import conformance_operations
from ._target import (
    CONFORMANCE_OPERATIONS,
    TOKEN_ENV,
    Target,
    TargetUnfit,
    check_target,
    published_operations,
    token_from,
)

__all__ = [
    "MAIN_SETTINGS",
    "TUNED_SETTINGS",
    "Target",
    "authenticated_target",
    "conformance_config",
    "conformance_target",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "tuned_target",
]

#: random walks of the state machine against the ``token`` target (unless given on the command
#: line): enough to meet every rule with the token, the protocol is walked on the others
TOKEN_TARGET_EXAMPLES = 15

#: property-check cases per operation of ``--jobproto-own-operations`` (unless given)
OWN_OPERATION_EXAMPLES = 60

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

# ``python -m jobproto.conformance`` runs under this profile: no example database written to
# the working directory (a run leaves nothing behind), no per-example deadline (a loaded
# machine is not a failure)
settings.register_profile("jobproto-conformance", database=None, deadline=None)

_OPENAPI = pytest.StashKey[dict[str, Any]]()
_LEFT_OUT = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobproto-conformance", "jobproto/1 conformance suite")
    group.addoption(
        "--jobproto-url",
        default=None,
        help="run the conformance suite against the jobproto/1 service at this URL "
        "(it must offer the conformance operations); default: the reference service",
    )
    group.addoption(
        "--jobproto-token-file",
        default=None,
        type=Path,
        help="the --jobproto-url service needs the bearer token in this file "
        f"(default: ${TOKEN_ENV} if set); the suite then also checks requests without it are 401",
    )
    group.addoption(
        "--jobproto-max-body-bytes",
        type=int,
        default=1 << 20,
        help="largest create body the --jobproto-url service accepts (default 1 MiB; 0: unknown)",
    )
    group.addoption(
        "--jobproto-own-operations",
        action="store_true",
        help="also check that the service's own operations enforce their published schemas "
        "(every accepted job is cancelled before it is subscribed to; a service in immediate "
        "start mode runs them: use a test deployment)",
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
        help="Hypothesis examples: random walks of the state machine per target, and cases per "
        "operation of --jobproto-own-operations",
    )


def _url(config: pytest.Config) -> str | None:
    url = config.getoption("jobproto_url", None)
    return str(url).rstrip("/") if url else None


def _given_token(config: pytest.Config) -> str | None:
    path = config.getoption("jobproto_token_file", None)
    try:
        return token_from(path, os.environ)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--jobproto-token-file: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance: jobproto/1 conformance test")
    if not config.pluginmanager.hasplugin("timeout"):
        # the suite marks its longest test; without pytest-timeout the mark only documents it
        config.addinivalue_line("markers", "timeout(seconds): per-test time limit")
    config.stash[_LEFT_OUT] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``--jobproto-url``: refuse, with one message, a service that cannot be tested."""
    config = session.config
    url = _url(config)
    if url is None:
        return
    try:
        config.stash[_OPENAPI] = check_target(url, _given_token(config))
    except TargetUnfit as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    url = _url(config)
    where = url or "the reference service (in-process, subprocess, token)"
    own = config.getoption("jobproto_own_operations", False)
    lines = [f"jobproto conformance: checks of {where}"]
    if url is not None and not own:
        lines.append(
            "jobproto conformance: the service's own operations are not exercised "
            "(--own-operations checks them against their published schemas)"
        )
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    url = _url(config)
    if "conformance_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["in-process", "subprocess", "token"]
        metafunc.parametrize("conformance_target", kinds, indirect=True, scope="session")
    if "tuned_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["in-process", "subprocess"]
        metafunc.parametrize("tuned_target", kinds, indirect=True, scope="session")
    if "authenticated_target" in metafunc.fixturenames:
        kinds = ["url"] if url else ["token"]
        metafunc.parametrize("authenticated_target", kinds, indirect=True, scope="session")
    if "own_operation" in metafunc.fixturenames:
        names = _own_operations(config)
        metafunc.parametrize("own_operation", names, ids=names)


def _own_operations(config: pytest.Config) -> list[str]:
    """The operations ``--jobproto-own-operations`` checks."""
    if _url(config) is None:
        # the reference service has no operations but the conformance ones: check those
        return sorted(op.name for op in conformance_operations())
    doc = config.stash.get(_OPENAPI, {})
    return [n for n in published_operations(doc) if n not in CONFORMANCE_OPERATIONS]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out what cannot be checked, and remember why (said once, in the summary)."""
    url = _url(config)
    own = config.getoption("jobproto_own_operations", False)
    left_out: list[str] = config.stash[_LEFT_OUT]
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    own_names = _own_operations(config)
    limits = auth = 0
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "own_operation" in names and not (own and own_names):
            pass
        elif url is not None and "tuned_target" in names:
            limits += 1
        elif url is not None and "authenticated_target" in names and _given_token(config) is None:
            auth += 1
        else:
            keep.append(item)
            continue
        dropped.append(item)
    if limits:
        left_out.append(
            f"{limits} checks need a service whose limits the suite knows (log size, subscribe "
            "timeout, retention, keepalive interval): they run against the reference service "
            "(without --url)"
        )
    if auth:
        left_out.append(
            f"{auth} checks of authentication need the service's token (--token-file PATH or "
            f"${TOKEN_ENV})"
        )
    if own and not own_names:
        left_out.append("the service publishes no operations but the conformance ones")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    left_out = config.stash.get(_LEFT_OUT, [])
    if left_out:
        terminalreporter.section("jobproto conformance: not run against this service")
        for line in left_out:
            terminalreporter.write_line(line)


def _serve(
    kind: str, settings: ServiceSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    # the reference server needs the server extra (uvicorn); a run against a URL does not
    from ._server import ServerProcess, ThreadedServer, settings_args

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


@pytest.fixture(scope="session")
def conformance_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The service the conformance tests run against (parametrised: see the module docstring)."""
    kind = request.param
    url = _url(request.config)
    if kind == "url" and url is not None:
        yield Target("url", url, None, _given_token(request.config))
        return
    yield from _serve(kind, MAIN_SETTINGS, tmp_path_factory)


@pytest.fixture(scope="session")
def tuned_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A reference service with ``TUNED_SETTINGS`` (its tests are left out with a URL)."""
    kind = request.param
    if kind == "url":
        pytest.skip("needs a service with known limits; --jobproto-url names an arbitrary one")
    yield from _serve(kind, TUNED_SETTINGS, tmp_path_factory)


@pytest.fixture(scope="session")
def authenticated_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A service that needs a bearer token: the reference server with a generated one, or the
    ``--jobproto-url`` service with its token (those tests are left out without one)."""
    kind = request.param
    url = _url(request.config)
    if kind == "url" and url is not None:
        token = _given_token(request.config)
        if token is None:
            pytest.skip("no token for the service (--jobproto-token-file, JOBPROTO_TOKEN)")
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
        max_body = pytestconfig.getoption("jobproto_max_body_bytes", 1 << 20) or None
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


@pytest.fixture
def own_operation_examples(pytestconfig: pytest.Config) -> int:
    """Cases per operation of ``--jobproto-own-operations``."""
    return int(pytestconfig.getoption("conformance_examples", None) or OWN_OPERATION_EXAMPLES)

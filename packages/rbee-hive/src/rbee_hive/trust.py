"""Whom the hive trusts and how it proves itself: its ``Security``, its TLS contexts, and what of
its secrets a worker gets (ARCHITECTURE.md, "Trust between tiers"; the tokens are
``rbee_contracts.auth``'s).

- Callers present the hive's token (the queen's hive token for this hive) on everything but
  ``/health``; the ``Host`` must be one of ``HiveSettings.host_names()`` (a web page that reaches
  a loopback hive by DNS rebinding sends its own name, and is refused with 421).
- A worker accepts its own token, derived from the hive's (``auth.worker_token``): the hive puts
  it in the worker's environment as ``RBEE_WORKER_TOKEN``, never on its command line (``ps``
  shows that to every user), and takes its own credentials out of that environment. The worker
  runs model code: it gets what it needs, not a token that opens the hive or another worker.
- The hive verifies the queen with ``tls_ca`` (a CA, or the queen's self-signed certificate
  itself). Its own workers serve the hive's certificate, so the hive pins exactly that
  certificate when it polls them; it reaches them at ``worker_host`` (loopback for a wildcard
  bind), which that certificate need not name, so names are not checked there (the pin is the
  stronger check). Every context is ``jobproto.client.ssl_context``'s.
"""

from __future__ import annotations

import ssl
from collections.abc import MutableMapping
from pathlib import Path

from jobproto.asgi import Security
from jobproto.client import ssl_context
from rbee_contracts import auth

from .settings import HiveSettings

__all__ = [
    "WORKER_ENV_DROPPED",
    "client_context",
    "hive_security",
    "worker_context",
    "worker_env",
    "worker_token",
]

#: the hive's own credentials and the keeper's: never in a worker's environment
WORKER_ENV_DROPPED: tuple[str, ...] = (
    auth.ENV_TOKEN,
    auth.ENV_TOKEN_FILE,
    auth.ENV_JOIN_TOKEN,
    auth.ENV_JOIN_TOKEN_FILE,
    auth.ENV_HIVE_TOKEN,
    auth.ENV_HIVE_TOKEN_FILE,
    auth.ENV_WORKER_TOKEN,
)


def hive_security(settings: HiveSettings) -> Security:
    """What the hive's middleware checks: the queen's token (when one is set), ``Host``,
    ``Origin`` (``rbee_contracts.auth.service_security``, as its workers)."""
    return auth.service_security(settings.token, settings.host_names(), settings.allowed_origins)


def client_context(ca: Path | None) -> ssl.SSLContext | bool:
    """How to verify a server: against ``ca`` (a CA or a pinned certificate:
    ``jobproto.client.ssl_context``), else the system's CAs."""
    return ssl_context(ca)


def worker_context(settings: HiveSettings) -> ssl.SSLContext | bool:
    """How the hive verifies its own workers: they serve its certificate, which is pinned."""
    if settings.tls_cert is None:
        return True
    context = ssl_context(settings.tls_cert)
    # The hive reaches a worker at ``worker_host`` (loopback for a wildcard bind), which the
    # hive's certificate need not name; the pin, this one certificate, is the stronger check.
    context.check_hostname = False
    return context


def worker_token(settings: HiveSettings, worker_id: str) -> str | None:
    """The token worker ``worker_id`` accepts (``auth.worker_token`` of the hive's; None
    without one): the hive presents it on ``/ready``, the queen derives the same."""
    return None if settings.token is None else auth.worker_token(settings.token, worker_id)


def worker_env(settings: HiveSettings, env: MutableMapping[str, str], worker_id: str) -> None:
    """Make worker ``worker_id``'s environment (``env``, changed in place): the hive's
    credentials out, the token that worker accepts in."""
    for name in WORKER_ENV_DROPPED:
        env.pop(name, None)
    token = worker_token(settings, worker_id)
    if token is not None:
        env[auth.ENV_WORKER_TOKEN] = token

"""Who may call the queen: the keeper with its token, hive H with H's join token on its own
``PUT /v1/hives/H``; from where: the host names the queen answers for, and the allowed origins.

Tokens are derived from the queen's secret (``rbee_contracts.auth``), so the queen stores none:

============================  ======================================================
presented                     is
============================  ======================================================
``keeper_token``              ``Principal("keeper", {"jobs"})``: jobs, ``GET /v1/hives``
``join_token(H)``             ``Principal("hive:H", {"hive:H"})``: ``PUT /v1/hives/H``
============================  ======================================================

The set of hive ids is open (a hive the queen has never heard of may join with the join token
the user gave it), so the join tokens cannot be listed up front the way ``TokenAuth`` lists
tokens. ``QueenAuth`` derives them as ``TokenAuth.candidates`` of each request: the join token
of every hive the registry knows, and of the hive whose ``PUT /v1/hives/{H}`` is being
authenticated; ``TokenAuth`` compares them with the keeper's token, in constant time.

What each answer reveals is nothing a caller did not know: a missing or unknown token is 401 on
every path (a join token of a hive the queen has not heard of is unknown on any other path than
that hive's own), a known one used where its scope does not reach is 403 ``forbidden`` (the
keeper's on ``PUT /v1/hives/H``, hive H's on ``/v1/jobs`` or on another hive's path).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import Scope

from jobproto.asgi import Principal, Security, StreamCookie, TokenAuth
from rbee_contracts.auth import (
    JOBS_SCOPE,
    allowed_host_names,
    hive_scope,
    join_token,
    keeper_token,
    stream_cookie_key,
)

from .settings import QueenSettings
from .web import PAGE_PATHS

__all__ = [
    "KEEPER",
    "QueenAuth",
    "allowed_hosts",
    "hive_principal",
    "queen_security",
]

#: the local keeper (and whoever the user gives its token)
KEEPER = Principal("keeper", frozenset({JOBS_SCOPE}))

_HIVE_PUT = re.compile(r"/v1/hives/([^/]+)")


def hive_principal(hive_id: str) -> Principal:
    """Hive ``hive_id`` at the queen: its name and its only scope are ``hive:ID``."""
    return Principal(hive_scope(hive_id), frozenset({hive_scope(hive_id)}))


class QueenAuth(TokenAuth):
    """The keeper's token, and the join tokens derived for the hives in question."""

    def __init__(self, secret: bytes, known_hives: Callable[[], Iterable[str]]) -> None:
        super().__init__({keeper_token(secret): KEEPER})
        self._known_hives = known_hives
        # bounded: the ids of registered hives (and of joining ones, which may be any string)
        self._join_token = functools.lru_cache(maxsize=4096)(
            lambda hive_id: join_token(secret, hive_id)
        )

    def candidates(self, scope: Scope | None) -> Iterable[tuple[str, Principal]]:
        """The join token of every registered hive, and of the hive this ``PUT`` names."""
        hive_ids = set(self._known_hives())
        joining = _joining(scope)
        if joining is not None:
            hive_ids.add(joining)
        return [(self._join_token(hive_id), hive_principal(hive_id)) for hive_id in hive_ids]

    def __repr__(self) -> str:
        return "QueenAuth(keeper, join tokens per hive)"


def _joining(scope: Scope | None) -> str | None:
    """The hive id of a ``PUT /v1/hives/{hive_id}`` request (None: another request)."""
    if scope is None or scope.get("type") != "http" or scope.get("method") != "PUT":
        return None
    match = _HIVE_PUT.fullmatch(scope.get("path", ""))
    return None if match is None else match.group(1)


def allowed_hosts(settings: QueenSettings) -> tuple[str, ...] | None:
    """The host names the queen answers for (``rbee_contracts.auth.allowed_host_names``: loopback
    names, the address it binds or this machine's names on a wildcard bind, its public URL's host
    and the configured extra ones); None when ``settings`` asks for no check."""
    if settings.allowed_hosts is None:
        return None
    return allowed_host_names(settings.host, settings.public_url, settings.allowed_hosts)


def queen_security(settings: QueenSettings, known_hives: Callable[[], Iterable[str]]) -> Security:
    """What the queen's HTTP layer enforces for ``settings`` (no tokens without a secret).

    The web page (``rbee_queen.web``) is public (it holds no data; it asks for the token), calls
    the queen from its own origin, and reads streams with a stream cookie signed with a key
    derived from the secret."""
    auth = None if settings.secret is None else QueenAuth(settings.secret, known_hives)
    key = stream_cookie_key(settings.secret if settings.secret is not None else os.urandom(32))
    public: Any = ("/health", *PAGE_PATHS)  # Any: mypy's attrs plugin cannot type a tuple converter
    return Security(
        auth=auth,
        allowed_hosts=allowed_hosts(settings),
        allowed_origins=settings.allowed_origins,
        jobs_scope=JOBS_SCOPE,
        public_paths=public,
        allow_same_origin=True,
        stream_cookie=StreamCookie(key),
    )

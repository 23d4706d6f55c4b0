"""How the keeper reaches the queen: the token it presents, and the TLS trust for an https queen.

The queen answers ``/v1/jobs*`` only to a caller that presents its keeper token
(``Authorization: Bearer``; ``rbee_contracts.auth``). The keeper finds the token in this order:

1. ``RBEE_TOKEN`` (environment only: never a flag, never the config file);
2. the file ``token_file`` names (``RBEE_TOKEN_FILE``); by default
   ``{state_dir}/queen/keeper.token``, which the local queen writes each time it starts. A keeper
   on another machine copies that file from the queen's machine and points ``token_file`` at it.

The file is read when a client is made, not when the settings are loaded: the local queen
(re)writes it as it starts, after the keeper has read its settings. A missing default file is no
error (the queen then answers 401, and the message says what to set); a missing or group-readable
file that was configured is.

An ``https`` queen is verified against ``tls_ca`` when it is set (a CA certificate, or the
queen's own certificate, pinned: ``jobproto.client.ssl_context``), else against the system's CAs.

The token never appears in a message: ``refusal_message`` names where the token came from, never
what it is.
"""

from __future__ import annotations

import ssl

import attrs

from jobproto.client import JobClient, ssl_context
from rbee_contracts.auth import (
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    KEEPER_TOKEN_FILE,
    TokenFileError,
    read_token_file,
)

from .config import TOKEN_FROM_ENV, Settings

__all__ = [
    "AccessError",
    "QueenAccess",
    "QueenRefused",
    "certificate_error",
    "queen_access",
    "queen_client",
    "refusal_message",
    "token_is_configured",
    "token_summary",
]

#: statuses with which a service refuses the caller rather than the request
REFUSALS = frozenset({401, 403, 421})


class AccessError(ValueError):
    """The token or the TLS trust cannot be read; the message says what to fix."""


class QueenRefused(RuntimeError):
    """The queen refused the keeper itself (401, 403 or 421); the message says what to set."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@attrs.frozen
class QueenAccess:
    """What a request to the queen carries: the token (and where it came from) and the trust."""

    token: str | None = attrs.field(repr=False)
    #: ``env RBEE_TOKEN``, ``file PATH``, or ``none`` (no token found)
    source: str
    verify: ssl.SSLContext | bool = attrs.field(repr=False)


def token_is_configured(settings: Settings) -> bool:
    """Whether the token was configured (``RBEE_TOKEN`` or an explicit ``token_file``), rather
    than taken from the file the local queen writes."""
    return settings.token is not None or settings.sources.get("token_file") != "default"


def _token(settings: Settings) -> tuple[str | None, str]:
    if settings.token is not None:
        token = settings.token
        if not token.isascii() or not token.isprintable() or " " in token:
            raise AccessError(f"{ENV_TOKEN} must hold one token: visible characters, no spaces")
        return token, TOKEN_FROM_ENV
    path = settings.token_file
    if not path.exists() and not token_is_configured(settings):
        return None, "none"
    try:
        return read_token_file(path), f"file {path}"
    except TokenFileError as exc:
        raise AccessError(f"token_file ({settings.sources['token_file']}): {exc}") from None


def token_summary(settings: Settings) -> tuple[bool, str]:
    """Whether the keeper has a usable token, and where it comes from or what is wrong with it
    (``rbee config show``); the file is read now, the token is never part of the answer."""
    try:
        token, source = _token(settings)
    except AccessError as exc:
        return False, str(exc)
    if token is None:
        return False, f"token_file {settings.token_file} does not exist (yet: a local queen"
        " writes it as it starts)"
    return True, source


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if settings.tls_ca is None:
        return ssl_context()  # the system's CAs
    try:
        return ssl_context(settings.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AccessError(
            f"tls_ca ({settings.sources['tls_ca']}): cannot load {settings.tls_ca}: {why}"
        ) from None


def queen_access(settings: Settings) -> QueenAccess:
    """The token and TLS trust for the queen, read now. Raises ``AccessError``."""
    token, source = _token(settings)
    return QueenAccess(token, source, _verify(settings))


def queen_client(settings: Settings, limit: float = 30.0) -> JobClient:
    """A ``JobClient`` for the queen that presents the keeper's token on every request and
    verifies an https queen against ``tls_ca`` (``limit``: its request timeout, in seconds)."""
    access = queen_access(settings)
    return JobClient(settings.queen_url, timeout=limit, token=access.token, verify=access.verify)


def certificate_error(exc: BaseException) -> str | None:
    """The verification error behind ``exc`` (a TLS handshake the keeper refused), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def refusal_message(settings: Settings, status: int, code: str, message: str) -> str:
    """What to tell a person whose request the queen refused with ``status`` (401, 403, 421)."""
    url = settings.queen_url
    if status == 421:
        return (
            f"the queen at {url} does not answer to that host name ({code}: {message}); use the"
            " address it listens on in queen_url, or start it with --allowed-host NAME"
        )
    if status == 403:
        return (
            f"the queen at {url} refused this request ({code}: {message}); the token the keeper"
            f" presents is not the keeper token of this queen"
        )
    try:
        _, source = _token(settings)
    except AccessError as exc:
        source = str(exc)
    local = settings.state_dir / "queen" / KEEPER_TOKEN_FILE  # where a local queen writes it
    where = f" (the local queen writes it to {local} as it starts)"
    if source == TOKEN_FROM_ENV:
        what = (
            f"it did not accept the token from {source}: fix or unset {ENV_TOKEN} (it wins over"
            f" token_file)"
        )
    elif source == f"file {local}" and not token_is_configured(settings):
        what = (
            f"it did not accept the token from {source}, which another queen wrote: if the queen"
            f" at {url} is the local one, `rbee queen stop` then `rbee queen start` makes it"
            f" write its own; else set {ENV_TOKEN}, or {ENV_TOKEN_FILE} (token_file) to a copy"
            " of that queen's keeper.token"
        )
    else:
        found = (
            "the keeper found no token"
            if source == "none"
            else f"it did not accept the token from {source}"
        )
        what = (
            f"{found}: set {ENV_TOKEN}, or {ENV_TOKEN_FILE} (token_file) to a copy of the"
            f" queen's keeper.token{where}"
        )
    return (
        f"the queen at {url} needs the keeper's token, and {what}; after"
        " `rbee queen rotate-secret` only the new token works"
    )

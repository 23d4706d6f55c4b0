"""Who may call whom: the queen's secret, the tokens derived from it, and how a tier finds its own.

One secret per queen (32 random bytes, hex) lives in ``{queen_state_dir}/secret``, mode 0600,
created on the queen's first start. Every token is derived from it with HMAC-SHA256, so the queen
stores none of them and a new secret (``rbee queen rotate-secret``) replaces them all at once:

=====================  ===========================  ==========================================
token                  presented by → to            accepted as
=====================  ===========================  ==========================================
``keeper_token``       keeper → queen               ``keeper``, scope ``jobs``
``join_token(H)``      hive H → queen               ``hive:H``, scope ``hive:H`` (its own PUT)
``hive_token(H)``      queen → hive H               ``queen``, scope ``jobs``
``worker_token(T, W)`` queen and hive → worker W    ``queen``, scope ``jobs``
                       (``T``: its hive's token)
=====================  ===========================  ==========================================

A worker's token is derived from its hive's token, not from the secret: its hive (which holds
the hive token, not the secret) gives each worker its own, and the queen derives it the same way.
A worker runs model code, so what its environment holds opens that worker only: neither its hive
nor another worker.

A token is a secret: it travels in the ``Authorization: Bearer`` header and by environment variable
or file (mode 0600) between processes, never in an argument list (another user can read ``ps``),
a URL, a log line, narration or an error. ``redact`` removes known tokens from text that might
carry one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from jobproto.asgi import Security

__all__ = [
    "ENV_HIVE_TOKEN",
    "ENV_HIVE_TOKEN_FILE",
    "ENV_JOIN_TOKEN",
    "ENV_JOIN_TOKEN_FILE",
    "ENV_QUEEN_REDIS_URL",
    "ENV_QUEEN_SECRET_FILE",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ENV_WORKER_TOKEN",
    "HIVE_SCOPE_PREFIX",
    "JOBS_SCOPE",
    "KEEPER_TOKEN_FILE",
    "LOOPBACK_NAMES",
    "SECRET_FILE",
    "TokenFileError",
    "allowed_host_names",
    "bearer",
    "cleartext_warning",
    "hive_scope",
    "hive_token",
    "is_loopback",
    "is_own_address",
    "is_wildcard",
    "join_token",
    "keeper_token",
    "load_or_create_secret",
    "machine_names",
    "new_secret",
    "open_bind_refusal",
    "read_token_file",
    "redact",
    "service_security",
    "stream_cookie_key",
    "token_from_env",
    "worker_token",
    "write_private_file",
]

#: the keeper's token for the queen (``RBEE_TOKEN``, or a file named by ``RBEE_TOKEN_FILE``)
ENV_TOKEN = "RBEE_TOKEN"
ENV_TOKEN_FILE = "RBEE_TOKEN_FILE"
#: a hive's join token, presented to the queen with every heartbeat
ENV_JOIN_TOKEN = "RBEE_JOIN_TOKEN"
ENV_JOIN_TOKEN_FILE = "RBEE_JOIN_TOKEN_FILE"
#: the token a hive accepts (the queen presents it)
ENV_HIVE_TOKEN = "RBEE_HIVE_TOKEN"
ENV_HIVE_TOKEN_FILE = "RBEE_HIVE_TOKEN_FILE"
#: the token a worker accepts: its hive puts it in the worker's environment
ENV_WORKER_TOKEN = "RBEE_WORKER_TOKEN"

#: names another file for the queen's secret (the queen's ``--secret-file`` wins over it); the
#: keeper reads it too, to rotate the secret of the queen it starts
ENV_QUEEN_SECRET_FILE = "RBEE_QUEEN_SECRET_FILE"
#: the Redis that queen replicas share (the queen's ``--redis-url`` wins over it): by environment,
#: so that a password in it stays out of the argument list; the keeper starts a queen with it
ENV_QUEEN_REDIS_URL = "RBEE_QUEEN_REDIS_URL"
#: under the queen's state dir: the secret, and the local keeper's token (written at start)
SECRET_FILE = "secret"
KEEPER_TOKEN_FILE = "keeper.token"

#: the scope of callers that may use a service's jobs (the keeper at the queen, the queen at hives)
JOBS_SCOPE = "jobs"
HIVE_SCOPE_PREFIX = "hive:"

_SECRET_BYTES = 32


class TokenFileError(ValueError):
    """A secret or token file that cannot be used; the message says what to do."""


def hive_scope(hive_id: str) -> str:
    """The scope (and principal name) of hive ``hive_id`` at the queen."""
    return HIVE_SCOPE_PREFIX + hive_id


def _derive(secret: bytes, tag: str, label: str) -> str:
    digest = hmac.new(secret, label.encode(), hashlib.sha256).digest()
    return f"rbee_{tag}_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def keeper_token(secret: bytes) -> str:
    return _derive(secret, "k", "rbee/keeper")


def join_token(secret: bytes, hive_id: str) -> str:
    return _derive(secret, "j", "rbee/join/" + hive_id)


def hive_token(secret: bytes, hive_id: str) -> str:
    return _derive(secret, "h", "rbee/hive/" + hive_id)


def stream_cookie_key(secret: bytes) -> bytes:
    """The key the queen signs browsers' stream cookies with (``jobproto.asgi.StreamCookie``):
    derived from the secret, so a restart keeps open pages working and a new secret ends them."""
    return hmac.new(secret, b"rbee/stream-cookie", hashlib.sha256).digest()


def worker_token(hive_token: str, worker_id: str) -> str:
    """The token worker ``worker_id`` accepts: an HMAC of its hive's token."""
    return _derive(hive_token.encode(), "w", "rbee/worker/" + worker_id)


# -- presenting and accepting a token ------------------------------------------------------------


def bearer(token: str | None) -> dict[str, str]:
    """The request headers that present ``token`` (none without one): RFC 6750 §2.1."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def service_security(
    token: str | None, allowed_hosts: Iterable[str], allowed_origins: Iterable[str] = ()
) -> Security:
    """What a hive's or a worker's middleware enforces: callers present ``token`` (the one the
    queen gives that service; None: no authentication, for loopback only) and hold the jobs
    scope with it; the ``Host`` is one of ``allowed_hosts``; ``Origin`` one of
    ``allowed_origins``."""
    # imported here: the keeper uses this module and needs no server framework
    from jobproto.asgi import Principal, Security, TokenAuth

    tokens = None
    if token is not None:
        tokens = TokenAuth({token: Principal("queen", frozenset({JOBS_SCOPE}))})
    return Security(
        auth=tokens,
        allowed_hosts=tuple(allowed_hosts),
        allowed_origins=tuple(allowed_origins),
        jobs_scope=JOBS_SCOPE,
    )


# -- files ----------------------------------------------------------------------------------------


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):04o}):"
            f" run `chmod 600 {path}`"
        )


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (its directory 0700 when created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped). Refuses a file others can read.

    Every problem is a ``TokenFileError`` that names the file, never what it holds."""
    if "\0" in str(path):
        raise TokenFileError(f"token file name {str(path)!r} holds a NUL character")
    try:
        _check_private(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenFileError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = None
    if token is None or not token.isprintable():
        raise TokenFileError(
            f"token file {path} does not hold a token (visible ASCII characters on one line)"
        )
    if not token or any(c.isspace() for c in token):
        raise TokenFileError(f"token file {path} must hold one token on one line")
    return token


def new_secret(path: Path) -> None:
    """Write a fresh secret (32 random bytes, hex) to ``path``, mode 0600, replacing any: every
    token derived from the one it replaces stops working."""
    write_private_file(path, secrets.token_hex(_SECRET_BYTES) + "\n")


def load_or_create_secret(path: Path) -> bytes:
    """The queen's secret from ``path``; a new one (written 0600) when the file does not exist."""
    if not path.exists():
        new_secret(path)
    text = read_token_file(path)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise TokenFileError(f"secret file {path} must hold hex digits") from None
    if len(secret) < 16:
        raise TokenFileError(f"secret in {path} is too short: at least 16 bytes (32 hex digits)")
    return secret


def token_from_env(env: Mapping[str, str], name: str, file_name: str) -> str | None:
    """The token in ``env[name]``, else in the file ``env[file_name]`` names, else None."""
    value = env.get(name, "").strip()
    if value:
        return value
    file = env.get(file_name, "").strip()
    if file:
        return read_token_file(Path(file).expanduser())
    return None


def redact(text: str, *tokens: str | None) -> str:
    """``text`` with every non-empty token in ``tokens`` replaced by ``***``."""
    for token in tokens:
        if token:
            text = text.replace(token, "***")
    return text


# -- binding and host names ---------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_bind_refusal(host: str, token: str | None, what: str, how: str) -> str | None:
    """Why ``what`` must not listen on ``host`` without a token (None: it may).

    ``how`` says what to set, e.g. ``"set RBEE_HIVE_TOKEN or RBEE_HIVE_TOKEN_FILE"``.
    """
    if token or is_loopback(host):
        return None
    return (
        f"{what} refuses to listen on {host} without a token: anyone who can reach that address"
        f" could use it. {how}, or listen on 127.0.0.1."
    )


def cleartext_warning(host: str, tls: bool, what: str) -> str | None:
    """What to warn of when ``what`` listens on ``host`` without TLS (None: loopback or TLS).

    Tokens then cross the network readable by anyone on the path; the service still starts (a
    trusted network may be the user's choice), but its log says so once.
    """
    if tls or is_loopback(host):
        return None
    return (
        f"{what} listens on {host} without TLS: its tokens and prompts cross the network in the"
        " clear. Serve HTTPS with --tls-cert/--tls-key (`rbee cert generate` makes a pair;"
        " README: Tokens and TLS)."
    )


#: host names a service on this machine is always reached by (every tier answers for them)
LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def is_wildcard(host: str) -> bool:
    """True for an address that binds every interface (``0.0.0.0``, ``::``, empty)."""
    return host.strip().strip("[]") in ("", "0.0.0.0", "::")


def is_own_address(family: int, sockaddr: tuple[Any, ...]) -> bool:
    """Whether ``sockaddr`` (as ``getaddrinfo`` gives it) is an address of this machine.

    Two checks, both by the kernel: a socket can bind to it (EADDRNOTAVAIL for another
    machine's address), and a datagram socket connected to it takes it as its own source
    address, which only the machine's own (unicast) addresses do. Linux also lets a socket bind
    to multicast and broadcast addresses (and to any address under ``ip_nonlocal_bind``); the
    second check refuses those: their route's source is an interface's address, not themselves.
    """
    address = str(sockaddr[0])
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    if ip.is_multicast:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((address, 0, *sockaddr[2:]))
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9, *sockaddr[2:]))  # no packet is sent
            source = str(probe.getsockname()[0])
    except OSError:
        return False
    return ipaddress.ip_address(source.partition("%")[0]) == ip


def machine_names() -> tuple[str, ...]:
    """The names other machines may reach this one by: its host name, its FQDN and the
    addresses they resolve to (a name that does not resolve adds no address)."""
    names = [socket.gethostname(), socket.getfqdn()]
    for name in list(names):
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        names.extend(str(info[4][0]).partition("%")[0] for info in infos)
    return tuple(dict.fromkeys(name for name in names if name))


def allowed_host_names(
    bind: str, public_url: str | None, extra: Iterable[str] = ()
) -> tuple[str, ...]:
    """The ``Host`` names a service bound to ``bind`` answers for (jobproto's
    ``Security.allowed_hosts``), lower-case, without brackets, each once.

    Loopback names; the bound address, or on a wildcard bind (which names no address) this
    machine's names (``machine_names``): a caller on another machine reaches a service bound to
    every interface by one of those; the host of ``public_url``; and ``extra``.
    """
    names = [*LOOPBACK_NAMES]
    names.extend(machine_names() if is_wildcard(bind) else [bind])
    if public_url:
        names.append(urlsplit(public_url).hostname or "")
    names.extend(extra)
    cleaned = (name.strip().strip("[]").lower() for name in names)
    return tuple(dict.fromkeys(name for name in cleaned if name))

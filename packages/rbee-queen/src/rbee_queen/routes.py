"""The queen's plain JSON endpoints (not jobs): its health, and hives register and heartbeat here.

``GET /health``: ``{"status": "ok", "version"}``, public (no token: it says "up", not what runs);
``PUT /v1/hives/{hive_id}``: register or heartbeat (idempotent: 201 the first time, 200 after);
``GET /v1/hives``: every hive with its state; ``GET /v1/hives/{hive_id}``: one. A refused request
gets the jobproto error shape ``{"error": {"code", "message", "field"}}`` and a 4xx.

Who may (``rbee_queen.security``): ``PUT /v1/hives/H`` needs scope ``hive:H`` (H's join token),
checked before the body is read; the reads need ``jobs`` (the keeper's token). Without a secret
the queen checks no tokens, and ``require_scope`` lets every call through.

Queen replicas: an accepted heartbeat goes to the other replicas too (``rbee_queen.replicas``).

From where: a heartbeat's ``url`` must be on the address the heartbeat came from
(``check_hive_address``), so a join token cannot point the queen (and the prompts it relays)
at another machine; the registry then pins that host for as long as it knows the hive.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jobproto import RequestError, converter
from jobproto.asgi import principal_of, read_json_body, require_scope
from rbee_contracts import auth
from rbee_contracts.auth import JOBS_SCOPE, hive_scope
from rbee_contracts.lifecycle import HiveState

from . import __version__
from .queen import Queen
from .registry import parse_registration

__all__ = ["check_hive_address", "hive_routes"]

#: a heartbeat lists models and workers: generous, but bounded
MAX_BODY_BYTES = 1 << 20
#: longest wait for the name in a hive's URL to resolve (seconds)
RESOLVE_TIMEOUT = 5.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4, a zone dropped); None: not an address."""
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _resolve(host: str) -> list[Address]:
    literal = _address(host)
    if literal is not None:
        return [literal]
    try:
        with anyio.fail_after(RESOLVE_TIMEOUT):
            # anyio runs getaddrinfo in a worker thread
            infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        infos = []
    found = [_address(str(info[4][0])) for info in infos]
    return [a for a in found if a is not None]


async def check_hive_address(url: str, peer: str | None, server: str | None) -> None:
    """Refuse a heartbeat whose ``url`` is not on the address it came from (``peer``; ``server``
    is this queen's own address of the connection): 403 ``hive_address_mismatch``.

    Every address the URL's host resolves to must be the peer's, or, for a peer on this machine
    (loopback, or the server's own address of the connection: a local hive reaching a queen on
    a LAN address comes from that address), an address of this machine (loopback included).
    """
    host = urlsplit(url).hostname or ""
    peer_address = None if peer is None else _address(peer)
    if peer_address is None:
        raise RequestError(
            403,
            "hive_address_mismatch",
            "the queen cannot tell which address this heartbeat came from",
            field="url",
        )
    addresses = await _resolve(host)
    if not addresses:
        raise RequestError(
            422,
            "hive_address_unresolved",
            f"the hive's host {host!r} does not resolve",
            field="url",
        )
    server_address = None if server is None else _address(server)
    local_peer = peer_address.is_loopback or peer_address == server_address

    def acceptable(address: Address) -> bool:
        if address == peer_address:
            return True
        if not local_peer:
            return False
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return (
            address.is_loopback
            or address == server_address
            or auth.is_own_address(family, (str(address), 0))
        )

    if not all(acceptable(a) for a in addresses):
        raise RequestError(
            403,
            "hive_address_mismatch",
            f"the hive's url must be on the address its heartbeat comes from ({peer_address}),"
            f" not {host!r}",
            field="url",
        )


def _error(exc: RequestError) -> Response:
    return JSONResponse(exc.to_json(), exc.status, headers={"Cache-Control": "no-store"})


def hive_routes(queen: Queen) -> list[BaseRoute]:
    registry = queen.registry

    async def put_hive(request: Request) -> Response:
        hive_id = request.path_params["hive_id"]
        try:
            require_scope(request, hive_scope(hive_id))
            registration = parse_registration(
                hive_id, await read_json_body(request, MAX_BODY_BYTES)
            )
            client, server = request.scope.get("client"), request.scope.get("server")
            await check_hive_address(
                registration.heartbeat.url,
                None if not client else str(client[0]),
                None if not server else str(server[0]),
            )
            principal = principal_of(request)
            owner = None if principal is None else principal.name
            now = queen.clock()
            created = registry.register(registration, now, owner=owner)
        except RequestError as exc:
            return _error(exc)
        if queen.replicas is not None:  # every queen replica shall know it
            queen.replicas.hive_heard(registration, owner, now)
        body = {
            "hive_id": hive_id,
            "state": HiveState.UP,  # it was heard just now
            "registered": created,
            "heartbeat_interval": registration.heartbeat.heartbeat_interval,
            "timeout_beats": registry.timeout_beats,
        }
        return JSONResponse(body, 201 if created else 200)

    async def list_hives(request: Request) -> Response:
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return _error(exc)
        body = converter.unstructure(queen.hive_list())
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def get_hive(request: Request) -> Response:
        hive_id = request.path_params["hive_id"]
        try:
            require_scope(request, JOBS_SCOPE)
        except RequestError as exc:
            return _error(exc)
        if hive_id not in registry:
            error = RequestError(
                404, "hive_not_found", f"no hive {hive_id!r} is registered", field="hive_id"
            )
            return _error(error)
        now = queen.clock()
        body = converter.unstructure(
            registry.hive_detail(registry.get(hive_id), now, registry.workers(now))
        )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "version": __version__}, headers={"Cache-Control": "no-store"}
        )

    return [
        Route("/health", health, methods=["GET"]),
        Route("/v1/hives", list_hives, methods=["GET"]),
        Route("/v1/hives/{hive_id}", put_hive, methods=["PUT"]),
        Route("/v1/hives/{hive_id}", get_hive, methods=["GET"]),
    ]

"""A hive's URL is on the address its heartbeats come from, and stays on that host while the
queen knows the hive: a join token cannot point the queen (and the prompts it relays) elsewhere.

The peer of an in-process request is chosen with ``httpx.ASGITransport(client=...)``, and the
queen's own address of the connection (``scope["server"]``) is the base URL's host. The
addresses are TEST-NET ones (RFC 5737): nothing is ever contacted.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from jobproto import RequestError
from rbee_contracts.auth import join_token
from rbee_queen.app import create_app
from rbee_queen.registry import HiveRegistry, parse_registration
from rbee_queen.settings import QueenSettings

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))
#: a machine of the LAN (the hive's) and another one
M1, M2 = "192.0.2.10", "192.0.2.20"
#: the queen's own LAN address
QUEEN = "192.0.2.1"


def beat(url: str, worker_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "models": ["tiny"]}
    if worker_url is not None:
        body["workers"] = [
            {"worker_id": "w1", "model": "tiny", "state": "ready", "url": worker_url}
        ]
    return body


def queen_client(app: Any, peer: str, server: str = QUEEN) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{server}:8500")


def make_app(tmp_path: Any) -> Any:
    return create_app(QueenSettings(state_dir=tmp_path, secret=SECRET))


def headers(hive_id: str = "h1") -> dict[str, str]:
    return {"Authorization": f"Bearer {join_token(SECRET, hive_id)}"}


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


@pytest.mark.parametrize(
    ("peer", "url", "status"),
    [
        (M1, f"http://{M1}:9000", 201),  # a hive on another machine, on its own address
        (M1, f"http://{M2}:9000", 403),  # ... pointing at a third machine
        (M1, "http://127.0.0.1:9000", 403),  # ... pointing at the queen's own loopback
        (M1, "http://localhost:9000", 403),  # ... by name
        ("127.0.0.1", "http://127.0.0.1:9000", 201),  # the local hive
        ("127.0.0.1", "http://localhost:9000", 201),  # ... by name
        ("127.0.0.1", f"http://{M2}:9000", 403),  # a local process pointing at another machine
        (QUEEN, "http://127.0.0.1:9000", 201),  # a local hive reaching the queen's LAN address
        (f"::ffff:{M1}", f"http://{M1}:9000", 201),  # an IPv4-mapped peer is the same address
    ],
)
async def test_a_hive_url_must_be_on_the_heartbeats_address(
    tmp_path: Any, peer: str, url: str, status: int
) -> None:
    app = make_app(tmp_path)
    async with queen_client(app, peer) as http:
        put = await http.put("/v1/hives/h1", json=beat(url), headers=headers())
    assert put.status_code == status, put.text
    registry = app.state.queen.registry
    if status == 403:
        assert code(put) == "hive_address_mismatch"
        assert put.json()["error"]["field"] == "url"
        assert "h1" not in registry
    else:
        assert registry.get("h1").url == url


async def test_workers_of_a_remote_hive_are_on_its_address(tmp_path: Any) -> None:
    app = make_app(tmp_path)
    async with queen_client(app, M1) as http:
        put = await http.put(
            "/v1/hives/h1", json=beat(f"http://{M1}:9000", f"http://{M2}:9001"), headers=headers()
        )
    assert put.status_code == 422, put.text
    assert "workers[0].url" in put.text


async def test_an_unresolvable_hive_host_is_refused(tmp_path: Any) -> None:
    app = make_app(tmp_path)
    async with queen_client(app, M1) as http:
        put = await http.put(
            "/v1/hives/h1", json=beat("http://no-such-host.invalid:9000"), headers=headers()
        )
    assert put.status_code == 422, put.text
    assert code(put) == "hive_address_unresolved"


async def test_a_known_hive_keeps_its_host_until_it_is_forgotten(tmp_path: Any) -> None:
    """The same id from a second machine (``hive_start --host m2 --hive m1``), or its own join
    token moving it, is 403 while the queen knows the hive; a new port on the same host is a
    restarted hive; once stopped (forgotten), the id may register anywhere."""
    app = make_app(tmp_path)
    registry = app.state.queen.registry
    async with queen_client(app, M1) as m1, queen_client(app, M2) as m2:
        first = await m1.put("/v1/hives/h1", json=beat(f"http://{M1}:9000"), headers=headers())
        elsewhere = await m2.put("/v1/hives/h1", json=beat(f"http://{M2}:9000"), headers=headers())
        restarted = await m1.put("/v1/hives/h1", json=beat(f"http://{M1}:9100"), headers=headers())
        assert (first.status_code, restarted.status_code) == (201, 200)
        assert elsewhere.status_code == 403, elsewhere.text
        assert code(elsewhere) == "hive_address_changed"
        assert elsewhere.json()["error"]["field"] == "url"
        assert registry.get("h1").url == f"http://{M1}:9100"
        registry.remove("h1")  # what hive_stop does
        moved = await m2.put("/v1/hives/h1", json=beat(f"http://{M2}:9000"), headers=headers())
    assert moved.status_code == 201, moved.text
    assert registry.get("h1").url == f"http://{M2}:9000"


def test_the_registry_pins_a_hives_host() -> None:
    registry = HiveRegistry()
    registry.register(parse_registration("h1", beat("http://127.0.0.1:9000")), 0.0)
    with pytest.raises(RequestError) as refused:
        registry.register(parse_registration("h1", beat("http://127.0.0.2:9000")), 1.0)
    assert (refused.value.status, refused.value.code) == (403, "hive_address_changed")
    assert registry.register(parse_registration("h1", beat("http://127.0.0.1:9001")), 2.0) is False
    registry.remove("h1")
    assert registry.register(parse_registration("h1", beat("http://127.0.0.2:9000")), 3.0) is True

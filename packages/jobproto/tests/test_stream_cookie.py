"""The stream cookie (``StreamCookie``, ``POST /v1/session``) and same-origin pages.

The cookie opens ``GET``/``HEAD`` of one job's stream and nothing else; an expired, tampered or
foreign one is a 401 like a missing token; its value is never logged. Jobs need the service's
lifespan, so these run under real uvicorn on loopback.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from jobproto import SSEDecoder
from jobproto.asgi import (
    Principal,
    Security,
    StreamCookie,
    TokenAuth,
    create_app,
    stream_session_routes,
)
from jobproto.conformance import conformance_operations
from jobproto.testing import serving

pytestmark = pytest.mark.anyio

KEEPER_TOKEN = "kt_" + "a" * 40
READER_TOKEN = "rt_" + "b" * 40  # a known token without the jobs scope
KEY = bytes(range(32))
HOSTS = ("127.0.0.1", "localhost")


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def make_security(clock: Clock, **overrides: Any) -> Security:
    fields: dict[str, Any] = {
        "auth": TokenAuth(
            {
                KEEPER_TOKEN: Principal("keeper", frozenset({"jobs"})),
                READER_TOKEN: Principal("reader", frozenset({"other"})),
            }
        ),
        "allowed_hosts": HOSTS,
        "allow_same_origin": True,
        "stream_cookie": StreamCookie(KEY, lifetime=600, clock=clock),
    }
    fields.update(overrides)
    return Security(**fields)


def make_app(security: Security) -> Any:
    return create_app(
        conformance_operations(), routes=stream_session_routes(security), security=security
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def served(clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(make_app(make_security(clock))) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


KEEPER = {"Authorization": f"Bearer {KEEPER_TOKEN}"}


async def session_cookie(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/session", headers=KEEPER)
    assert response.status_code == 200, response.text
    set_cookie = response.headers["set-cookie"]
    value = set_cookie.split(";", 1)[0].partition("=")[2]
    client.cookies.clear()  # every request below names its cookie itself
    return value


async def echo_job(client: httpx.AsyncClient) -> str:
    created = await client.post(
        "/v1/jobs", json={"operation": "echo", "messages": ["hi", "there"]}, headers=KEEPER
    )
    assert created.status_code == 201, created.text
    return str(created.json()["job_id"])


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"jobproto_stream={value}"}


async def stream_types(client: httpx.AsyncClient, job_id: str, headers: dict[str, str]) -> Any:
    response = await client.get(f"/v1/jobs/{job_id}/stream", headers=headers)
    if response.status_code != 200:
        return response.status_code
    decoder = SSEDecoder()
    return [event.event for event in decoder.feed(response.content) if event.data]


async def test_the_session_sets_a_strict_http_only_cookie(served: httpx.AsyncClient) -> None:
    response = await served.post("/v1/session", headers=KEEPER)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["expires_in"] == 600 and body["path"] == "/v1/jobs/"
    attributes = [part.strip() for part in response.headers["set-cookie"].split(";")]
    assert attributes[0].startswith("jobproto_stream=v1.")
    assert set(attributes[1:]) == {
        "Path=/v1/jobs/",
        "Max-Age=600",
        "HttpOnly",
        "SameSite=Strict",
    }  # no Secure over plain HTTP
    assert KEEPER_TOKEN not in response.text + response.headers["set-cookie"]


async def test_the_session_needs_a_token_with_the_jobs_scope(served: httpx.AsyncClient) -> None:
    bare = await served.post("/v1/session")
    assert bare.status_code == 401 and "set-cookie" not in bare.headers
    other = await served.post("/v1/session", headers={"Authorization": f"Bearer {READER_TOKEN}"})
    assert other.status_code == 403 and "set-cookie" not in other.headers
    assert other.json()["error"]["code"] == "forbidden"
    big = await served.post("/v1/session", headers=KEEPER, content=b"x" * 5000)
    assert big.status_code == 413 and "set-cookie" not in big.headers
    cleared = await served.delete("/v1/session", headers=KEEPER)
    assert cleared.status_code == 200
    assert "Max-Age=0" in cleared.headers["set-cookie"]


async def test_the_cookie_opens_a_stream(served: httpx.AsyncClient) -> None:
    value = await session_cookie(served)
    job_id = await echo_job(served)
    types = await stream_types(served, job_id, cookie(value))
    assert types == ["narration", "data", "progress", "narration", "data", "progress", "succeeded"]
    head = await served.head(f"/v1/jobs/{job_id}/stream", headers=cookie(value))
    assert head.status_code == 200
    # among other cookies, and resumed with Last-Event-ID as a browser's EventSource does
    headers = {"Cookie": f"a=b; jobproto_stream={value}; c=d", "Last-Event-ID": "5"}
    assert await stream_types(served, job_id, headers) == ["progress", "succeeded"]


async def test_the_cookie_opens_nothing_else(served: httpx.AsyncClient) -> None:
    value = await session_cookie(served)
    job_id = await echo_job(served)
    attempts = {
        "create": await served.post(
            "/v1/jobs", json={"operation": "echo", "messages": ["x"]}, headers=cookie(value)
        ),
        "cancel": await served.delete(f"/v1/jobs/{job_id}", headers=cookie(value)),
        "list": await served.get("/v1/jobs", headers=cookie(value)),
        "status": await served.get(f"/v1/jobs/{job_id}", headers=cookie(value)),
        "schema": await served.get("/openapi.json", headers=cookie(value)),
        "renew": await served.post("/v1/session", headers=cookie(value)),
        "stream by POST": await served.post(f"/v1/jobs/{job_id}/stream", headers=cookie(value)),
        "a longer path": await served.get(f"/v1/jobs/{job_id}/stream/x", headers=cookie(value)),
    }
    for what, response in attempts.items():
        assert response.status_code == 401, (what, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
    # a wrong bearer token is not rescued by a good cookie
    wrong = {"Authorization": "Bearer nope", **cookie(value)}
    assert await stream_types(served, job_id, wrong) == 401
    # the job was neither cancelled nor started by any of that
    status = await served.get(f"/v1/jobs/{job_id}", headers=KEEPER)
    assert status.json()["state"] == "queued"


async def test_an_expired_or_tampered_cookie_is_refused(
    served: httpx.AsyncClient, clock: Clock
) -> None:
    value = await session_cookie(served)
    version, expires, name, mac = value.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    later = str(int(expires) + 3600)
    foreign = StreamCookie(bytes(32), clock=clock).issue("keeper")[0]
    bad = {
        "another mac": f"{version}.{expires}.{name}.{flipped}",
        "a later expiry": f"{version}.{later}.{name}.{mac}",
        "another name": f"{version}.{expires}.cm9vdA.{mac}",
        "another key": foreign,
        "garbage": "x" * 100,
        "empty": "",
        "another version": f"v2.{expires}.{name}.{mac}",
    }
    for what, candidate in bad.items():
        job_id = await echo_job(served)
        assert await stream_types(served, job_id, cookie(candidate)) == 401, what
    clock.now = int(expires) + 1
    job_id = await echo_job(served)
    assert await stream_types(served, job_id, cookie(value)) == 401


async def test_the_cookie_value_is_never_logged(
    served: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = await session_cookie(served)
    job_id = await echo_job(served)
    await stream_types(served, job_id, cookie(value))
    await served.post("/v1/jobs", json={"operation": "echo"}, headers=cookie(value))
    await served.get(f"/v1/jobs/{job_id}/stream", headers=cookie(value + "x"))
    # the service's own records (httpx and httpcore are this test's client, logging its side)
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    assert "refused" in logged  # the refusals were logged, without the value
    assert value not in logged and value.split(".")[3] not in logged
    assert value not in repr(make_security(Clock()))


async def test_a_same_origin_page_may_post(clock: Clock) -> None:
    async with serving(make_app(make_security(clock))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            port = url.rsplit(":", 1)[1]
            body = {"operation": "echo", "messages": ["x"]}
            same = await client.post("/v1/jobs", json=body, headers={**KEEPER, "Origin": url})
            assert same.status_code == 201, same.text
            assert "access-control-allow-origin" not in same.headers
            for other in (
                f"http://localhost:{port}",
                f"https://127.0.0.1:{port}",
                "http://127.0.0.1",
            ):
                refused = await client.post(
                    "/v1/jobs", json=body, headers={**KEEPER, "Origin": other}
                )
                assert refused.status_code == 403, other
    # without a Host check any page could claim to be the service: same-origin is not honoured
    open_hosts = make_security(clock, allowed_hosts=None)
    async with serving(make_app(open_hosts)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            refused = await client.post(
                "/v1/jobs", json={"operation": "echo"}, headers={**KEEPER, "Origin": url}
            )
            assert refused.status_code == 403


def test_stream_cookie_checks_its_key_and_lifetime() -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        StreamCookie(b"short")
    with pytest.raises(ValueError, match="between"):
        StreamCookie(KEY, lifetime=0)
    assert "key" not in repr(StreamCookie(KEY)) or repr(KEY) not in repr(StreamCookie(KEY))
    cookie_ = StreamCookie(KEY, clock=lambda: 100.0)
    value, expires = cookie_.issue("keeper")
    assert expires == 700 and cookie_.check(value) == "keeper"
    assert "Secure" in cookie_.set_cookie(value, "/v1/jobs/", secure=True)


async def test_over_tls_the_cookie_is_secure(clock: Clock, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(chain))
    leaf.private_key_pem.write_to_path(str(key))
    app = make_app(make_security(clock))
    async with serving(app, ssl_certfile=chain, ssl_keyfile=key) as url:
        verify = ssl.create_default_context()
        ca.configure_trust(verify)
        async with httpx.AsyncClient(base_url=url, verify=verify, timeout=10) as client:
            response = await client.post("/v1/session", headers={**KEEPER, "Origin": url})
            assert response.status_code == 200, response.text
            assert "Secure" in [p.strip() for p in response.headers["set-cookie"].split(";")]

"""The security middleware: Host, Origin/CORS, bearer tokens and scopes, every refusal path.

In-process through ``httpx.ASGITransport`` (no stream is opened here: it buffers whole bodies),
except where a job must exist, which needs the service's lifespan: real uvicorn there.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobproto import ConnectFailed, RequestError
from jobproto.asgi import (
    Principal,
    Security,
    TokenAuth,
    create_app,
    principal_of,
    require_scope,
)
from jobproto.client import HTTPStatusError, JobClient, ssl_context
from jobproto.conformance import conformance_operations
from jobproto.testing import serving

pytestmark = pytest.mark.anyio

KEEPER_TOKEN = "kt_" + "a" * 40
HIVE_TOKEN = "ht_" + "b" * 40
OTHER_TOKEN = "ot_" + "c" * 40
KEEPER = Principal("keeper", frozenset({"jobs"}))
HIVE = Principal("hive:gpu1", frozenset({"hive:gpu1"}))
ORIGIN = "https://ui.example:8443"


def auth() -> TokenAuth:
    return TokenAuth({KEEPER_TOKEN: KEEPER, HIVE_TOKEN: HIVE})


def security(**overrides: Any) -> Security:
    fields: dict[str, Any] = {
        "auth": auth(),
        "allowed_hosts": ("localhost", "127.0.0.1", "::1"),
        "allowed_origins": (ORIGIN,),
    }
    fields.update(overrides)
    return Security(**fields)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "principal": repr(principal_of(request))})


async def hive(request: Request) -> Response:
    require_scope(request, "hive:" + request.path_params["hive_id"])
    principal = principal_of(request)
    return JSONResponse({"principal": None if principal is None else principal.name})


async def guarded(request: Request) -> Response:
    # require_scope raises RequestError: map it as the tiers' routes do
    try:
        return await hive(request)
    except RequestError as exc:
        return JSONResponse(exc.to_json(), exc.status)


def make_app(sec: Security | None) -> Any:
    routes = [Route("/health", health), Route("/v1/hives/{hive_id}", guarded, methods=["GET"])]
    return create_app(conformance_operations(), routes=routes, security=sec)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(security()))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refusal(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-correlation-id"]
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# -- TokenAuth, Principal, Security ----------------------------------------------------------------


def test_authenticate_finds_the_principal_of_a_token() -> None:
    tokens = auth()
    assert tokens.authenticate(KEEPER_TOKEN) == KEEPER
    assert tokens.authenticate(HIVE_TOKEN) == HIVE
    assert tokens.authenticate(OTHER_TOKEN) is None
    assert tokens.authenticate(KEEPER_TOKEN[:-1]) is None
    assert tokens.authenticate(KEEPER_TOKEN + "x") is None
    assert tokens.authenticate("") is None
    assert tokens.authenticate("\udcff\u00e9") is None  # any str: an unknown token, no crash


@pytest.mark.parametrize("presented", [KEEPER_TOKEN, HIVE_TOKEN, OTHER_TOKEN, "short"])
def test_authenticate_compares_against_every_token_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    tokens = TokenAuth(
        {KEEPER_TOKEN: KEEPER, HIVE_TOKEN: HIVE, "third_" + "d" * 30: Principal("x", frozenset())}
    )
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens.authenticate(presented)
    # no early exit: a match on the first token costs as many comparisons as no match at all
    assert len(calls) == 3
    # of equal-length digests, so the length of a token is not measured either
    assert {len(a) for a, _ in calls} | {len(b) for _, b in calls} == {32}


class PerHive(TokenAuth):
    """Tokens that depend on the request: one per hive named in a ``/v1/hives/{id}`` path."""

    def candidates(self, scope: Any) -> list[tuple[str, Principal]]:
        path = "" if scope is None else scope.get("path", "")
        if not path.startswith("/v1/hives/"):
            return []
        hive_id = path.removeprefix("/v1/hives/")
        return [("per_hive_" + hive_id * 8, Principal("hive:" + hive_id, {"hive:" + hive_id}))]


def test_candidates_add_tokens_that_depend_on_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = PerHive({KEEPER_TOKEN: KEEPER})
    gpu2 = {"type": "http", "path": "/v1/hives/gpu2"}
    assert tokens.authenticate("per_hive_" + "gpu2" * 8, gpu2) == Principal(
        "hive:gpu2", {"hive:gpu2"}
    )
    assert tokens.authenticate(KEEPER_TOKEN, gpu2) == KEEPER
    # the token of one hive is unknown on another hive's path, and without a request
    assert (
        tokens.authenticate("per_hive_" + "gpu2" * 8, {"type": "http", "path": "/v1/hives/x"})
        is None
    )
    assert tokens.authenticate("per_hive_" + "gpu2" * 8) is None
    assert TokenAuth({KEEPER_TOKEN: KEEPER}).candidates(gpu2) == ()
    # every candidate is compared as the fixed tokens are: equal-length digests, no early exit
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens.authenticate(KEEPER_TOKEN, gpu2)
    assert len(calls) == 2
    assert {len(a) for a, _ in calls} | {len(b) for _, b in calls} == {32}


@pytest.mark.parametrize("bad", ["", " padded ", "\ttab"])
def test_a_token_must_be_nonempty_without_spaces(bad: str) -> None:
    with pytest.raises(ValueError, match="keeper") as info:
        TokenAuth({bad: KEEPER})
    if bad.strip():
        assert bad.strip() not in str(info.value)


def test_no_token_in_any_repr() -> None:
    tokens = auth()
    sec = security()
    for text in (repr(tokens), str(tokens), repr(sec), repr(KEEPER)):
        assert KEEPER_TOKEN not in text
        assert HIVE_TOKEN not in text
    assert "keeper" in repr(tokens) and "hive:gpu1" in repr(tokens)


def test_principal_scopes_become_a_frozenset() -> None:
    principal = Principal("keeper", {"jobs"})
    assert principal.scopes == frozenset({"jobs"})
    assert principal.may("jobs") and not principal.may("hive:x")
    hash(principal)
    with pytest.raises(TypeError):
        Principal("keeper", "jobs")  # would be the scopes j, o, b, s


def test_security_normalises_hosts_and_origins_and_refuses_a_wildcard() -> None:
    sec = Security(allowed_hosts=("LocalHost.", "[::1]"), allowed_origins=("HTTPS://UI.example/",))
    assert sec.allowed_hosts == ("localhost", "::1")
    assert sec.allowed_origins == ("https://ui.example",)
    with pytest.raises(ValueError, match=r"\*"):
        Security(allowed_origins=("*",))
    with pytest.raises(TypeError):
        Security(allowed_hosts="localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Security(allowed_origins="https://ui.example")  # type: ignore[arg-type]
    assert Security().auth is None and Security().allowed_hosts is None


# -- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(OTHER_TOKEN),
        bearer(KEEPER_TOKEN[:-1]),
        {"Authorization": KEEPER_TOKEN},  # no scheme
        {"Authorization": f"Basic {KEEPER_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "unknown", "truncated", "no-scheme", "basic", "empty", "bare-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/job_doesnotexist"),
        ("DELETE", "/v1/jobs/job_doesnotexist"),
        ("GET", "/v1/jobs/job_doesnotexist/stream"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/hives/gpu1"),
        ("GET", "/no/such/route"),
    ],
)
async def test_without_a_valid_token_every_path_is_401(
    client: httpx.AsyncClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(method, path, headers=headers)
    assert_refusal(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEEPER_TOKEN not in response.text


async def test_two_authorization_headers_are_401(client: httpx.AsyncClient) -> None:
    headers = [("Authorization", f"Bearer {KEEPER_TOKEN}"), ("Authorization", "Bearer x")]
    response = await client.get("/v1/jobs", headers=headers)
    assert_refusal(response, 401, "unauthorized")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_a_valid_token_passes_and_names_the_principal(
    client: httpx.AsyncClient, scheme: str
) -> None:
    response = await client.get("/v1/jobs", headers={"Authorization": f"{scheme} {KEEPER_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.json()["jobs"] == []
    response = await client.get("/v1/jobs/job_doesnotexist", headers=bearer(KEEPER_TOKEN))
    assert response.status_code == 404  # past the middleware: the route answers


async def test_a_public_path_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["principal"] == "None"
    # a token there is not checked (a public path answers the same to everyone)
    assert (await client.get("/health", headers=bearer(OTHER_TOKEN))).status_code == 200


async def test_the_jobs_routes_need_the_jobs_scope(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/job_doesnotexist"),
        ("GET", "/v1/jobs/job_doesnotexist/stream"),
        ("DELETE", "/v1/jobs/job_doesnotexist"),
        ("GET", "/openapi.json"),
    ]:
        response = await client.request(method, path, headers=bearer(HIVE_TOKEN))
        error = assert_refusal(response, 403, "forbidden")
        assert "hive:gpu1" in error["message"]


async def test_require_scope_in_a_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/hives/gpu1", headers=bearer(HIVE_TOKEN))
    assert response.status_code == 200
    assert response.json() == {"principal": "hive:gpu1"}
    response = await client.get("/v1/hives/gpu2", headers=bearer(HIVE_TOKEN))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    response = await client.get("/v1/hives/gpu1", headers=bearer(KEEPER_TOKEN))
    assert response.status_code == 403


def test_require_scope_without_authentication_passes_and_on_a_public_path_is_401() -> None:
    require_scope({"type": "http", "state": {}}, "anything")  # no authentication configured
    with pytest.raises(RequestError) as info:
        require_scope({"type": "http", "state": {"principal": None}}, "jobs")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with pytest.raises(RequestError) as info:
        require_scope({"type": "http", "state": {"principal": HIVE}}, "jobs")
    assert (info.value.status, info.value.code) == (403, "forbidden")
    require_scope({"type": "http", "state": {"principal": KEEPER}}, "jobs")
    assert principal_of({"type": "http"}) is None


async def test_without_security_everything_is_open() -> None:
    transport = httpx.ASGITransport(app=make_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as c:
        assert (
            await c.get("/v1/jobs", headers={"Origin": "https://evil.example"})
        ).status_code == 200
        assert (await c.get("/v1/hives/x")).json() == {"principal": None}


async def test_no_authentication_but_host_checks() -> None:
    sec = Security(allowed_hosts=("localhost",))
    transport = httpx.ASGITransport(app=make_app(sec))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        assert (await c.get("/v1/jobs")).status_code == 200
        assert (await c.get("/v1/hives/x")).json() == {"principal": None}
        response = await c.get("/v1/jobs", headers={"Host": "evil.example"})
        assert_refusal(response, 421, "misdirected_request")


async def test_the_401_is_the_same_for_a_job_that_exists_and_one_that_does_not() -> None:
    async with serving(make_app(security(allowed_hosts=None))) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            created = await c.post(
                "/v1/jobs",
                json={"operation": "echo", "messages": ["hi"]},
                headers=bearer(KEEPER_TOKEN),
            )
            assert created.status_code == 201, created.text
            real = created.json()["job_id"]
            for suffix, method in [("", "GET"), ("", "DELETE"), ("/stream", "GET")]:
                for token in (None, OTHER_TOKEN, HIVE_TOKEN):
                    answers = []
                    for job_id in (real, "job_" + "0" * 26, "not-a-job-id"):
                        headers = {} if token is None else bearer(token)
                        r = await c.request(method, f"/v1/jobs/{job_id}{suffix}", headers=headers)
                        answers.append(
                            (
                                r.status_code,
                                r.content,
                                sorted(
                                    (k, v)
                                    for k, v in r.headers.items()
                                    if k not in ("x-correlation-id", "date")
                                ),
                            )
                        )
                    assert answers[0][0] == (401 if token != HIVE_TOKEN else 403)
                    assert answers[0] == answers[1] == answers[2]
            # and the job is still there, untouched, for its owner
            status = await c.get(f"/v1/jobs/{real}", headers=bearer(KEEPER_TOKEN))
            assert status.status_code == 200


# -- Host ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:7833",
        "LOCALHOST:80",
        "localhost.",
        "127.0.0.1",
        "127.0.0.1:9",
        "[::1]",
        "[::1]:7833",
    ],
)
async def test_an_allowed_host_with_or_without_port_passes(
    client: httpx.AsyncClient, host: str
) -> None:
    response = await client.get("/v1/jobs", headers={**bearer(KEEPER_TOKEN), "Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:7833",
        "localhost.evil.example",
        "127.0.0.2",
        "[::2]:7833",
        "::1",  # an IPv6 literal must be bracketed (RFC 3986 §3.2.2)
        "[::1",
        "[::1]x",
        "localhost:http",
        "",
    ],
)
async def test_another_host_is_421_before_anything_else(
    client: httpx.AsyncClient, host: str
) -> None:
    # even with a valid token, on a public path, or a preflight from an allowed origin
    for method, path, extra in [
        ("GET", "/v1/jobs", bearer(KEEPER_TOKEN)),
        ("GET", "/health", {}),
        ("OPTIONS", "/v1/jobs", {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}),
    ]:
        response = await client.request(method, path, headers={**extra, "Host": host})
        error = assert_refusal(response, 421, "misdirected_request")
        if host:
            assert host in error["message"]
        assert "127.0.0.1" not in error["message"] or host.startswith("127.0.0.1")
        assert "access-control-allow-origin" not in response.headers


async def test_a_request_without_host_is_421() -> None:
    app = make_app(security())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": "GET",
        "path": "/health",
        "raw_path": b"/health",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 421
    assert b"no Host header" in sent[1]["body"]


async def call(app: Any, raw_path: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    """One request straight into the ASGI app, headers exactly as given (duplicates kept)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body)


@pytest.mark.parametrize(
    "hosts",
    [[b"127.0.0.1", b"evil.example"], [b"evil.example", b"127.0.0.1"], [b"localhost"] * 2],
)
async def test_more_than_one_host_is_400(hosts: list[bytes]) -> None:
    # RFC 9112 §3.2: neither the first nor the last one wins
    headers = [(b"host", h) for h in hosts] + [
        (b"authorization", b"Bearer " + KEEPER_TOKEN.encode())
    ]
    status, body = await call(make_app(security()), b"/health", headers)
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert "more than one Host" in body["error"]["message"]


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        (b"http://evil.example/v1/jobs", b"127.0.0.1", 421),
        (b"https://evil.example:7833/health", b"localhost", 421),
        (b"http://user@127.0.0.1/health", b"127.0.0.1", 421),
        (b"http://127.0.0.1/v1/jobs", b"evil.example", 200),
        (b"HTTP://[::1]:7833/health", b"evil.example", 200),
    ],
)
async def test_an_absolute_form_target_is_checked_by_its_authority(
    target: bytes, host: bytes, status: int
) -> None:
    # RFC 9112 §3.2.2: the target's authority is the host, the Host header is ignored
    headers = [(b"host", host), (b"authorization", b"Bearer " + KEEPER_TOKEN.encode())]
    got, body = await call(make_app(security()), target, headers)
    assert got == status, body
    if status == 421:
        assert body["error"]["code"] == "misdirected_request"


def raw_exchange(port: int, head: bytes) -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_host_and_target_checks_under_each_parser(parser: Any) -> None:
    token = b"Authorization: Bearer " + KEEPER_TOKEN.encode() + b"\r\nConnection: close\r\n"
    cases = [
        (b"GET http://evil.example/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n", 421),
        (b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n", 400),
        (b"GET http://127.0.0.1/v1/jobs?limit=1 HTTP/1.1\r\nHost: evil.example\r\n", 200),
        (b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n", 200),
    ]
    async with serving(make_app(security()), http=parser) as url:
        port = int(url.rsplit(":", 1)[1])
        for head, status in cases:
            got, body = await anyio.to_thread.run_sync(raw_exchange, port, head + token + b"\r\n")
            assert got == status, (head, body)
            # the error shape, whether the parser (h11: more than one Host) or the app refused
            if status == 200:
                assert body["jobs"] == []
            else:
                codes = {400: "bad_request", 421: "misdirected_request"}
                assert body["error"]["code"] == codes[status]


# -- Origin and CORS -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://ui.example:8443", "https://ui.example", "null", "*"],
)
async def test_another_origin_is_403_even_with_a_token(
    client: httpx.AsyncClient, origin: str
) -> None:
    for method, extra in [
        ("GET", bearer(KEEPER_TOKEN)),
        ("POST", bearer(KEEPER_TOKEN)),
        ("OPTIONS", {"Access-Control-Request-Method": "GET"}),
        ("GET", {}),
    ]:
        response = await client.request(method, "/v1/jobs", headers={**extra, "Origin": origin})
        assert_refusal(response, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in response.headers
    # a public path is no way around it
    response = await client.get("/health", headers={"Origin": origin})
    assert_refusal(response, 403, "origin_not_allowed")


async def test_a_preflight_from_an_allowed_origin_is_answered(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/v1/jobs/job_x/stream",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    h = response.headers
    assert h["access-control-allow-origin"] == ORIGIN
    assert h["vary"] == "Origin"
    assert h["access-control-max-age"] == "600"
    methods = {m.strip() for m in h["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "PUT", "DELETE"}
    allowed = {name.strip().lower() for name in h["access-control-allow-headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
        "x-correlation-id",
        "traceparent",
        "tracestate",
    } <= allowed
    assert "*" not in h["access-control-allow-origin"] + h["access-control-allow-headers"]


async def test_an_options_that_is_no_preflight_goes_through_the_checks(
    client: httpx.AsyncClient,
) -> None:
    # no Access-Control-Request-Method: not a preflight, so no free pass past the token
    response = await client.options("/v1/jobs", headers={"Origin": ORIGIN})
    assert_refusal(response, 401, "unauthorized")
    response = await client.options("/v1/jobs", headers=bearer(KEEPER_TOKEN))
    assert response.status_code == 405


async def test_responses_to_an_allowed_origin_carry_the_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    for headers, status in [
        ({**bearer(KEEPER_TOKEN), "Origin": ORIGIN}, 200),
        ({"Origin": ORIGIN}, 401),  # the page can read why it was refused
        ({**bearer(HIVE_TOKEN), "Origin": ORIGIN}, 403),
    ]:
        response = await client.get("/v1/jobs", headers=headers)
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["vary"] == "Origin"
        assert response.headers["access-control-expose-headers"] == "X-Correlation-ID"
    # the same origin spelt in capitals is the same origin (RFC 6454 §4)
    response = await client.get(
        "/v1/jobs", headers={**bearer(KEEPER_TOKEN), "Origin": ORIGIN.upper()}
    )
    assert response.status_code == 200
    # without Origin: no CORS headers at all
    response = await client.get("/v1/jobs", headers=bearer(KEEPER_TOKEN))
    assert "access-control-allow-origin" not in response.headers


# -- logs ------------------------------------------------------------------------------------------


async def test_no_token_in_any_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(make_app(security(allowed_hosts=("127.0.0.1",)))) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            for headers in [
                bearer(KEEPER_TOKEN),
                bearer(HIVE_TOKEN),
                bearer(OTHER_TOKEN),
                {**bearer(OTHER_TOKEN), "Origin": "https://evil.example"},
                {**bearer(OTHER_TOKEN), "Host": "evil.example"},
                {**bearer(KEEPER_TOKEN), "Origin": ORIGIN},
            ]:
                await c.get("/v1/jobs", headers=headers)
                await c.post("/v1/jobs", headers=headers, json={"operation": "nope"})
                await c.post("/v1/jobs", headers=headers, json={"operation": "echo"})
                await c.get("/v1/jobs/job_x", headers=headers)
    assert "refused" in caplog.text  # refusals are logged ...
    for token in (KEEPER_TOKEN, HIVE_TOKEN, OTHER_TOKEN):
        assert token not in caplog.text  # ... without the token


# -- the client against a secured service over TLS ------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key: the pinned-certificate case."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobproto test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@asynccontextmanager
async def serving_tls(app: Any, cert: Path, key: Path) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"https://127.0.0.1:{port}"
        finally:
            app.state.jobs.begin_shutdown()
            server.should_exit = True


async def test_the_client_with_token_and_pinned_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    app = make_app(security(allowed_hosts=("127.0.0.1",)))
    async with serving_tls(app, cert, key) as url:
        async with JobClient(url, token=KEEPER_TOKEN, verify=str(cert)) as client:
            result = await client.run("echo", messages=["over tls"], result={"ok": True})
            assert result == {"ok": True}
        # the same service without the token: a 401, raised as the client's refusal error
        async with JobClient(url, verify=str(cert)) as client:
            with pytest.raises(HTTPStatusError) as info:
                await client.list()
            assert (info.value.status, info.value.code) == (401, "unauthorized")
        # a certificate nobody vouches for is refused before anything is sent
        async with JobClient(url, token=KEEPER_TOKEN) as client:
            with pytest.raises(ConnectFailed):
                await client.list()


async def test_a_ca_signed_server_certificate_pinned_as_the_only_trust_anchor(
    tmp_path: Path,
) -> None:
    # The pin is the server's own certificate, issued by a CA the client does not know: not a CA
    # itself, so OpenSSL accepts it as an anchor only with VERIFY_X509_PARTIAL_CHAIN (Python
    # 3.13 sets that flag by default, 3.11 and 3.12 do not).
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(chain))
    leaf.private_key_pem.write_to_path(str(key))
    pin = tmp_path / "pin.pem"
    leaf.cert_chain_pems[0].write_to_path(str(pin))  # the leaf alone, not its CA
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(other))
    assert ssl_context(pin).verify_mode == ssl.CERT_REQUIRED

    app = make_app(security(allowed_hosts=("127.0.0.1",)))
    async with serving_tls(app, chain, key) as url:
        async with JobClient(url, token=KEEPER_TOKEN, verify=str(pin)) as client:
            assert (await client.list()).jobs == []
        async with httpx.AsyncClient(verify=ssl_context(pin)) as http:
            assert (await http.get(url + "/health")).status_code == 200
        # an unrelated certificate, pinned, does not vouch for this server
        async with JobClient(url, token=KEEPER_TOKEN, verify=str(other)) as client:
            with pytest.raises(ConnectFailed):
                await client.list()

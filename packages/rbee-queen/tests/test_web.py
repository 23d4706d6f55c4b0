"""The queen's web page (``rbee_queen.web``): served publicly with a strict CSP, self-contained
(nothing from elsewhere), and the stream cookie the page reads job streams with.

In-process (``httpx.ASGITransport``): nothing here opens a stream; the browser test
(``tests/e2e/test_web.py``) does.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest

from jobproto.asgi import StreamCookie
from rbee_contracts.auth import join_token, keeper_token, stream_cookie_key
from rbee_queen.app import create_app
from rbee_queen.settings import QueenSettings
from rbee_queen.web import PAGE_PATHS

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))
KEEPER = {"Authorization": f"Bearer {keeper_token(SECRET)}"}
BASE = "http://127.0.0.1:8500"


@pytest.fixture
async def client(tmp_path: object) -> AsyncIterator[httpx.AsyncClient]:
    settings = QueenSettings(secret=SECRET, allowed_hosts=(), state_dir=str(tmp_path))
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


async def test_the_page_and_its_files_need_no_token(client: httpx.AsyncClient) -> None:
    media = {"/": "text/html", "/web/app.js": "text/javascript", "/web/app.css": "text/css"}
    for path in PAGE_PATHS:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(media.get(path, "text/javascript"))
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    page = (await client.get("/")).text
    for path in PAGE_PATHS[1:]:
        assert f'"{path}"' in page  # the page loads each of its files
    # the rest of the queen still wants the token, and a rebinding page's Host is refused
    assert (await client.get("/v1/hives")).status_code == 401
    assert (await client.get("/web/other.js")).status_code == 401
    assert (await client.get("/", headers={"Host": "evil.example"})).status_code == 421


def test_the_page_loads_nothing_from_elsewhere() -> None:
    files = resources.files("rbee_queen.web")
    for name in ("index.html", "app.js", "chart.js", "app.css"):
        text = files.joinpath(name).read_text()
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name
        assert "<script>" not in text and " on" + "click=" not in text  # CSP: no inline code
    script = files.joinpath("app.js").read_text()
    # the token goes in a header, never in a URL, and output is text, never HTML
    assert "Authorization" in script and "access_token" not in script
    assert "innerHTML" not in script


async def test_a_session_gives_the_page_a_stream_cookie(client: httpx.AsyncClient) -> None:
    refused = await client.post("/v1/session")
    assert refused.status_code == 401
    hive = {"Authorization": f"Bearer {join_token(SECRET, 'h1')}"}
    assert (await client.post("/v1/session", headers=hive)).status_code == 401  # unknown hive
    response = await client.post("/v1/session", headers={**KEEPER, "Origin": BASE})
    assert response.status_code == 200, response.text
    value = response.headers["set-cookie"].split(";", 1)[0].partition("=")[2]
    assert "HttpOnly" in response.headers["set-cookie"]
    assert "SameSite=Strict" in response.headers["set-cookie"]
    # signed with a key derived from the secret: a restarted queen accepts it, another does not
    assert StreamCookie(stream_cookie_key(SECRET)).check(value) == "keeper"
    assert StreamCookie(stream_cookie_key(bytes(32))).check(value) is None


async def test_the_page_may_call_the_queen_from_its_own_origin(client: httpx.AsyncClient) -> None:
    # browsers send Origin with every POST, a same-origin one included
    same = await client.post("/v1/session", headers={**KEEPER, "Origin": BASE})
    assert same.status_code == 200, same.text
    assert "access-control-allow-origin" not in same.headers
    other = await client.post(
        "/v1/jobs",
        json={"operation": "status"},
        headers={**KEEPER, "Origin": "http://evil.example:8500"},
    )
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "origin_not_allowed"

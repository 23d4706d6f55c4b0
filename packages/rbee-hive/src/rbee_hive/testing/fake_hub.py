"""A FAKE Hugging Face hub: the few endpoints ``snapshot_download`` uses, for repos in memory.

One fake for every test that downloads: the hive's tests serve ``FakeHub().app()`` in-process
(``jobproto.testing.serving``); the end-to-end tests run it as a process of its own::

    python -m rbee_hive.testing.fake_hub --repo org/tiny --dir MODEL_DIR [--extra NAME=BYTES]

which serves one repository, the files of ``MODEL_DIR`` plus ``--extra`` files of deterministic
pseudo-random bytes (``pseudo_random_bytes``), prints ``FAKE_HUB_LISTENING {"port": N}`` once
listening, and serves until SIGTERM.

Endpoints:

- ``GET /api/models/{org}/{repo}/revision/{rev}``: sha and siblings (with sizes)
- ``GET /api/models/{org}/{repo}/tree/{rev}``: the file list
- ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{file}``: ETag, X-Repo-Commit, Content-Length;
  ``Range`` requests are answered 206
- ``GET /_requests``: every request seen, as ``[method, path, range]`` (for a test in another
  process); ``POST /_control`` with ``{"cut_once": {FILE: N}}`` (a JSON object of at most
  ``MAX_CONTROL_BYTES``; the key optional) sets ``cut_once``, so a test in another process arms
  the cuts it needs itself. Any other body is answered 400 in jobproto's error shape.

What it does to a download (attributes, set by the test):

- ``cut_once``: ``{file: n}``: the next full GET of the file sends n bytes, then drops the
  connection (once);
- ``fail``: files answered 500 (until removed);
- ``hold(*files)``: the bodies of those files wait until ``release()`` (a stalled hub, for as long
  as the test needs, without guessing a duration).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobproto import RequestError

__all__ = ["LISTENING", "MAX_CONTROL_BYTES", "FakeHub", "file_gets", "main", "pseudo_random_bytes"]

#: the line the hub's process prints once it listens: ``FAKE_HUB_LISTENING {"port": N}``
LISTENING = "FAKE_HUB_LISTENING"

#: one request the hub saw: method, path, ``Range`` header (None without one)
Seen = tuple[str, str, str | None]

#: the largest ``POST /_control`` body the hub reads
MAX_CONTROL_BYTES = 64 * 1024


def pseudo_random_bytes(name: str, size: int) -> bytes:
    """The content of an ``--extra`` file: the same for a given name and size, everywhere."""
    return random.Random(name).randbytes(size)


def file_gets(requests: Sequence[Seen], filename: str) -> list[str | None]:
    """The Range header of every GET of ``filename`` among ``requests`` (None: a whole-file
    GET)."""
    return [
        rng
        for method, path, rng in requests
        if method == "GET" and "/resolve/" in path and path.endswith("/" + filename)
    ]


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FakeHub:
    """Repositories held in memory, served by ``app()``; see the module's docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.requests: list[Seen] = []
        self.cut_once: dict[str, int] = {}
        self.fail: set[str] = set()
        self.held: set[str] = set()
        self._released: anyio.Event | None = None

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Serve ``files`` as ``repo_id``; returns its commit sha."""
        sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.repos[repo_id] = (sha, files)
        return sha

    def file_gets(self, filename: str, since: int = 0) -> list[str | None]:
        """The Range header of every GET of ``filename`` (None: a whole-file GET), from the
        ``since``-th request the hub saw on."""
        return file_gets(self.requests[since:], filename)

    def hold(self, *filenames: str) -> None:
        """Make GETs of ``filenames`` wait, after their headers, until ``release()``."""
        self.held.update(filenames)

    def release(self) -> None:
        """Let every held body go (and hold nothing any more)."""
        self.held.clear()
        if self._released is not None:
            self._released.set()
            self._released = None

    async def _wait_if_held(self, filename: str) -> None:
        if filename in self.held:
            if self._released is None:
                self._released = anyio.Event()  # made on the loop that serves the hub
            await self._released.wait()

    def control(self, raw: bytes) -> None:
        """Set ``cut_once`` from a ``POST /_control`` body; ``RequestError`` (400) for any body
        but a JSON object of known keys and values."""

        def refuse(message: str) -> RequestError:
            return RequestError(400, "invalid_control", message)

        try:
            changes = json.loads(raw)
        except (ValueError, RecursionError):
            raise refuse("the body is not JSON") from None
        if not isinstance(changes, dict):
            raise refuse("the body must be a JSON object")
        unknown = sorted(set(changes) - {"cut_once"})
        if unknown:
            raise refuse(f"unknown keys {unknown}: only cut_once is known")
        if "cut_once" in changes:
            cuts = changes["cut_once"]
            if not isinstance(cuts, dict) or not all(
                type(n) is int and n >= 0 for n in cuts.values()
            ):
                raise refuse("cut_once must map file names to byte counts (integers >= 0)")
            self.cut_once = dict(cuts)

    def _repo(self, request: Request) -> tuple[str, str, dict[str, bytes]] | Response:
        repo_id = f"{request.path_params['org']}/{request.path_params['repo']}"
        if repo_id not in self.repos:
            return JSONResponse(
                {"error": "not found"}, 404, headers={"X-Error-Code": "RepoNotFound"}
            )
        sha, files = self.repos[repo_id]
        if request.path_params["rev"] not in ("main", sha):
            headers = {"X-Error-Code": "RevisionNotFound"}
            return JSONResponse({"error": "no such revision"}, 404, headers=headers)
        return repo_id, sha, files

    def app(self) -> Starlette:
        async def info(request: Request) -> Response:
            self.requests.append(("GET", request.url.path, None))
            found = self._repo(request)
            if isinstance(found, Response):
                return found
            repo_id, sha, files = found
            siblings = [
                {"rfilename": name, "size": len(data), "blobId": _oid(data)}
                for name, data in files.items()
            ]
            return JSONResponse(
                {"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": siblings}
            )

        async def tree(request: Request) -> Response:
            self.requests.append(("GET", request.url.path, None))
            found = self._repo(request)
            if isinstance(found, Response):
                return found
            _, _, files = found
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                for name, data in files.items()
            ]
            return JSONResponse(entries)

        async def seen(request: Request) -> Response:
            return JSONResponse(self.requests)

        async def control(request: Request) -> Response:
            try:
                self.control(await _read_bounded(request, MAX_CONTROL_BYTES))
            except RequestError as exc:
                return JSONResponse(exc.to_json(), exc.status)
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/_requests", seen, methods=["GET"]),
                Route("/_control", control, methods=["POST"]),
                Route("/api/models/{org}/{repo}/revision/{rev}", info, methods=["GET"]),
                Route("/api/models/{org}/{repo}/tree/{rev}", tree, methods=["GET"]),
                Route(
                    "/{org}/{repo}/resolve/{rev}/{filename:path}",
                    _Resolve(self),
                    methods=["GET", "HEAD"],
                ),
            ]
        )


class _Resolve:
    """The file endpoint, as plain ASGI: it must be able to drop a connection mid-body."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        request = Request(scope, receive)
        method = request.method
        range_header = request.headers.get("range")
        hub.requests.append((method, request.url.path, range_header))
        found = hub._repo(request)
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        _, sha, files = found
        filename = request.path_params["filename"]
        if filename not in files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            missing = JSONResponse({"error": "no such file"}, 404, headers=headers)
            await missing(scope, receive, send)
            return
        data = files[filename]
        if method == "GET" and filename in hub.fail:
            await JSONResponse({"error": "boom"}, 500)(scope, receive, send)
            return
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status, body = 200, data
        if range_header and range_header.startswith("bytes="):
            start_text, _, end_text = range_header[len("bytes=") :].partition("-")
            start = int(start_text)
            end = int(end_text) if end_text else len(data) - 1
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await hub._wait_if_held(filename)
        if status == 200 and filename in hub.cut_once:
            cut = hub.cut_once.pop(filename)
            await send({"type": "http.response.body", "body": body[:cut], "more_body": True})
            # Returning without finishing the body makes uvicorn drop the connection: the
            # client sees fewer bytes than Content-Length promised.
            return
        await send({"type": "http.response.body", "body": body})


async def _read_bounded(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(400, "invalid_control", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _pair(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=BYTES, got {text!r}")
    return name, int(value)


def main(argv: list[str] | None = None) -> None:
    """Serve one repository until SIGTERM (see the module's docstring)."""
    from jobproto.server import serve

    parser = argparse.ArgumentParser(
        prog="python -m rbee_hive.testing.fake_hub",
        description="A fake Hugging Face hub serving one repository, for tests.",
    )
    parser.add_argument("--repo", required=True, help="the repository id, e.g. org/tiny")
    parser.add_argument("--dir", required=True, type=Path, help="the files it serves")
    parser.add_argument("--extra", type=_pair, action="append", default=[], metavar="NAME=BYTES")
    args = parser.parse_args(argv)
    files = {
        str(path.relative_to(args.dir)): path.read_bytes()
        for path in sorted(args.dir.rglob("*"))
        if path.is_file()
    }
    for name, size in args.extra:
        files[name] = pseudo_random_bytes(name, size)
    hub = FakeHub()
    hub.add(args.repo, files)

    def ready(port: int) -> None:
        print(f"{LISTENING} {json.dumps({'port': port})}", flush=True)

    serve(hub.app(), "127.0.0.1", 0, on_ready=ready)


if __name__ == "__main__":
    main()

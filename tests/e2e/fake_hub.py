"""A FAKE Hugging Face hub, run as its own process by the end-to-end tests.

    python fake_hub.py --repo org/tiny --dir MODEL_DIR [--extra NAME=BYTES] [--cut FILE=BYTES]

It serves one repository: the files of ``MODEL_DIR`` (the tiny model), plus ``--extra`` files of
deterministic pseudo-random bytes (big enough to cross huggingface_hub's 10 MiB resume chunk).
The endpoints are the few ``snapshot_download`` uses (adapted from the hive's own test fake,
``packages/rbee-hive/tests/conftest.py``):

- ``GET /api/models/{org}/{repo}/revision/{rev}``: sha and siblings (with sizes)
- ``GET /api/models/{org}/{repo}/tree/{rev}``: the file list
- ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{file}``: ETag, X-Repo-Commit, Content-Length;
  ``Range`` requests are answered 206

``--cut FILE=N``: the first full GET of FILE sends N bytes and then drops the connection.
``GET /_requests`` lists every request seen as ``[method, path, range]`` (for the test's checks).
Once listening it prints one line, ``FAKE_HUB_LISTENING {"port": N}``, and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobproto.server import serve

LISTENING = "FAKE_HUB_LISTENING"


def pseudo_random_bytes(name: str, size: int) -> bytes:
    """The content of an ``--extra`` file: the same for a given name and size, everywhere."""
    return random.Random(name).randbytes(size)


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes], cut_once: dict[str, int]) -> None:
        self.repo_id = repo_id
        self.files = files
        self.sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.cut_once = dict(cut_once)
        self.requests: list[tuple[str, str, str | None]] = []

    def found(self, request: Request) -> Response | None:
        repo_id = f"{request.path_params['org']}/{request.path_params['repo']}"
        if repo_id != self.repo_id:
            return JSONResponse(
                {"error": "not found"}, 404, headers={"X-Error-Code": "RepoNotFound"}
            )
        if request.path_params["rev"] not in ("main", self.sha):
            headers = {"X-Error-Code": "RevisionNotFound"}
            return JSONResponse({"error": "no such revision"}, 404, headers=headers)
        return None

    def app(self) -> Starlette:
        async def info(request: Request) -> Response:
            self.requests.append(("GET", request.url.path, None))
            missing = self.found(request)
            if missing is not None:
                return missing
            siblings = [
                {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            return JSONResponse(
                {"id": self.repo_id, "modelId": self.repo_id, "sha": self.sha, "siblings": siblings}
            )

        async def tree(request: Request) -> Response:
            self.requests.append(("GET", request.url.path, None))
            missing = self.found(request)
            if missing is not None:
                return missing
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                }
                for name, data in self.files.items()
            ]
            return JSONResponse(entries)

        async def requests(request: Request) -> Response:
            return JSONResponse(self.requests)

        return Starlette(
            routes=[
                Route("/_requests", requests, methods=["GET"]),
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
        missing = hub.found(request)
        if missing is not None:
            await missing(scope, receive, send)
            return
        filename = request.path_params["filename"]
        if filename not in hub.files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.sha}
            await JSONResponse({"error": "no such file"}, 404, headers=headers)(
                scope, receive, send
            )
            return
        data = hub.files[filename]
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": hub.sha,
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
        if status == 200 and filename in hub.cut_once:
            cut = hub.cut_once.pop(filename)
            await send({"type": "http.response.body", "body": body[:cut], "more_body": True})
            # Returning without finishing the body makes uvicorn drop the connection: the
            # client sees fewer bytes than Content-Length promised.
            return
        await send({"type": "http.response.body", "body": body})


def _pair(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=BYTES, got {text!r}")
    return name, int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--extra", type=_pair, action="append", default=[])
    parser.add_argument("--cut", type=_pair, action="append", default=[])
    args = parser.parse_args()
    files = {
        str(path.relative_to(args.dir)): path.read_bytes()
        for path in sorted(args.dir.rglob("*"))
        if path.is_file()
    }
    for name, size in args.extra:
        files[name] = pseudo_random_bytes(name, size)
    hub = FakeHub(args.repo, files, dict(args.cut))

    def ready(port: int) -> None:
        print(f"{LISTENING} {json.dumps({'port': port})}", flush=True)

    serve(hub.app(), "127.0.0.1", 0, on_ready=ready)


if __name__ == "__main__":
    sys.exit(main())

"""Real rbee processes for the relay figures: workers on the synthetic engine and a queen.

The queen learns about the workers the way it learns about any: a hive registers them with
``PUT /v1/hives/{id}``. Here the benchmark plays that hive (it registers once, with a heartbeat
the longest heartbeat interval a hive may have, 300 s, so the hive goes ``down`` only after 15
minutes of silence: longer than any section takes); no hive process sits on the
token path in rbee anyway (the queen relays ``infer`` straight to the worker, ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx

from rbee_contracts import auth
from rbee_contracts.records import MAX_HEARTBEAT_INTERVAL
from rbee_contracts.worker_cli import LISTENING_PREFIX, worker_argv

from ._ctx import Ctx
from ._procs import Proc

__all__ = ["infer_body", "keeper_headers", "register_hive", "start_queen", "start_worker"]

HIVE_ID = "bench"


def start_worker(
    ctx: Ctx,
    name: str,
    *,
    model_name: str,
    tokens_per_second: float = 0.0,
    max_concurrency: int = 1000,
    max_queue: int | None = None,
    python: str = sys.executable,
    engine: str = "synthetic",
    model: str | None = None,
    engine_args: dict[str, str] | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Proc:
    eargs = dict(engine_args or {})
    if engine == "synthetic":
        eargs.setdefault("tokens_per_second", f"{tokens_per_second:g}")
        eargs.setdefault("max_model_len", "1000000")
    args = [
        python,
        "-m",
        "rbee_worker.app",
        *worker_argv(
            model=model,
            engine=engine,
            host="127.0.0.1",
            worker_id=name,
            model_name=model_name,
            max_concurrency=max_concurrency,
            max_queue=max_concurrency if max_queue is None else max_queue,
            engine_args=eargs,
        ),
    ]
    return ctx.procs.start(name, args, prefix=LISTENING_PREFIX, timeout=timeout, env=env)


def start_queen(ctx: Ctx, state_dir: Path, python: str = sys.executable) -> Proc:
    args = [
        python,
        "-m",
        "rbee_queen.app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        "--log-level",
        "warning",
    ]
    return ctx.procs.start("queen", args, prefix="RBEE_QUEEN_LISTENING")


def keeper_headers(state_dir: Path) -> dict[str, str]:
    """What the keeper presents to the queen started with ``state_dir``: the token it wrote."""
    return auth.bearer(auth.read_token_file(state_dir / auth.KEEPER_TOKEN_FILE))


def _join_headers(state_dir: Path) -> dict[str, str]:
    """What the bench's hive presents: its join token, derived from the queen's secret."""
    secret = auth.load_or_create_secret(state_dir / auth.SECRET_FILE)
    return auth.bearer(auth.join_token(secret, HIVE_ID))


async def wait_ready(http: httpx.AsyncClient, worker: Proc, within: float = 60.0) -> None:
    with anyio.fail_after(within):
        while True:
            try:
                if (await http.get(f"{worker.url}/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def register_hive(
    http: httpx.AsyncClient,
    queen: Proc,
    state_dir: Path,
    workers: dict[str, Proc],
    engine: str = "synthetic",
) -> None:
    """Register ``{model name: worker}`` with the queen (started with ``state_dir``) as one
    ready hive, with the hive's join token. The workers run without a token of their own (on
    loopback), so they take the queen's calls whatever it presents."""
    body: dict[str, Any] = {
        "hive_id": HIVE_ID,
        # Never called: every model already has a ready worker, so nothing is spawned.
        "url": "http://127.0.0.1:9",
        "heartbeat_interval": MAX_HEARTBEAT_INTERVAL,
        "models": sorted(workers),
        "workers": [
            {
                "worker_id": proc.name,
                "model": model,
                "state": "ready",
                "url": proc.url,
                "pid": proc.pid,
                "engine": engine,
            }
            for model, proc in workers.items()
        ],
    }
    response = await http.put(
        f"{queen.url}/v1/hives/{HIVE_ID}", json=body, headers=_join_headers(state_dir)
    )
    if response.status_code not in (200, 201):
        raise RuntimeError(f"registering the bench hive: {response.status_code} {response.text}")


def infer_body(max_tokens: int, model: str | None = None, prompt: str = "hello") -> dict[str, Any]:
    """An ``infer`` request: to the queen with ``model``, to a worker without."""
    body: dict[str, Any] = {"operation": "infer", "prompt": prompt, "max_tokens": max_tokens}
    if model is not None:
        body["model"] = model
    return body

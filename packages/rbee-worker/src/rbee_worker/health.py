"""Plain HTTP endpoints next to the jobs: ``/health``, ``/ready``, ``/v1/worker``.

Supervisors poll these (the hive waits on ``/ready`` after spawning, the queen probes ``/health``
before first use), so they are cheap, never block on the engine, and answer while loading.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .worker import Worker

__all__ = ["health_routes"]

_NO_STORE = {"Cache-Control": "no-store"}


def health_routes(worker: Worker) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        """200 while the process serves; 503 once the engine is dead."""
        reason = await worker.dead_reason()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "reason": reason}, 503, _NO_STORE)
        return JSONResponse({"status": "ok"}, 200, _NO_STORE)

    async def ready(request: Request) -> Response:
        """200 once the model is loaded and the engine alive; 503 with the state otherwise."""
        await worker.dead_reason()  # a dead engine turns the state to failed
        if worker.state == "ready":
            body = {
                "ready": True,
                "model": worker.engine.model_name,
                "engine": worker.engine.name,
                "load_seconds": worker.load_seconds,
            }
            return JSONResponse(body, 200, _NO_STORE)
        body = {"ready": False, "state": worker.state, "error": worker.error}
        return JSONResponse(body, 503, _NO_STORE)

    async def info(request: Request) -> Response:
        await worker.dead_reason()
        return JSONResponse(worker.info(), 200, _NO_STORE)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/worker", info, methods=["GET"]),
    ]

"""Plain HTTP endpoints next to the jobs: ``/health``, ``/ready``, ``/v1/worker``.

Supervisors poll these (the hive waits on ``/ready`` after spawning, the queen probes ``/health``
before first use), so they are cheap, never block on the engine, and answer while loading.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from rbee_contracts.lifecycle import ModelLoadState

from .worker import WorkerRuntime

__all__ = ["health_routes"]

_NO_STORE = {"Cache-Control": "no-store"}


def health_routes(runtime: WorkerRuntime) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        """200 while the process serves; 503 once the engine is dead."""
        reason = await runtime.dead_reason()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "reason": reason}, 503, _NO_STORE)
        return JSONResponse({"status": "ok"}, 200, _NO_STORE)

    async def ready(request: Request) -> Response:
        """200 once the model is loaded and the engine alive; 503 with the state otherwise."""
        await runtime.dead_reason()  # a dead engine turns the state to failed
        if runtime.state is ModelLoadState.READY:
            body = {
                "ready": True,
                "model": runtime.engine.model_name,
                "engine": runtime.engine.name,
                "load_seconds": runtime.load_seconds,
            }
            return JSONResponse(body, 200, _NO_STORE)
        body = {"ready": False, "state": runtime.state.value, "error": runtime.error}
        return JSONResponse(body, 503, _NO_STORE)

    async def info(request: Request) -> Response:
        await runtime.dead_reason()
        return JSONResponse(runtime.info(), 200, _NO_STORE)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/worker", info, methods=["GET"]),
    ]

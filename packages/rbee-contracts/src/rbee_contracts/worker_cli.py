"""The hive→worker boundary that is not jobproto: the worker's command line and listening line.

The hive starts a worker as ``python -m rbee_worker.app --model PATH --engine E --host H --port 0
--worker-id ID --model-name NAME [--device D] [--max-concurrency N] [--engine-arg K=V ...]``;
``D`` is one of ``DEVICES``: the device *kind* (the hive picks the GPUs and shows the worker only
those, through ``CUDA_VISIBLE_DEVICES``).
Once it listens, the worker prints one stdout line, ``LISTENING_PREFIX`` then a JSON object
(``{"port": N, "worker_id": ID}``), and the hive starts polling its ``/ready``.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["DEVICES", "LISTENING_PREFIX", "listening_line", "parse_listening_line"]

#: the worker's ``--device`` choices
DEVICES: Final[tuple[str, ...]] = ("cpu", "cuda")

#: the start of the worker's listening line; the JSON object follows after one space
LISTENING_PREFIX: Final = "RBEE_WORKER_LISTENING"


def listening_line(port: int, worker_id: str | None) -> str:
    """The line a worker prints once it listens."""
    return f"{LISTENING_PREFIX} {json.dumps({'port': port, 'worker_id': worker_id})}"


def parse_listening_line(line: str) -> dict[str, Any] | None:
    """The JSON object of a listening line; None for any other line (or a garbled one)."""
    if not line.startswith(LISTENING_PREFIX + " "):
        return None
    try:
        info = json.loads(line[len(LISTENING_PREFIX) + 1 :])
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("port"), int):
        return None
    return info

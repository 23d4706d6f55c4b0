"""The hive→worker boundary that is not jobproto: the worker's command line and listening line.

The hive starts a worker as ``python -m rbee_worker.app --model PATH --engine E --host H --port 0
--worker-id ID --model-name NAME [--device D] [--max-concurrency N] [--engine-arg K=V ...]``
(``worker_argv`` builds those flags; ``--max-queue N`` too, which the benchmark passes;
``--tls-cert FILE --tls-key FILE`` when the hive serves TLS, and ``--allowed-host NAME`` for each
name the queen may reach it by besides loopback and its bound address);
``D`` is one of ``DEVICES``: the device *kind* (the hive picks the GPUs and shows the worker only
those, through ``CUDA_VISIBLE_DEVICES``).
Once it listens, the worker prints one stdout line, ``LISTENING_PREFIX`` then a JSON object
(``{"port": N, "worker_id": ID}``), and the hive starts polling its ``/ready``.

The token a worker accepts is not a flag: argument lists are readable by every user (``ps``). The
hive puts it in the worker's environment (``rbee_contracts.auth.ENV_WORKER_TOKEN``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["DEVICES", "LISTENING_PREFIX", "listening_line", "parse_listening_line", "worker_argv"]

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


def worker_argv(
    *,
    model: str | None,
    engine: str,
    host: str,
    worker_id: str,
    model_name: str,
    port: int = 0,
    device: str | None = None,
    max_concurrency: int | None = None,
    max_queue: int | None = None,
    engine_args: Mapping[str, str] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> list[str]:
    """The worker's flags (after its command). ``model`` None only for the synthetic engine;
    the engine arguments in key order, one ``--engine-arg KEY=VALUE`` each."""
    argv = [] if model is None else ["--model", model]
    argv += [
        "--engine",
        engine,
        "--host",
        host,
        "--port",
        str(port),
        "--worker-id",
        worker_id,
        "--model-name",
        model_name,
    ]
    if device is not None:
        argv += ["--device", device]
    if max_concurrency is not None:
        argv += ["--max-concurrency", str(max_concurrency)]
    if max_queue is not None:
        argv += ["--max-queue", str(max_queue)]
    for key, value in sorted((engine_args or {}).items()):
        argv += ["--engine-arg", f"{key}={value}"]
    if tls_cert is not None and tls_key is not None:
        argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
    for host in allowed_hosts:
        argv += ["--allowed-host", host]
    return argv

"""Settings of one worker process: what the command line says (docs/tiers.md, worker)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import attrs

from rbee_contracts.auth import allowed_host_names
from rbee_contracts.engines import ENGINES
from rbee_contracts.worker_cli import DEVICES

__all__ = ["DEVICES", "DTYPES", "WorkerSettings", "new_worker_id"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def new_worker_id() -> str:
    return f"worker-{secrets.token_hex(4)}"


def _at_least(low: int) -> Any:
    return attrs.validators.ge(low)


def _optional_at_least(low: int) -> Any:
    return attrs.validators.optional(attrs.validators.ge(low))


def _engine_args(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@attrs.frozen
class WorkerSettings:
    #: path of the model directory (the synthetic engine needs none)
    model: str | None = None
    #: auto | transformers | vllm | synthetic
    engine: str = attrs.field(default="auto", validator=attrs.validators.in_(ENGINES))
    host: str = "127.0.0.1"
    #: 0 = any free port (the worker binds it itself, race-free, and prints which)
    port: int = attrs.field(default=0, validator=[_at_least(0), attrs.validators.le(65535)])
    worker_id: str = attrs.field(factory=new_worker_id, validator=attrs.validators.min_len(1))
    #: the name clients see; default: the model directory's name
    model_name: str | None = None
    #: generations at once; default: the engine's own (1 for transformers)
    max_concurrency: int | None = attrs.field(default=None, validator=_optional_at_least(1))
    #: requests waiting for a free slot beyond max_concurrency; more fail ``busy`` at once
    max_queue: int = attrs.field(default=16, validator=_at_least(0))
    #: cpu | cuda; default: cuda when available
    device: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(DEVICES))
    )
    dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(DTYPES))
    #: ``--engine-arg KEY=VALUE`` pairs, interpreted by the engine
    engine_args: Mapping[str, str] = attrs.field(factory=dict, converter=_engine_args)
    #: service name in spans and relay origins
    service_name: str = "rbee-worker"
    #: the token callers must present (its own, which its hive derives from the hive's token
    #: and puts in ``RBEE_WORKER_TOKEN``: never a flag);
    #: None: no authentication, which ``main`` allows on loopback only
    token: str | None = attrs.field(default=None, repr=False)
    #: certificate and key to serve HTTPS with (the hive's); both or neither
    tls_cert: str | None = None
    tls_key: str | None = None
    #: host names the worker answers for besides loopback and its bound address
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")

    def host_names(self) -> tuple[str, ...]:
        """The ``Host`` names the worker answers for (jobproto's ``Security.allowed_hosts``; the
        rule every tier shares: ``rbee_contracts.auth.allowed_host_names``)."""
        return allowed_host_names(self.host, None, self.allowed_hosts)

    @property
    def display_model_name(self) -> str:
        """The model name to report: ``model_name``, else the model directory's name."""
        if self.model_name:
            return self.model_name
        if self.model:
            return self.model.rstrip("/").rsplit("/", 1)[-1] or self.model
        return self.engine if self.engine == "synthetic" else "unknown"

"""What a worker is started as: ``WorkerSpec`` and its command line.

The command line is the hive→worker boundary that is not jobproto (``rbee_contracts.worker_cli``
describes it, ``docs/tiers.md`` §worker lists the flags); building it is kept apart from running
it, so that it can be read, and tested, without starting anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from rbee_contracts.worker_cli import worker_argv

from .settings import HiveSettings

__all__ = ["WorkerSpec"]


@attrs.frozen
class WorkerSpec:
    worker_id: str
    model: str
    model_path: Path
    engine: str = "auto"
    device: str | None = None
    max_concurrency: int | None = None
    engine_args: Mapping[str, str] = attrs.field(factory=dict)
    #: extra environment (placement: CUDA_VISIBLE_DEVICES)
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: the GPUs placement gave it (nvidia-smi indices)
    gpus: tuple[int, ...] = ()
    #: memory placement estimated it needs, per GPU or of RAM (claimed while it starts)
    need_bytes: int = 0

    def argv(self, settings: HiveSettings) -> list[str]:
        """The worker's command line (docs/tiers.md, worker)."""
        return [
            *settings.worker_command,
            *worker_argv(
                model=str(self.model_path),
                engine=self.engine,
                host=settings.worker_host,
                worker_id=self.worker_id,
                model_name=self.model,
                device=self.device,
                max_concurrency=self.max_concurrency,
                engine_args=self.engine_args,
                tls_cert=None if settings.tls_cert is None else str(settings.tls_cert),
                tls_key=None if settings.tls_key is None else str(settings.tls_key),
                allowed_hosts=settings.worker_host_names(),
            ),
        ]

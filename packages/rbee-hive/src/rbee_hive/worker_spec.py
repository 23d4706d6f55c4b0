"""What a worker is started as: ``WorkerSpec`` and its command line.

The command line is the hive→worker boundary that is not jobproto (``rbee_contracts.worker_cli``
describes it, ``docs/tiers.md`` §worker lists the flags); building it is kept apart from running
it, so that it can be read, and tested, without starting anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

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
        argv = [
            *settings.worker_command,
            "--model",
            str(self.model_path),
            "--engine",
            self.engine,
            "--host",
            settings.worker_host,
            "--port",
            "0",
            "--worker-id",
            self.worker_id,
            "--model-name",
            self.model,
        ]
        if self.device is not None:
            argv += ["--device", self.device]
        if self.max_concurrency is not None:
            argv += ["--max-concurrency", str(self.max_concurrency)]
        for key, value in sorted(self.engine_args.items()):
            argv += ["--engine-arg", f"{key}={value}"]
        return argv

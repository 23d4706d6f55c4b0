"""The hive's errors. Each is a ``jobproto.JobFailed``: raised from an operation, it ends the job
``failed`` with its code (a bad request never gets this far: it is a 422 before the job)::

    JobFailed (jobproto)
     ├── ModelError   model_not_found, model_exists, model_busy, model_in_use, path_not_found,
     │                not_a_directory, invalid_path, path_not_allowed, invalid_name,
     │                catalog_corrupt,
     │                repo_not_found, repo_gated, revision_not_found, hub_offline,
     │                download_failed, download_cancelled, file_not_found,
     │                not_a_file, not_gguf, invalid_gguf, unsupported_gguf_version,
     │                unsupported_architecture, path_not_readable, source_changed,
     │                conversion_failed, import_cancelled
     └── WorkerError  worker_not_found, worker_exists, worker_failed, worker_stopped,
                      placement (placement.py): no_gpu, no_such_gpu, not_enough_gpus,
                      invalid_device, invalid_engine_args, insufficient_gpu_memory,
                      insufficient_memory
"""

from __future__ import annotations

from jobproto import JobFailed

__all__ = ["ModelError", "WorkerError"]


class ModelError(JobFailed):
    """A model operation refused or failed; ``code`` is the job's failure code."""


class WorkerError(JobFailed):
    """A worker operation refused or failed; ``code`` is the job's failure code."""

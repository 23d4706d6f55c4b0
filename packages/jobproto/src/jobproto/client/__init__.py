"""The HTTP client adapter of jobproto: submit jobs, stream their events with automatic resume,
cancel, inspect. Built on httpx and httpx-sse::

    async with JobClient("http://127.0.0.1:7833") as client:
        result = await client.run("generate", prompt="hi", on_event=print)
"""

from __future__ import annotations

from ._client import JobClient, ssl_context
from ._models import (
    CreatedJob,
    HTTPStatusError,
    JobPage,
    JobStatus,
    RemoteJobCancelled,
    RemoteJobFailed,
    StreamInterrupted,
)

__all__ = [
    "CreatedJob",
    "HTTPStatusError",
    "JobClient",
    "JobPage",
    "JobStatus",
    "RemoteJobCancelled",
    "RemoteJobFailed",
    "StreamInterrupted",
    "ssl_context",
]

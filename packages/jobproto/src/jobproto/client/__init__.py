"""The HTTP client adapter of jobproto: submit jobs, stream their events with automatic resume,
cancel, inspect. Built on httpx and httpx-sse::

    from jobproto.asgi import create_app
    from jobproto.client import JobClient
    from jobproto.conformance import conformance_operations
    from jobproto.testing import serving

    # (top-level await as in ``python -m asyncio``; serving() stands for a service of yours)
    async with serving(create_app(conformance_operations())) as url:
        async with JobClient(url) as client:
            result = await client.run("echo", messages=["hi"], result="done", on_event=print)
            # or, to see the job and its events as they come (one request where the server can):
            async with client.submit("echo", messages=["hi"], result="done") as stream:
                print(stream.created.job_id)
                async for item in stream:
                    print(item)
"""

from __future__ import annotations

from ._client import JobClient, ssl_context
from ._models import (
    CreatedJob,
    HTTPStatusError,
    JobPage,
    JobStatus,
    JobStream,
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
    "JobStream",
    "RemoteJobCancelled",
    "RemoteJobFailed",
    "StreamInterrupted",
    "ssl_context",
]

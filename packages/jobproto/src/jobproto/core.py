"""The sans-IO core of jobproto, in one namespace.

Nothing here does I/O or imports an I/O framework (starlette, httpx, anyio): events, the state
machine, the event log and registry, the SSE codec, the wire format, errors, identifiers and
narration. ``nox -s boundary`` proves it. The adapters (``jobproto.asgi``, ``jobproto.client``,
``jobproto.relay``, ``jobproto.conformance``) are built on this.
"""

from __future__ import annotations

from ._correlation import (
    CORRELATION_HEADER,
    accept_correlation_id,
    is_valid_correlation_id,
    is_valid_job_id,
    is_valid_traceparent,
    new_correlation_id,
    new_job_id,
)
from ._errors import (
    ConnectFailed,
    FieldError,
    IdempotencyConflict,
    JobFailed,
    JobNotFound,
    JobProtoError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestError,
    TransportFailed,
)
from ._events import (
    TERMINAL_TYPES,
    Cancelled,
    Data,
    Event,
    Expired,
    Failed,
    Gap,
    JobEvent,
    Narration,
    Origin,
    Progress,
    Succeeded,
    TerminalEvent,
    UnknownEvent,
)
from ._log import EventLog
from ._merge import Merge, concat_data
from ._narration import (
    ContextFilter,
    JobSink,
    bind_job,
    current_correlation_id,
    current_job,
    emit_data,
    narrate,
    progress,
    redact,
    redact_text,
    set_checkpoint,
)
from ._operations import Operation, Operations
from ._redact import RedactingFilter, install_log_redaction
from ._registry import Job, JobRegistry
from ._schema import SchemaError, schema_of
from ._sse import ServerSentEvent, SSEDecoder, encode, encode_comment
from ._states import JobState, Transition, next_state
from ._wire import converter, decode_envelope, encode_envelope, encode_frame, structure_params

__all__ = [
    "CORRELATION_HEADER",
    "TERMINAL_TYPES",
    "Cancelled",
    "ConnectFailed",
    "ContextFilter",
    "Data",
    "Event",
    "EventLog",
    "Expired",
    "Failed",
    "FieldError",
    "Gap",
    "IdempotencyConflict",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobNotFound",
    "JobProtoError",
    "JobRegistry",
    "JobSink",
    "JobState",
    "LocalProtocolError",
    "Merge",
    "Narration",
    "Operation",
    "Operations",
    "Origin",
    "Progress",
    "RedactingFilter",
    "RemoteProtocolError",
    "RequestError",
    "SSEDecoder",
    "SchemaError",
    "ServerSentEvent",
    "Succeeded",
    "TerminalEvent",
    "Transition",
    "TransportFailed",
    "UnknownEvent",
    "accept_correlation_id",
    "bind_job",
    "concat_data",
    "converter",
    "current_correlation_id",
    "current_job",
    "decode_envelope",
    "emit_data",
    "encode",
    "encode_comment",
    "encode_envelope",
    "encode_frame",
    "install_log_redaction",
    "is_valid_correlation_id",
    "is_valid_job_id",
    "is_valid_traceparent",
    "narrate",
    "new_correlation_id",
    "new_job_id",
    "next_state",
    "progress",
    "redact",
    "redact_text",
    "schema_of",
    "set_checkpoint",
    "structure_params",
]

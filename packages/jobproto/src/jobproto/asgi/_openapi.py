"""``/openapi.json``: the job endpoints and every operation's request schema (OpenAPI 3.1).

Generated from the operation definitions, so field names, types, required fields, defaults and
limits cannot drift from what the service validates: each operation's schema comes from
``jobproto._schema.schema_of``, which publishes the keywords of the fields' attrs validators
(``ge``, ``max_len``, ``in_``, ``matches_re``, ...) and what a field declares in
``metadata={"schema": {...}}``, and ``structure_params`` enforces that same schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._service import JobService

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
                "details": {},
            },
        }
    },
}

_TS = {"type": ["string", "null"], "format": "date-time"}

_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "operation": {"type": "string"},
        "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "expired"]},
        "created_at": _TS,
        "started_at": _TS,
        "finished_at": _TS,
        "last_seq": {"type": "integer"},
        "correlation_id": {"type": "string"},
        "result": {},
        "error": {"type": ["object", "null"]},
        "sse_url": {"type": "string"},
        "status_url": {"type": "string"},
    },
}


#: the alternative answer of a create whose ``Accept`` asks for the stream (§2.2.2)
_CREATED_STREAM = {
    "schema": {"type": "string"},
    "description": "the created block, then the job's events as GET sse_url sends them",
}

_STREAM_HEADERS = {
    "Location": {"description": "the job's status_url", "schema": {"type": "string"}},
    "Content-Location": {
        "description": "the job's sse_url (present on the text/event-stream answer)",
        "schema": {"type": "string"},
    },
    "X-Job-ID": {
        "description": "the job's id (present on the text/event-stream answer)",
        "schema": {"type": "string"},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _created_response(description: str) -> dict[str, Any]:
    """A create's answer: the JSON, or with ``Accept: text/event-stream`` the job's stream."""
    out = _json_response(description, _ref("JobStatus"))
    out["content"]["text/event-stream"] = _CREATED_STREAM
    out["headers"] = _STREAM_HEADERS
    return out


def openapi_document(service: JobService, prefix: str = "/v1/jobs") -> dict[str, Any]:
    ops = {f"op_{op.name}": op.json_schema() for op in service.operations}
    error = _json_response("refused (see docs/protocol.md, Errors)", _ref("Error"))
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    corr = {"name": "X-Correlation-ID", "in": "header", "schema": {"type": "string"}}
    create_body = {
        "oneOf": [_ref(name) for name in ops],
        "discriminator": {
            "propertyName": "operation",
            "mapping": {op.name: f"#/components/schemas/op_{op.name}" for op in service.operations},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": service.settings.service_name,
            "version": "jobproto/1",
            "description": "A jobproto/1 service: create jobs, stream their events over SSE.",
        },
        "paths": {
            prefix: {
                "post": {
                    "summary": "Create a job",
                    "description": "Answers the job's status as JSON, or with `Accept: "
                    "text/event-stream` (above application/json) the job's stream, see "
                    "docs/protocol.md §2.2.2. (OpenAPI ignores a header parameter named Accept: "
                    "the two media types of the answer document the choice.)",
                    "operationId": "createJob",
                    "parameters": [
                        corr,
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "description": "with the stream: the cursor, as on GET sse_url",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": create_body}},
                    },
                    "responses": {
                        "201": _created_response("created"),
                        "200": _created_response("replayed (same Idempotency-Key)"),
                        "4XX": error,
                    },
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "operationId": "listJobs",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": _STATUS["properties"]["state"]},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                    ],
                    "responses": {
                        "200": _json_response(
                            "a page of jobs",
                            {
                                "type": "object",
                                "properties": {
                                    "jobs": {"type": "array", "items": _ref("JobStatus")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            },
                        ),
                        "4XX": error,
                    },
                },
            },
            prefix + "/{job_id}": {
                "get": {
                    "summary": "Status of a job",
                    "operationId": "getJob",
                    "parameters": [job_id],
                    "responses": {"200": _json_response("status", _ref("JobStatus")), "4XX": error},
                },
                "delete": {
                    "summary": "Cancel a job (idempotent)",
                    "operationId": "cancelJob",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json_response("the job has ended", _ref("JobStatus")),
                        "202": _json_response("cancellation requested", _ref("JobStatus")),
                        "4XX": error,
                    },
                },
            },
            prefix + "/{job_id}/stream": {
                "get": {
                    "summary": "Stream a job's events (Server-Sent Events)",
                    "operationId": "streamJob",
                    "parameters": [
                        job_id,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the job's events; see docs/protocol.md, Streams",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "4XX": error,
                    },
                }
            },
        },
        "components": {"schemas": {"Error": _ERROR, "JobStatus": _STATUS, **ops}},
    }

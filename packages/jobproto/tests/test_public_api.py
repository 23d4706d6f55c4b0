"""The public names of jobproto, pinned; and the core imports no I/O framework."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import jobproto
import jobproto.core

# Changing the public API is a decision: update these lists on purpose, never to make a test pass.
CORE_NAMES = [
    "CORRELATION_HEADER",
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
    "TERMINAL_TYPES",
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
PACKAGE_NAMES = sorted([*CORE_NAMES, "PROTOCOL", "__version__"])

CORE_MODULES = [
    "jobproto._errors",
    "jobproto._states",
    "jobproto._events",
    "jobproto._log",
    "jobproto._merge",
    "jobproto._registry",
    "jobproto._sse",
    "jobproto._wire",
    "jobproto._narration",
    "jobproto._redact",
    "jobproto._operations",
    "jobproto._schema",
    "jobproto._correlation",
    "jobproto.core",
]
FRAMEWORKS = ["starlette", "httpx", "anyio", "httpx_sse"]


def test_core_all_is_pinned() -> None:
    assert sorted(jobproto.core.__all__) == CORE_NAMES
    assert len(set(jobproto.core.__all__)) == len(jobproto.core.__all__)


def test_package_all_is_pinned() -> None:
    assert sorted(jobproto.__all__) == PACKAGE_NAMES
    assert len(set(jobproto.__all__)) == len(jobproto.__all__)


@pytest.mark.parametrize("name", PACKAGE_NAMES)
def test_every_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from jobproto import {name}", namespace)
    assert namespace[name] is getattr(jobproto, name)
    if name in CORE_NAMES:
        assert getattr(jobproto.core, name) is getattr(jobproto, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from jobproto import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == PACKAGE_NAMES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_private_modules_declare_what_they_export(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name!r}"


def test_core_names_come_from_the_private_modules() -> None:
    private = {}
    for module in CORE_MODULES[:-1]:
        mod = importlib.import_module(module)
        private.update({name: getattr(mod, name) for name in mod.__all__})
    for name in CORE_NAMES:
        assert name in private, f"{name} is in core but in no private module's __all__"
        assert getattr(jobproto.core, name) is private[name]


def test_version_and_protocol() -> None:
    assert jobproto.PROTOCOL == "jobproto/1"
    assert isinstance(jobproto.__version__, str)
    assert jobproto.__version__.count(".") >= 1


def test_the_error_tree() -> None:
    from jobproto import (
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

    for exc in (LocalProtocolError, RemoteProtocolError, RequestError, TransportFailed, JobFailed):
        assert exc.__bases__[0] is JobProtoError
    assert issubclass(RequestError, ValueError)
    assert issubclass(JobNotFound, RequestError)
    assert issubclass(JobNotFound, KeyError)
    assert issubclass(IdempotencyConflict, RequestError)
    assert issubclass(FieldError, RequestError)
    assert issubclass(ConnectFailed, TransportFailed)
    assert not issubclass(TransportFailed, (ValueError, OSError))
    assert not issubclass(LocalProtocolError, ValueError)
    error = RequestError(422, "validation_error", "bad", field="x", details={"a": 1})
    assert error.to_json() == {
        "error": {"code": "validation_error", "message": "bad", "field": "x", "details": {"a": 1}}
    }
    assert RequestError(400, "c", "m").to_json() == {"error": {"code": "c", "message": "m"}}
    failed = JobFailed("oom", "out of memory")
    assert (failed.code, failed.message) == ("oom", "out of memory")


def test_importing_the_core_loads_no_io_framework() -> None:
    """In a fresh interpreter, so that what this test session imported does not count."""
    code = (
        "import json, sys\n"
        f"import {', '.join(CORE_MODULES)}\n"
        "import jobproto\n"
        f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    top, every = out.stdout.splitlines()
    assert json.loads(top) == []
    assert json.loads(every) == []


def test_the_check_itself_can_fail() -> None:
    """The same check sees a framework when one is imported (so the test above can fail)."""
    code = "import sys, jobproto, anyio\nprint('anyio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "True"


def test_the_server_protocols_and_the_asgi_adapter_do_not_import_each_other() -> None:
    """``jobproto._http`` (uvicorn) and ``jobproto.asgi`` (no uvicorn) share only the name of the
    abort extension, from a module of its own."""
    code = (
        "import sys\n"
        "import jobproto._http\n"
        "print(sorted(m for m in sys.modules if m.startswith('jobproto.asgi')))\n"
        "from jobproto._extensions import ABORT_EXTENSION\n"
        "from jobproto.asgi._stream import ABORT_EXTENSION as via_asgi\n"
        "print(ABORT_EXTENSION == via_asgi == 'jobproto.abort')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.splitlines() == ["[]", "True"]

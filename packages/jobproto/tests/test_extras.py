"""A missing optional dependency names the extra that installs it (``jobproto._extras``).

Each case runs in a fresh interpreter whose ``sys.meta_path`` hides some installed modules, as
if the extra that brings them had not been installed, and checks what an import says then: the
``ModuleNotFoundError`` names the missing module (``name``, as Python's own does) and the
``pip install 'jobproto[EXTRA]'`` that fixes it. What needs no extra still imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: runs argv[2] with the top-level modules named in argv[1] hidden; prints what was raised
HIDDEN = r"""
import importlib.abc, json, runpy, sys

hidden = set(sys.argv[1].split(","))

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, Hide())
code = sys.argv[2]
try:
    if code.startswith("-m "):
        sys.argv = [code[3:], "--help"]
        runpy.run_module(code[3:], run_name="__main__")
    else:
        exec(code, {})
except ModuleNotFoundError as exc:
    print(json.dumps({"name": exc.name, "message": str(exc)}))
else:
    print(json.dumps(None))
"""


def imported_without(modules: tuple[str, ...], code: str) -> dict[str, str] | None:
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN, ",".join(modules), code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, str] | None = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


SERVER = ("uvicorn",)
CONFORMANCE = ("hypothesis", "pytest", "hypothesis_jsonschema", "jsonschema")


@pytest.mark.parametrize(
    ("hidden", "code", "extra", "missing"),
    [
        (SERVER, "import jobproto.server", "server", "uvicorn"),
        (SERVER, "import jobproto.testing", "server", "uvicorn"),
        (SERVER, "from jobproto.conformance import ThreadedServer", "server", "uvicorn"),
        (SERVER, "from jobproto.conformance import ServerProcess", "server", "uvicorn"),
        (SERVER, "-m jobproto.conformance.server", "server", "uvicorn"),
        (
            CONFORMANCE,
            "from jobproto.conformance import run_conformance",
            "conformance",
            "hypothesis",
        ),
        (
            CONFORMANCE,
            "import jobproto.conformance as c; c.ConformanceMachine",
            "conformance",
            "hypothesis",
        ),
    ],
)
def test_a_missing_extra_says_which_to_install(
    hidden: tuple[str, ...], code: str, extra: str, missing: str
) -> None:
    raised = imported_without(hidden, code)
    assert raised is not None, f"{code!r} imported without {hidden}"
    assert raised["name"] == missing
    assert f"pip install 'jobproto[{extra}]'" in raised["message"], raised["message"]
    assert repr(missing) in raised["message"]


@pytest.mark.parametrize(
    "code",
    [
        "import jobproto, jobproto.core, jobproto.asgi, jobproto.client, jobproto.relay",
        # a service mounts the test operations with neither extra installed
        "from jobproto.conformance import conformance_operations; conformance_operations()",
        "from jobproto.conformance import ConformanceFailure",
    ],
)
def test_what_needs_no_extra_imports_without_them(code: str) -> None:
    assert imported_without(SERVER + CONFORMANCE, code) is None


def test_other_missing_modules_are_not_blamed_on_an_extra() -> None:
    # a module no extra installs keeps Python's own error
    raised = imported_without(("attrs",), "import jobproto.server")
    assert raised is not None and raised["name"] == "attrs"
    assert "pip install" not in raised["message"]

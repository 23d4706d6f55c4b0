"""Every code example in a jobproto docstring runs as written.

An example is a literal block of a docstring (module, class, function or method): lines indented
past the paragraph before them, after a blank line or a ``::``. A block is one of:

- a shell command (its first word is ``python``, ``pytest``, ``curl`` or ``$``): shown, not run;
- a diagram (a tree drawn with ``├──``) or JSON data (it parses as JSON): shown, not run;
- Python, everything else: it must run. Top-level ``await`` and ``async with`` are allowed, as in
  ``python -m asyncio``; the example then runs on an asyncio event loop. Every name it uses is
  defined or imported in it (ruff's pyflakes rules, F), except in a method's docstring, whose
  example may use the names ``METHOD_CONTEXT`` gives it (``client`` in ``JobClient.events``: the
  object the method belongs to, and what the text around the example names).

A Python example that does not compile is not taken for anything else: it fails here.
"""

from __future__ import annotations

import ast
import asyncio
import json
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import jobproto

SRC = Path(jobproto.__file__).parent

#: setup code for an example in a method's docstring, by qualified name: it defines the names
#: the example takes from its surroundings (the object the method is called on, its arguments)
METHOD_CONTEXT = {
    "client._client.JobClient.events": """
from contextlib import AsyncExitStack
from jobproto.asgi import create_app
from jobproto.client import JobClient
from jobproto.conformance import conformance_operations
from jobproto.testing import serving

_stack = AsyncExitStack()
_url = await _stack.enter_async_context(serving(create_app(conformance_operations())))
client = await _stack.enter_async_context(JobClient(_url))
job_id = (await client.create("echo", messages=["a", "b"])).job_id
""",
}
#: ... and what closes what the setup opened
METHOD_TEARDOWN = {"client._client.JobClient.events": "await _stack.aclose()"}

_SHELL = ("python", "pytest", "curl", "$")


@attrs.frozen
class Example:
    where: str  # module path relative to the package, and the qualified name: "asgi/__init__.py"
    qualname: str  # "" for the module's docstring
    code: str

    @property
    def id(self) -> str:
        return f"{self.where}:{self.qualname}" if self.qualname else self.where

    @property
    def context_key(self) -> str:
        return f"{self.where.removesuffix('.py').replace('/', '.')}.{self.qualname}"


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of the module and every class and function in it."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield name, doc
                yield from walk(child, name + ".")

    doc = ast.get_docstring(tree)
    if doc:
        yield "", doc
    yield from walk(tree, "")


def literal_blocks(doc: str) -> list[str]:
    """The indented blocks of a (cleaned) docstring, dedented."""
    blocks: list[str] = []
    current: list[str] | None = None
    previous_blank = True
    for line in [*doc.splitlines(), "end"]:
        blank = not line.strip()
        if line.startswith("    ") and (current is not None or previous_blank):
            current = [*(current or []), line]
        elif blank and current is not None:
            current.append(line)
        else:
            if current:
                blocks.append(textwrap.dedent("\n".join(current)).strip("\n"))
            current = None
        previous_blank = blank
    return blocks


def kind(block: str) -> str:
    if block.split(maxsplit=1)[0] in _SHELL:
        return "shell"
    if "├──" in block or "└──" in block:
        return "diagram"
    try:
        json.loads(block)
    except ValueError:
        return "python"
    return "json"


def examples() -> list[Example]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(SRC).as_posix()
        for qualname, doc in _docstrings(tree):
            for block in literal_blocks(doc):
                if kind(block) == "python":
                    found.append(Example(where, qualname, block))
    return found


EXAMPLES = examples()


def _run(code: str, namespace: dict[str, Any]) -> None:
    compiled = compile(code, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(compiled, namespace)  # a coroutine when the code awaits at top level
    if asyncio.iscoroutine(outcome):
        asyncio.run(outcome)


def _run_in_context(example: Example) -> None:
    setup = METHOD_CONTEXT.get(example.context_key, "")
    teardown = METHOD_TEARDOWN.get(example.context_key, "")
    if not setup:
        _run(example.code, {"__name__": "__example__"})
        return
    # one event loop for the setup, the example and the teardown
    body = textwrap.indent(example.code, "    ")
    _run(f"{setup}\ntry:\n{body}\nfinally:\n    {teardown}\n", {"__name__": "__example__"})


def test_the_blocks_are_found_and_sorted() -> None:
    doc = "Text::\n\n    a = 1\n\n    b = 2\n\nMore text.\n\n    python -m x\n"
    assert literal_blocks(doc) == ["a = 1\n\nb = 2", "python -m x"]
    assert kind("python -m x --url U") == "shell"
    assert kind('{"error": {"code": "x"}}') == "json"
    assert kind("A\n ├── B") == "diagram"
    assert kind("print(1)") == "python"
    assert kind("not python ::") == "python"  # and then fails to compile: no silent skip
    # the package's modules are all read (a module that does not parse would fail above)
    names = {m.name for m in pkgutil.walk_packages(jobproto.__path__, "jobproto.")}
    assert "jobproto.asgi" in names and "jobproto.client._client" in names
    assert {e.where for e in EXAMPLES} >= {"asgi/__init__.py", "_operations.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_the_example_runs(example: Example, tmp_path: Path) -> None:
    # names it uses that it does not define: pyflakes (ruff F), top-level await allowed
    source = tmp_path / "example.py"
    setup = METHOD_CONTEXT.get(example.context_key, "")
    source.write_text(f"{setup}\n{example.code}\n")
    lint = subprocess.run(
        [
            *(sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F"),
            *("--ignore", "F704,F401", "--output-format", "concise", str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, f"{example.id}:\n{example.code}\n\n{lint.stdout}{lint.stderr}"
    _run_in_context(example)


def test_the_method_contexts_are_used() -> None:
    """A context for an example that no longer exists is a stale promise: it fails here."""
    assert set(METHOD_CONTEXT) == set(METHOD_TEARDOWN)
    assert set(METHOD_CONTEXT) <= {e.context_key for e in EXAMPLES}

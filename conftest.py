"""Repository-wide pytest configuration.

Async tests use anyio's pytest plugin (``@pytest.mark.anyio``); run them on asyncio only.
Hypothesis runs without its per-example deadline: timing is for ``nox -s bench``, never a test
verdict, and a busy 2-core CI machine would otherwise fail correct code.
"""

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("rbee", deadline=None)
settings.load_profile("rbee")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file (scripts/smollm2.py: from its PyPI wheel, cached)."""
    return _smollm2().gguf()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct converted once into a directory both engines load (cached)."""
    return _smollm2().converted()


def _smollm2() -> Any:
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    try:
        import smollm2
    finally:
        sys.path.pop(0)
    return smollm2


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        metavar="JSON",
        default=None,
        help="write what tests/e2e/chaos measured into JSON and render the Markdown beside it",
    )

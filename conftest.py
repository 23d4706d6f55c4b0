"""Repository-wide pytest configuration.

Async tests use anyio's pytest plugin (``@pytest.mark.anyio``); run them on asyncio only.
Hypothesis runs without its per-example deadline: timing is for ``nox -s bench``, never a test
verdict, and a busy 2-core CI machine would otherwise fail correct code.
"""

import pytest
from hypothesis import settings

settings.register_profile("rbee", deadline=None)
settings.load_profile("rbee")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"

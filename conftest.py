"""Repository-wide pytest configuration.

Async tests use anyio's pytest plugin (``@pytest.mark.anyio``); run them on asyncio only.
"""

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"

"""The conformance suite's pytest wiring lives in ``jobproto.conformance.pytest_plugin``.

``pytest_plugins`` may only be set in the rootdir conftest, so its hooks and fixtures are imported
here; pytest loads this file early when the suite's directory is on the command line (as in
``nox -s conformance``), which is what makes ``--url`` known.
"""

from jobproto.conformance.pytest_plugin import (
    authenticated_target,
    conformance_config,
    conformance_target,
    pytest_addoption,
    pytest_generate_tests,
    tuned_target,
)

__all__ = [
    "authenticated_target",
    "conformance_config",
    "conformance_target",
    "pytest_addoption",
    "pytest_generate_tests",
    "tuned_target",
]

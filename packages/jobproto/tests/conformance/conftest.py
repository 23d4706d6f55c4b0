"""The repository's conformance tests use the plugin the package ships.

``pytest_plugins`` may only be set in the rootdir conftest, so its hooks and fixtures are imported
here; pytest loads this file early when this directory is on the command line, which is what
makes ``--jobproto-url`` known. The suite itself ships in the package
(``jobproto.conformance.suite``); ``test_shipped_suite.py`` collects it here too.
"""

from jobproto.conformance.pytest_plugin import (
    authenticated_target,
    conformance_config,
    conformance_target,
    own_operation_examples,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_report_header,
    pytest_sessionstart,
    pytest_terminal_summary,
    tuned_target,
)

__all__ = [
    "authenticated_target",
    "conformance_config",
    "conformance_target",
    "own_operation_examples",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "tuned_target",
]

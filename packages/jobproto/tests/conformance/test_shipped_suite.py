"""The conformance suite shipped in ``jobproto.conformance.suite``, collected here too, so the
repository's test run checks the reference service with it (``python -m jobproto.conformance``
runs the same tests from an installed package)."""

from jobproto.conformance.suite.test_conformance import *  # noqa: F403
from jobproto.conformance.suite.test_own_operations import *  # noqa: F403

"""The black-box conformance tests, shipped in the package so they run from an installed wheel.

Run them with ``python -m jobproto.conformance [--url URL]``, or with pytest and the plugin::

    pytest -p jobproto.conformance.pytest_plugin --pyargs jobproto.conformance.suite \\
        --jobproto-url URL

Every test here checks the service under test (the ``--url`` service, or the reference service);
tests of the reference server itself live in the repository, not in the package.
"""

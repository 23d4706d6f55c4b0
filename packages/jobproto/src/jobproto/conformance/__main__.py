"""``python -m jobproto.conformance``: run the black-box conformance suite.

    python -m jobproto.conformance --url http://127.0.0.1:8000 [--token-file PATH]
    python -m jobproto.conformance                  # against the reference service

needs only ``pip install 'jobproto[conformance]'`` (without ``--url``, ``jobproto[server]`` too).
It runs the tests shipped in ``jobproto.conformance.suite`` with pytest (in a child process),
under a configuration of its own: the directory it runs in, and any pytest configuration there,
play no part. Arguments it does not know go to pytest (``-x``, ``-k NAME``, ``-v``).

The exit status is pytest's. A service that cannot be tested (unreachable, token refused,
conformance operations not mounted) gets one message saying what to do, and status 4 (pytest's
usage error); a missing extra gets the ``pip install`` that adds it, and status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .._extras import missing_extra

__all__ = ["build_parser", "main", "pytest_args"]

#: the exit status when an extra the command needs is not installed (as argparse's usage errors;
#: a service that cannot be tested gets pytest's usage error, 4, from the plugin)
MISSING_EXTRA = 2

_HELP = """\
The service under test must mount the conformance operations (echo, fail, wait, burst, crash):
ops.merge(jobproto.conformance.conformance_operations()), in a test deployment only (for
example when an environment variable says so): crash and burst exist to misbehave.

--own-operations also checks the service's own operations: values drawn from each one's
published request schema must be accepted, near-valid ones refused with 422 naming the field.
Accepted jobs are cancelled at once, before anything subscribes to them; a service in immediate
start mode (start_mode="immediate") runs them, so point it at a test deployment.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobproto.conformance",
        # --ex, --own, --max and the like are pytest's to read, not abbreviations of ours
        allow_abbrev=False,
        description="Run the jobproto/1 conformance suite against a service.",
        epilog=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        help="the service to test (default: the reference service, which needs jobproto[server])",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="a file holding the service's bearer token (default: $JOBPROTO_TOKEN if set)",
    )
    parser.add_argument(
        "--examples",
        type=int,
        help="Hypothesis examples: random walks of the state machine, and cases per operation "
        "of --own-operations",
    )
    parser.add_argument(
        "--own-operations",
        action="store_true",
        help="also check that the service's own operations enforce their published schemas",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest create body the service accepts (default 1 MiB; 0: unknown)",
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="shrink a failing random walk to a minimal one (slow: minutes)",
    )
    return parser


def pytest_args(ns: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The pytest command line that runs the shipped suite as ``ns`` asks."""
    suite = Path(__file__).with_name("suite")
    args = [
        # a configuration of its own: no ini file of the working directory, no conftest.py above
        # the suite, no cache written next to the installed package
        "-c",
        os.devnull,
        "--rootdir",
        str(suite),
        "--confcutdir",
        str(suite),
        "-p",
        "no:cacheprovider",
        "-p",
        "jobproto.conformance.pytest_plugin",
        # no example database in the working directory: a run leaves nothing behind
        "--hypothesis-profile",
        "jobproto-conformance",
        "-ra",
        "--pyargs",
        "jobproto.conformance.suite",
    ]
    if ns.url:
        args += ["--jobproto-url", ns.url]
    if ns.token_file is not None:
        args += ["--jobproto-token-file", str(ns.token_file)]
    if ns.examples is not None:
        args += ["--conformance-examples", str(ns.examples)]
    if ns.own_operations:
        args.append("--jobproto-own-operations")
    if ns.max_body_bytes is not None:
        args += ["--jobproto-max-body-bytes", str(ns.max_body_bytes)]
    if ns.shrink:
        args.append("--conformance-shrink")
    return [*args, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if ns.examples is not None and ns.examples < 1:
        parser.error("--examples must be at least 1")
    modules = ("pytest", "hypothesis", "hypothesis_jsonschema", "jsonschema")
    needed = [("conformance", name) for name in modules]
    if not ns.url:
        needed.append(("server", "uvicorn"))
    for extra_name, module in needed:
        # found, not imported: pytest must import its plugins (hypothesis, anyio) itself
        if importlib.util.find_spec(module) is None:
            missing = ModuleNotFoundError(f"No module named {module!r}", name=module)
            what = "python -m jobproto.conformance" + ("" if ns.url else " without --url")
            print(missing_extra(missing, extra_name, what), file=sys.stderr)
            return MISSING_EXTRA
    # pytest in an interpreter of its own: this one has imported jobproto (and anyio), which
    # pytest would then be too late to rewrite or configure as it does its plugins
    command = [sys.executable, "-m", "pytest", *pytest_args(ns, extra)]
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

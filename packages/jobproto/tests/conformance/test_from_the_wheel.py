"""``python -m jobproto.conformance`` from the built wheel, in a fresh virtualenv outside the
repository: what a developer who only ran ``pip install 'jobproto[conformance,server]'`` gets.

The wheel is built from this checkout (``uv build``) and installed with its declared extras
(``uv pip install``, from uv's cache when it holds everything, else from the index) into a new
virtualenv; every command then runs from a temporary directory with that virtualenv's Python, so
nothing of the repository (its files, its pytest configuration, the dev environment) takes part.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

HERE = Path(__file__).parent
PACKAGE = HERE.parents[1]  # packages/jobproto


@attrs.frozen
class Installed:
    python: Path
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def conformance(self, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "jobproto.conformance", "--url", url, *args)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    uv = shutil.which("uv")
    assert uv is not None, "uv (the workspace's tool) builds the wheel and the virtualenv"
    root = tmp_path_factory.mktemp("wheel")
    dist, venv, workdir = root / "dist", root / "venv", root / "work"
    workdir.mkdir()
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(dist), str(PACKAGE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = dist.glob("jobproto-*.whl")
    subprocess.run([uv, "venv", "-q", str(venv)], check=True, capture_output=True, timeout=60)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "-q", "--python", str(python), f"{wheel}[conformance,server]"]
    if subprocess.run([*install, "--offline"], capture_output=True, timeout=120).returncode:
        subprocess.run(install, check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JOBPROTO_"))}
    env.pop("VIRTUAL_ENV", None)
    return Installed(python, workdir, env)


def _serve(installed: Installed, args: list[str], env: dict[str, str]) -> Iterator[str]:
    port_file = installed.workdir / f"port-{time.monotonic_ns()}"
    process = subprocess.Popen(
        [str(installed.python), *args, str(port_file)],
        cwd=installed.workdir,
        env={**installed.env, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None, f"{args} exited with {process.returncode}"
            assert time.monotonic() < deadline, f"{args} did not listen within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text())}"
    finally:
        process.terminate()
        process.wait(15)


@pytest.fixture(scope="module")
def reference(installed: Installed) -> Iterator[str]:
    args = ["-m", "jobproto.conformance.server", "--port", "0", "--port-file"]
    yield from _serve(installed, args, {})


@pytest.fixture
def own_service(installed: Installed) -> Iterator[str]:
    """own_service.py: two operations of its own, not the conformance ones."""
    script = shutil.copy(HERE / "own_service.py", installed.workdir / "own_service.py")
    yield from _serve(installed, [str(script)], {})


@pytest.fixture
def own_service_under_test(installed: Installed) -> Iterator[str]:
    """own_service.py with the conformance operations mounted, and the operation whose
    validation refuses what its schema allows."""
    script = shutil.copy(HERE / "own_service.py", installed.workdir / "own_service.py")
    env = {"OWN_SERVICE_CONFORMANCE": "1", "OWN_SERVICE_STRICT": "1"}
    yield from _serve(installed, [str(script)], env)


def test_the_wheel_holds_the_suite_and_nothing_of_the_repository(installed: Installed) -> None:
    r = installed.run("-c", "import jobproto.conformance.suite as s; print(s.__file__)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(installed.python.parents[1]), r.stdout
    r = installed.run("-c", "import rbee_contracts")
    assert r.returncode != 0  # only jobproto is installed


def test_the_suite_runs_against_a_url(installed: Installed, reference: str) -> None:
    r = installed.conformance(reference, "--examples", "3", "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    ran = [line for line in out.splitlines() if line.endswith("]") and "::" in line]
    # only checks of the target: every test that ran is one of the shipped suite's, on "url"
    assert ran and all("jobproto/conformance/suite/" in line for line in ran), ran
    assert all("[url" in line for line in ran), ran
    assert " PASSED" in out and "FAILED" not in out and "SKIPPED" not in out
    # what did not run is said once, with why
    assert out.count("checks need a service whose limits the suite knows") == 1
    assert "own operations are not exercised" in out


def test_a_service_without_the_test_operations_is_told_how(
    installed: Installed, own_service: str
) -> None:
    r = installed.conformance(own_service)
    out = r.stdout + r.stderr
    assert r.returncode == 4, out  # pytest's usage error: nothing was tested
    assert "does not offer the conformance operations" in out
    assert "ops.merge(conformance_operations())" in out
    assert "Keep them off in production" in out
    assert "Traceback" not in out and "collected" not in out


def test_own_operations_are_checked_against_their_schemas(
    installed: Installed, own_service_under_test: str
) -> None:
    r = installed.conformance(
        own_service_under_test, "--own-operations", "--examples", "30", "-k", "own_operations", "-v"
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "test_the_published_schema_is_enforced[url-greet] PASSED" in out
    assert "test_the_published_schema_is_enforced[url-spell] PASSED" in out
    assert "test_the_published_schema_is_enforced[url-strict] FAILED" in out
    assert "the published schema accepts {'operation': 'strict'" in out
    # the conformance operations are not "own" operations
    assert "[url-echo]" not in out

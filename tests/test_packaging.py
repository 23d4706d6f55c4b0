"""Packaging: every package builds a wheel, and each tier installs into a fresh virtualenv of its
own with exactly what it declares, and nothing heavier than it needs.

- wheels: ``uv build --wheel --package NAME`` from the workspace root, into a directory of this
  session's (so uv's cache cannot hand back an older build of the same version);
- one venv per tier (``uv venv`` + ``uv pip install``), with ``--find-links`` to the wheels and
  torch's CPU build from where the noxfile takes it (``scripts/torch_source.py``: the lock's
  ``/opt/wheels``, else ``RBEE_TORCH_WHEELS``, else ``RBEE_TORCH_INDEX``; README.md,
  "Development"); a constraint pins torch to the version the workspace runs, so the multi-GB
  CUDA build is never picked;
- in each: the console script answers ``--help``; the installed distributions are exactly the
  closure of the tier's declared requirements (nothing missing, no extra left in); the keeper has
  no torch/transformers, the queen and hive no torch; jobproto alone brings only its own
  dependencies (no server, no conformance extras).

uv installs from its cache (offline first: fast and independent of the network); only when the
cache lacks something does it go online.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from torch_source import torch_source

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "jobproto",
    "rbee-contracts",
    "rbee-process",
    "rbee-queen",
    "rbee-hive",
    "rbee-worker",
    "rbee-keeper",
)

#: tier -> (requirement extras, console scripts, distributions that must not be installed)
TIERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "jobproto": ((), (), ("uvicorn", "hypothesis", "pytest", "torch", "rich", "click")),
    # the contracts: jobproto and attrs only; the process module: psutil and anyio only
    "rbee-contracts": ((), (), ("uvicorn", "psutil", "torch", "huggingface-hub", "click")),
    "rbee-process": ((), (), ("jobproto", "starlette", "httpx", "torch")),
    "rbee-queen": ((), ("rbee-queen",), ("torch", "transformers", "huggingface-hub")),
    "rbee-hive": ((), ("rbee-hive",), ("torch", "transformers")),
    "rbee-worker": (("transformers",), ("rbee-worker",), ("vllm",)),
    "rbee-keeper": ((), ("rbee",), ("torch", "transformers", "uvicorn", "huggingface-hub")),
}

#: prints {distribution: [Requires-Dist...]} of the interpreter that runs it
LIST_DISTS = """
import importlib.metadata as md, json
print(json.dumps({d.metadata["Name"]: d.requires or [] for d in md.distributions()}))
"""


def _uv() -> str:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed")
    return uv


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 240) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    uv = _uv()
    # A name never used before: uv caches what a --find-links directory held by its path and
    # the wheel's file name, so a directory pytest numbered like an earlier run's would hand
    # back that run's build of the same version.
    out = tmp_path_factory.mktemp(f"wheels-{uuid.uuid4().hex}")
    builds = [
        subprocess.Popen(
            [uv, "build", "--wheel", "--package", name, "--out-dir", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in PACKAGES
    ]
    for name, build in zip(PACKAGES, builds, strict=True):
        output, _ = build.communicate(timeout=240)
        assert build.returncode == 0, f"uv build --package {name} failed:\n{output}"
    found = {}
    for name in PACKAGES:
        stem = name.replace("-", "_")
        (wheel,) = out.glob(f"{stem}-*-py3-none-any.whl")
        found[name] = wheel
    yield found


def _install(tmp_path: Path, wheels: dict[str, Path], name: str, extras: tuple[str, ...]) -> Path:
    """A fresh venv with ``name`` (from its wheel) and what it requires; its interpreter."""
    uv = _uv()
    venv = tmp_path / f"venv-{name}"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={importlib.metadata.version('torch')}\n")
    extra = f"[{','.join(extras)}]" if extras else ""
    requirement = f"{name}{extra} @ {wheels[name].as_uri()}"
    argv = [
        uv,
        "pip",
        "install",
        "--quiet",
        "--python",
        str(python),
        "--find-links",
        str(wheels[name].parent),
        "--constraint",
        str(constraints),
        *torch_source(),  # where the noxfile takes torch from (scripts/torch_source.py)
    ]
    done = subprocess.run(
        [*argv, "--offline", requirement], capture_output=True, text=True, timeout=240
    )
    if done.returncode != 0:  # not all in uv's cache yet: fetch what is missing
        _run([*argv, requirement])
    return python


def _closure(dists: dict[str, list[str]], root: str, extras: tuple[str, ...]) -> set[str]:
    """Every distribution ``root[extras]`` needs, by the installed metadata (markers evaluated
    for this interpreter, which is the venvs' too)."""
    by_name = {canonicalize_name(name): requires for name, requires in dists.items()}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(root), frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        assert name in by_name, f"{name} is required but not installed"
        for text in by_name[name]:
            req = Requirement(text)
            environments = [{"extra": extra} for extra in wanted or {""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


@pytest.mark.parametrize("name", list(TIERS))
def test_each_tier_installs_alone_with_exactly_what_it_declares(
    name: str, wheels: dict[str, Path], tmp_path: Path
) -> None:
    extras, scripts, forbidden = TIERS[name]
    python = _install(tmp_path, wheels, name, extras)

    dists = json.loads(_run([str(python), "-c", LIST_DISTS]))
    needed = _closure(dists, name, extras)
    # the installers' own, unless something requires them
    installed = {canonicalize_name(d) for d in dists} - ({"pip", "setuptools", "wheel"} - needed)
    assert installed == needed, (
        f"installed but not required: {sorted(installed - needed)};"
        f" required but not installed: {sorted(needed - installed)}"
    )
    assert not installed & {canonicalize_name(f) for f in forbidden}, sorted(installed)

    for script in scripts:
        help_text = _run([str(python.parent / script), "--help"], timeout=60)
        assert "usage" in help_text.lower(), help_text

    if name == "jobproto":
        # the library alone: its core, client and ASGI parts import without the server extra
        _run([str(python), "-c", "import jobproto, jobproto.client, jobproto.asgi, jobproto.core"])
    if name == "rbee-worker":
        # the worker decides its engine before importing torch; the CPU torch is the one here
        code = (
            "import sys, rbee_worker.app, importlib.metadata as md;"
            " assert 'torch' not in sys.modules, 'rbee_worker.app imported torch';"
            " print(md.version('torch'))"
        )
        assert _run([str(python), "-c", code]).strip() == importlib.metadata.version("torch")
    if name == "rbee-keeper":
        shown = json.loads(_run([str(python.parent / "rbee"), "config", "show", "--json"]))
        assert shown["settings"]["queen_url"].startswith("http://")

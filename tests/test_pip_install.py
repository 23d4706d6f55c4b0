"""README.md's per-tier pip install commands, run exactly as written.

README.md ("Layout") gives one plain-pip command per tier, run from the root of a checkout. This
test reads those commands from README.md itself, so the documented commands and the tested ones
cannot drift apart, and

- checks that each names every workspace package its tier needs: the closure of the workspace
  requirements in ``packages/*/pyproject.toml`` (pip finds them nowhere else: they are on no
  index, and only uv reads the workspace);
- runs the keeper's, the queen's and the hive's command, each in a fresh virtualenv
  (``python -m venv``, its ``python3`` first on ``PATH``) from the root of the checkout, then the
  console script the tier installs with ``--help``, and checks that no torch came with it. The
  worker's command is checked but not run: it installs torch (about 1 GB).

It needs a package index for the third-party dependencies (``index`` marker): PyPI in CI, and
whatever pip is configured with elsewhere (``pip config list``). About half a minute per tier
when the index is near.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.slow, pytest.mark.index, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^(python3 -m pip install (?P<args>[^#]+?))\s*#\s*(?P<script>\S+)\s*$")


def workspace() -> dict[str, tuple[Path, list[str]]]:
    """distribution name -> (its directory, the workspace distributions it requires)."""
    members = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        requires = [Requirement(r).name for r in project.get("dependencies", [])]
        members[canonicalize_name(project["name"])] = (pyproject.parent, requires)
    return {
        name: (path, [canonicalize_name(r) for r in requires if canonicalize_name(r) in members])
        for name, (path, requires) in members.items()
    }


def readme_commands() -> dict[str, tuple[str, list[str]]]:
    """console script -> (the command as README.md writes it, its arguments after ``install``)."""
    commands = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = COMMAND.match(line)
        if match:
            commands[match["script"]] = (line, shlex.split(match["args"]))
    return commands


def closure(name: str, members: dict[str, tuple[Path, list[str]]]) -> set[str]:
    needed = {name}
    for requirement in members[name][1]:
        needed |= closure(requirement, members)
    return needed


def test_readme_names_every_workspace_package_each_tier_needs() -> None:
    members = workspace()
    commands = readme_commands()
    assert set(commands) == {"rbee", "rbee-queen", "rbee-hive", "rbee-worker"}, commands
    for script, (line, args) in commands.items():
        named = set()
        for arg in args:
            path = (ROOT / re.sub(r"\[.*\]$", "", arg)).resolve()  # less any [extras]
            assert path.is_dir(), f"{line}: {arg} is no directory of the checkout"
            names = [n for n, (p, _) in members.items() if p == path]
            assert names, f"{line}: {arg} is no workspace package"
            named.add(names[0])
        tier = next(n for n in named if _scripts(members[n][0]) & {script})
        assert named == closure(tier, members), (
            f"{line}: names {named}, needs {closure(tier, members)}"
        )


def _scripts(package: Path) -> set[str]:
    return set(
        tomllib.loads((package / "pyproject.toml").read_text())["project"].get("scripts", {})
    )


@pytest.mark.parametrize("script", ["rbee", "rbee-queen", "rbee-hive"])
def test_the_readme_command_installs_the_tier_with_plain_pip(script: str, tmp_path: Path) -> None:
    line, _ = readme_commands()[script]
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env=os.environ.copy())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    _run(["bash", "-c", line], env=env, cwd=ROOT)
    usage = _run([str(venv / "bin" / script), "--help"], env=env)
    assert "usage" in usage.lower(), usage
    torch = _run(
        [
            str(venv / "bin" / "python3"),
            "-c",
            "import importlib.util as u; print(u.find_spec('torch'))",
        ],
        env=env,
    )
    assert torch.strip() == "None", f"{script} pulled in torch"


def _run(argv: list[str], *, env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (
        f"$ {shlex.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout

"""Where torch's CPU build comes from, for the noxfile and tests/test_packaging.py (plain Python:
no nox import, so a test can import it).

uv.lock takes torch from pip's local wheel directory, ``LOCK_WHEELS`` (/opt/wheels, the root
pyproject's ``[tool.uv] find-links``). On a machine without that directory, ``RBEE_TORCH_WHEELS``
names another directory holding the wheel, or else ``RBEE_TORCH_INDEX`` an index that has it
(PyTorch's CPU index by default); see README.md, "Development".
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["LOCK_WHEELS", "TORCH_INDEX", "TORCH_WHEELS", "torch_source"]

ROOT = Path(__file__).resolve().parents[1]

LOCK_WHEELS = Path(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["find-links"][0]
)
TORCH_WHEELS = Path(os.environ.get("RBEE_TORCH_WHEELS", str(LOCK_WHEELS)))
TORCH_INDEX = os.environ.get("RBEE_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")


def torch_source() -> list[str]:
    """uv pip arguments that find torch's CPU build (see the module's docstring)."""
    # Without the lock's directory, uv must not read the find-links it names (a missing
    # directory is an error): --no-config.
    no_config = [] if LOCK_WHEELS.is_dir() else ["--no-config"]
    if TORCH_WHEELS.is_dir():
        return [*no_config, "--find-links", str(TORCH_WHEELS)]
    # Both indexes, best match: the CPU build from PyTorch's, everything else from PyPI's.
    return [*no_config, "--extra-index-url", TORCH_INDEX, "--index-strategy", "unsafe-best-match"]

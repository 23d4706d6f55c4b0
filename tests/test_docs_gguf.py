"""What README.md, docs/tiers.md and the demo say about GGUF import agrees with the code.

The lists a reader acts on are checked against the code they describe: the architectures the
hive imports, the failure codes of ``model_import``, the converter's flags and dtypes, and the
main job's question and model.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rbee_contracts.hive_ops import GGUF_DTYPES
from rbee_hive.conversion import SUPPORTED_ARCHITECTURES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TIERS = (ROOT / "docs" / "tiers.md").read_text()
HIVE_SRC = ROOT / "packages" / "rbee-hive" / "src" / "rbee_hive"


def unwrapped(text: str) -> str:
    """``text`` with its line breaks and indentation folded to single spaces."""
    return re.sub(r"\s+", " ", text)


def architectures_listed(text: str, after: str) -> set[str]:
    """The comma-separated names that follow ``after`` up to the next ``;`` or ``)``."""
    start = unwrapped(text).index(after) + len(after)
    listed = re.split(r"[;)]", unwrapped(text)[start:], maxsplit=1)[0]
    return {name.strip().strip("`") for name in listed.split(",")}


def hive_error_codes() -> set[str]:
    """Every string a ModelError or GGUFError of the hive is raised with as its code."""
    codes = set()
    for path in HIVE_SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"ModelError", "GGUFError"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                codes.add(node.args[0].value)
    return codes


def test_the_architectures_the_docs_name_are_the_ones_the_hive_imports() -> None:
    assert architectures_listed(README, "naming the ones it does:") == SUPPORTED_ARCHITECTURES
    assert (
        architectures_listed(TIERS, "`rbee_hive.conversion.SUPPORTED_ARCHITECTURES`:")
        == SUPPORTED_ARCHITECTURES
    )


def test_every_failure_code_docs_tiers_names_for_model_import_is_raised_by_the_hive() -> None:
    text = unwrapped(TIERS)
    start = text.index("Failure codes: `invalid_path`")
    listed = set(
        re.findall(r"`([a-z_]+)`", text[start : text.index("`model_download` with", start)])
    )
    assert {"not_gguf", "unsupported_architecture", "model_exists", "conversion_failed"} <= listed
    missing = listed - hive_error_codes()
    assert not missing, f"docs/tiers.md names codes the hive never raises: {sorted(missing)}"


def test_the_dtypes_the_docs_name_are_the_contracts() -> None:
    converter = "python -m rbee_worker.gguf_import SRC.gguf DEST_DIR [--dtype "
    start = TIERS.index(converter) + len(converter)
    assert tuple(TIERS[start : TIERS.index("]", start)].split("|")) == GGUF_DTYPES
    for dtype in GGUF_DTYPES:
        assert f"`{dtype}`" in README


def test_the_readme_says_what_the_demo_asks() -> None:
    demo = ast.parse((ROOT / "scripts" / "demo.py").read_text())
    constants = {
        target.id: node.value.value
        for node in demo.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    command = f'rbee infer "{constants["QUESTION"]}" --model {constants["MODEL"]}'
    assert command in unwrapped(README)
    assert f"rbee model import {constants['MODEL']} " in README

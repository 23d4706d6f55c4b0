"""The main job: `rbee infer` end to end, on real processes, with a real (tiny) model.

Run by `python3 -m nox -s demo`. It builds the tiny random-weight test model (nothing can be
downloaded from a model hub here), starts the local queen and hive, registers the model, and runs
`rbee infer`: the queen asks the hive for a worker, the hive spawns one with the transformers
engine, and the tokens stream into this terminal. Everything it starts is stopped at the end.

State (pid files, logs, models) goes to `.rbee-demo/` in the repository unless RBEE_STATE_DIR is
set; the model is built in `.rbee-demo/own-models/`, which the demo adds to RBEE_MODEL_ROOTS. The
queen and hive use their usual ports (8500, 9000) unless RBEE_QUEEN_URL / RBEE_HIVE_PORT say
otherwise. Extra arguments are passed to `rbee infer`, e.g.
`python3 -m nox -s demo -- --temperature 0.8 --seed 7 --max-tokens 64`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str, check: bool = True) -> int:
    print(f"\n$ {shlex.join(args)}", file=sys.stderr, flush=True)
    code = subprocess.run([str(BIN / args[0]), *args[1:]], check=False).returncode
    if check and code != 0:
        raise SystemExit(code)
    return code


def registered_path(name: str) -> str | None:
    """Where model ``name`` of the local hive is (an earlier run registered it), else None."""
    args = ("rbee", "model", "list", "--json")
    out = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None
    models = json.loads(lines[-1]).get("result", {}).get("models", [])
    return next((str(m["path"]) for m in models if m.get("name") == name), None)


def main() -> int:
    state = Path(os.environ.setdefault("RBEE_STATE_DIR", str(ROOT / ".rbee-demo")))
    os.environ.setdefault("RBEE_MODELS_DIR", str(state / "models"))
    os.environ.setdefault("XDG_CONFIG_HOME", str(state / "config"))
    # The model lies outside the models directory, in a directory of its own that the local hive
    # is given as a model root (registration takes directories under the model roots only).
    model = state / "own-models" / "tiny-model"
    roots = [r for r in os.environ.get("RBEE_MODEL_ROOTS", "").split(os.pathsep) if r]
    os.environ["RBEE_MODEL_ROOTS"] = os.pathsep.join([*roots, str(model.parent)])
    extra = sys.argv[1:] or ["--temperature", "0", "--max-tokens", "48"]
    if not (model / "config.json").exists():
        run("rbee-worker", "build-tiny-model", str(model))
    run("rbee", "queen", "start")
    try:
        # A run before this one registered it already: kept when it is this model, else
        # forgotten (a registered model's files are never touched) and registered again.
        known = registered_path("tiny")
        if known is not None and known != os.path.realpath(model):
            run("rbee", "model", "delete", "tiny")
        if known != os.path.realpath(model):
            run("rbee", "model", "register", "tiny", str(model))
        code = run("rbee", "infer", "Once upon a time", "--model", "tiny", *extra, check=False)
        run("rbee", "status", check=False)
    finally:
        run("rbee", "queen", "stop", check=False)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

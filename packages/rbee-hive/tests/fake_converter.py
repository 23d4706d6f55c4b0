"""A FAKE GGUF converter: speaks the converter's process contract (``rbee_hive.conversion``)
without converting anything, so the hive's import mechanics are tested in a fraction of a second.

    fake_converter.py [FLAGS] SRC DEST --dtype DTYPE

It reads nothing of SRC but its size, emits the JSON lines a converter emits (steps, progress,
done) and writes a SYNTHETIC model into DEST: a config.json naming SRC's size and the dtype, and a
weights file of zeros. Flags make it misbehave:

  --refuse CODE     emit an error event with CODE, exit 3 (a refusal)
  --crash           print a traceback to stderr, exit 1
  --no-done         exit 0 without a done event
  --hang            start a child in its own process group, then, after its first step, sleep
                    until killed (the child too)
  --wait-for FILE   after its first step, wait until FILE exists, then go on
  --pids FILE       write "PID CHILD_PID" (or "PID") to FILE before its first step
  --count FILE      append one line to FILE per run (how many conversions ran)
  --env-out FILE    write the environment it got to FILE (a JSON object)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--refuse", default=None)
    p.add_argument("--crash", action="store_true")
    p.add_argument("--no-done", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--wait-for", type=Path, default=None)
    p.add_argument("--pids", type=Path, default=None)
    p.add_argument("--count", type=Path, default=None)
    p.add_argument("--env-out", type=Path, default=None)
    args = p.parse_args()
    if args.count is not None:
        with args.count.open("a") as f:
            f.write(f"{args.src} {args.dtype}\n")
    if args.env_out is not None:
        args.env_out.write_text(json.dumps(dict(os.environ)))
    started = time.monotonic()
    print("fake converter: starting (this line is for the log)", file=sys.stderr, flush=True)
    child = None
    if args.hang:
        # A grandchild in the converter's own group: killing the group must take it too.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if args.pids is not None:
        pids = f"{os.getpid()} {child.pid}" if child else str(os.getpid())
        tmp = args.pids.with_suffix(".tmp")
        tmp.write_text(pids)
        os.replace(tmp, args.pids)
    emit(event="step", step="read", message=f"reading {args.src.name} (FAKE converter)")
    if args.hang:
        time.sleep(600)
        return 1
    while args.wait_for is not None and not args.wait_for.exists():
        time.sleep(0.02)
    if args.refuse is not None:
        emit(event="error", code=args.refuse, message=f"FAKE refusal: {args.refuse}")
        return 3
    if args.crash:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "fake_converter.py", line 1, in <module>', file=sys.stderr)
        print("RuntimeError: FAKE converter crashed", file=sys.stderr, flush=True)
        return 1
    if list(args.dest.iterdir()):
        emit(event="error", code="conversion_failed", message=f"{args.dest} is not empty")
        return 3
    size = args.src.stat().st_size
    emit(event="step", step="weights", message="dequantizing (FAKE)")
    total = 4
    for done in range(1, total + 1):
        emit(event="progress", step="write", done=done, total=total)
    (args.dest / "config.json").write_text(
        json.dumps(
            {"model_type": "llama", "synthetic": True, "source_bytes": size, "dtype": args.dtype}
        )
    )
    (args.dest / "model.safetensors").write_bytes(b"\0" * 1000)
    emit(event="step", step="write", message="wrote config.json and model.safetensors (FAKE)")
    if args.no_done:
        return 0
    emit(
        event="done",
        architecture="llama",
        parameters=250,
        bytes=1000,
        dtype=args.dtype,
        seconds=round(time.monotonic() - started, 3),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

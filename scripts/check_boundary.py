"""Check that jobproto's sans-IO core stays free of I/O frameworks.

Imports ``jobproto.core`` in a fresh interpreter and fails if any of the
forbidden modules ended up in ``sys.modules`` as a side effect.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE = "jobproto.core"
FORBIDDEN = ("starlette", "httpx", "httpx_sse", "anyio", "uvicorn", "sse_starlette")

PROBE = f"""
import json, sys
import {CORE}
forbidden = {FORBIDDEN!r}
bad = sorted(
    name for name in sys.modules
    if name.partition(".")[0] in forbidden
)
print(json.dumps(bad))
"""


def main() -> int:
    print(f"boundary: importing {CORE} in a fresh interpreter ({sys.executable})")
    print(f"boundary: forbidden top-level modules: {', '.join(FORBIDDEN)}")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        print(f"boundary: FAILED, `import {CORE}` exited {proc.returncode}:", file=sys.stderr)
        print(proc.stderr, file=sys.stderr)
        return 1
    bad: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    if bad:
        print(f"boundary: FAILED, importing {CORE} pulled in:", file=sys.stderr)
        for name in bad:
            print(f"  {name}", file=sys.stderr)
        return 1
    print(f"boundary: OK, {CORE} imports none of them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

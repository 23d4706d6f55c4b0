"""``jobproto.server.run`` takes the start-up heap out of the cyclic collector's reach."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

SERVICE = textwrap.dedent(
    """
    import gc
    from jobproto import Operations
    from jobproto.asgi import create_app
    from jobproto.server import serve

    app = create_app(Operations())
    tracked = len(gc.get_objects())

    def ready(port: int) -> None:
        print(tracked, gc.get_freeze_count(), len(gc.get_objects()), flush=True)

    serve(app, port=0, on_ready=ready)
    """
)


def test_the_start_up_heap_is_frozen_once_the_server_listens() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert len(line) == 3, process.stderr.read() if process.stderr else ""
        before, frozen, after = map(int, line)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
    # what the app and the imports built is frozen; a collection walks only what came after
    assert frozen >= before
    assert after < before // 10

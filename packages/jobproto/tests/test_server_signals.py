"""``jobproto.server.serve`` stops on SIGINT (Ctrl+C) and SIGTERM without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

SERVICE = textwrap.dedent(
    """
    import sys
    from jobproto import Operations
    from jobproto.asgi import create_app
    from jobproto.server import serve

    def ready(port: int) -> None:
        print(port, flush=True)

    serve(create_app(Operations()), port=0, on_ready=ready)
    print("returned", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_serve_cleanly(sig: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), process.stderr.read() if process.stderr else ""
        os.killpg(process.pid, sig)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "Traceback" not in err, err
    if sig is signal.SIGINT:
        # Ctrl+C: serve() returns, the program goes on and exits 0
        assert process.returncode == 0, err
        assert "returned" in out
    else:
        # SIGTERM: the shutdown is as clean; uvicorn then ends the process by the signal itself
        assert process.returncode in (0, -signal.SIGTERM), err

"""The ``rbee-queen`` command: flags, the listening line, a clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import httpx
import pytest

import rbee_queen
from jobproto.client import JobClient
from rbee_queen.app import LISTENING, main


def test_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    assert "--hive-timeout-beats" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--hive-timeout-beats", "0"])
    assert refused.value.code == 2
    assert rbee_queen.__version__


@pytest.mark.anyio
async def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "rbee_queen.app", "--port", "0", "--state-dir", str(tmp_path)]
    async with await anyio.open_process(command, stdout=-1, stderr=-1) as proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(20):
                line = b""
                while not line.endswith(b"\n"):
                    line += await proc.stdout.receive(1)
            word, raw = line.decode().split(" ", 1)
            assert word == LISTENING
            url = json.loads(raw)["url"]
            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.get("/v1/hives")).json() == {"hives": []}
            async with JobClient(url) as client:
                status = await client.run("status")
            assert status["hives"] == [] and status["in_flight"] == 0
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

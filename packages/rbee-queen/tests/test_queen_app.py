"""The ``rbee-queen`` command: flags, the listening line, its secret and the keeper's token, the
checks it always makes, a clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import stat
import sys
from pathlib import Path

import anyio
import httpx
import pytest

import rbee_queen
from jobproto.client import JobClient
from rbee_contracts.auth import join_token, keeper_token
from rbee_queen.app import LISTENING, main


def test_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    assert "--hive-timeout-beats" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--hive-timeout-beats", "0"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as half_tls:
        main(["--tls-cert", "/nonexistent/cert.pem"])
    assert half_tls.value.code == 2
    assert "--tls-key" in capsys.readouterr().err
    assert rbee_queen.__version__


def test_a_secret_file_others_can_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32)
    secret.chmod(0o644)
    with pytest.raises(SystemExit) as refused:
        main(["--state-dir", str(tmp_path / "state"), "--secret-file", str(secret)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "chmod 600" in err and "ab" * 32 not in err


@pytest.mark.anyio
async def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = [sys.executable, "-m", "rbee_queen.app", "--port", "0", "--state-dir", str(state)]
    command += ["--log-level", "debug"]
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
            # created on first start, the owner's only; the keeper's token derived from it
            secret = bytes.fromhex((state / "secret").read_text())
            token = (state / "keeper.token").read_text().strip()
            assert token == keeper_token(secret)
            for path in (state / "secret", state / "keeper.token"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
            keeper = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=url) as http:
                refused = await http.get("/v1/hives")
                listed = await http.get("/v1/hives", headers=keeper)
                elsewhere = await http.get("/v1/hives", headers={**keeper, "Host": "evil.example"})
                hive = {"Authorization": f"Bearer {join_token(secret, 'h1')}"}
                as_hive = await http.get("/v1/jobs", headers=hive)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            assert listed.json()["hives"] == []
            assert elsewhere.status_code == 421
            assert as_hive.status_code == 401  # h1 has not joined: its token is nobody's yet
            async with JobClient(url, token=token) as client:
                status = await client.run("status")
            assert status["hives"] == [] and status["in_flight"] == 0
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await proc.wait()
            assert proc.stderr is not None
            chunks = [chunk async for chunk in proc.stderr]
            log = b"".join(chunks).decode()
            assert "GET /v1/hives" in log  # the access log is there, without the token
            assert token not in log and secret.hex() not in log
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

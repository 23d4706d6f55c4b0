"""The ``rbee-worker`` command: a real process, its LISTENING line, its flags, its imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from jobproto.client import JobClient
from rbee_contracts.worker_cli import LISTENING_PREFIX, parse_listening_line
from rbee_worker.app import main, parse_args


def worker_command() -> list[str]:
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).with_name("rbee-worker")
    assert script.exists(), "the rbee-worker console script is installed in the venv"
    return [str(script)]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


TOKEN = "rbee_h_" + "D" * 43  # made up: the worker only compares it


@pytest.mark.anyio
async def test_the_command_prints_listening_and_serves(tmp_path: Path) -> None:
    """With the token its hive gives it (by environment): needed for all but /health."""
    env = {**os.environ, "RBEE_WORKER_TOKEN": TOKEN}
    args = [
        *worker_command(),
        "--engine", "synthetic",
        "--host", "127.0.0.1",
        "--port", "0",
        "--worker-id", "w-cli",
        "--engine-arg", "tokens_per_second=0",
    ]  # fmt: skip
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = await anyio.open_process(args, stderr=stderr, start_new_session=True, env=env)
    try:
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
        prefix, _, payload = line.decode().partition(" ")
        assert prefix == LISTENING_PREFIX
        announced = json.loads(payload)
        assert announced["worker_id"] == "w-cli"
        assert set(announced) == {"port", "worker_id"} and announced["port"] > 0
        assert parse_listening_line(line.decode().rstrip("\n")) == announced  # as the hive reads it
        url = f"http://127.0.0.1:{announced['port']}"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url) as http, JobClient(url, token=TOKEN) as client:
            assert (await http.get("/health")).status_code == 200
            for path in ("/ready", "/v1/worker", "/v1/jobs"):
                assert (await http.get(path)).status_code == 401, path
                wrong = {"Authorization": "Bearer " + "D" * 50}
                assert (await http.get(path, headers=wrong)).status_code == 401, path
            with anyio.fail_after(10):
                while (await http.get("/ready", headers=bearer)).status_code != 200:
                    await anyio.sleep(0.02)
            result = await client.run("infer", prompt="hello", max_tokens=7)
        assert result["completion_tokens"] == 7 and result["engine"] == "synthetic"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        await process.aclose()
    log = (tmp_path / "stderr.log").read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: exit status -SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM), log
    assert "engine closed; worker stopped" in log
    assert not group_alive(process.pid), "no process of the worker's group is left"
    assert TOKEN not in log


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7"])
def test_the_command_refuses_to_listen_beyond_loopback_without_a_token(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RBEE_WORKER_TOKEN", raising=False)
    assert main(["--engine", "synthetic", "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"refuses to listen on {host} without a token" in err
    assert "RBEE_WORKER_TOKEN" in err


def test_importing_the_app_does_not_import_torch() -> None:
    code = (
        "import sys, rbee_worker.app, rbee_worker.engines.transformers\n"
        "from rbee_worker.app import create_app\n"
        "from rbee_worker.settings import WorkerSettings\n"
        "create_app(WorkerSettings(engine='synthetic'))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == ""


def test_flags_become_settings() -> None:
    settings = parse_args(
        [
            "--model", "/models/tiny",
            "--engine", "transformers",
            "--port", "0",
            "--worker-id", "w1",
            "--max-concurrency", "2",
            "--max-queue", "0",
            "--device", "cpu",
            "--dtype", "float32",
            "--engine-arg", "max_model_len=256",
            "--engine-arg", "a=b=c",
        ]
    )  # fmt: skip
    assert settings.model == "/models/tiny" and settings.worker_id == "w1"
    assert settings.max_concurrency == 2 and settings.max_queue == 0
    assert settings.engine_args == {"max_model_len": "256", "a": "b=c"}
    assert settings.display_model_name == "tiny"
    assert parse_args(["--engine", "synthetic"]).worker_id.startswith("worker-")


@pytest.mark.parametrize(
    "argv",
    [
        ["--engine", "transformers"],  # no --model
        ["--engine", "synthetic", "--max-concurrency", "0"],
        ["--engine", "synthetic", "--engine-arg", "novalue"],
        ["--engine", "nope"],
    ],
)
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2


def test_unavailable_engine_and_bad_engine_args_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # main() sets it; keep it local
    from rbee_worker.engines import _vllm_config

    monkeypatch.setattr(_vllm_config, "installed_build", lambda: None)
    assert main(["--engine", "vllm", "--model", "/models/tiny"]) == 2
    assert "the vllm engine cannot run here: vLLM is not installed" in capsys.readouterr().err
    assert main(["--engine", "synthetic", "--engine-arg", "speed=3"]) == 2
    assert "unknown engine arg(s) for the synthetic engine: speed" in capsys.readouterr().err


def test_build_tiny_model_command(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert main(["build-tiny-model", str(tmp_path / "again")]) == 0
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"]) == (256, 4)
    assert (config["num_hidden_layers"], config["max_position_embeddings"]) == (2, 512)
    assert config["tie_word_embeddings"] is False and config["dtype"] == "float32"
    assert 900 <= config["vocab_size"] <= 1100
    card = json.loads((tmp_path / "again" / "rbee-model.json").read_text())
    assert card == {"name": "again", "source": "built-tiny", "seed": 0}
    # Deterministic: the same seed gives the same bytes as the session's model.
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_model / name).read_bytes()

"""The worker's command line, as ``worker_argv`` builds it (for the hive and the benchmark),
read back by the worker's own parser: the two sides cannot drift apart."""

from __future__ import annotations

from rbee_contracts.worker_cli import worker_argv
from rbee_worker.app import parse_args


def test_every_flag_worker_argv_writes_is_read_back_by_the_worker() -> None:
    argv = worker_argv(
        model="/models/tiny",
        engine="transformers",
        host="127.0.0.2",
        worker_id="w-1",
        model_name="tiny",
        port=8123,
        device="cpu",
        max_concurrency=3,
        max_queue=7,
        engine_args={"max_model_len": "512", "dtype_hint": "a=b"},
    )
    settings = parse_args(argv)
    assert settings.model == "/models/tiny"
    assert settings.engine == "transformers"
    assert settings.host == "127.0.0.2"
    assert settings.port == 8123
    assert settings.worker_id == "w-1"
    assert settings.model_name == "tiny"
    assert settings.device == "cpu"
    assert settings.max_concurrency == 3
    assert settings.max_queue == 7
    assert settings.engine_args == {"max_model_len": "512", "dtype_hint": "a=b"}


def test_tls_and_allowed_hosts_are_read_back_by_the_worker() -> None:
    argv = worker_argv(
        model="/models/tiny",
        engine="auto",
        host="0.0.0.0",
        worker_id="w-3",
        model_name="tiny",
        tls_cert="/etc/rbee/cert.pem",
        tls_key="/etc/rbee/key.pem",
        allowed_hosts=["gpu1.lan", "10.0.0.5"],
    )
    settings = parse_args(argv)
    assert (settings.tls_cert, settings.tls_key) == ("/etc/rbee/cert.pem", "/etc/rbee/key.pem")
    assert settings.allowed_hosts == ("gpu1.lan", "10.0.0.5")
    assert settings.token is None  # never a flag: the environment's
    assert not any("token" in part.lower() for part in argv)


def test_the_optional_flags_left_out_leave_the_workers_defaults() -> None:
    argv = worker_argv(
        model=None, engine="synthetic", host="127.0.0.1", worker_id="w-2", model_name="synth"
    )
    settings = parse_args(argv)
    defaults = parse_args(["--engine", "synthetic"])
    assert settings.model is None and settings.port == 0
    assert (settings.worker_id, settings.model_name) == ("w-2", "synth")
    assert settings.device == defaults.device
    assert settings.max_concurrency == defaults.max_concurrency
    assert settings.max_queue == defaults.max_queue
    assert settings.engine_args == {}


def test_engine_args_are_written_in_key_order() -> None:
    argv = worker_argv(
        model="/m",
        engine="auto",
        host="h",
        worker_id="w",
        model_name="m",
        engine_args={"b": "2", "a": "1"},
    )
    assert argv[-4:] == ["--engine-arg", "a=1", "--engine-arg", "b=2"]

"""The hive's command line as a queen writes it (``rbee_contracts.hive_cli.hive_argv``), read back
by the hive's own parser: the two sides cannot drift apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbee_contracts.hive_cli import hive_argv
from rbee_hive.app import _parser, main
from rbee_hive.settings import ENV_MODEL_ROOTS


def test_every_flag_hive_argv_writes_is_read_back_by_the_hive() -> None:
    argv = hive_argv(
        host="0.0.0.0",
        port=9100,
        hive_id="gpu1",
        queen_url="https://queen.lan:8500",
        state_dir="/s",
        models_dir="/-m",
        heartbeat=0.5,
        public_url="https://gpu1.lan:9100",
        tls_cert="/c/cert.pem",
        tls_key="/c/key.pem",
        tls_ca="/c/ca.pem",
        allowed_hosts=["gpu1.lan", "10.0.0.5"],
        model_roots=["/data/models", "/-odd"],
    )
    args = _parser().parse_args(argv)
    assert (args.host, args.port, args.hive_id) == ("0.0.0.0", 9100, "gpu1")
    assert (args.queen_url, args.public_url) == ("https://queen.lan:8500", "https://gpu1.lan:9100")
    assert (args.state_dir, args.models_dir, args.heartbeat) == ("/s", "/-m", 0.5)
    assert (args.tls_cert, args.tls_key, args.tls_ca) == ("/c/cert.pem", "/c/key.pem", "/c/ca.pem")
    assert args.allowed_host == ["gpu1.lan", "10.0.0.5"]
    assert args.model_root == ["/data/models", "/-odd"]
    assert not any("token" in arg.lower() for arg in argv)  # tokens go by environment


def test_the_optional_flags_are_left_out_when_not_given() -> None:
    argv = hive_argv(
        host="127.0.0.1",
        port=0,
        hive_id="h",
        queen_url="http://q:1",
        state_dir="/s",
        models_dir="/m",
    )
    args = _parser().parse_args(argv)
    assert (args.tls_cert, args.tls_ca, args.public_url) == (None, None, None)
    assert args.allowed_host == [] and args.model_root == []


@pytest.mark.parametrize(
    ("flags", "env_roots"),
    [
        (["--models-dir=/"], None),
        (["--model-root=/etc"], None),
        ([], os.pathsep.join(["/srv/models", str(Path.home())])),
    ],
)
def test_a_hive_with_a_model_root_that_is_no_directory_of_its_own_exits_2(
    flags: list[str],
    env_roots: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if env_roots is not None:
        monkeypatch.setenv(ENV_MODEL_ROOTS, env_roots)
    else:
        monkeypatch.delenv(ENV_MODEL_ROOTS, raising=False)
    where = [f"--state-dir={tmp_path / 'state'}", f"--models-dir={tmp_path / 'models'}"]
    with pytest.raises(SystemExit) as exit_:
        main([*where, "--port=0", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rbee-hive: ") and "must be a directory of its own" in err

"""The hive's command line as a queen writes it (``rbee_contracts.hive_cli.hive_argv``), read back
by the hive's own parser: the two sides cannot drift apart."""

from __future__ import annotations

from rbee_contracts.hive_cli import hive_argv
from rbee_hive.app import _parser


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

"""Command-line parsing and help, without any queen."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import Result

import rbee_keeper
from rbee_keeper.cli import rbee

Invoke = Callable[..., Result]

COMMANDS = {
    "infer": [],
    "status": [],
    "queen": ["start", "stop", "status", "rotate-secret"],
    "hive": ["list", "status", "start", "stop", "install", "uninstall"],
    "worker": ["spawn", "list", "stop"],
    "model": ["download", "register", "list", "delete"],
    "jobs": ["list", "status", "cancel", "stream"],
    "config": ["show"],
    "cert": ["generate", "fingerprint"],
}


def test_version(invoke: Invoke) -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert rbee_keeper.__version__ in result.stdout


def test_help_lists_commands_and_exit_codes(invoke: Invoke) -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert "3 queen unreachable" in result.stdout


def test_the_command_tree() -> None:
    assert set(rbee.commands) == set(COMMANDS)
    for name, subcommands in COMMANDS.items():
        group = rbee.commands[name]
        assert set(getattr(group, "commands", {})) == set(subcommands)


@pytest.mark.parametrize(
    "args",
    [
        ["infer", "hi"],  # --model is required
        ["infer", "hi", "-m", "x", "--max-tokens", "many"],
        ["infer", "hi", "-m", "x", "--temperature", "nan"],  # JSON has no NaN or Infinity
        ["infer", "hi", "-m", "x", "--top-p", "inf"],
        ["worker", "spawn", "-m", "x", "--engine", "warp"],
        ["jobs", "list", "--state", "sleeping"],
        ["jobs", "status"],
        ["model", "register", "only-a-name"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(invoke: Invoke, args: list[str]) -> None:
    assert invoke(*args).exit_code == 2


def test_subcommand_help_works_with_a_broken_config(invoke: Invoke) -> None:
    result = invoke("infer", "--help", RBEE_HIVE_PORT="not-a-port")
    assert result.exit_code == 0
    assert "--no-autostart" in result.stdout


def test_jobs_commands_report_an_unreachable_queen(invoke: Invoke) -> None:
    result = invoke("jobs", "list")
    assert result.exit_code == 3
    assert "queen not running on 127.0.0.1:" in result.stderr


def test_a_queen_on_another_host_is_not_autostarted(invoke: Invoke) -> None:
    # A name that resolves to no address of this machine (here: to none at all, so it fails at
    # once) is not one rbee starts a queen for. (127.0.0.2 would be: it is this machine's.)
    url = "http://no-such-machine.invalid:9"
    result = invoke("infer", "hi", "-m", "x", RBEE_QUEEN_URL=url)
    assert result.exit_code == 3
    assert "cannot connect to the queen on no-such-machine.invalid:9" in result.stderr
    assert "started queen" not in result.stderr

"""Command-line parsing and help, without any queen."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import Result

import rbee_keeper
from rbee_keeper.cli import raw_hint, rbee, split_gguf_ref
from rbee_worker.engines._prompt import prompt_ids
from rbee_worker.engines.base import ChatTurn, GenerationRequest, InvalidRequest

Invoke = Callable[..., Result]

COMMANDS = {
    "infer": [],
    "status": [],
    "queen": ["start", "stop", "status", "rotate-secret"],
    "hive": ["list", "status", "start", "stop", "install", "uninstall"],
    "worker": ["spawn", "list", "stop"],
    "model": ["download", "register", "import", "list", "delete"],
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
        ["infer", "hi", "-m", "x", "--raw", "--system", "be brief"],  # a system turn is a chat
        ["model", "import", "only-a-name"],
        ["model", "import", "n", "/m/n.gguf", "--dtype", "q4_1"],
        ["model", "download", "org/m", "--dtype", "float16"],  # dtype: a GGUF file's only
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


def test_a_repo_ref_splits_into_the_repo_id_and_a_gguf_file() -> None:
    assert split_gguf_ref("Org/Repo") == ("Org/Repo", None)
    assert split_gguf_ref("Org/Repo:model.Q4_1.gguf") == ("Org/Repo", "model.Q4_1.gguf")
    assert split_gguf_ref("Org/Repo:sub/dir/m.gguf") == ("Org/Repo", "sub/dir/m.gguf")
    assert split_gguf_ref("Org/Repo:") == ("Org/Repo", "")  # model download refuses it


def test_a_repo_ref_with_an_empty_file_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("model", "download", "Org/Repo:")
    assert result.exit_code == 2
    assert "no file after the colon in 'Org/Repo:'" in result.stderr
    assert "REPO_ID:FILE.gguf" in result.stderr


def test_the_raw_hint_answers_the_workers_own_refusal_of_a_chat() -> None:
    """A worker whose model's tokenizer has no chat template refuses a chat with a message of
    its own (``prompt_ids``); the keeper's hint must recognise it, and nothing else."""

    class NoTemplate:
        chat_template = None

    chat = GenerationRequest(messages=[ChatTurn("user", "hi")])
    with pytest.raises(InvalidRequest) as refused:
        prompt_ids(NoTemplate(), chat, 64)
    relayed = f"worker:w1: {refused.value}"  # the queen prefixes where it failed
    hint = raw_hint("invalid_request", relayed)
    assert hint is not None and "--raw" in hint
    assert raw_hint("invalid_request", "worker:w1: the prompt is 9000 tokens") is None
    assert raw_hint("no_capacity", relayed) is None

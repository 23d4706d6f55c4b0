"""Commands that run a job on a (fake) queen and stream it: output, JSON Lines, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

Invoke = Callable[..., Result]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def queen(
    fake_queen: str,
    fake_queen_token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
) -> str:
    monkeypatch.setenv("RBEE_QUEEN_URL", fake_queen)
    monkeypatch.setenv("RBEE_TOKEN_FILE", str(fake_queen_token_file))
    return fake_queen


def test_infer_streams_tokens_to_stdout_and_narration_to_stderr(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "say hello", "--model", "tiny", "--no-autostart")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    err = result.stderr
    assert "[queen] schedule: no ready worker for tiny; spawning one" in err
    assert "[hive] model_download: downloading tiny" in err
    assert "[worker] worker_start: loading weights" in err
    # The summary line: tokens, rate, time to first token, finish reason.
    assert "5 tokens, 250.0 tok/s, first token 12 ms" in err
    assert "finish stop" in err
    assert "model tiny" in err


def test_infer_sends_the_flags_as_job_fields(queen: str, invoke: Invoke) -> None:
    result = invoke(
        "infer",
        "p",
        "-m",
        "tiny",
        "--max-tokens",
        "7",
        "--temperature",
        "0",
        "--top-p",
        "0.5",
        "--top-k",
        "40",
        "--seed",
        "3",
        "--stop",
        "a",
        "--stop",
        "b",
        "--presence-penalty",
        "0.5",
        "--frequency-penalty",
        "-1",
        "--hive",
        "localhost",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    params = json_lines(result.stdout)[-1]["result"]["params"]
    assert params == {
        "model": "tiny",
        "prompt": None,
        "messages": [{"role": "user", "content": "p"}],  # a chat, unless --raw
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 0.5,
        "top_k": 40,
        "seed": 3,
        "stop": ["a", "b"],
        "presence_penalty": 0.5,
        "frequency_penalty": -1.0,
        "hive": "localhost",
    }


def test_infer_with_system_sends_messages_and_reads_stdin(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "-", "-m", "tiny", "--system", "be brief", "--json", input="hi\n")
    assert result.exit_code == 0, result.stderr
    params = json_lines(result.stdout)[-1]["result"]["params"]
    assert params["prompt"] is None
    assert params["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi\n"},
    ]
    # Queen-side defaults apply to what was not given.
    assert params["max_tokens"] == 128 and params["stop"] == []


def test_infer_raw_sends_a_plain_prompt(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "Once upon a time", "-m", "tiny", "--raw", "--json")
    assert result.exit_code == 0, result.stderr
    params = json_lines(result.stdout)[-1]["result"]["params"]
    assert (params["prompt"], params["messages"]) == ("Once upon a time", None)


def test_a_chat_refused_for_want_of_a_chat_template_hints_raw(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "Once upon a time", "-m", "base")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    failed = next(i for i, line in enumerate(lines) if "job failed: invalid_request" in line)
    assert "no chat template" in lines[failed]
    assert any("--raw" in line for line in lines[failed + 1 :]), result.stderr

    as_json = invoke("infer", "Once upon a time", "-m", "base", "--json")
    assert as_json.exit_code == 1
    assert json_lines(as_json.stdout)[-1]["error"]["code"] == "invalid_request"
    assert "--raw" in as_json.stderr

    raw = invoke("infer", "Once upon a time", "-m", "base", "--raw")
    assert raw.exit_code == 0, raw.stderr
    assert raw.stdout == "Hello, world!\n"
    # other failures get no such advice
    broken = invoke("infer", "x", "-m", "broken")
    assert broken.exit_code == 1 and "--raw" not in broken.stderr


def test_infer_json_gives_json_lines(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "x", "-m", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    types = [line["type"] for line in lines]
    assert types[0] == "narration"
    assert {"narration", "progress", "data", "succeeded"} <= set(types)
    assert types[-2:] == ["succeeded", "result"]
    assert len({line["job_id"] for line in lines}) == 1  # one job id for the whole command
    text = "".join(line["payload"]["text"] for line in lines if line["type"] == "data")
    assert text == "Hello, world!\n"
    relayed = [line for line in lines if "origin" in line]
    assert {line["origin"]["service"] for line in relayed} == {"hive", "worker"}
    final = lines[-1]
    assert final["state"] == "succeeded"
    assert final["result"]["completion_tokens"] == 5


def test_failed_job_exits_1_with_code_and_message(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "x", "-m", "broken")
    assert result.exit_code == 1
    assert "job failed: no_capacity: no hive can serve model 'broken'" in result.stderr
    assert result.stdout == ""

    as_json = invoke("infer", "x", "-m", "broken", "--json")
    assert as_json.exit_code == 1
    final = json_lines(as_json.stdout)[-1]
    assert final["type"] == "result" and final["state"] == "failed"
    assert final["error"]["code"] == "no_capacity"


def test_cancelled_job_exits_4(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "x", "-m", "self-cancel")
    assert result.exit_code == 4
    assert "job cancelled: cancelled by the fake" in result.stderr


def test_validation_refusal_exits_5_with_message_and_field(queen: str, invoke: Invoke) -> None:
    result = invoke("infer", "x", "-m", "tiny", "--max-tokens", "0")
    assert result.exit_code == 5
    assert "validation_error" in result.stderr
    assert "max_tokens" in result.stderr
    assert "(field max_tokens)" in result.stderr

    as_json = invoke("infer", "x", "-m", "tiny", "--max-tokens", "0", "--json")
    assert as_json.exit_code == 5
    (error,) = json_lines(as_json.stdout)
    assert error["type"] == "error"
    assert error["field"] == "max_tokens" and error["exit_code"] == 5


def test_status_shows_the_queen_view(queen: str, invoke: Invoke) -> None:
    result = invoke("status")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "hives" in out and "localhost" in out and "2.0 GiB" in out
    assert "in_flight: 0" in out and "jobs_in_flight" not in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hive", "list"], "localhost"),
        (["hive", "status"], "hive_id: localhost"),
        (["worker", "list"], "w1"),
        (["worker", "spawn", "-m", "tiny", "--engine", "synthetic"], "engine: synthetic"),
        (["worker", "stop", "w1"], "state: stopped"),
        (["model", "list"], "1.0 MiB"),
        (["model", "download", "org/tiny-model", "--revision", "v1"], "name: tiny-model"),
        (["model", "delete", "tiny"], "path: /models/tiny"),
    ],
)
def test_job_commands_render_their_results(
    queen: str, invoke: Invoke, args: list[str], expected: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert expected in result.stdout


def test_model_register_sends_an_absolute_path(queen: str, invoke: Invoke) -> None:
    result = invoke("model", "register", "mine", "relative/dir", "--json")
    assert result.exit_code == 0, result.stderr
    path = json_lines(result.stdout)[-1]["result"]["path"]
    assert path.startswith("/") and path.endswith("relative/dir")


def test_model_import_sends_an_absolute_path_and_the_dtype(queen: str, invoke: Invoke) -> None:
    result = invoke("model", "import", "smol", "gguf/smol.Q4_1.gguf", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.stderr
    assert "[queen] import: converting /" in result.stderr
    assert "gguf/smol.Q4_1.gguf (bfloat16)" in result.stderr
    assert "[queen] model_import" in result.stderr  # its progress
    out = result.stdout
    assert "name: smol" in out and "source: gguf" in out and "sha256: " + "ab" * 32 in out

    default = invoke("model", "import", "smol", "/srv/smol.gguf", "--json")
    assert default.exit_code == 0, default.stderr
    info = json_lines(default.stdout)[-1]["result"]
    assert info["source_file"] == "/srv/smol.gguf" and info["source"] == "gguf"
    narrated = [
        line["payload"]["message"]
        for line in json_lines(default.stdout)
        if line["type"] == "narration"
    ]
    assert narrated == ["converting /srv/smol.gguf (float32)"]  # the queen's default dtype


def test_model_download_of_a_gguf_file_sends_repo_id_and_file(queen: str, invoke: Invoke) -> None:
    result = invoke(
        "model", "download", "Org/Smol-GGUF:q4/smol.Q4_1.gguf", "--dtype", "float16", "--json"
    )
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    info = lines[-1]["result"]
    assert (info["repo_id"], info["source_file"], info["source"]) == (
        "Org/Smol-GGUF",
        "q4/smol.Q4_1.gguf",
        "gguf",
    )
    narrated = [line["payload"]["message"] for line in lines if line["type"] == "narration"]
    assert narrated == ["importing q4/smol.Q4_1.gguf of Org/Smol-GGUF as float16"]

    plain = invoke("model", "download", "Org/Smol", "--json")
    assert plain.exit_code == 0, plain.stderr
    info = json_lines(plain.stdout)[-1]["result"]
    assert (info["repo_id"], info["source_file"], info["source"]) == (
        "Org/Smol",
        None,
        "huggingface",
    )

    # the queen judges the file: not a .gguf is a refusal naming the field
    refused = invoke("model", "download", "Org/Smol:weights.bin")
    assert refused.exit_code == 5 and "(field file)" in refused.stderr


def test_model_list_says_where_each_model_came_from(queen: str, invoke: Invoke) -> None:
    result = invoke("model", "list")
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "from" in rows["name"].split() and "sha256" not in rows["name"]
    assert "gguf" in rows["smol"] and "/srv/gguf/smol.Q4_1.gguf" in rows["smol"]
    assert "org/hub@main" in rows["hub"]
    # the digest is for --json
    listed = json_lines(invoke("model", "list", "--json").stdout)[-1]["result"]["models"]
    assert [m.get("sha256") for m in listed] == [None, "cd" * 32, None]


def test_download_progress_is_rendered(queen: str, invoke: Invoke) -> None:
    result = invoke("model", "download", "org/m")
    assert result.exit_code == 0, result.stderr
    assert "[queen] model_download" in result.stderr
    assert "4.1/4.1 kB" in result.stderr  # the final state of the bar: done of total


def test_jobs_commands(queen: str, invoke: Invoke) -> None:
    run = invoke("infer", "x", "-m", "tiny", "--json")
    job_id = json_lines(run.stdout)[0]["job_id"]

    status = invoke("jobs", "status", job_id, "--json")
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"

    listed = invoke("jobs", "list", "--state", "succeeded")
    assert listed.exit_code == 0, listed.stderr
    assert job_id in listed.stdout

    # stream attaches to an existing job: the whole log again, to its end.
    replay = invoke("jobs", "stream", job_id)
    assert replay.exit_code == 0, replay.stderr
    assert replay.stdout == "Hello, world!\n"
    assert "5 tokens" in replay.stderr
    after = invoke("jobs", "stream", job_id, "--json", "--after", "3")
    assert all(line.get("seq", 4) > 3 for line in json_lines(after.stdout))

    cancel = invoke("jobs", "cancel", job_id)
    assert cancel.exit_code == 0
    assert "state: succeeded" in cancel.stdout

    missing = invoke("jobs", "status", "job_AAAAAAAAAAAAAAAAAAAAAA")
    assert missing.exit_code == 5
    assert "job_not_found" in missing.stderr

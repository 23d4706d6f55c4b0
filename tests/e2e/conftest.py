"""End-to-end fixtures: real processes, driven through the ``rbee`` command as a person would.

Every session gets a directory of its own (``e2e_base``) that holds everything the processes
touch: state (pid files, logs), config (``$XDG_CONFIG_HOME/rbee/config.toml``), models, the
Hugging Face home, and a copy of the tiny model. Queen and hive get free ports, so the tests
never meet a developer's running rbee (ports 8500/9000, ``~/.local/state/rbee``).

Shared by the whole session (worker loads cost ~12 s on two cores, so they are shared too):

- ``tiny_model``: the tiny random-weight Llama (``rbee-worker build-tiny-model``), built once and
  kept in pytest's cache (keyed by the builder's source and the library versions), then copied
  into the session directory;
- ``fake_hub``: a FAKE Hugging Face hub process (``python -m rbee_hive.testing.fake_hub``, the
  hive's tests' fake) serving that model as ``org/tiny``; a test arms the faults it wants
  (``FakeHubProcess.control``) and reads the requests made since it began;
- ``cluster``: the local queen and hive, started with ``rbee queen start``; the model registered
  as ``tiny``. The hive gets ``--hf-endpoint`` (the fake hub) and a 1 s heartbeat through the
  config file's ``hive_command``; ``rbee queen stop`` at the end must leave no process behind.

No process is left behind: after each test, every process whose command line mentions the
session directory must be one the session owns (queen, hive and the hive's workers, the fake
hub); anything else is killed and the test fails. At the end of the session nothing may remain.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import psutil
import pytest

from jobproto.client import JobClient, RemoteJobFailed
from rbee_contracts import auth
from rbee_hive.testing.fake_hub import LISTENING as HUB_LISTENING
from rbee_hive.testing.fake_hub import file_gets as hub_file_gets
from rbee_hive.testing.fake_hub import pseudo_random_bytes

T = TypeVar("T")

PYTHON = sys.executable
BIN = Path(sys.executable).parent

#: the fake hub's repository
HUB_REPO = "org/tiny"
#: an extra file larger than huggingface_hub's 10 MiB resume chunk, so a cut can resume mid-file
HUB_EXTRA = ("original/blob.bin", 12 * 1024 * 1024)
#: heartbeat of the session's local hive (the queen marks it down after 3 missed beats)
LOCAL_HEARTBEAT = 1.0
#: the id of the hive ``rbee queen start`` starts
LOCAL_HIVE = "localhost"
#: seconds the hive gives a worker between SIGTERM and SIGKILL
STOP_GRACE = 5.0


def rbee_argv() -> list[str]:
    """The ``rbee`` console script next to this interpreter (or the module, if not installed)."""
    script = BIN / "rbee"
    return [str(script)] if script.exists() else [PYTHON, "-m", "rbee_keeper"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# -- running rbee ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One finished command: exit code, stdout, stderr, wall time."""

    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.code} after {self.seconds:.2f} s\n"
            f"--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )

    def lines(self) -> list[dict[str, Any]]:
        """The JSON Lines of a ``--json`` command."""
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def final(self) -> dict[str, Any]:
        """The last JSON line: ``{"type": "result"|"error", ...}`` (or an ``output`` object)."""
        lines = self.lines()
        assert lines, f"no JSON output:\n{self}"
        return lines[-1]

    def data(self) -> list[dict[str, Any]]:
        """The payloads of the data events (tokens) of a ``--json`` infer."""
        return [line["payload"] for line in self.lines() if line.get("type") == "data"]

    def routed(self) -> list[str]:
        """The workers the queen narrated routing to (``routed: worker X on hive H``)."""
        return re.findall(r"routed: worker (\S+) on hive", self.out + self.err)


class Running:
    """A command in the background; its output is collected as it arrives."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # its own group: a signal for it reaches nothing else (and none reaches it by accident)
            start_new_session=True,
        )
        self._buffers = {"out": bytearray(), "err": bytearray()}
        self._eof: set[str] = set()
        self._cond = threading.Condition()  # an RLock: predicates may read the output
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any, name: str) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    self._buffers[name] += chunk
                else:
                    self._eof.add(name)
                self._cond.notify_all()
            if not chunk:
                return

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def out(self) -> str:
        with self._cond:
            return self._buffers["out"].decode("utf-8", "replace")

    @property
    def err(self) -> str:
        with self._cond:
            return self._buffers["err"].decode("utf-8", "replace")

    def lines(self) -> list[dict[str, Any]]:
        """The complete JSON Lines written so far."""
        out = self.out
        complete = out[: out.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def wait_for(self, predicate: Callable[[Running], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate(self)`` is truthy (and return it); fail if the command's output
        ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self._eof >= {"out", "err"}:
                    break
                self._cond.wait(min(left, 0.2))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)
        state = "timed out" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        pytest.fail(
            f"waiting for {what}: {state} after {time.monotonic() - self.started:.1f} s"
            f"\n$ {' '.join(self.argv)}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> Result:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(
                f"still running after {timeout:g} s: $ {' '.join(self.argv)}\n"
                f"--- stdout\n{self.out}\n--- stderr\n{self.err}"
            )
        for thread in self._threads:
            thread.join(5)
        return Result(self.argv, code, self.out, self.err, time.monotonic() - self.started)

    def close(self) -> None:
        """Kill it (its whole group) if it still runs; reap it; close the pipes."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Rbee:
    """``rbee`` with one isolated environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def argv(self, args: Sequence[str]) -> list[str]:
        return [*rbee_argv(), *args]

    def run(
        self,
        *args: str,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        argv = self.argv(args)
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                env={**self.env, **(env or {})},
                cwd=cwd or self.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"$ {' '.join(argv)} still running after {timeout:g} s:\n{exc.stderr}")
        return Result(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        """Run and expect exit status 0."""
        result = self.run(*args, **kwargs)
        assert result.code == 0, str(result)
        return result

    def fails(self, code: int, *args: str, **kwargs: Any) -> Result:
        """Run and expect exit status ``code``."""
        result = self.run(*args, **kwargs)
        assert result.code == code, str(result)
        return result

    def result(self, *args: str, **kwargs: Any) -> Any:
        """Run with ``--json``, expect success, return the job's (or command's) result."""
        final = self.ok(*args, "--json", **kwargs).final()
        if final.get("type") == "result":
            assert final["state"] == "succeeded", final
            return final["result"]
        return final

    def start(self, *args: str) -> Running:
        return Running(self.argv(args), self.env, self.cwd)

    def batch(self, *commands: Sequence[str], timeout: float = 60.0) -> list[Result]:
        """Run independent commands at once (each costs ~0.7 s of start-up alone); their
        results in order."""
        runs = [self.start(*command) for command in commands]
        try:
            return [run.wait(timeout) for run in runs]
        finally:
            for run in runs:
                run.close()


# -- processes -------------------------------------------------------------------------------------


def mentioning(text: str) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose command line contains ``text``."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid in mine or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if text in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (empty when it is gone)."""
    try:
        proc = psutil.Process(pid)
        return {pid, *(child.pid for child in proc.children(recursive=True))}
    except psutil.Error:
        return set()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(procs: Sequence[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
    return out


def kill_all(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(procs), timeout=5)


#: pids whose process trees belong to the session (queen, hive, fake hub), not to one test
SESSION_OWNED: set[int] = set()


@pytest.fixture(scope="session")
def e2e_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's directory; at the end no process may mention it."""
    base = tmp_path_factory.mktemp("rbee-e2e")
    yield base
    left = mentioning(str(base))
    if left:
        names = describe(left)
        kill_all(left)
        pytest.fail(f"processes of the e2e session outlived it: {names}")


@pytest.fixture(autouse=True)
def no_leftover_processes(e2e_base: Path) -> Iterator[None]:
    """After each test: no process mentioning the session directory except the session's own."""
    base = str(e2e_base)
    before = {p.pid for p in mentioning(base)}
    yield

    def strays() -> list[psutil.Process]:
        allowed = set(before)
        for pid in SESSION_OWNED:
            allowed |= tree(pid)
        return [p for p in mentioning(base) if p.pid not in allowed]

    # Processes on their way out get all the time a loaded machine needs; only those that stay
    # fail the test.
    deadline = time.monotonic() + 30.0
    left = strays()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = strays()
    if left:
        names = describe(left)
        kill_all(left)
        pytest.fail(f"the test left processes behind: {names}")


# -- an isolated environment -----------------------------------------------------------------------


def isolated_env(root: Path, queen_port: int, hive_port: int) -> dict[str, str]:
    """The environment of one isolated rbee: nothing of the developer's rbee, XDG or HF setup."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RBEE_", "XDG_", "HF_", "HUGGING", "FORCE_COLOR", "TTY_"))
    }
    env.update(
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_STATE_HOME=str(root / "xdg-state"),
        XDG_DATA_HOME=str(root / "xdg-data"),
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        HF_HOME=str(root / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        RBEE_QUEEN_URL=f"http://127.0.0.1:{queen_port}",
        RBEE_HIVE_PORT=str(hive_port),
        RBEE_STATE_DIR=str(root / "state"),
        RBEE_MODELS_DIR=str(root / "models"),
        # the hive registers models under its roots only: the session's tiny model is beside root
        RBEE_HIVE_MODEL_ROOTS=os.pathsep.join([str(root / "models"), str(root.parent)]),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def write_config(root: Path, hive_flags: Sequence[str] = ()) -> Path:
    """``$XDG_CONFIG_HOME/rbee/config.toml``: how the queen and hive are run (the flags the keeper
    has no setting for go here), and a short stop timeout."""
    path = root / "config" / "rbee" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    queen = [PYTHON, "-m", "rbee_queen.app", "--state-dir", str(root / "queen-state")]
    hive = [
        PYTHON,
        "-m",
        "rbee_hive.app",
        "--heartbeat",
        f"{LOCAL_HEARTBEAT:g}",
        "--stop-grace",
        f"{STOP_GRACE:g}",
        *hive_flags,
    ]
    lines = [
        f"queen_command = {json.dumps(queen)}",
        f"hive_command = {json.dumps(hive)}",
        "stop_timeout = 20",
        "cancel_timeout = 5",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the tiny model --------------------------------------------------------------------------------


def _tiny_model_key() -> str:
    import rbee_worker.tiny_model as builder

    digest = hashlib.sha256(Path(builder.__file__).read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "rbee-worker"):
        digest.update(f"{dist}={importlib.metadata.version(dist)};".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_model_source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model as ``rbee-worker build-tiny-model`` builds it (cached across sessions:
    the build is deterministic and costs ~13 s on two cores)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        where = Path(cache.mkdir(f"rbee-e2e-tiny-{_tiny_model_key()}"))
    else:
        where = tmp_path_factory.mktemp("tiny-build")
    model = where / "tiny"
    if not (where / "complete").exists():
        shutil.rmtree(model, ignore_errors=True)
        builder = BIN / "rbee-worker"
        argv = [str(builder)] if builder.exists() else [PYTHON, "-m", "rbee_worker.app"]
        done = subprocess.run(
            [*argv, "build-tiny-model", str(model)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"},
        )
        assert done.returncode == 0, done.stderr
        (where / "complete").write_text("")
    return model


@pytest.fixture(scope="session")
def tiny_model(tiny_model_source: Path, e2e_base: Path) -> Path:
    """The session's own copy of the tiny model (workers' command lines name the session)."""
    target = e2e_base / "tiny"
    shutil.copytree(tiny_model_source, target)
    return target


def model_files(directory: Path) -> dict[str, bytes]:
    """The files of a model directory (without huggingface_hub's ``.cache`` bookkeeping)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(directory).parts
    }


# -- the fake hub ----------------------------------------------------------------------------------


@dataclass
class FakeHubProcess:
    url: str
    repo_id: str
    files: dict[str, bytes]
    running: Running

    def requests(self, since: int = 0) -> list[tuple[str, str, str | None]]:
        """Every request the hub has seen, from the ``since``-th on: (method, path, Range)."""
        seen = httpx.get(self.url + "/_requests", timeout=30).json()
        return [(method, path, rng) for method, path, rng in seen[since:]]

    def file_gets(self, filename: str, since: int = 0) -> list[str | None]:
        """The Range header of every GET of ``filename`` (None: a whole-file GET) from the
        ``since``-th request on."""
        return hub_file_gets(self.requests(since), filename)

    def control(self, **changes: Any) -> None:
        """Set the hub's faults (``cut_once``: see ``FakeHub``)."""
        httpx.post(self.url + "/_control", json=changes, timeout=30).raise_for_status()


@pytest.fixture(scope="session")
def fake_hub(tiny_model: Path) -> Iterator[FakeHubProcess]:
    extra_name, extra_size = HUB_EXTRA
    argv = [
        PYTHON,
        "-m",
        "rbee_hive.testing.fake_hub",
        "--repo",
        HUB_REPO,
        "--dir",
        str(tiny_model),
        "--extra",
        f"{extra_name}={extra_size}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    with Running(argv, env, tiny_model.parent) as running:
        SESSION_OWNED.add(running.pid)
        try:
            line = running.wait_for(
                lambda r: re.search(rf"{HUB_LISTENING} (\{{.*\}})", r.out), 60, "the fake hub"
            )
            port = json.loads(line.group(1))["port"]
            files = model_files(tiny_model)
            files[extra_name] = pseudo_random_bytes(extra_name, extra_size)
            yield FakeHubProcess(f"http://127.0.0.1:{port}", HUB_REPO, files, running)
        finally:
            running.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.proc.wait(10)
            SESSION_OWNED.discard(running.pid)


# -- the shared cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    root: Path
    rbee: Rbee
    queen_url: str
    hive_url: str
    config_file: Path
    tiny: Path
    hub: FakeHubProcess
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def queen_state_dir(self) -> Path:
        """The queen's state (the keeper starts it with ``--state-dir {state_dir}/queen``)."""
        return self.state_dir / "queen"

    @property
    def secret(self) -> bytes:
        """The queen's secret, which it created on its first start."""
        return bytes.fromhex(auth.read_token_file(self.queen_state_dir / auth.SECRET_FILE))

    @property
    def keeper_token(self) -> str:
        """The token the queen wrote for the local keeper (``{queen state}/keeper.token``)."""
        return auth.read_token_file(self.queen_state_dir / auth.KEEPER_TOKEN_FILE)

    def token_for(self, url: str, hive: str = LOCAL_HIVE, worker: str | None = None) -> str:
        """The token ``url`` accepts: the keeper's at the queen, else that of ``hive``, or of
        its worker ``worker`` (each worker has its own, derived from its hive's)."""
        if url.startswith(self.queen_url):
            return self.keeper_token
        token = auth.hive_token(self.secret, hive)
        return token if worker is None else auth.worker_token(token, worker)

    def headers(
        self, url: str, hive: str = LOCAL_HIVE, worker: str | None = None
    ) -> dict[str, str]:
        return auth.bearer(self.token_for(url, hive, worker))

    def get(self, url: str, hive: str = LOCAL_HIVE, worker: str | None = None) -> Any:
        """GET ``url`` with the token it accepts (``hive``: whose hive or worker it is;
        ``worker``: the worker's id, for a worker's URL)."""
        response = httpx.get(url, timeout=5, headers=self.headers(url, hive, worker))
        response.raise_for_status()
        return response.json()

    def client(
        self, url: str | None = None, hive: str = LOCAL_HIVE, worker: str | None = None
    ) -> JobClient:
        """jobproto's client for the queen (or a hive or worker of ``hive``), with its token."""
        url = url or self.queen_url
        return JobClient(url, timeout=30, token=self.token_for(url, hive, worker))

    def api(self, operation: str, **fields: Any) -> Any:
        """Run one job on the queen with jobproto's client: for a test's own set-up and clean-up,
        where going through ``rbee`` (~0.7 s a command) is not what the test is about."""

        async def run() -> Any:
            async with self.client() as client:
                return await client.run(operation, fields)

        return anyio.run(run)

    def hive_workers(self) -> list[dict[str, Any]]:
        """The local hive's workers, straight from ``GET /v1/hive`` (quick, for polling)."""
        return list(self.get(self.hive_url + "/v1/hive")["workers"])

    def hive_models(self) -> list[str]:
        """The local hive's model names, straight from ``GET /v1/hive``."""
        return list(self.get(self.hive_url + "/v1/hive")["models"])

    def queen_workers(self) -> list[dict[str, Any]]:
        """Every worker as the queen knows it (``GET /v1/hives``), with its hive id."""
        return [
            {**w, "hive_id": h["hive_id"], "hive_state": h["state"]}
            for h in self.get(self.queen_url + "/v1/hives")["hives"]
            for w in h.get("workers", [])
        ]

    def workers(self, *args: str) -> list[dict[str, Any]]:
        """``rbee worker list --json``."""
        return list(self.rbee.result("worker", "list", *args)["workers"])

    def register(self, name: str, hive: str | None = None) -> dict[str, Any]:
        """Register the tiny model as ``name`` (set-up: through the API)."""
        fields = {"hive": hive} if hive else {}
        return dict(self.api("model_register", name=name, path=str(self.tiny), **fields))

    def spawn_synthetic(self, model: str, *args: str, rate: float | None = None) -> dict[str, Any]:
        """``rbee worker spawn --engine synthetic`` (at ``rate`` tokens/s); the worker record."""
        extra = ["--engine-arg", f"tokens_per_second={rate:g}"] if rate is not None else []
        record = self.rbee.result(
            "worker", "spawn", "--model", model, "--engine", "synthetic", *extra, *args
        )
        assert record["state"] == "ready" and record["engine"] == "synthetic", record
        assert record["model"] == model
        return dict(record)

    def stop_workers(self, model: str, hive: str | None = None) -> None:
        """Stop every worker of ``model`` (through the API)."""
        fields = {"hive": hive} if hive else {}
        for worker in self.api("worker_list", **fields)["workers"]:
            if worker["model"] == model:
                self.api("worker_stop", worker_id=worker["worker_id"], **fields)

    def cleanup(self, model: str, hive: str | None = None) -> None:
        """Stop every worker of ``model`` and forget the model (clean-up: through the API)."""
        fields = {"hive": hive} if hive else {}
        self.stop_workers(model, hive)
        with contextlib.suppress(RemoteJobFailed):  # never registered, or already gone
            self.api("model_delete", name=model, **fields)


@pytest.fixture(scope="session")
def cluster(
    e2e_base: Path,
    tiny_model: Path,
    fake_hub: FakeHubProcess,
    _reference_loading: _Loading | None,
) -> Iterator[Cluster]:
    root = e2e_base / "cluster"
    root.mkdir()
    queen_port, hive_port = free_ports(2)
    env = isolated_env(root, queen_port, hive_port)
    config = write_config(root, ["--hf-endpoint", fake_hub.url])
    rbee = Rbee(env, root)
    cluster = Cluster(
        root=root,
        rbee=rbee,
        queen_url=f"http://127.0.0.1:{queen_port}",
        hive_url=f"http://127.0.0.1:{hive_port}",
        config_file=config,
        tiny=tiny_model,
        hub=fake_hub,
    )
    try:
        started = rbee.result("queen", "start", timeout=90)
        cluster.pids = {"queen": started["queen"]["pid"], "hive": started["hive"]["pid"]}
        SESSION_OWNED.update(cluster.pids.values())
        assert started["queen"]["url"] == cluster.queen_url
        assert started["hive"]["url"] == cluster.hive_url
        cluster.register("tiny")
        yield cluster
    finally:
        # The workers' command lines name the model (in e2e_base), not the cluster's state:
        # look for anything of the session but the fake hub.
        survivors = stop_and_check(rbee, e2e_base, exclude=tree(fake_hub.running.pid))
        SESSION_OWNED.difference_update(cluster.pids.values())
    assert not survivors, f"`rbee queen stop` left processes behind: {survivors}"


def stop_and_check(
    rbee: Rbee,
    where: Path,
    exclude: Collection[int] = (),
    grace: float = 30.0,
) -> list[str]:
    """``rbee queen stop`` (expected to succeed); then whatever still mentions ``where`` but is
    not in ``exclude`` (killed, and returned)."""
    stopped = rbee.run("queen", "stop", timeout=90)

    def left() -> list[psutil.Process]:
        return [p for p in mentioning(str(where)) if p.pid not in exclude]

    deadline = time.monotonic() + grace
    procs = left()
    while procs and time.monotonic() < deadline:
        time.sleep(0.1)
        procs = left()
    names = describe(procs)
    kill_all(procs)
    assert stopped.code == 0, str(stopped)
    return names


# -- transformers' own greedy decoding, for comparison ---------------------------------------------


@dataclass
class Reference:
    prompt_ids: list[int]
    ids: list[int]
    text: str
    eos_token_id: int | None


class HFReference:
    """The tiny model loaded in this process with ``AutoModelForCausalLM``/``AutoTokenizer``."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory)
        self.model.eval()

    def generate(self, prompt: str, system: str | None, max_new_tokens: int) -> Reference:
        """A plain prompt (``system`` None), else a chat of ``system`` and ``prompt``."""
        if system is None:
            return self._generate(
                self.tokenizer(prompt, return_tensors="pt").input_ids, max_new_tokens
            )
        return self.generate_chat(prompt, system, max_new_tokens)

    def generate_chat(self, prompt: str, system: str | None, max_new_tokens: int) -> Reference:
        """A chat through the chat template: ``prompt`` as the user's turn, after ``system``'s
        when given (what ``rbee infer`` sends without ``--raw``)."""
        system_turn = [] if system is None else [{"role": "system", "content": system}]
        messages = [*system_turn, {"role": "user", "content": prompt}]
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return self._generate(encoded["input_ids"], max_new_tokens)

    def _generate(self, input_ids: Any, max_new_tokens: int) -> Reference:
        import torch

        tok = self.tokenizer
        with torch.no_grad():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, input_ids.shape[1] :].tolist()
        return Reference(
            prompt_ids=input_ids[0].tolist(),
            ids=new,
            text=tok.decode(new, skip_special_tokens=True),
            eos_token_id=tok.eos_token_id,
        )


class _Loading:
    """``HFReference`` loaded in a thread: importing torch and transformers takes ~6-10 s of one
    core, which overlaps with the cluster's start and the first worker's load (subprocesses)."""

    def __init__(self, directory: Path) -> None:
        self.value: HFReference | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._load, args=(directory,), daemon=True)
        self.thread.start()

    def _load(self, directory: Path) -> None:
        try:
            self.value = HFReference(directory)
        except BaseException as exc:  # re-raised in the fixture
            self.error = exc

    def get(self) -> HFReference:
        self.thread.join(180)
        if self.error is not None:
            raise self.error
        assert self.value is not None, "loading the reference model timed out"
        return self.value


@pytest.fixture(scope="session")
def _reference_loading(request: pytest.FixtureRequest, tiny_model: Path) -> _Loading | None:
    """Starts loading the reference model early when some collected test will use it."""
    if any("hf_reference" in getattr(item, "fixturenames", ()) for item in request.session.items):
        return _Loading(tiny_model)
    return None


@pytest.fixture(scope="session")
def hf_reference(_reference_loading: _Loading | None, tiny_model: Path) -> HFReference:
    if _reference_loading is None:
        return HFReference(tiny_model)
    return _reference_loading.get()


class Kit:
    """Helpers for the test modules (a fixture: with ``--import-mode=importlib`` test modules
    cannot import the conftest)."""

    wait_until = staticmethod(wait_until)
    free_ports = staticmethod(free_ports)
    alive = staticmethod(alive)
    mentioning = staticmethod(mentioning)
    tree = staticmethod(tree)
    describe = staticmethod(describe)
    kill_all = staticmethod(kill_all)
    isolated_env = staticmethod(isolated_env)
    write_config = staticmethod(write_config)
    stop_and_check = staticmethod(stop_and_check)
    model_files = staticmethod(model_files)
    Rbee = Rbee
    Running = Running
    PYTHON = PYTHON


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


# -- machines of their own (tests/e2e/machines.py) -------------------------------------------------


def _sibling(name: str) -> Any:
    """Import ``tests/e2e/{name}.py`` (test modules are imported by path: it is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"rbee_e2e_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: ``machines``: two machines (network namespaces, else loopback addresses), one per module
machines = _sibling("machines").machines
#: ``queen_replicas``: queens on one Redis server of the test's own (tests/e2e/replicas.py)
queen_replicas = _sibling("replicas").queen_replicas

"""The package README runs as written.

The README's example is four files (fenced ``python`` blocks whose first line is
``# NAME.py: ...``) and terminal transcripts (fenced ``console`` blocks: ``$ command`` lines, each
followed by the output it prints). These tests write the files into a fresh directory and replay
the transcripts there, in README order, as a reader would:

- a command whose output is ``listening on http://127.0.0.1:PORT`` is a server: it is started in
  a process group of its own and left running (a later server for the same README port first
  stops it with Ctrl+C, SIGINT to its group, as the README says, and it must exit 0);
- any other command must exit 0 and print exactly the output shown, where a line ``...`` stands
  for any number of lines.

Ports: the README's ports (8000, 8001) become free ports. The servers read theirs from ``PORT``
and the front its backend from ``BACKEND_URL``, as the README's code says (checked here), so the
test sets those and rewrites the README's URLs in commands and output; nothing else changes.
``python`` is this interpreter, whose environment has jobproto with its extras installed.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.e2e

#: the bounded waits: a server to say it listens, a client to finish, a server to stop
START_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
#: the conformance suite walks the service with Hypothesis: minutes, not seconds
CONFORMANCE_TIMEOUT = 900.0

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_FILE_LINE = re.compile(r"# (\w+\.py): ")
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)$")
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


@attrs.frozen
class Block:
    lang: str
    text: str
    section: str  # the "## " heading the block is under


@attrs.frozen
class Step:
    command: str
    output: list[str]
    section: str

    @property
    def server_port(self) -> int | None:
        """The README port of a server step (its whole output is the listening line)."""
        match = _LISTENING.fullmatch(self.output[0]) if len(self.output) == 1 else None
        return int(match.group(1)) if match else None


def blocks(text: str) -> list[Block]:
    out = []
    for match in _FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        out.append(Block(match.group(1), match.group(2), headings[-1] if headings else ""))
    return out


def example_files(text: str) -> dict[str, str]:
    files = {}
    for block in blocks(text):
        match = _FILE_LINE.match(block.text)
        if block.lang == "python" and match:
            assert match.group(1) not in files, f"two blocks are {match.group(1)}"
            files[match.group(1)] = block.text
    return files


def transcript(text: str) -> list[Step]:
    steps: list[Step] = []
    for block in blocks(text):
        if block.lang != "console":
            continue
        for line in block.text.splitlines():
            if line.startswith("$ "):
                steps.append(Step(line[2:], [], block.section))
            else:
                assert steps and steps[-1].section == block.section, f"output first: {line!r}"
                steps[-1].output.append(line)
    return steps


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected``, a line ``...`` standing for any lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and matches(expected[1:], actual[1:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server command of the README, in its own process group, its stdout read by a thread."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def first_line(self) -> str:
        try:
            line = self.lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = None
        assert line is not None, f"the server printed nothing; its log:\n{self.log.read_text()}"
        return line

    def interrupt(self) -> int:
        """Ctrl+C: SIGINT to the process group; its exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(STOP_TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


class Replay:
    """The README's files in a directory, and its transcript steps run there."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        text = README.read_text()
        for name, source in example_files(text).items():
            (directory / name).write_text(source)
        self.ports: dict[int, int] = {}
        self.servers: dict[int, Server] = {}

    def port(self, readme_port: int) -> int:
        if readme_port not in self.ports:
            self.ports[readme_port] = free_port()
        return self.ports[readme_port]

    def url(self, readme_port: int) -> str:
        return f"http://127.0.0.1:{self.port(readme_port)}"

    def localise(self, text: str) -> str:
        return _URL.sub(lambda m: self.url(int(m.group(1))), text)

    def argv_env(self, command: str) -> tuple[list[str], dict[str, str]]:
        words = shlex.split(command)
        env = dict(os.environ)
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words[0] == "python", f"not a python command: {command!r}"
        return [sys.executable, *(self.localise(word) for word in words[1:])], env

    def run(self, step: Step, timeout: float = RUN_TIMEOUT) -> None:
        argv, env = self.argv_env(step.command)
        readme_port = step.server_port
        if readme_port is not None:
            self.start_server(step, argv, env, readme_port)
            return
        try:
            done = subprocess.run(
                argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{step.command!r} ran longer than {timeout} s") from exc
        said = f"{step.command!r} printed:\n{done.stdout}\nand on stderr:\n{done.stderr}"
        assert done.returncode == 0, f"exit status {done.returncode}: {said}"
        expected = [self.localise(line) for line in step.output]
        assert matches(expected, done.stdout.splitlines()), said

    def start_server(self, step: Step, argv: list[str], env: dict[str, str], port: int) -> None:
        old = self.servers.pop(port, None)
        if old is not None:  # "Stop the service (Ctrl+C) and start it with the setting"
            status = old.interrupt()
            old.close()
            log = old.log.read_text()
            # a clean stop: exit 0, or the signal re-raised after the graceful shutdown (as
            # uvicorn does), but never a traceback in the reader's terminal
            assert status in (0, -signal.SIGINT), f"Ctrl+C: exit status {status}; log:\n{log}"
            assert "Traceback" not in log, f"Ctrl+C printed a traceback:\n{log}"
        env["PORT"] = str(self.port(port))
        env["BACKEND_URL"] = self.url(8000)
        log = self.dir / f"server-{port}-{len(os.listdir(self.dir))}.log"
        server = Server(argv, self.dir, env, log)
        self.servers[port] = server
        assert server.first_line() == self.localise(step.output[0])

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[Replay]:
    session = Replay(tmp_path)
    try:
        yield session
    finally:
        session.close()


def test_the_readme_holds_the_example_and_its_transcript() -> None:
    text = README.read_text()
    files = example_files(text)
    assert sorted(files) == ["client.py", "front.py", "service.py"]
    # the test sets the ports through these, as the code says
    assert 'os.environ.get("PORT", "8000")' in files["service.py"]
    assert 'os.environ.get("PORT", "8001")' in files["front.py"]
    assert 'os.environ.get("BACKEND_URL", "http://127.0.0.1:8000")' in files["front.py"]
    commands = [step.command for step in transcript(text)]
    assert commands == [
        "python service.py",
        "python client.py http://127.0.0.1:8000",
        "python front.py",
        "python client.py http://127.0.0.1:8001",
        "ENABLE_CONFORMANCE_OPERATIONS=1 python service.py",
        "python -m jobproto.conformance --url http://127.0.0.1:8000",
    ]
    assert "(../../docs/protocol.md)" in text
    assert "pip install 'jobproto[server]'" in text
    assert "pip install 'jobproto[conformance]'" in text


def test_the_parsers_see_what_the_readme_shows() -> None:
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert matches(["..."], [])
    assert not matches(["a", "...", "z"], ["a", "b"])
    assert not matches(["a"], ["a", "b"])
    steps = transcript("## S\n```console\n$ python x.py\nlistening on http://127.0.0.1:8000\n```\n")
    assert steps == [Step("python x.py", ["listening on http://127.0.0.1:8000"], "S")]
    assert steps[0].server_port == 8000


def test_service_client_and_relay_as_the_readme_says(replay: Replay) -> None:
    steps = [s for s in transcript(README.read_text()) if s.section != "Conformance"]
    assert len(steps) == 4
    for step in steps:
        replay.run(step)


def test_the_published_schema_carries_the_validators_bounds(replay: Replay) -> None:
    """The README says the bounds of the attrs validators are published in /openapi.json."""
    (first,) = [s for s in transcript(README.read_text()) if s.command == "python service.py"]
    replay.run(first)
    document = httpx.get(f"{replay.url(8000)}/openapi.json", timeout=10).json()
    schemas = document["components"]["schemas"]
    fields = schemas["op_count"]["properties"]
    assert fields["to"]["minimum"] == 1 and fields["to"]["maximum"] == 100
    assert fields["unit"]["minLength"] == 1 and fields["unit"]["maxLength"] == 20
    assert fields["delay"]["minimum"] == 0 and fields["delay"]["maximum"] == 1
    # and the conformance operations are not there without the setting
    assert "op_crash" not in schemas and "op_count" in schemas


@pytest.mark.slow
@pytest.mark.timeout(CONFORMANCE_TIMEOUT + 120)
def test_the_conformance_suite_as_the_readme_says(replay: Replay) -> None:
    """Needs ``python -m jobproto.conformance`` (docs/protocol.md §9)."""
    steps = transcript(README.read_text())
    section = [s for s in steps if s.section == "Conformance"]
    assert section[0].command.endswith("python service.py")
    replay.run(steps[0])  # the service as first started, without the setting
    for step in section:
        replay.run(step, timeout=CONFORMANCE_TIMEOUT)


def test_the_conformance_suite_says_how_to_mount_its_operations(replay: Replay) -> None:
    """The README: against a service without the test operations it stops at once and says how
    to mount them."""
    steps = transcript(README.read_text())
    replay.run(steps[0])  # service.py without the setting
    (command,) = [s.command for s in steps if s.command.startswith("python -m jobproto.conf")]
    argv, env = replay.argv_env(command)
    done = subprocess.run(
        argv, cwd=replay.dir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "conformance_operations()" in said, said
    assert "Traceback" not in said, said


def test_the_readmes_token_security_lets_its_token_use_the_job_routes() -> None:
    """The README's ``create_app(ops, security=...)``, as written, admits its token."""
    from starlette.testclient import TestClient

    from jobproto import Operations
    from jobproto.asgi import Principal, Security, TokenAuth, create_app

    (code,) = re.findall(r"`(create_app\(ops, security=[^`]*)`", README.read_text())
    token = "s3cret-token"
    names = {
        "ops": Operations(),
        "token": token,
        "create_app": create_app,
        "Security": Security,
        "TokenAuth": TokenAuth,
        "Principal": Principal,
    }
    app = eval(code, names)
    with TestClient(app) as http:
        assert http.get("/openapi.json").status_code == 401
        r = http.get("/openapi.json", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        r = http.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text

"""Server processes of the benchmark: started in their own process group, stopped with it.

Every server the benchmark measures runs in a process of its own (so it never shares a GIL with
the client that measures it), is started with an argument list (never a shell) in a new session,
and announces its port with one line on stdout (``<PREFIX> {"port": N, ...}``). ``Procs`` is the
one owner of them: leaving its ``with`` block (normally, on an exception, on Ctrl+C) sends SIGTERM
to each process group, then SIGKILL to whatever is left, so no server outlives the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

__all__ = ["Client", "Proc", "Procs", "free_port", "python"]

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """One started server: its ``Popen``, its port and what it printed on its ready line."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self.name = name
        self.popen = popen
        self.info = info
        self.port: int = int(info["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ps = psutil.Process(popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)


class Procs:
    """Starts servers and guarantees they stop."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc | Client] = []

    def __enter__(self) -> Procs:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        prefix: str | None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> Proc:
        """Run ``argv``; return once it printed ``prefix {json}`` (its stderr goes to a log).

        With ``prefix`` None the server is not waited for (the caller polls it) and ``port`` is
        the one it was told to use.
        """
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        log.close()
        try:
            if prefix is None:
                info: dict[str, Any] = {"port": port}
            else:
                info = _Lines(popen, self.log_dir / f"{name}.log").expect(prefix, timeout)
        except BaseException:
            _kill_group(popen)
            raise
        # Whatever the server prints on stdout later goes to its log: a pipe nobody reads would
        # fill up and block it.
        threading.Thread(
            target=_drain, args=(popen, self.log_dir / f"{name}.log"), daemon=True
        ).start()
        proc = Proc(name, popen, info)
        self._procs.append(proc)
        return proc

    def client(self, name: str, argv: Sequence[str]) -> Client:
        """Start a client process (stdin and stdout are pipes; stderr goes to its log)."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        client = Client(name, popen, log_path)
        self._procs.append(client)
        return client

    def stop(self, proc: Proc | Client, grace: float = 5.0) -> None:
        if proc in self._procs:
            self._procs.remove(proc)
        _stop_group(proc.popen, grace)

    def stop_all(self) -> None:
        while self._procs:
            self.stop(self._procs[-1])


def free_port() -> int:
    """A port nothing listens on now (for servers that cannot be told port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python(*args: str) -> list[str]:
    """An argument list running this interpreter (the bench's own venv)."""
    return [sys.executable, *args]


class _Lines:
    """Lines from a child's stdout, read with a deadline (no thread while we wait for them)."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        assert popen.stdout is not None
        self.popen = popen
        self.fd = popen.stdout.fileno()
        self.log = log
        self.buf = b""

    def expect(self, prefix: str, timeout: float) -> dict[str, Any]:
        """Skip lines until one starts with ``prefix``; the JSON after it."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if text.startswith(prefix):
                        return dict(json.loads(text[len(prefix) :].strip() or "{}"))
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not sel.select(timeout=min(left, 0.1)):
                    if self.popen.poll() is not None:
                        break
                    continue
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    break
                self.buf += chunk
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        raise RuntimeError(
            f"{self.popen.args!r} did not print {prefix!r} within {timeout:g} s:\n{tail}"
        )


class Client:
    """A client process the benchmark talks to: lines out (``expect``), lines in (``send``)."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.lines = _Lines(popen, log)

    def expect(self, prefix: str, timeout: float = 120.0) -> dict[str, Any]:
        return self.lines.expect(prefix, timeout)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()


def _drain(popen: subprocess.Popen[bytes], log: Path) -> None:
    stdout = popen.stdout
    if stdout is None:
        return
    with contextlib.suppress(OSError, ValueError), open(log, "ab") as out:
        while chunk := os.read(stdout.fileno(), 65536):
            out.write(chunk)


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def _stop_group(popen: subprocess.Popen[bytes], grace: float) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    # Whatever the server left in its group (vLLM's engine core, say) goes too.
    _kill_group(popen)

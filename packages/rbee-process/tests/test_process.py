"""rbee_process on real short-lived children (``python -c`` sleepers).

Every test waits for the event itself (a file a child writes, a process that is gone), with a
deadline only as a guard against hanging, and checks at the end that no child it started is left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

import rbee_process
from rbee_process import ProcessRecord, StopOutcome, _record, _spawn, _stop

#: a sleeper that writes its pid (and its child's) where the test can wait for it
SLEEPER = r"""
import json, os, signal, subprocess, sys, time
mode, out = sys.argv[1], sys.argv[2]
child = None
if "grandchild" in mode:
    # the child says when it ignores SIGTERM: a test must not signal it before that
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " open(sys.argv[1], 'w').close(); time.sleep(60)", out + ".child"])
    deadline = time.monotonic() + 30
    while not os.path.exists(out + ".child") and time.monotonic() < deadline:
        time.sleep(0.01)
if "ignore_term" in mode:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("sleeper up", flush=True)
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "child": child.pid if child else None, "cwd": os.getcwd(),
               "env": os.environ.get("RBEE_TEST_VALUE")}, f)
os.replace(tmp, out)
time.sleep(60)
"""


def wait_for(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Wait until ``predicate()`` holds; the deadline only keeps a broken test from hanging."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "the awaited event did not happen"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[int]]:
    """Pids the test started; any still alive afterwards is killed and fails the test."""
    pids: list[int] = []
    yield pids
    left = [pid for pid in pids if not gone(pid)]
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        rbee_process.reap(pid)
    assert not left, f"processes left behind: {left}"


def spawn_sleeper(
    tmp_path: Path, started: list[int], mode: str = "plain", **kwargs: object
) -> tuple[ProcessRecord, dict[str, object]]:
    out = tmp_path / f"sleeper-{len(started)}.json"
    record = rbee_process.spawn_detached(
        [sys.executable, "-c", SLEEPER, mode, str(out)],
        log_path=tmp_path / "logs" / "sleeper.log",
        **kwargs,  # type: ignore[arg-type]
    )
    started.append(record.pid)
    wait_for(out.exists)
    info = json.loads(out.read_text())
    if info["child"]:
        started.append(info["child"])
    return record, info


def test_spawn_detached_runs_in_its_own_session_with_a_pid_file(
    tmp_path: Path, started: list[int]
) -> None:
    pid_file = tmp_path / "run" / "sleeper.pid"
    record, info = spawn_sleeper(
        tmp_path, started, pid_file=pid_file, env={"RBEE_TEST_VALUE": "x"}, label="sleeper"
    )
    assert info["pid"] == record.pid and info["env"] == "x"
    assert os.getsid(record.pid) == record.pid and os.getpgid(record.pid) == record.pid
    assert rbee_process.read_pid_file(pid_file) == record
    assert record.start_time == pytest.approx(psutil.Process(record.pid).create_time())
    assert rbee_process.alive(record)
    log = Path(str(record.log_path))
    wait_for(lambda: "sleeper up" in log.read_text())
    assert log.read_text().startswith("--- rbee: ")
    assert "starting sleeper:" in log.read_text().splitlines()[0]
    assert rbee_process.log_tail(log, 1) == "sleeper up"

    outcome, stopped = rbee_process.stop_pid_file(pid_file, grace=10, reap=True)
    assert outcome is StopOutcome.STOPPED and stopped == record
    assert not pid_file.exists()
    assert gone(record.pid)
    # reaped, not a zombie: the pid is no child of ours any more
    with pytest.raises(ChildProcessError):
        os.waitpid(record.pid, os.WNOHANG)


def test_spawn_with_a_cwd(tmp_path: Path, started: list[int]) -> None:
    where = tmp_path / "elsewhere"
    where.mkdir()
    record, info = spawn_sleeper(tmp_path, started, cwd=where)
    assert info["cwd"] == str(where)
    assert psutil.Process(record.pid).cmdline() == list(record.argv)  # the trampoline is gone
    assert rbee_process.terminate(record, grace=10) is StopOutcome.STOPPED


def test_a_missing_command_is_a_spawn_error(tmp_path: Path) -> None:
    with pytest.raises(rbee_process.SpawnError) as info:
        rbee_process.spawn_detached(["/nonexistent/rbee-thing"], log_path=tmp_path / "x.log")
    assert "/nonexistent/rbee-thing" in str(info.value)


def test_a_reused_pid_is_never_signalled(tmp_path: Path, started: list[int]) -> None:
    record, _ = spawn_sleeper(tmp_path, started)
    # The same pid, but a process that started at another time: not the one the file meant.
    assert record.start_time is not None
    stranger = ProcessRecord(record.pid, record.start_time - 100.0, record.argv)
    pid_file = tmp_path / "stale.pid"
    rbee_process.write_pid_file(pid_file, stranger)
    assert not rbee_process.alive(stranger)
    assert rbee_process.stop_pid_file(pid_file, grace=1)[0] is StopOutcome.NOT_RUNNING
    assert not pid_file.exists()
    assert rbee_process.alive(record)  # still running: never signalled
    # Without a start time the command line must match.
    assert not rbee_process.alive(ProcessRecord(record.pid, None, ("some", "other")))
    assert rbee_process.alive(ProcessRecord(record.pid, None, record.argv))
    # Start ticks decide where they are recorded: other ticks, or another boot, are another process.
    if record.start_ticks is not None:
        later = dataclasses.replace(record, start_ticks=record.start_ticks + 1)
        rebooted = dataclasses.replace(record, boot_id="another-boot")
        assert not rbee_process.alive(later) and not rbee_process.alive(rebooted)
        assert rbee_process.group_members(later) == []
        assert rbee_process.terminate(later, grace=1) is StopOutcome.NOT_RUNNING
    assert rbee_process.terminate(record, grace=10) is StopOutcome.STOPPED


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start ticks are Linux's")
def test_identity_survives_a_stepped_clock(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # psutil's create_time() follows the wall clock: after an NTP step every live process would
    # read as stale, and `rbee queen stop` would leave the queen running. The start ticks and
    # the boot id do not move.
    record, _ = spawn_sleeper(tmp_path, started)
    assert record.start_ticks is not None and record.boot_id is not None
    real = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 3600.0)
    assert rbee_process.alive(record)
    assert rbee_process.read_pid_file(tmp_path / "none.pid") is None
    pid_file = tmp_path / "stepped.pid"
    rbee_process.write_pid_file(pid_file, record)
    assert rbee_process.read_pid_file(pid_file) == record
    assert rbee_process.stop_pid_file(pid_file, grace=10, reap=True)[0] is StopOutcome.STOPPED
    assert gone(record.pid)


def test_without_proc_the_create_time_decides(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The documented fallback where /proc is missing: create_time() within the tolerance.
    record, _ = spawn_sleeper(tmp_path, started)
    monkeypatch.setattr(_record, "_PROC", tmp_path / "no-proc")
    _record.boot_id.cache_clear()
    try:
        assert rbee_process.alive(record)
        assert record.start_time is not None
        assert not rbee_process.alive(dataclasses.replace(record, start_time=record.start_time - 1))
        assert rbee_process.ProcessRecord.of(record.pid, record.argv).start_ticks is None
    finally:
        monkeypatch.undo()
        _record.boot_id.cache_clear()
    assert rbee_process.terminate(record, grace=10) is StopOutcome.STOPPED


def test_pid_file_writers_never_share_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "x.pid"
    first = ProcessRecord(12345, 1.0, ("a",))
    # Another writer's temporary file at the old fixed name is neither used nor disturbed.
    (tmp_path / "x.pid.tmp").write_text("someone else's")
    rbee_process.write_pid_file(pid_file, first)
    assert rbee_process.read_pid_file(pid_file) == first
    assert (tmp_path / "x.pid.tmp").read_text() == "someone else's"
    # A failed write leaves no temporary file behind and the old pid file as it was.
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        rbee_process.write_pid_file(pid_file, ProcessRecord(999, 2.0, ("b",)))
    assert rbee_process.read_pid_file(pid_file) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pid", "x.pid.tmp"]


def test_start_once_starts_one_process_for_concurrent_starters(
    tmp_path: Path, started: list[int]
) -> None:
    pid_file = tmp_path / "run" / "one.pid"
    out = tmp_path / "sleeper-once.json"
    argv = [sys.executable, "-c", SLEEPER, "plain", str(out)]
    results: list[tuple[ProcessRecord, bool]] = []

    def start() -> None:
        results.append(rbee_process.start_once(pid_file, argv, log_path=tmp_path / "once.log"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started.extend({record.pid for record, _ in results})
    assert [fresh for _, fresh in results].count(True) == 1
    assert len({record.pid for record, _ in results}) == 1
    assert rbee_process.read_pid_file(pid_file) == results[0][0]
    assert rbee_process.stop_pid_file(pid_file, grace=10, reap=True)[0] is StopOutcome.STOPPED


def test_a_process_whose_pid_file_cannot_be_written_is_killed(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[int] = []
    real_of = ProcessRecord.of.__func__  # type: ignore[attr-defined]

    def of(cls: type[ProcessRecord], pid: int, *args: object) -> ProcessRecord:
        spawned.append(pid)
        started.append(pid)
        return real_of(cls, pid, *args)  # type: ignore[no-any-return]

    def refuse(path: Path, record: ProcessRecord) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ProcessRecord, "of", classmethod(of))
    monkeypatch.setattr(_spawn, "write_pid_file", refuse)
    with pytest.raises(OSError):
        rbee_process.spawn_detached(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            log_path=tmp_path / "x.log",
            pid_file=tmp_path / "x.pid",
        )
    assert len(spawned) == 1 and gone(spawned[0])


def test_a_missing_command_with_a_cwd_is_a_spawn_error(tmp_path: Path) -> None:
    for command in ("rbee-no-such-command", "./rbee-no-such-command"):
        with pytest.raises(rbee_process.SpawnError):
            rbee_process.spawn_detached([command], log_path=tmp_path / "x.log", cwd=tmp_path)


def test_without_posix_spawn_setsid_the_trampoline_starts_the_session(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.posix_spawnp

    def no_setsid(*args: Any, **kwargs: Any) -> int:
        if kwargs.get("setsid"):
            raise NotImplementedError("setsid")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "posix_spawnp", no_setsid)
    record, info = spawn_sleeper(tmp_path, started)
    assert info["pid"] == record.pid
    assert os.getsid(record.pid) == record.pid and os.getpgid(record.pid) == record.pid
    assert rbee_process.terminate(record, grace=10, reap=True) is StopOutcome.STOPPED


def test_stop_pid_dir_stops_what_each_pid_file_names(tmp_path: Path, started: list[int]) -> None:
    record, _ = spawn_sleeper(tmp_path, started)
    run = tmp_path / "run"
    rbee_process.write_pid_file(run / "w1.json", record)
    rbee_process.write_pid_file(run / "w2.json", ProcessRecord(record.pid, None, ("other",)))
    stopped = rbee_process.stop_pid_dir(run, grace=10)
    assert [(p.name, outcome) for p, outcome, _ in stopped] == [
        ("w1.json", StopOutcome.STOPPED),
        ("w2.json", StopOutcome.NOT_RUNNING),
    ]
    assert list(run.iterdir()) == []
    wait_for(lambda: gone(record.pid))


@pytest.mark.anyio
async def test_aterminate_scans_the_process_table_off_the_event_loop(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, _ = spawn_sleeper(tmp_path, started, mode="grandchild")
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real_members, real_alive = _stop.group_members, _stop.alive

    def members(record: ProcessRecord) -> list[psutil.Process]:
        threads.append(threading.get_ident())
        return real_members(record)

    def alive(record: ProcessRecord, **kwargs: Any) -> bool:
        threads.append(threading.get_ident())
        return real_alive(record, **kwargs)

    monkeypatch.setattr(_stop, "group_members", members)
    monkeypatch.setattr(_stop, "alive", alive)
    assert await rbee_process.aterminate(record, grace=10) is StopOutcome.STOPPED
    assert threads and loop_thread not in threads


def test_unreadable_and_bare_pid_files_are_stale(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert rbee_process.read_pid_file(path) is None
    for text in ("", "not json", f"{os.getpid()}\n", json.dumps({"pid": -3}), "[]"):
        path.write_text(text)
        assert rbee_process.read_pid_file(path) is None, text


def test_terminate_kills_the_group_and_a_grandchild_that_ignores_sigterm(
    tmp_path: Path, started: list[int]
) -> None:
    record, info = spawn_sleeper(tmp_path, started, mode="grandchild")
    child = int(info["child"])  # type: ignore[call-overload]
    assert os.getpgid(child) == record.pid
    assert rbee_process.terminate(record, grace=10) is StopOutcome.STOPPED
    # The leader went on SIGTERM; its child ignored it and went with the final SIGKILL.
    wait_for(lambda: gone(child))
    assert gone(record.pid)


@pytest.mark.anyio
async def test_aterminate_escalates_to_sigkill(tmp_path: Path, started: list[int]) -> None:
    record, info = spawn_sleeper(tmp_path, started, mode="ignore_term grandchild")
    kills: list[str] = []
    outcome = await rbee_process.aterminate(record, grace=0.3, on_kill=lambda: kills.append("k"))
    assert outcome is StopOutcome.KILLED and kills == ["k"]
    assert gone(record.pid)
    wait_for(lambda: gone(int(info["child"])))  # type: ignore[call-overload]


def test_on_term_runs_before_sigterm_and_only_when_something_runs(
    tmp_path: Path, started: list[int]
) -> None:
    record, _ = spawn_sleeper(tmp_path, started)
    calls: list[bool] = []
    on_term = lambda: calls.append(rbee_process.alive(record))  # noqa: E731
    assert rbee_process.terminate(record, grace=10, on_term=on_term) is StopOutcome.STOPPED
    assert calls == [True]  # called once, while the process still ran
    assert rbee_process.terminate(record, grace=10, on_term=on_term) is StopOutcome.NOT_RUNNING
    assert calls == [True]


def test_terminate_reaches_a_group_whose_leader_is_gone(tmp_path: Path, started: list[int]) -> None:
    # A leader killed alone leaves its child running in its group: the case of a hive that was
    # itself killed while its workers ran.
    record, info = spawn_sleeper(tmp_path, started, mode="grandchild")
    child = int(info["child"])  # type: ignore[call-overload]
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not rbee_process.alive(record))
    assert not gone(child)
    assert [p.pid for p in rbee_process.group_members(record)] == [child]
    assert rbee_process.terminate(record, grace=0.3) is StopOutcome.KILLED
    wait_for(lambda: gone(child))
    assert rbee_process.terminate(record, grace=0.3) is StopOutcome.NOT_RUNNING


def test_reap_returns_the_exit_code_of_our_child(tmp_path: Path) -> None:
    record = rbee_process.spawn_detached(
        [sys.executable, "-c", "import sys; sys.exit(7)"], log_path=tmp_path / "exit.log"
    )
    codes: list[int | None] = []

    def reaped() -> bool:
        codes.append(rbee_process.reap(record.pid))
        return codes[-1] is not None

    wait_for(reaped)
    assert codes[-1] == 7
    assert not rbee_process.alive(record)
    assert rbee_process.reap(record.pid) is None  # collected once, not twice


def test_logs_are_the_owners_only(tmp_path: Path) -> None:
    """A new log is 0600 in a new 0700 directory; an existing 0644 log becomes 0600."""
    old = tmp_path / "old.log"
    old.write_text("from an older version\n")
    old.chmod(0o644)
    for log in (tmp_path / "new" / "logs" / "a.log", old):
        record = rbee_process.spawn_detached(
            [sys.executable, "-c", "print('written')"], log_path=log
        )
        wait_for(lambda pid=record.pid: rbee_process.reap(pid) is not None)
        assert log.stat().st_mode & 0o777 == 0o600, oct(log.stat().st_mode)
        assert "written" in log.read_text()
    assert (tmp_path / "new" / "logs").stat().st_mode & 0o777 == 0o700
    assert "from an older version" in old.read_text()


def test_session_options_start_a_child_in_its_own_group(started: list[int]) -> None:
    options = rbee_process.session_options({"RBEE_TEST_VALUE": "y"})
    assert options["env"]["PYTHONUNBUFFERED"] == "1" and options["env"]["RBEE_TEST_VALUE"] == "y"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import os; print(os.getpgid(0), os.getpid())"],
        stdout=subprocess.PIPE,
        text=True,
        **options,
    )
    started.append(proc.pid)
    out, _ = proc.communicate(timeout=30)
    pgid, pid = out.split()
    assert pgid == pid == str(proc.pid)


def test_our_own_group_is_never_signalled() -> None:
    own = ProcessRecord(os.getpgrp(), None, ())
    assert rbee_process.terminate(own, grace=0.1) is StopOutcome.NOT_RUNNING
    assert rbee_process.signal_group(os.getpgrp(), signal.SIGTERM) is False


def test_init_and_this_process_are_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    for pid in (1, 0, -1, os.getpid()):
        assert rbee_process.signal_group(pid, signal.SIGTERM) is False
        assert ProcessRecord.from_json({"pid": pid, "argv": ["init"]}) is None
    crafted = ProcessRecord(1, None, ("/sbin/init",))
    assert rbee_process.group_members(crafted) == []
    assert rbee_process.terminate(crafted, grace=0.1) is StopOutcome.NOT_RUNNING
    assert sent == []


def test_cmdline_matching() -> None:
    from rbee_process._record import _cmdline_matches

    argv = ["/venv/bin/rbee-queen", "--host", "127.0.0.1", "--port", "8500"]
    assert _cmdline_matches(list(argv), argv)
    # A console script run through its #! line.
    assert _cmdline_matches(["/venv/bin/python", *argv], argv)
    assert not _cmdline_matches(["/venv/bin/python", "/x/other", *argv[1:]], argv)
    assert not _cmdline_matches([*argv[:-1], "9000"], argv)
    assert not _cmdline_matches(["sleep", "30"], argv)
    assert _cmdline_matches(["/usr/bin/python3", "/x/rbee-queen"], ["rbee-queen"])
    assert not _cmdline_matches(["anything"], [])

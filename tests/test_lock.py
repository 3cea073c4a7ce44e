"""One writer per folder (storage/lock.py, storage/workfolder.py): a live holder refuses a second
one, naming its host and pid; a dead holder's lock is taken over; a finished job releases its
run directory; two real `submit`s into one --out: the second is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.results import RunDir
from modnet_batch.storage import FolderLock, Holder, WorkFolder
from tests.helpers import ROOT, make_slow_model, run_cli

HOST = socket.gethostname()

# A process that holds the lock `argv[1]` until its stdin closes.
_HOLDER = """
import sys
from pathlib import Path
from modnet_batch.storage import FolderLock
lock = FolderLock(Path(sys.argv[1]), job="job", target="the folder")
lock.acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def _hold_elsewhere(path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    proc.communicate(input="", timeout=60)


def test_a_second_holder_is_refused_naming_host_and_pid(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = _hold_elsewhere(path)
    try:
        with pytest.raises(ModnetBatchError) as refused:
            FolderLock(path, job="job", target="the folder").acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and f"on host {HOST}" in message
        assert message.startswith("another job (pid") and "\n" not in message
        assert Holder.parse(path.read_text()) == Holder(HOST, holder.pid, _started(holder.pid))
    finally:
        _end(holder)
    assert not path.exists()  # the holder released it
    with FolderLock(path, job="job", target="the folder") as lock:
        assert lock.held and Holder.parse(path.read_text()) == Holder.this_process()
    assert not path.exists()


def _started(pid: int) -> str:
    return f"{psutil.Process(pid).create_time():.2f}"


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = _hold_elsewhere(path)
    holder.kill()  # killed: its lock stays behind
    holder.communicate(timeout=60)
    assert Holder.parse(path.read_text()) is not None
    lock = FolderLock(path, job="job", target="the folder")
    lock.acquire()
    assert Holder.parse(path.read_text()) == Holder.this_process()
    lock.release()
    # this pid with another start time: the pid was reused by another process, taken over too
    path.write_text(f"{HOST}:{os.getpid()}:1.00")
    with FolderLock(path, job="job", target="the folder"):
        assert Holder.parse(path.read_text()) == Holder.this_process()


_CONTENDER = """
import sys
from pathlib import Path
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import FolderLock
lock = FolderLock(Path(sys.argv[1]), job="job", target="the folder")
try:
    lock.acquire()
    print("held", flush=True)
except ModnetBatchError as exc:
    print("refused", exc, flush=True)
sys.stdin.read()
lock.release()
"""


def test_of_processes_taking_over_one_dead_holder_exactly_one_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text(f"{HOST}:{os.getpid()}:1.00")  # a dead holder's
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    said = []
    for proc in procs:  # each has decided before any lets go
        assert proc.stdout is not None
        said.append(proc.stdout.readline().strip())
    for proc in procs:
        proc.communicate(input="", timeout=60)
    assert sum(line == "held" for line in said) == 1, said
    assert all(line == "held" or "another job" in line for line in said), said
    assert not path.exists()


def test_a_holder_on_another_host_is_refused_with_the_file_to_delete(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text("elsewhere.example:4242:1700000000.00")
    with pytest.raises(ModnetBatchError) as refused:
        FolderLock(path, job="ingest", target="/data/ds").acquire()
    message = str(refused.value)
    assert "another ingest (pid 4242) is writing /data/ds now on host elsewhere.example" in message
    assert f"delete {path}" in message
    assert path.read_text() == "elsewhere.example:4242:1700000000.00"  # never removed


def test_an_empty_lock_is_a_job_starting_and_release_keeps_a_lock_not_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lock"
    path.write_text("")
    with pytest.raises(ModnetBatchError, match=r"another job is starting on the folder now"):
        FolderLock(path, job="job", target="the folder").acquire()
    path.unlink()
    lock = FolderLock(path, job="job", target="the folder")
    lock.acquire()
    path.write_text("other-host:1:1.00")  # taken over meanwhile by another
    lock.release()
    assert path.read_text() == "other-host:1:1.00"


def test_a_work_folder_resumes_its_own_identity_and_refuses_another(tmp_path: Path) -> None:
    def folder() -> WorkFolder:
        return WorkFolder(
            tmp_path / "identity.json", FolderLock(tmp_path / "lock", job="job", target=tmp_path)
        )

    def refuse(differ: list[str], recorded: dict[str, Any]) -> str:
        return f"{tmp_path} holds another job ({', '.join(differ)}, was {recorded['a']})"

    first = folder()
    assert first.claim({"a": 1, "b": 2}, refuse) is False  # nothing recorded: a new one
    first.record_identity({"a": 1, "b": 2})
    with pytest.raises(ModnetBatchError, match=r"another job \(pid"):
        folder().claim({"a": 1, "b": 2}, refuse)  # held by `first`
    first.release()
    again = folder()
    assert again.claim({"a": 1, "b": 2}, refuse) is True
    again.release()
    other = folder()
    with pytest.raises(ModnetBatchError, match=r"holds another job \(a, c, was 1\)"):
        other.claim({"a": 3, "b": 2, "c": 0}, refuse)
    assert not other.lock.held and not (tmp_path / "lock").exists()  # a refusal releases


def test_a_run_directory_is_held_from_prepare_to_release(tmp_path: Path) -> None:
    identity = {"dataset": "d", "model": "m"}
    run = RunDir(tmp_path / "run")
    assert run.prepare(identity) is False
    assert Holder.parse(run.lock_file.read_text()) == Holder.this_process()
    with pytest.raises(ModnetBatchError) as refused:
        RunDir(tmp_path / "run").prepare(identity)
    assert f"(pid {os.getpid()}) is writing {run.root} now on host {HOST}" in str(refused.value)
    run.release()
    assert not run.lock_file.exists()
    again = RunDir(tmp_path / "run")
    assert again.prepare(identity) is True
    again.release()
    with pytest.raises(ModnetBatchError, match="holds a different job \\(differs in model\\)"):
        RunDir(tmp_path / "run").prepare({**identity, "model": "other"})
    assert not run.lock_file.exists()
    # a killed job's lock (this host, a pid that is gone) is taken over
    run.lock_file.write_text(f"{HOST}:{os.getpid()}:1.00")
    resumed = RunDir(tmp_path / "run")
    assert resumed.prepare(identity) is True
    resumed.release()


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("lock")
    model = make_slow_model(base / "slow.onnx", convs=12, channels=24)
    src = make_synthetic(base / "src", n=12, height=160, width=120, seed=3)
    ingest(src, base / "ds", shard_size=2)
    return {"model": model, "dataset": base / "ds"}


def test_two_submits_into_one_out_the_second_is_refused_naming_the_first(
    slow_job: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["submit", "--dataset", slow_job["dataset"], "--out", out]
    args += ["--model", slow_job["model"], "--backend", "inline", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    first = subprocess.Popen(
        [sys.executable, "-m", "modnet_batch", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = out / "state" / "lock"
        deadline = time.monotonic() + 240
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, (
            f"the first job ended before the second started: {first.communicate()}"
        )
        second = run_cli(*args)
        assert second.returncode != 0
        assert f"(pid {first.pid}) is writing {out} now on host {HOST}" in second.stderr, (
            second.stderr
        )
        assert "Traceback" not in second.stderr
    finally:
        _stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert not lock.exists()  # the finished job released it
    again = run_cli(*args)  # and the same command now resumes the finished run
    assert again.returncode == 0, again.stderr[-3000:]

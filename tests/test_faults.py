"""Faults during a real `modnet-batch submit` on embedded Ray: a worker or the driver killed, a
SIGTERM, a full disk. After each the job completes, or a resume completes it, with every image
exactly once and results equal to a clean run's.

The job runs a model slow enough (about 0.3 s per image on one core) to be interrupted midway;
every signal goes to a process the test started (or one of its descendants), nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from modnet_batch.execution.driver import EXIT_INCOMPLETE, EXIT_OK, run_job
from modnet_batch.options import load_job
from tests.helpers import kill_job, make_slow_model

pytestmark = pytest.mark.ray

IMAGES, SHARD = 32, 2  # 16 shards: a kill always finds work before and after it
WAIT_S = 240.0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("faults")
    model = make_slow_model(base / "slow.onnx", convs=12, channels=24)
    src = make_synthetic(base / "src", n=IMAGES, height=160, width=120, seed=5)
    ingest(src, base / "ds", shard_size=SHARD, row_group_rows=SHARD)
    clean = base / "clean"
    job = {"dataset": str(base / "ds"), "out": str(clean), "model": str(model)}
    run_job(load_job(None, {**job, "backend": "inline", "threads": 1}))
    return {"model": model, "dataset": base / "ds", "clean": clean}


def _submit(data: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "modnet_batch", "submit", "--dataset", str(data["dataset"])]
    # two single-threaded workers on any machine, as the inline reference runs (bit-identical)
    cmd += ["--out", str(out), "--model", str(data["model"]), "--workers", "2", "--threads", "1"]
    cmd += extra
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _run(data: dict[str, Path], out: Path, *extra: str) -> tuple[int, str, str]:
    proc = _submit(data, out, *extra)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    return proc.returncode, stdout, stderr


def _wait_for_images(proc: subprocess.Popen[str], out: Path, n: int) -> None:
    """Until `n` alpha files exist: the job is past start-up and has work left."""
    deadline = time.monotonic() + WAIT_S
    while len(list((out / "alpha").glob("*.npz"))) < n:
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {n} images: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} images within {WAIT_S} s")
        time.sleep(0.02)


def _workers(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The job's Ray worker actors: descendants of the submit process, by Ray's process title."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    return [k for k in kids if "UnitWorker" in " ".join(k.cmdline())]


def _same_as_clean(run: Path, clean: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    expected = json.loads((clean / "summary.json").read_text())
    assert summary["complete"]
    assert summary["images"]["scored"] == IMAGES and summary["images"]["failed"] == 0
    assert summary["metrics"] == expected["metrics"]  # bit-identical floats
    assert summary["accumulator"] == expected["accumulator"]
    table = pq.read_table(run / "metrics.parquet")
    assert table.num_rows == IMAGES and len(set(table.column("image_id").to_pylist())) == IMAGES
    assert table.equals(pq.read_table(clean / "metrics.parquet"))
    alphas = sorted(p.name for p in (run / "alpha").iterdir())
    assert alphas == sorted(p.name for p in (clean / "alpha").iterdir())  # no temp file left
    assert len(list((run / "state" / "units").iterdir())) == IMAGES // SHARD
    return summary


def _markers(run: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run / "state" / "units").glob("*.json"))]


def test_sigkill_of_a_worker_costs_one_retry_and_it_works_again(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _submit(data, out)
    _wait_for_images(proc, out, 3)
    workers = _workers(proc)
    assert len(workers) == 2, [w.cmdline() for w in workers]
    victim = workers[0]  # both are busy: 16 shards, 2 in flight on each
    victim.send_signal(signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == EXIT_OK, stderr[-3000:]
    summary = _same_as_clean(out, data["clean"])
    # only the shard it was running is charged; the one queued behind it goes back as it was
    assert summary["units"]["retries"] == 1
    back = [w for w in summary["workers"] if w.get("restarts")]
    assert len(back) == 1 and back[0]["restarts"] == 1 and back[0]["pid"] != victim.pid
    # the restarted worker took work again
    assert any(m["pid"] == back[0]["pid"] for m in _markers(out)), "restarted worker sat idle"
    assert "Traceback" not in stderr


def test_sigkill_without_retries_fails_only_the_running_shard(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _submit(data, out, "--max-retries", "0")
    _wait_for_images(proc, out, 3)
    _workers(proc)[0].send_signal(signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == EXIT_INCOMPLETE, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["units"]["failed"]) == 1
    assert summary["images"]["failed"] == SHARD and summary["images"]["transient"] == SHARD
    assert summary["images"]["scored"] == IMAGES - SHARD
    assert "job incomplete" in stderr

    code, _, stderr = _run(data, out)  # the resume runs the failed shard, nothing else
    assert code == EXIT_OK, stderr[-3000:]
    summary = _same_as_clean(out, data["clean"])
    assert summary["units"]["processed"] == 1


def test_sigkill_of_the_driver_then_a_resume(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _submit(data, out)
    _wait_for_images(proc, out, 5)
    kill_job(proc)
    done = len(list((out / "state" / "units").glob("*.json")))
    assert done < IMAGES // SHARD

    code, _stdout, stderr = _run(data, out)
    assert code == EXIT_OK, stderr[-3000:]
    summary = _same_as_clean(out, data["clean"])
    assert summary["units"]["skipped_done"] == done
    assert summary["units"]["processed"] == IMAGES // SHARD - done


def test_sigterm_stops_with_one_line_and_a_resume_completes(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _submit(data, out)
    _wait_for_images(proc, out, 5)
    own = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr  # no stack dumps
    assert "Token authentication is enabled" not in stderr  # Ray's start-up notice stays quiet
    _gone, alive = psutil.wait_procs(own, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "Ray left running"

    code, _, stderr = _run(data, out)
    assert code == EXIT_OK, stderr[-3000:]
    _same_as_clean(out, data["clean"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own (needs root and mount); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is made with a tmpfs mount, which needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _resize(mnt: Path, size: str, *opts: str) -> None:
    subprocess.run(
        ["mount", "-o", ",".join(["remount", f"size={size}", *opts]), str(mnt)], check=True
    )


def test_a_full_disk_stops_with_one_line_and_a_resume_after_freeing_space_completes(
    data: dict[str, Path], small_disk: Path
) -> None:
    out = small_disk / "run"
    # tmpfs gives each file whole pages: room for the files a run writes before its first image
    # (job.yaml, state/identity.json, state/lock, logs/ray.log) and about a third of the rest
    pages = sum(-(-p.stat().st_size // 4096) for p in data["clean"].rglob("*") if p.is_file())
    _resize(small_disk, f"{(4 + pages // 3) * 4096}")
    code, _stdout, stderr = _run(data, out)
    assert code == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left on its device" in lines[0], stderr[-3000:]
    assert str(out) in lines[0] and "Traceback" not in stderr
    kept = len(list((out / "state" / "units").glob("*.json")))
    assert 0 < kept < IMAGES // SHARD

    _resize(small_disk, "64m")  # space freed
    code, _, stderr = _run(data, out)
    assert code == EXIT_OK, stderr[-3000:]
    summary = _same_as_clean(out, data["clean"])
    assert summary["units"]["skipped_done"] == kept

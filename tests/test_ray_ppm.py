"""Ray on ppm100-dev with the real model: equality with the single-process run (both with the
default decode, exact for a scored job), a worker killed mid-job, and a driver killed mid-job
then resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SHARDS = 11  # 41 images in shards of 4


def _submit_cmd(dataset: Path, model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "modnet_batch",
        "submit",
        "--dataset",
        str(dataset),
        "--model",
        str(model),
        "--out",
        str(out),
        "--threads",
        "1",
    ]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for_markers(out: Path, proc: subprocess.Popen[bytes], at_least: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = len(list((out / "state" / "units").glob("*.json")))
        if done >= at_least:
            return done
        if proc.poll() is not None:
            pytest.fail(f"submit ended early with {proc.returncode}")
        time.sleep(0.05)
    pytest.fail("no shard finished within 240 s")


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the submit process group and any Ray process it started (only ours)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=60)


def _assert_same_as(reference: Path, run: Path) -> None:
    ref, got = (json.loads((r / "summary.json").read_text()) for r in (reference, run))
    assert got["metrics"] == ref["metrics"]  # exact
    assert got["accumulator"] == ref["accumulator"]
    assert got["images"] == {
        "total": 41,
        "scored": 41,
        "failed": 0,
        "unscored": 0,
        "transient": 0,
        "retried": 0,
    }
    assert pq.read_table(run / "metrics.parquet").equals(
        pq.read_table(reference / "metrics.parquet")
    )
    names = sorted(p.name for p in (run / "alpha").iterdir())
    assert names == sorted(p.name for p in (reference / "alpha").iterdir())
    assert len(names) == 41  # each image exactly once, no temp files left behind


def test_ray_equals_single_process(
    ppm_dataset: Path, real_model: Path, inline_run: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = subprocess.run(_submit_cmd(ppm_dataset, real_model, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_same_as(inline_run("seed-area"), out)  # submit's default decode: exact when scored
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["throughput"]["per_device"]) == 2
    assert summary["units"]["processed"] == SHARDS


def test_killed_worker_is_replaced_and_nothing_is_lost(
    ppm_dataset: Path, real_model: Path, inline_run: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start(_submit_cmd(ppm_dataset, real_model, out), tmp_path / "log")
    try:
        _wait_for_markers(out, proc, 1)
        workers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "UnitWorker" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        workers[0].send_signal(signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["retries"] >= 1 and summary["complete"]
    _assert_same_as(inline_run("seed-area"), out)  # submit's default decode: exact when scored


def test_killed_driver_resumes_without_redoing_shards(
    ppm_dataset: Path, real_model: Path, inline_run: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start(_submit_cmd(ppm_dataset, real_model, out), tmp_path / "log1")
    try:
        _wait_for_markers(out, proc, 2)
    finally:
        _kill_tree(proc)
    done_before = len(list((out / "state" / "units").glob("*.json")))
    assert 2 <= done_before < SHARDS
    again = subprocess.run(
        _submit_cmd(ppm_dataset, real_model, out), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["skipped_done"] == done_before
    assert summary["units"]["processed"] == SHARDS - done_before
    _assert_same_as(inline_run("seed-area"), out)  # submit's default decode: exact when scored

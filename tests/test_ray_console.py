"""Jobs on an embedded Ray as a user runs them (`python -m modnet_batch`): every worker gets
photos on a small job, and the terminal shows none of Ray's own log lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.execution.ray_join import RaySession

pytestmark = pytest.mark.ray

# Ray's own formats: C++ lines ([date time,ms E pid tid] file.cc:line), forwarded worker output
# ("(UnitWorker pid=...)", "(raylet)"), its Python logger ("INFO worker.py:..."), its banner
RAY_LINE = re.compile(
    r"core_worker\.cc|\(raylet[^)]*\)|\(\w+ pid=\d+|\(pid=\d+|INFO worker\.py|"
    r"Started a local Ray instance|WARNING|^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]"
)


def ray_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if RAY_LINE.search(line)]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "modnet_batch", *args, "--workers", "2", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_the_check_catches_each_kind_of_ray_line() -> None:
    noisy = [
        "[2026-12-06 09:37:29,552 E 6352 6352] core_worker.cc:2465: Actor with class name: "
        "'UnitWorker' and ID: '1a69' has constructor arguments in the object store",
        "(raylet) [2026-12-06 09:37:29,552 E 6360 6360] worker_pool.cc:581: Some workers",
        "(UnitWorker pid=6697) 2026-12-06 09:37:30 WARNING processor.py:1 -- slow",
        "(pid=6697) something a task printed",
        "2026-12-06 09:37:25,000\tINFO worker.py:1942 -- Started a local Ray instance.",
        "2026-12-06 09:37:25,000\tWARNING authentication_token_setup.py:85 -- Token ...",
    ]
    assert [ray_lines(line) for line in noisy] == [[line] for line in noisy]
    assert ray_lines("[   0:06] matte: 8/8 images, done, cpu0 4 (2.15/s) cpu1 4 (2.15/s)") == []


@pytest.mark.parametrize("photos", [8, 3])
def test_matte_of_a_few_photos_keeps_both_workers_busy_and_the_terminal_quiet(
    photos: int, tiny_model: Path, tmp_path: Path
) -> None:
    """8 photos (2 shards of 4) and 3 photos (1 shard) on 2 workers: both workers matte photos,
    and nothing Ray prints reaches stdout or stderr."""
    src = make_synthetic(tmp_path / "src", n=photos, height=96, width=64, seed=photos) / "image"
    out = tmp_path / "out"
    proc = _run("matte", str(src), str(out), "--model", str(tiny_model))
    assert ray_lines(proc.stdout + proc.stderr) == []
    summary = json.loads((out / ".modnet-batch" / "run" / "summary.json").read_text())
    per_device = summary["throughput"]["per_device"]
    assert len(per_device) == 2 and all(d["images"] > 0 for d in per_device.values())
    assert sum(d["images"] for d in per_device.values()) == photos


def test_submit_keeps_the_terminal_quiet(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["submit", "--dataset", str(synth_dataset), "--model", str(tiny_model)]
    proc = _run(*args, "--out", str(run))
    assert ray_lines(proc.stdout + proc.stderr) == []
    assert "Ray's logs" not in proc.stdout + proc.stderr  # named only when something failed
    summary = json.loads((run / "summary.json").read_text())
    units = summary.get("units") or summary["shards"]  # "units" in new run directories
    assert summary["images"]["total"] == 12 and not units["failed"]


def test_the_logs_named_on_failure_are_those_written(tmp_path: Path) -> None:
    session = RaySession(tmp_path / "logs" / "ray.log", str(tmp_path / "session" / "logs"))
    assert session.where() == f"Ray's logs: {tmp_path / 'session' / 'logs'} (its processes)"
    session.log_file.parent.mkdir()
    session.log_file.write_text("a line\n")
    assert session.where().startswith(f"Ray's logs: {session.log_file}, ")


def test_submit_of_as_many_images_as_workers_keeps_both_busy(
    tiny_model: Path, tmp_path: Path
) -> None:
    """3 ingested images (one shard) on 2 workers: both workers score images."""
    from modnet_batch.data.ingest import ingest

    src = make_synthetic(tmp_path / "src", n=3, height=96, width=64, seed=3)
    ingest(src, tmp_path / "ds")
    run = tmp_path / "run"
    _run("submit", "--dataset", str(tmp_path / "ds"), "--model", str(tiny_model), "--out", str(run))
    per_device = json.loads((run / "summary.json").read_text())["throughput"]["per_device"]
    assert len(per_device) == 2 and all(d["images"] > 0 for d in per_device.values())

"""`ingest --backend ray` (issue 14.5): the decode checks as Ray tasks on a real local Ray give
the same dataset as local threads, bad files included; an interrupted or killed ingest resumes to
the same dataset; a multi-node cluster does the same (marker `cluster`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from modnet_batch.data.ingest import ingest, work_dir
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.ingest_ray import RayLoader, choose_backend, files_per_task
from tests.helpers import ROOT, kill_job, run_cli


def _write(path: Path, arr: np.ndarray) -> None:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def _source(root: Path, n: int = 26) -> Path:
    """PPM layout, n pairs of varied sizes, with a bad image, a bad matte, a matte of another
    size, an orphan matte, an unsafe name and a file that is not an image."""
    rng = np.random.default_rng(7)
    for i in range(n):
        h, w = 24 + 5 * (i % 7), 40 + 3 * (i % 5)
        _write(root / "image" / f"im{i:03d}.jpg", rng.integers(0, 256, (h, w, 3), np.uint8))
        _write(root / "matte" / f"im{i:03d}.png", rng.integers(0, 256, (h, w), np.uint8))
    (root / "image" / "im004.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "matte" / "im011.png").write_bytes(b"nope")
    _write(root / "matte" / "im017.png", np.zeros((5, 5), np.uint8))
    _write(root / "matte" / "orphan.png", np.zeros((5, 5), np.uint8))
    _write(root / "image" / "bad name.jpg", np.zeros((8, 8, 3), np.uint8))
    (root / "image" / "notes.txt").write_text("not an image")
    return root


def _same_dataset(a: Path, b: Path, *, drop: tuple[str, ...] = ()) -> None:
    """Identical datasets: dataset.json (but for its creation time and `drop`), every byte of
    every shard, and the same files."""
    ma, mb = (json.loads((d / "dataset.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m.pop("created")
        for key in drop:  # e.g. prepared.cpu_seconds: a measured time, not content
            outer, inner = key.split(".")
            m[outer].pop(inner)
    assert ma == mb
    assert ma["counts"]["images"] > 0 and ma["counts"]["skipped"] > 0
    for shard in ma["shards"]:
        assert (a / shard["path"]).read_bytes() == (b / shard["path"]).read_bytes()
    assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(
        p.relative_to(b) for p in b.rglob("*")
    )


class _Stop(Exception):
    pass


def _stop_after(k: int) -> Callable[[int], None]:
    def on_shard(n: int) -> None:
        if n == k:
            raise _Stop(f"stopped after {n} shards")

    return on_shard


def test_backend_choice_and_bad_addresses() -> None:
    assert choose_backend("auto", None) == "local"
    assert choose_backend("auto", "127.0.0.1:6379") == "ray"
    assert choose_backend("ray", None) == "ray"
    assert choose_backend("local", "auto") == "local"
    with pytest.raises(ModnetBatchError, match=r"--backend threads: expected one of"):
        choose_backend("threads", None)
    with pytest.raises(ModnetBatchError, match=r"Jobs API URL.*GCS address"):
        RayLoader(address="http://127.0.0.1:8265")
    # several tasks per worker, at most 16 files each
    assert [files_per_task(n, w) for n, w in [(41, 2), (1000, 2), (3, 4), (100, 1)]] == [
        6,
        16,
        1,
        16,
    ]


def test_cli_refuses_a_jobs_api_address_in_one_line(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", n=2)
    res = run_cli("ingest", src, tmp_path / "ds", "--address", "http://127.0.0.1:8265")
    assert res.returncode == 1
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert "Jobs API URL" in line and "GCS address" in line
    assert not (tmp_path / "ds").exists()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A real local Ray of 2 CPUs (a raylet, a GCS and worker processes), shared by the tests."""
    import ray

    from modnet_batch.execution.ray_join import start_local_ray

    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _source(tmp_path_factory.mktemp("ingest-src") / "src")


@pytest.fixture(scope="module")
def local_ingest(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ingest-local") / "ds"
    ingest(source, out, shard_size=4, row_group_rows=2)
    return out


@pytest.mark.ray
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_ray_tasks_give_the_local_dataset(
    local_ray: None, source: Path, local_ingest: Path, tmp_path: Path, batch: int
) -> None:
    import ray

    loader = RayLoader(workers=2, files_per_task=batch)
    report = ingest(source, tmp_path / "ds", shard_size=4, row_group_rows=2, loader=loader)
    assert ray.is_initialized()  # the test's Ray: the loader does not own it, nor stop it
    assert loader.tasks == -(-26 // batch)  # the 26 images (a bad name is skipped unread)
    _same_dataset(local_ingest, tmp_path / "ds")
    assert sorted(dict(report.skipped)) == [
        "image/bad name.jpg",
        "image/im004.jpg",
        "matte/im011.png",
        "matte/im017.png",
        "matte/orphan.png",
    ]


@pytest.mark.ray
def test_ray_prepare_gives_the_local_dataset(local_ray: None, source: Path, tmp_path: Path) -> None:
    opts: dict[str, Any] = {"shard_size": 8, "prepare": "seed-area"}
    ingest(source, tmp_path / "local", **opts)
    ingest(source, tmp_path / "ray", loader=RayLoader(workers=2, files_per_task=4), **opts)
    _same_dataset(tmp_path / "local", tmp_path / "ray", drop=("prepared.cpu_seconds",))


@pytest.mark.ray
def test_interrupted_ray_ingest_resumes_to_the_same_dataset(
    local_ray: None, source: Path, local_ingest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    opts: dict[str, Any] = {"shard_size": 4, "row_group_rows": 2}
    with pytest.raises(_Stop):
        ingest(
            source,
            out,
            loader=RayLoader(workers=2, files_per_task=2),
            on_shard=_stop_after(2),
            **opts,
        )
    assert not out.exists() and (work_dir(out.resolve()) / "state.json").exists()
    loader = RayLoader(workers=2, files_per_task=2)
    report = ingest(source, out, loader=loader, **opts)
    assert report.resumed_shards == 2 and 0 < report.decoded < 26 - 8
    # only the files after the kept shards went to tasks
    assert loader.tasks == -(-report.decoded // 2)
    _same_dataset(local_ingest, out)


def _big_flat_source(root: Path, n: int) -> Path:
    """n copies of one 1600x1200 noisy JPEG (~1 MB, ~40 ms to decode) and one bad file: enough
    work to kill the driver in the middle."""
    rng = np.random.default_rng(0)
    h, w = 1200, 1600
    smooth = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8), (w, h))
    img = np.clip(smooth.astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"big{i:03d}.jpg").write_bytes(buf.tobytes())
    (root / "big007.jpg").write_bytes(buf.tobytes()[: len(buf) // 3])  # truncated
    return root


@pytest.mark.ray
def test_killed_ray_ingest_resumes_from_the_cli(tmp_path: Path) -> None:
    """SIGKILL of the driver (and of its embedded Ray) after some shards: the same command
    continues after them, and the dataset equals an uninterrupted ingest's."""
    src = _big_flat_source(tmp_path / "src", 48)
    out = tmp_path / "ds"
    args = ["ingest", src, out, "--shard-size", "2", "--backend", "ray", "--task-files", "1"]
    env_cmd = [sys.executable, "-m", "modnet_batch", *map(str, args)]
    proc = subprocess.Popen(
        env_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    state = work_dir(out.resolve()) / "state.json"
    deadline = time.monotonic() + 120
    shards = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            shards = len(json.loads(state.read_text())["progress"]["shards"])
            if shards >= 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the ingest ended before it could be killed: {proc.stdout}"
    kill_job(proc)
    assert not out.exists()
    # another source or options: refused in one line naming the fix, nothing lost
    res = run_cli("ingest", src, out, "--shard-size", "3")
    assert res.returncode == 1 and "--restart" in res.stderr
    assert [x.startswith("error:") for x in res.stderr.splitlines()][-1:] == [True], res.stderr
    assert "another --shard-size" in res.stderr
    kept = len(json.loads(state.read_text())["progress"]["shards"])
    assert kept >= 2
    # the same command continues (here on local threads: the result does not depend on it)
    res = run_cli("ingest", src, out, "--shard-size", "2")
    assert res.returncode == 0, res.stderr
    assert f"resuming: {kept} shard(s)" in res.stderr
    assert f"{kept} shard(s) kept from before" in res.stdout
    ingest(src, tmp_path / "clean", shard_size=2)
    _same_dataset(tmp_path / "clean", out)
    assert not work_dir(out.resolve()).exists()


@pytest.mark.cluster
def test_multi_node_cluster_ingest_equals_local(source: Path, tmp_path: Path) -> None:
    """A head (no CPUs) and two 1-CPU worker nodes started with `ray start`: the tasks run on
    the worker nodes, the driver joins with --address (token auth), same dataset."""
    from cluster.local import LocalCluster

    with LocalCluster(tmp_path / "cluster", workers=2, cpus_per_node=1) as lc:
        res = run_cli(
            "ingest",
            source,
            tmp_path / "ds",
            *("--shard-size", "4", "--task-files", "2", "--address", lc.gcs_address),
            env={**lc.client_env(), "COLUMNS": "250"},
        )
    assert res.returncode == 0, res.stderr
    assert "on 2 worker(s)" in res.stderr
    ingest(source, tmp_path / "local", shard_size=4)
    _same_dataset(tmp_path / "local", tmp_path / "ds")


@pytest.mark.ray
def test_ctrl_c_keeps_the_finished_shards_and_says_how_to_continue(tmp_path: Path) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C reaches Ray's processes too): exit
    130, one line naming the work folder, and the same command continues after its shards."""
    import os
    import signal

    # 120 photos: seconds of work left after the first shard, so that a loaded machine that
    # delays this process cannot let the ingest finish before the signal is sent
    src = _big_flat_source(tmp_path / "src", 120)
    out = tmp_path / "ds"
    args = ["ingest", src, out, "--shard-size", "2", "--backend", "ray", "--task-files", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modnet_batch", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: the signal reaches no process of the tests
    )
    state = work_dir(out.resolve()) / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and len(json.loads(state.read_text())["progress"]["shards"]) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert f"the finished shards are kept in {work_dir(out.resolve())}" in output
    kept = len(json.loads(state.read_text())["progress"]["shards"])
    res = run_cli("ingest", src, out, "--shard-size", "2")
    assert res.returncode == 0, res.stderr
    assert f"{kept} shard(s) kept from before" in res.stdout
    ingest(src, tmp_path / "clean", shard_size=2)
    _same_dataset(tmp_path / "clean", out)

"""Whole nodes of a real multi-node cluster (cluster/local.py): a worker node killed mid-job (its
raylet, agents and workers, all at once) and the job completing on the others with results equal
to a clean run's; and 16 small nodes sharing one job (every node gets work, the driver's cost
per shard measured and written as a benchmark record).

LocalCluster rather than ray.cluster_utils.Cluster: its nodes are separate `ray start` process
trees found by their temp dirs, so a node is killed as a machine vanishes (SIGKILL of every
process, no Ray API involved), and jobs go through the Jobs API with token auth, as users run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from benchmarks.scale import make_dataset
from benchmarks.tiny import make_tiny_model
from cluster.local import LocalCluster, find_processes
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from tests.helpers import ROOT, make_slow_model

pytestmark = pytest.mark.cluster
WAIT_S = 300.0
# the head marks a node dead after ~1.5 s of missed health checks instead of ~15 s (Ray's
# defaults: every 3 s, 5 misses), so that the loss is known while the job still has work
FAST_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _env(lc: LocalCluster) -> dict[str, str]:
    env = lc.client_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    return env


def _submit(lc: LocalCluster, dataset: Path, out: Path, model: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "modnet_batch", "submit", "--dataset", str(dataset)]
    cmd += ["--out", str(out), "--model", str(model), "--address", lc.dashboard_url, "--follow"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(lc), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _teardown(lc: LocalCluster) -> None:
    leftovers = find_processes(lc.state["id"], lc.state["temp_root"])
    assert not leftovers, f"processes of the cluster survived teardown: {leftovers}"


# --- a node lost mid-job --------------------------------------------------------------------------
IMAGES, SHARD = 80, 2  # 40 shards over 3 nodes: the killed one always holds two


@pytest.fixture(scope="module")
def node_loss_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("node-loss")
    model = make_slow_model(base / "slow.onnx", convs=10, channels=16)
    make_dataset(base / "ds", IMAGES, SHARD, pool=16, seed=7)
    clean = base / "clean"
    job = {"dataset": str(base / "ds"), "out": str(clean), "model": str(model)}
    run_job(load_job(None, {**job, "backend": "inline", "threads": 1}))
    return {"model": model, "dataset": base / "ds", "clean": clean}


def test_a_worker_node_killed_mid_job_costs_one_retry_and_the_job_completes(
    node_loss_data: dict[str, Path], tmp_path: Path
) -> None:
    data = node_loss_data
    lc = LocalCluster(tmp_path / "state", workers=3, cpus_per_node=1, ray_config=FAST_DEATH)
    with lc:
        out = tmp_path / "run"
        proc = _submit(lc, data["dataset"], out, data["model"])
        deadline = time.monotonic() + WAIT_S
        while not (out / "alpha").is_dir() or len(os.listdir(out / "alpha")) < 6:
            assert proc.poll() is None, f"the job ended before the kill: {proc.communicate()}"
            assert time.monotonic() < deadline, "no 6 images within the wait"
            time.sleep(0.05)
        victim = lc.node_processes("worker2")
        assert any("UnitWorker" in " ".join(p.cmdline()) for p in victim), "no worker there"
        killed_at = time.time()
        killed = lc.kill_node("worker2")  # raylet, agents, workers: SIGKILL, all at once
        assert {p.pid for p in victim} <= set(killed) and not lc.node_processes("worker2")
        # the head notices (alive nodes: head + 2) while the job still has work: the driver
        # then learns that the node's actor cannot be placed any more, not only that it died
        while len(lc.alive_nodes()) > 3:
            assert time.monotonic() < deadline, "the head never marked the node dead"
            time.sleep(0.1)
        assert proc.poll() is None, "the job finished before the node was known dead"
        stdout, stderr = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, f"stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-3000:]}"
        assert "Traceback" not in stdout + stderr
        assert "is lost with its node" in stdout  # the job's log says so
        alive = {n["node_id"] for n in lc.alive_nodes()}
    _teardown(lc)

    summary = json.loads((out / "summary.json").read_text())
    clean = json.loads((data["clean"] / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["images"] == clean["images"]
    assert summary["metrics"] == clean["metrics"]  # bit-identical floats
    assert summary["accumulator"] == clean["accumulator"]
    table = pq.read_table(out / "metrics.parquet")
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == IMAGES  # every image exactly once
    assert ids == [f"img-{i:07d}" for i in range(IMAGES)]
    assert table.equals(pq.read_table(data["clean"] / "metrics.parquet"))
    assert sorted(os.listdir(out / "alpha")) == sorted(os.listdir(data["clean"] / "alpha"))
    # the shard it was running is charged one retry, the one queued behind it goes back as it
    # was; its actor is lost (its node is gone), the two others did the rest
    units = list((out / "state" / "units").glob("*.json"))
    assert summary["units"]["retries"] == 1 and summary["units"]["processed"] == len(units)
    lost = [w for w in summary["workers"] if w.get("lost")]
    assert len(lost) == 1 and lost[0]["node_id"] not in alive, summary["workers"]
    assert "is gone" in lost[0]["lost"]
    retried = [t for t in summary["timeline"] if t["attempt"] == 1]
    assert len(retried) == 1 and retried[0]["node"] != lost[0]["node"]
    after = [t for t in summary["timeline"] if t["started"] > killed_at]
    assert after and all(t["node"] != lost[0]["node"] for t in after)


# --- 16 small nodes -------------------------------------------------------------------------------
NODES, SPREAD_IMAGES, SPREAD_SHARD = 16, 512, 4


class _MemoryWatch:
    """The cluster's memory (RSS and PSS summed over its processes) every second, in a thread."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc, self.peak_rss, self.peak_pss = lc, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def measure(self) -> tuple[int, int]:
        rss = pss = 0
        for p in self.lc.processes():
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += info.pss
        return rss, pss

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            rss, pss = self.measure()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def __enter__(self) -> _MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _bench_dir(tmp_path: Path) -> Path:
    """Where the record goes: MODNET_BENCH_DIR (e.g. bench/) when set, else the test's tmp."""
    return Path(os.environ.get("MODNET_BENCH_DIR") or tmp_path)


@pytest.fixture
def sixteen(tmp_path: Path) -> Iterator[tuple[LocalCluster, float]]:
    t0 = time.perf_counter()
    lc = LocalCluster(tmp_path / "state", workers=NODES, cpus_per_node=1)
    with lc:
        yield lc, time.perf_counter() - t0
    _teardown(lc)


@pytest.mark.slow
def test_sixteen_nodes_all_get_work_and_the_dispatch_cost_per_shard(
    sixteen: tuple[LocalCluster, float], tmp_path: Path
) -> None:
    lc, up_s = sixteen
    mib = 2**20
    model = make_tiny_model(tmp_path / "tiny.onnx")
    make_dataset(tmp_path / "ds", SPREAD_IMAGES, SPREAD_SHARD, pool=16)
    watch = _MemoryWatch(lc)
    idle_rss, idle_pss = watch.measure()
    per_node = {
        name: sum(p.memory_full_info().pss for p in lc.node_processes(name)) / mib
        for name in ("head", "worker1")
    }
    t0 = time.perf_counter()
    with watch:
        proc = _submit(lc, tmp_path / "ds", tmp_path / "run", model)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    job_s = time.perf_counter() - t0
    assert proc.returncode == 0, f"stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-3000:]}"

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] and summary["images"]["scored"] == SPREAD_IMAGES
    nodes = {n["node_id"][:6] for n in lc.alive_nodes() if not n["is_head_node"]}
    assert len(nodes) == NODES
    busy = {k.rsplit(":", 1)[1]: v["images"] for k, v in summary["throughput"]["per_node"].items()}
    assert set(busy) == nodes, f"nodes without work: {nodes - set(busy)}"  # the head has none
    assert all(n > 0 for n in busy.values()) and sum(busy.values()) == SPREAD_IMAGES
    dispatch = summary["dispatch"]
    # every unit dispatched once: whole shards, then single images as the work left shrinks
    assert dispatch["actors"] == NODES and dispatch["shards"] == summary["units"]["processed"]
    assert dispatch["shards"] > SPREAD_IMAGES // SPREAD_SHARD

    record = {
        "benchmark": "cluster16",
        "nodes": NODES,
        "cpus_per_node": 1,
        "images": SPREAD_IMAGES,
        "shards": dispatch["shards"],
        "image_size": "64x64",
        "model": "tiny (bench.tiny)",
        "cluster_up_s": round(up_s, 1),
        "job_s": round(job_s, 1),
        "startup_s": round(summary["startup_seconds"], 1),
        "images_per_node": {"min": min(busy.values()), "max": max(busy.values())},
        "memory_mib": {
            "idle_rss": round(idle_rss / mib),
            "idle_pss": round(idle_pss / mib),
            "peak_rss": round(watch.peak_rss / mib),
            "peak_pss": round(watch.peak_pss / mib),
            "idle_pss_head": round(per_node["head"]),
            "idle_pss_worker_node": round(per_node["worker1"]),
        },
        "dispatch": dispatch,
        "machine": {"cores": os.cpu_count(), "load_1m": os.getloadavg()[0]},
    }
    out = _bench_dir(tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster16.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    # the driver's own work per shard stays small next to a shard's (a regression to a poll of
    # every actor per result, or worse, shows here)
    assert dispatch["driver_cpu_per_shard_ms"] < 50

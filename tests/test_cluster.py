"""A real multi-node Ray cluster on this machine (cluster/local.py): `submit --address` through the
Ray Jobs API spreads the shards over the worker nodes; status/logs/stop; teardown leaves nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster.local import LocalCluster, find_processes
from tests.helpers import cluster_cli as cli

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]


# --- the launcher on its own (before the module's cluster starts: never two at once)
def test_context_manager_tears_down_when_the_body_fails(tmp_path: Path) -> None:
    lc = LocalCluster(tmp_path / "state", workers=0)
    with pytest.raises(ZeroDivisionError), lc:
        assert [n["is_head_node"] for n in lc.alive_nodes()] == [True]
        assert lc.processes()
        1 / 0  # noqa: B018
    assert not find_processes(lc.state["id"], lc.state["temp_root"])
    assert json.loads((tmp_path / "state" / "cluster.json").read_text())["state"] == "down"


def test_launcher_cli_down_after_a_node_died(tmp_path: Path) -> None:
    """`up` prints the addresses and advertises fake devices; `down` kills exactly this cluster's
    processes although one node's raylet is already dead."""
    launcher = [sys.executable, str(ROOT / "cluster" / "local.py")]
    state = tmp_path / "state"
    options = ["--workers", "1", "--gpus-per-node", "1", "--resources", '{"fake_npu": 2}']
    up = subprocess.run(
        [*launcher, "up", *options, "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    info = json.loads((state / "cluster.json").read_text())
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Jobs API URL: {info['dashboard_url']}" in up.stdout
        assert f"GCS address:  {info['gcs_address']}" in up.stdout
        lc = LocalCluster.attach(state)
        workers = [n for n in lc.alive_nodes() if not n["is_head_node"]]
        assert len(workers) == 1
        assert workers[0]["resources_total"]["fake_npu"] == 2
        assert workers[0]["resources_total"]["GPU"] == 1
        assert all(n["node_ip"] == "127.0.0.1" for n in lc.alive_nodes())

        raylets = [p for p in lc.processes() if p.name() == "raylet"]
        assert len(raylets) == 2
        dead = next(p for p in raylets if "worker1" in " ".join(p.cmdline()))
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        bystander = psutil.Process()  # this process must survive `down`

        down = subprocess.run(
            [*launcher, "down", "--state", str(state)], capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped" in down.stdout
        assert not find_processes(info["id"], info["temp_root"])
        assert bystander.is_running()
        status = subprocess.run(
            [*launcher, "status", "--state", str(state)], capture_output=True, text=True, timeout=60
        )
        assert "down, 0 live process(es)" in status.stdout
    finally:
        LocalCluster.attach(state).stop()


# --- jobs on the module's cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Head (0 CPUs) + two worker nodes of 1 CPU and one fake accelerator unit each."""
    lc = LocalCluster(
        tmp_path_factory.mktemp("cluster"), workers=2, cpus_per_node=1, resources={"fake_npu": 1}
    )
    with lc:
        yield lc
    leftovers = find_processes(lc.state["id"], lc.state["temp_root"])
    assert not leftovers, f"processes of the cluster survived teardown: {leftovers}"
    assert not lc.temp_root.exists()


def submit_and_check(lc: LocalCluster, out: Path, images: int, *args: Any) -> dict[str, Any]:
    """Submit with --follow; check it ran on both worker nodes and that status/logs/stop work."""
    res = cli(lc, "submit", "--out", out, "--address", lc.dashboard_url, "--follow", *args)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    job_id = res.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_"), res.stdout[:500]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["images"]["scored"] == images
    per_node = summary["throughput"]["per_node"]
    busy = {node: entry["images"] for node, entry in per_node.items() if entry["images"] > 0}
    assert len(busy) == 2, f"expected work on both worker nodes, got {per_node}"
    assert sum(busy.values()) == images

    status = cli(lc, "status", job_id, "--address", lc.dashboard_url, timeout=60)
    assert (status.returncode, status.stdout.strip()) == (0, "SUCCEEDED"), status.stderr
    logs = cli(lc, "logs", job_id, "--address", lc.dashboard_url, timeout=60)
    assert logs.returncode == 0, logs.stderr
    for node in busy:  # the entrypoint's last lines: images per node
        assert f"node {node}: {busy[node]} images" in logs.stdout
    stop = cli(lc, "stop", job_id, "--address", lc.dashboard_url, timeout=60)
    assert (stop.returncode, stop.stdout.strip()) == (0, f"{job_id}: already finished")
    return summary


def test_submit_through_the_jobs_api_runs_on_two_nodes(
    cluster: LocalCluster, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    summary = submit_and_check(
        cluster, tmp_path / "run", 12, "--dataset", synth_dataset, "--model", tiny_model
    )
    assert summary["job"]["address"] == "auto"  # the driver ran inside the cluster


def test_submit_on_a_fake_accelerator_resource(
    cluster: LocalCluster, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    summary = submit_and_check(
        cluster,
        tmp_path / "run",
        12,
        *("--dataset", synth_dataset, "--model", tiny_model, "--device", "fake_npu"),
    )
    assert all(d.startswith("fake_npu0@") for d in summary["throughput"]["per_device"])


def test_client_without_the_token_gets_a_hint(cluster: LocalCluster) -> None:
    env = {k: v for k, v in cluster.client_env().items() if not k.startswith("RAY_AUTH")}
    res = subprocess.run(
        [sys.executable, "-m", "modnet_batch", "status", "raysubmit_x"],
        cwd=ROOT,
        env={**env, "RAY_ADDRESS": cluster.dashboard_url, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "RAY_AUTH_MODE=token" in res.stderr


@pytest.mark.slow
def test_submit_ppm100_dev_with_the_real_model(
    cluster: LocalCluster, shared: Path, real_model: Path, tmp_path: Path
) -> None:
    from modnet_batch.data.ingest import ingest

    report = ingest(shared / "datasets" / "ppm100-dev", tmp_path / "dataset", shard_size=4)
    submit_and_check(
        cluster,
        tmp_path / "run",
        report.images,
        *("--dataset", tmp_path / "dataset", "--model", real_model),
    )

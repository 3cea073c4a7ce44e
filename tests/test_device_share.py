"""Each accelerator gets its share of its node's CPUs: on a real multi-node Ray whose nodes have
more CPUs than (fake) GPUs, every GPU actor holds C/D CPUs and runs that many decode/score
threads; a plan that cannot fit is refused with a clear error instead of waiting forever."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.local import LocalCluster
from modnet_batch.execution.resources import device_cpu_share
from tests.helpers import cluster_cli as cli

CPUS_PER_NODE = 5
GPUS_PER_NODE = 2


@pytest.mark.parametrize(
    ("cpus", "devices", "share"),
    [
        (16, 1, 15),  # one CPU kept for the driver and Ray
        (16, 2, 7),
        (16, 4, 3),
        (16, 8, 2),  # no reserve: each device would drop below 4 CPUs
        (5, 2, 2),
        (8, 1, 7),
        (3, 1, 3),
        (2, 4, 1),  # fewer CPUs than devices: 1 each, refused where it cannot be placed
        (4.5, 1, 3),  # fractional CPUs count whole: 4, less the reserve
    ],
)
def test_device_cpu_share(cpus: float, devices: int, share: int) -> None:
    assert device_cpu_share(cpus, devices) == share


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Head (0 CPUs) + two worker nodes of 5 CPUs and 2 fake GPUs each."""
    lc = LocalCluster(
        tmp_path_factory.mktemp("gpu-cluster"),
        workers=2,
        cpus_per_node=CPUS_PER_NODE,
        gpus_per_node=GPUS_PER_NODE,
    )
    with lc:
        yield lc


@pytest.mark.cluster
def test_each_gpu_actor_gets_its_cpu_share(
    gpu_cluster: LocalCluster, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # the CPU provider stands in for CUDA: the planning and the threads are what is tested
    res = cli(
        gpu_cluster,
        *("submit", "--dataset", synth_dataset, "--model", tiny_model, "--out", out),
        *("--device", "gpu", "--provider", "cpu"),
        *("--address", gpu_cluster.dashboard_url, "--follow"),
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    workers = summary["workers"]
    assert len(workers) == 2 * GPUS_PER_NODE
    share = device_cpu_share(CPUS_PER_NODE, GPUS_PER_NODE)
    assert {(w["cpus"], w["decode_threads"]) for w in workers} == {(share, share)}
    per_node: dict[str, set[tuple[int, ...]]] = {}
    for w in workers:
        per_node.setdefault(w["node"], set()).add(tuple(w["accelerators"]["GPU"]))
    assert [len(gpus) for gpus in per_node.values()] == [GPUS_PER_NODE] * 2, per_node
    assert summary["images"]["scored"] == 12


@pytest.mark.cluster
def test_decode_threads_override_and_a_plan_that_cannot_fit(
    gpu_cluster: LocalCluster, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    common = ("submit", "--dataset", synth_dataset, "--model", tiny_model)
    where = ("--device", "gpu", "--provider", "cpu", "--address", gpu_cluster.dashboard_url)
    out = tmp_path / "one-thread"
    res = cli(gpu_cluster, *common, "--out", out, *where, "--decode-threads", "1", "--follow")
    assert res.returncode == 0, res.stderr[-3000:]
    workers = json.loads((out / "summary.json").read_text())["workers"]
    assert {(w["cpus"], w["decode_threads"]) for w in workers} == {(1, 1)}

    # 2 GPUs x 3 threads on a 5-CPU node: refused before any actor waits for CPUs
    too_many = tmp_path / "too-many"
    res = cli(gpu_cluster, *common, "--out", too_many, *where, "--decode-threads", "3", "--follow")
    assert res.returncode != 0
    assert f"has {CPUS_PER_NODE} CPU but the job's actors there need 6" in res.stdout + res.stderr

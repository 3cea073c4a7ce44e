"""A multi-node local cluster (cluster/local.py: head + 2 worker nodes) reading and writing only
through S3 (moto's server on 127.0.0.1): the dataset, the run directory and the model exist
nowhere else; each node's workers open the URIs themselves with the credentials of their own
environment. Results equal a local run's."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.local import LocalCluster, find_processes
from modnet_batch.storage import UriPath, location
from tests.helpers import cluster_cli
from tests.s3 import SECRET_KEY, S3Server

pytestmark = pytest.mark.cluster


@pytest.fixture
def s3_cluster(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalCluster]:
    # the nodes inherit this environment: the S3 endpoint and credentials, and a model cache
    # of their own (the model comes from S3 through it)
    monkeypatch.setenv("MODNET_BATCH_CACHE", str(tmp_path / "node-cache"))
    lc = LocalCluster(tmp_path / "state", workers=2, cpus_per_node=1)
    with lc:
        yield lc
    leftovers = find_processes(lc.state["id"], lc.state["temp_root"])
    assert not leftovers, f"processes of the cluster survived teardown: {leftovers}"


def test_a_two_node_cluster_reads_and_writes_only_through_s3(
    s3_cluster: LocalCluster,
    s3_server: S3Server,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    from modnet_batch.data.synthetic import make_synthetic
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    bucket = s3_server.make_bucket("cluster")
    src = make_synthetic(tmp_path / "src", n=12, height=160, width=120, seed=5)
    dataset, out, model = f"{bucket}/ds", f"{bucket}/runs/two-nodes", f"{bucket}/m/tiny.onnx"
    location(model).write_bytes(tiny_model.read_bytes())
    done = cluster_cli(s3_cluster, "ingest", src, dataset, "--shard-size", "2")
    assert done.returncode == 0, done.stdout + done.stderr

    args = ["submit", "--dataset", dataset, "--out", out, "--model", model]
    done = cluster_cli(s3_cluster, *args, "--address", s3_cluster.dashboard_url, "--follow")
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert SECRET_KEY not in done.stdout + done.stderr

    run = UriPath(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is True and summary["images"]["scored"] == 12
    assert summary["job"]["address"] == "auto"  # the driver ran inside the cluster
    busy = {n: e["images"] for n, e in summary["throughput"]["per_node"].items() if e["images"]}
    assert len(busy) == 2 and sum(busy.values()) == 12, summary["throughput"]["per_node"]
    markers = list((run / "state" / "units").glob("*.json"))
    assert len(markers) == summary["units"]["processed"]  # a marker per unit, in the bucket
    ids = [r["image_id"] for m in markers for r in json.loads(m.read_text())["rows"]]
    assert len(ids) == len(set(ids)) == 12
    assert len(list((run / "alpha").glob("*.npz"))) == 12
    assert not any(Path(os.environ["MODNET_BATCH_CACHE"]).glob("remote/*/*.tmp"))

    # the same images and model, all local, in one process: equal results
    local = tmp_path / "local"
    (tmp_path / "tiny.onnx").write_bytes(tiny_model.read_bytes())
    from modnet_batch.data.ingest import ingest

    ingest(src, tmp_path / "ds", shard_size=2)
    job = {"dataset": str(tmp_path / "ds"), "out": str(local), "model": str(tiny_model)}
    run_job(load_job(None, {**job, "backend": "inline"}))
    reference = json.loads((local / "summary.json").read_text())
    assert summary["metrics"] == reference["metrics"]
    assert summary["accumulator"] == reference["accumulator"]
    table = pq.read_table(io.BytesIO((run / "metrics.parquet").read_bytes()))
    assert table.equals(pq.read_table(local / "metrics.parquet"))

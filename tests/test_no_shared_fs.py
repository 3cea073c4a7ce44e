"""A cluster whose worker nodes share no file system with the driver for the run directory and
the model: each worker node of a LocalCluster runs in its own mount namespace with an empty
tmpfs over the folder holding both (cluster/local.py `private_dirs`). The model then reaches the
workers only through Ray's object store and their files come back to the driver with their
results; the run equals one written by an inline job, file for file.

Needs Linux mount namespaces (unshare as root); skips, saying so, where the machine has none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.local import ClusterError, LocalCluster, check_private_dirs
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from tests.helpers import ROOT

pytestmark = pytest.mark.cluster
WAIT_S = 300


def _submit(lc: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = lc.client_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    cmd = [sys.executable, "-m", "modnet_batch", "submit", *args]
    cmd += ["--address", lc.dashboard_url, "--follow"]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_without_a_shared_file_system_the_model_travels_and_results_come_back(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"  # the workers see an empty folder here
    (private / "models").mkdir(parents=True)
    try:
        check_private_dirs([private], tmp_path / "state")
    except ClusterError as exc:
        pytest.skip(str(exc))
    model = private / "models" / "tiny.onnx"
    shutil.copy(tiny_model, model)
    # each worker node's model cache is its own too (inside its tmpfs)
    monkeypatch.setenv("MODNET_BATCH_CACHE", str(private / "cache"))
    clean = tmp_path / "clean"
    job = {"dataset": str(synth_dataset), "model": str(model), "output": "npz,alpha-png"}
    run_job(load_job(None, {**job, "out": str(clean), "backend": "inline"}))

    out = private / "runs" / "run"
    lc = LocalCluster(
        tmp_path / "state", workers=2, cpus_per_node=1, head_cpus=0, private_dirs=[private]
    )
    with lc:
        base = ["--dataset", str(synth_dataset), "--model", str(model)]
        refused = _submit(
            lc, *base, "--out", str(private / "runs" / "refused"), "--results-via", "storage"
        )
        done = _submit(lc, *base, "--out", str(out), "--output", "npz,alpha-png")
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0, text[-3000:]
    assert "cannot see the run directory" in text and "--results-via driver" in text, text[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    workers = summary["workers"]
    assert len(workers) == 2 and len({w["node_id"] for w in workers}) == 2
    assert {w["results_via"] for w in workers} == {"driver"}  # auto: neither sees the run
    # neither sees the model either: each opened the copy it wrote into its node's own cache
    shipped = private / "cache" / "shipped"
    assert all(Path(w["model"]).parent == shipped for w in workers), workers
    expected = json.loads((clean / "summary.json").read_text())
    assert summary["metrics"] == expected["metrics"]  # bit-identical
    assert pq.read_table(out / "metrics.parquet").equals(pq.read_table(clean / "metrics.parquet"))
    for folder in ("alpha", "outputs"):
        got, want = _files(out / folder), _files(clean / folder)
        assert len(want) == 12 and got == want, folder
    # the workers' model copies are in their own tmpfs, not on the driver's side
    assert not shipped.exists()
